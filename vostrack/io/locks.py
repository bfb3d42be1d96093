"""An output folder made and locked for one writer: two runs writing one folder would interleave
their files (a segment job's frames, a batch's batch.json)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from vostrack.errors import VostrackError

log = logging.getLogger(__name__)


def claim_folder(folder: Path, busy: str) -> int:
    """Make ``folder`` (and its parents) and take an exclusive lock on it; returns the
    descriptor that holds the lock (close it to give the folder back). ``busy`` is the one-line
    error when another process holds it. A file system without locks (some network mounts)
    is used unguarded."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise VostrackError(f"output {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise VostrackError(
            f"output folder {folder} is not writable ({exc.strerror or exc})"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            raise VostrackError(busy) from None
        log.debug("cannot lock %s (%s); going on without the lock", folder, exc.strerror)
    if not os.access(folder, os.W_OK):
        os.close(fd)
        raise VostrackError(f"output folder {folder} is not writable (permission denied)")
    return fd
