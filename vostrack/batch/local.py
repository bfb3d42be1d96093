"""Local mode: N spawned worker processes (TensorFlow is not fork-safe), each loading the model
once and segmenting the videos the parent hands it, one at a time.

Each worker has its own inbox, so the parent always knows which video a worker holds: a worker
that dies (killed, crashed) costs only that video, which goes to a new worker once (see
dispatch.RETRIES_AFTER_DEATH), and a replacement process is started. Results, frame progress
and log lines come back on one shared queue. Workers ignore SIGINT (a Ctrl-C at a terminal
reaches the whole process group): the parent decides, and stops them with SIGTERM, which
stops the video in progress after its current frame.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from vostrack.batch.dispatch import Dispatcher
from vostrack.batch.jobs import VideoJob
from vostrack.batch.runner import BatchOptions, ModelSpec, VideoRunner
from vostrack.errors import VostrackError, first_line

log = logging.getLogger(__name__)

POLL_S = 0.2
# Seconds a worker gets to finish its frame and exit once told, before it is killed.
EXIT_GRACE_S = 120.0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class _Slot:
    """One worker process and what the parent knows of it."""

    index: int
    process: multiprocessing.process.BaseProcess
    inbox: multiprocessing.queues.Queue
    ready: bool = False
    job: VideoJob | None = None
    told_to_stop: bool = field(default=False)


class LocalPool:
    def __init__(
        self,
        spec: ModelSpec,
        options: BatchOptions,
        workers: int,
        log_level: int = logging.WARNING,
        debug: bool = False,
    ):
        self.spec, self.options, self.workers = spec, options, workers
        self.threads = max(1, available_cores() // workers)
        self.log_level, self.debug = log_level, debug
        self._context = multiprocessing.get_context("spawn")
        self._events = self._context.Queue()
        self._slots: dict[int, _Slot] = {}
        self._started = 0
        self._stop_requested = False
        self._abort = False

    def request_stop(self) -> None:
        """From a signal handler: only a flag; the loop acts on it."""
        self._stop_requested = True

    def run(self, dispatcher: Dispatcher) -> None:
        # Spawns beyond this are a crash loop (a worker that dies whatever it runs).
        budget = self.workers + 2 * (len(dispatcher.pending) + 1)
        try:
            for _ in range(min(self.workers, len(dispatcher.pending))):
                self._spawn()
            while dispatcher.busy:
                if self._stop_requested and not dispatcher.stopping:
                    self._stop_all(dispatcher)
                self._handle(self._next_event(), dispatcher)
                for slot in [s for s in self._slots.values() if not s.process.is_alive()]:
                    self._buried(slot, dispatcher)
                    wanted = min(self.workers, len(dispatcher.pending) + len(dispatcher.running))
                    if not dispatcher.stopping and len(self._slots) < wanted:
                        if self._started < budget:
                            self._spawn()
                        elif not self._slots:
                            dispatcher.fail_pending("worker died: no worker process would start")
                self._dispatch(dispatcher)
        except BaseException:
            self._abort = True  # an error or a second Ctrl-C: workers go now
            raise
        finally:
            self._shutdown()

    # ------------------------------------------------------------------------- internals
    def _spawn(self) -> None:
        index = self._started
        self._started += 1
        inbox = self._context.Queue()
        process = self._context.Process(
            target=worker_main,
            args=(
                index,
                self.spec,
                self.options,
                self.threads,
                inbox,
                self._events,
                self.log_level,
                self.debug,
            ),
            name=f"vostrack-batch-{index}",
            daemon=True,
        )
        process.start()
        self._slots[index] = _Slot(index, process, inbox)
        log.debug("worker %d started (pid %d, %d threads)", index, process.pid, self.threads)

    def _next_event(self):
        try:
            return self._events.get(timeout=POLL_S)
        except queue.Empty:
            return None

    def _handle(self, event, dispatcher: Dispatcher) -> None:
        if event is None:
            return
        kind, index, *rest = event
        slot = self._slots.get(index)
        if kind == "log":
            level, message = rest
            log.log(level, "%s", message)
        elif kind == "frame":
            dispatcher.add_frames(1)
        elif kind == "ready" and slot is not None:
            slot.ready = True
            log.debug("worker %d (pid %d) loaded the model", index, rest[0])
        elif kind == "load_failed":
            # The model cannot load: the same for every worker, and before any work. It is
            # the batch's error (exit 2), as a bad --model is segment's.
            raise VostrackError(rest[0])
        elif kind == "done" and slot is not None and slot.job is not None:
            job, slot.job = slot.job, None
            dispatcher.finished(job, rest[0])

    def _buried(self, slot: _Slot, dispatcher: Dispatcher) -> None:
        """A worker process that has ended: its last messages first (a result may be on its
        way), then its video, if it still held one, counts as died."""
        while (event := self._drain()) is not None:
            self._handle(event, dispatcher)
        del self._slots[slot.index]
        code = slot.process.exitcode
        if slot.job is not None:
            reason = (
                f"killed by {signal.Signals(-code).name}"
                if code is not None and code < 0
                else f"exit status {code}"
            )
            log.debug("worker %d (pid %d) died: %s", slot.index, slot.process.pid, reason)
            dispatcher.died(slot.job, reason)
        slot.inbox.close()

    def _drain(self):
        try:
            return self._events.get_nowait()
        except queue.Empty:
            return None

    def _dispatch(self, dispatcher: Dispatcher) -> None:
        for slot in self._slots.values():
            if not slot.ready or slot.job is not None or slot.told_to_stop:
                continue
            job = dispatcher.next_job()
            if job is None:
                slot.inbox.put(None)  # nothing left for it: it exits
                slot.told_to_stop = True
                continue
            slot.job = job
            slot.inbox.put(job)
            log.debug("worker %d (pid %d): video %s", slot.index, slot.process.pid, job.name)

    def _stop_all(self, dispatcher: Dispatcher) -> None:
        dispatcher.stop()
        for slot in self._slots.values():
            slot.told_to_stop = True
            with contextlib.suppress(OSError, ValueError):
                slot.inbox.put(None)
                if slot.job is not None:
                    os.kill(slot.process.pid, signal.SIGTERM)

    def _shutdown(self) -> None:
        """Every worker told to exit, given time to, then killed: none outlives the batch."""
        for slot in self._slots.values():
            if not slot.told_to_stop:
                with contextlib.suppress(OSError, ValueError):
                    slot.inbox.put(None)
        deadline = time.monotonic() + (EXIT_GRACE_S if not self._stop_requested else 0.0)
        for slot in self._slots.values():
            if self._abort:
                slot.process.kill()
            slot.process.join(timeout=max(0.0, deadline - time.monotonic()) + 5.0)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5.0)
        self._slots.clear()
        self._events.close()


class _ToParent(logging.Handler):
    """A worker's log lines go to the parent, which prints them without breaking its bar."""

    def __init__(self, events, index: int):
        super().__init__()
        self.events, self.index = events, index

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.events.put(("log", self.index, record.levelno, record.getMessage()))


def worker_main(
    index: int,
    spec: ModelSpec,
    options: BatchOptions,
    threads: int,
    inbox,
    events,
    log_level: int,
    debug: bool,
) -> None:
    """A worker process: load the model, then segment each video of the inbox until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner: VideoRunner | None = None
    stop = False

    def on_term(signum, frame) -> None:
        nonlocal stop
        stop = True
        if runner is not None:
            runner.request_stop()

    signal.signal(signal.SIGTERM, on_term)
    # tqdm's default lock is a multiprocessing semaphore, which a worker that ends with
    # os._exit (below) could not give back; its bars are off here anyway.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    logger = logging.getLogger("vostrack")
    logger.setLevel(log_level)
    logger.addHandler(_ToParent(events, index))
    logger.propagate = False

    from vostrack.inference.quiet import native_stderr_silenced

    try:
        with native_stderr_silenced(not debug):
            model = spec.load(threads)
    except VostrackError as exc:
        events.put(("load_failed", index, first_line(exc)))
        return
    runner = VideoRunner(model, options)
    events.put(("ready", index, os.getpid()))
    if stop:
        runner.request_stop()
    parent = os.getppid()
    while not runner.stopping:
        try:
            job = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the batch process is gone (killed): so is the batch
                break
            continue
        if job is None:
            break
        row = runner.run(job, on_frame=lambda: events.put(("frame", index)))
        events.put(("done", index, row))
    events.close()
    events.join_thread()  # every message is out before the process ends
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and closed: skip the interpreter's teardown of TensorFlow, which
    # takes seconds and can only delay the batch's end.
    os._exit(0)
