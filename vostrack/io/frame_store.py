"""Frames played backwards with bounded memory: decoded forward once into a temporary file,
then read back one frame at a time from its end.

Video decoders only go forward, and seeking back frame by frame (a keyframe seek and a decode
per frame) is slow and not frame-exact on every container. The raw frames of the range go to
one exclusive temporary file beside the outputs (``.frames.XXXXXXXX.tmp.raw``), read with
``os.pread`` (not a memory map: mapped pages would count in the process's memory), and the
file is removed when the iteration ends, however it ends. A run killed meanwhile leaves it for
the next run on that folder to remove (see vostrack.io.atomic.remove_stale_temps).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from vostrack.io.atomic import create_temp
from vostrack.io.disk import write_failure

SPILL_STEM = "frames"


def reversed_through_disk(
    frames: Iterable[np.ndarray], count: int, folder: Path | None
) -> Iterator[np.ndarray]:
    """The ``count`` frames of ``frames`` (all of one shape, uint8), last first."""
    if folder is None:
        raise ValueError("reading a video backwards needs a folder for its frames")
    fd, path = create_temp(Path(folder) / f"{SPILL_STEM}.raw")
    try:
        shape = None
        written = 0
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            shape = frame.shape if shape is None else shape
            view = memoryview(frame).cast("B")
            try:
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                raise write_failure(exc, path.parent) from None
            written += 1
        if written != count:
            raise RuntimeError(f"expected {count} frames to play backwards, got {written}")
        size = int(np.prod(shape)) if shape is not None else 0
        for index in range(written - 1, -1, -1):
            data = os.pread(fd, size, index * size)
            yield np.frombuffer(data, dtype=np.uint8).reshape(shape)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
