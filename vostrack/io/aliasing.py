"""Outputs never touch inputs: no output path may be, contain or lie inside an input.

Paths are compared by the identity of what they name on the disk (device and inode, through
every symlink, hard link, bind mount or case-insensitive name), not by their spelling.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vostrack.errors import VostrackError

Named = tuple[str, Path]  # ("the overlay", path): how a path is called in a message


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _chain(path: Path) -> list[tuple[tuple[int, int], Path]]:
    """The identities of ``path`` (if it exists) and of every existing folder above it."""
    chain = []
    current = Path(os.path.abspath(path))
    while True:
        identity = _identity(current)
        if identity is not None:
            chain.append((identity, current))
        if current.parent == current:
            return chain
        current = current.parent


def refuse_overlap(inputs: Sequence[Named], outputs: Sequence[Named]) -> None:
    """Raise a one-line error if an output is, contains or lies inside an input."""
    known = []  # (name, path, its identity, the identities of it and the folders above it)
    for in_name, in_path in inputs:
        chain = _chain(in_path)
        identity = _identity(in_path)
        if identity is not None:
            known.append((in_name, in_path, identity, {i for i, _ in chain}))
    for out_name, out_path in outputs:
        out_ids = {identity for identity, _ in _chain(out_path)}
        out_self = _identity(out_path)
        for in_name, in_path, in_self, in_ids in known:
            if out_self is not None and out_self == in_self:
                relation = "is"
            elif in_self in out_ids:
                relation = "lies inside"
            elif out_self is not None and out_self in in_ids:
                relation = "contains"
            else:
                continue
            raise VostrackError(
                f"{out_name} {out_path} {relation} {in_name} {in_path}; "
                "outputs must be apart from the inputs, which are never written"
            )
