"""Run the real `vostrack` command line in this process with the colour test double as its
network, for tests that need a real process (to kill it, or to run it where a small file system
is mounted): ``python -m tests.cli_driver [--delay S] [--fill PATH --fill-at N] -- ARGS...``.

``--delay`` slows each step down (so that a test can kill the process mid-run); ``--fill``
fills the file system holding PATH (writes PATH until the disk is full) just before step N, as
another program filling the disk would.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time


def fill_disk(path: str) -> None:
    """Write ``path`` until the file system is full (its remaining bytes, one at the end)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fill")
    parser.add_argument("--fill-at", type=int, default=1)
    options, rest = parser.parse_known_args()
    args = rest[1:] if rest[:1] == ["--"] else rest

    from tests.doubles import ColourPropagator

    propagator = ColourPropagator()
    real_step = propagator.step

    def step(frame, reference, state):
        if options.delay:
            time.sleep(options.delay)
        if options.fill and propagator.steps + 1 == options.fill_at:
            fill_disk(options.fill)
        return real_step(frame, reference, state)

    propagator.step = step

    import vostrack.registry

    vostrack.registry.load_propagator = lambda name, *_, **__: (propagator, {"name": name})
    from vostrack.cli import main as cli_main

    sys.argv = ["vostrack", *args]
    cli_main()


if __name__ == "__main__":
    main()
