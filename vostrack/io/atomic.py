"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
half-written file, even if the process is killed mid-write or the disk fills up.

Every temporary file is created exclusively under a random name (``tempfile.mkstemp``:
``O_CREAT | O_EXCL | O_NOFOLLOW``), and written through the descriptor that created it where
the writer allows, so a symlink planted in the output folder can never redirect a write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# mkstemp's random part: eight characters of this alphabet (CPython's _RandomNameSequence).
_RANDOM = r"[a-z0-9_]{8}"


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def create_temp(path: str | Path) -> tuple[int, Path]:
    """Create an empty temporary file beside ``path``, exclusively and under a random name
    (``.<stem>.XXXXXXXX.tmp<suffix>``); returns its open descriptor and its path.

    The suffix is kept so that libraries choosing a format by extension still do the right
    thing. The mode is the one a plain ``open()`` would give (mkstemp makes it 0600).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)


def is_temp_of(name: str, stems: Iterable[str]) -> bool:
    """Whether ``name`` is a temporary file :func:`create_temp` made for one of ``stems``."""
    match = re.fullmatch(rf"\.(.+)\.{_RANDOM}\.tmp(\.[^.]+)?", name)
    return match is not None and match.group(1) in set(stems)


def remove_stale_temps(folder: Path, stems: Iterable[str]) -> int:
    """Remove the temporaries a killed run left in ``folder`` for files named ``stems``
    (only names :func:`create_temp` makes, nothing else); returns how many went."""
    stems = set(stems)
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False) and is_temp_of(entry.name, stems):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO]:
    """Yield a file object open on a new temporary file beside ``path``; when the block ends
    without an error, the data is flushed to the disk and the file renamed to ``path``."""
    path = Path(path)
    with _named_as(path):
        fd, tmp = create_temp(path)
    try:
        with _named_as(path):
            with os.fdopen(fd, mode, **open_args) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())  # the rename must never publish data still in flight
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _named_as(path: Path) -> Iterator[None]:
    """An OSError of a temporary file is reported under the name the user knows."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None or str(exc.filename) == str(path):
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the path of a new temporary file beside ``path``; on success it replaces ``path``.

    For writers that only take a file name (HDF5, NumPy archives); prefer :func:`atomic_write`.
    The file is created exclusively first, so the name is ours when the writer opens it.
    """
    with _named_as(Path(path)):
        fd, tmp = create_temp(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as pretty JSON, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def working_folder(path: str | Path) -> Path:
    """The folder ``path`` (made if missing) that a run keeps its own files in under a fixed
    name inside an output folder (``.vostrack-backward``, ``corrections``). The name is known in
    advance, so a link planted there could send those writes (and a clean-up) anywhere: a link,
    or anything but a plain folder, is refused with one line."""
    from vostrack.errors import VostrackError

    path = Path(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise VostrackError(
            f"{path} is a link or a file, not the folder vostrack keeps there; remove it"
        )
    return path


def is_working_folder(path: str | Path) -> bool:
    """Whether ``path`` is a plain folder (not a link): one :func:`working_folder` may use."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
