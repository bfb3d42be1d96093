"""Quiet TensorFlow: its C++ logging goes to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL
says (TF 2.21), and users of a command-line tool should not see start-up chatter."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Silence file descriptor 2 (where TF's C++ start-up logging goes, whatever
    TF_CPP_MIN_LOG_LEVEL says) while TensorFlow is imported and a graph is loaded."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
