"""Quiet TensorFlow: its C++ logging goes to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL
says (TF 2.21), and users of a command-line tool should not see start-up chatter."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


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


@contextlib.contextmanager
def native_logs_silenced(enabled: bool = True) -> Iterator[None]:
    """For a long job (training): file descriptor 2 goes to the null device, so TensorFlow's C++
    logs (CUDA probes, oneDNN notes) vanish whenever they come, while Python's own stderr
    (progress bar, log lines, errors) is pointed at the real one."""
    if not enabled:
        yield
        return
    try:
        python_on_fd2 = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests) has no descriptor
        python_on_fd2 = False
    sys.stderr.flush()
    saved = os.dup(2)
    previous = sys.stderr
    if python_on_fd2:
        sys.stderr = os.fdopen(
            os.dup(saved), "w", buffering=1, encoding=previous.encoding, errors=previous.errors
        )
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        if python_on_fd2:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = previous
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
