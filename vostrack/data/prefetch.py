"""Batches made ahead of the training step by worker processes, handed out in step order.

A batch is a pure function of its step (``ClipBatches.batch_at_step``), so workers can make
steps ``s+1 .. s+depth`` while the accelerator runs step ``s`` and the run stays identical to a
single-process one, resumed or not. Workers are *spawned*, not forked: the parent holds
TensorFlow's or JAX's threads, which a fork would copy in an undefined state. What they run
(vostrack/data/batches.py) is numpy and OpenCV only, so a spawned worker imports neither Keras
nor a framework (a few hundred MiB and seconds each otherwise).

Keras's own ``PyDataset(workers=...)`` queue lives inside ``model.fit``'s private adapter; the
trainer runs its own step, hence this small pool around ``concurrent.futures``.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

_make_batch: Callable[[int], Any] | None = None


def _start_worker(blob: bytes) -> None:
    global _make_batch
    import signal

    import cv2

    # Ctrl-C in a terminal reaches the whole process group: the parent finishes its step,
    # saves and shuts the pool down; a worker dying of it first would fail that step instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One worker per core already; OpenCV's own thread pool would oversubscribe them.
    cv2.setNumThreads(1)
    _make_batch = pickle.loads(blob)


def _run(step: int) -> Any:
    assert _make_batch is not None, "worker not initialised"
    return _make_batch(step)


class Prefetcher:
    """``for step, batch in Prefetcher(make_batch, start, end, workers)``: steps start..end-1.

    ``workers=0`` makes each batch in the calling process when it is asked for.
    """

    def __init__(
        self,
        make_batch: Callable[[int], Any],
        start: int,
        end: int,
        workers: int = 0,
        depth: int | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.make_batch = make_batch
        self.start, self.end = int(start), int(end)
        self.workers = int(workers)
        self.depth = depth or 2 * max(1, self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        if self.workers == 0:
            for step in range(self.start, self.end):
                yield step, self.make_batch(step)
            return
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(pickle.dumps(self.make_batch),),
        )
        log.info("data: %d worker processes, %d batches ahead", self.workers, self.depth)
        pending: collections.deque[tuple[int, Future]] = collections.deque()
        next_step = self.start
        try:
            while pending or next_step < self.end:
                while next_step < self.end and len(pending) < self.depth:
                    pending.append((next_step, self._pool.submit(_run, next_step)))
                    next_step += 1
                step, future = pending.popleft()
                yield step, future.result()
        finally:
            self.close()
