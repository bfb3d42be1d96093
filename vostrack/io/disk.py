"""The disk under the outputs: one-line errors for failed writes, and a little space kept in
reserve so that a run stopped by a full disk can still record where it stopped."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from vostrack.errors import VostrackError
from vostrack.io.atomic import create_temp

log = logging.getLogger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def write_failure(exc: OSError, path: str | Path, what: str = "") -> VostrackError:
    """A one-line error for a failed write of ``path``; a full disk is named as such."""
    target = Path(exc.filename) if getattr(exc, "filename", None) else Path(path)
    what = f"{what} " if what else ""
    if is_disk_full(exc):
        reason = {errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit reached"}.get(
            exc.errno, "no space left"
        )
        return VostrackError(
            f"cannot write {what}{target}: {reason} on the file system at {mount_point(target)}"
        )
    return VostrackError(f"cannot write {what}{target}: {exc.strerror or exc}")


class SpaceReserve:
    """A file of ``size`` bytes allocated in ``folder`` when a job starts and given back
    (deleted) just before the job writes its final record, so that the record still fits when
    the job was stopped by a full disk. Its name is random (an exclusive temporary), and a
    killed run's leftover is removed with the other stale temporaries of the folder."""

    STEM = "vostrack-reserve"

    def __init__(self, folder: Path, size: int):
        self.path: Path | None = None
        fd, path = create_temp(Path(folder) / f"{self.STEM}.bin")
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.write(fd, b"\0" * size)  # a file system without fallocate
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink()
            raise
        os.close(fd)
        self.path = path

    def release(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None
