"""Ray mode: the same work on Ray actors, each loading the model once and declaring the
resources it holds (``num_cpus``, ``num_gpus``), on a cluster or a one-machine Ray.

Ray is imported here only, and only in Ray mode. Actors write each video's outputs themselves,
so OUT_ROOT, the inputs and the model must be at the same path on every node (a shared file
system). An actor that dies (its process killed, its node lost) raises ``RayActorError`` for
its video, which goes to a new actor once (see dispatch.RETRIES_AFTER_DEATH). Actors are
threaded (``max_concurrency``) so that the driver can ask one for its frame count, or tell it
to stop, while it segments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from vostrack.batch.dispatch import Dispatcher
from vostrack.batch.jobs import VideoJob
from vostrack.batch.local import available_cores
from vostrack.batch.runner import BatchOptions, ModelSpec, VideoRunner
from vostrack.errors import VostrackError, first_line

log = logging.getLogger(__name__)

POLL_S = 0.5
INSTALL_HINT = "pip install vostrack[ray]"


def import_ray():
    try:
        import ray
    except ImportError:
        raise VostrackError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one running on this machine or named
    by RAY_ADDRESS; ``local``: start a one-machine Ray for this batch). Returns whether this
    call started Ray (and so should shut it down). A process already connected (a test, a
    notebook) keeps its connection, whatever ``address`` says."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(
                num_cpus=available_cores(),
                include_dashboard=False,
                logging_level=logging.ERROR,
            )
        else:
            ray.init(address=address, logging_level=logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise VostrackError(f"--ray {address}: cannot connect to Ray ({first_line(exc)})") from None
    return True


class SegmentActor:
    """A Ray actor holding one loaded model (made with ``ray.remote`` in :class:`RayPool`)."""

    def __init__(self, spec: ModelSpec, options: BatchOptions, threads: int, log_level: int):
        logger = logging.getLogger("vostrack")
        logger.setLevel(log_level)
        if not logger.handlers:  # Ray passes the actor's stderr on to the driver
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
        self.spec, self.options, self.threads = spec, options, threads
        self.runner: VideoRunner | None = None

    def load(self) -> dict:
        from vostrack.inference.quiet import native_stderr_silenced

        try:
            with native_stderr_silenced():
                model = self.spec.load(self.threads)
        except VostrackError as exc:
            return {"error": first_line(exc)}
        self.runner = VideoRunner(model, self.options)
        return {"pid": os.getpid()}

    def run(self, job: VideoJob) -> dict:
        return self.runner.run(job)

    def progress(self) -> tuple[str | None, int]:
        """The video in progress and its frames computed so far."""
        if self.runner is None:
            return None, 0
        return self.runner.current, self.runner.frames

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.request_stop()


class RayPool:
    def __init__(
        self,
        spec: ModelSpec,
        options: BatchOptions,
        workers: int,
        cpus: float = 1.0,
        gpus: float = 0.0,
        log_level: int = logging.WARNING,
    ):
        self.ray = import_ray()
        self.spec, self.options, self.workers = spec, options, workers
        self.cpus, self.gpus, self.log_level = cpus, gpus, log_level
        self.threads = max(1, int(cpus))  # the frozen graph's cores: what the actor holds
        self._stop_requested = False
        self._started = 0
        self._loading: dict = {}  # load ref -> (index, actor)
        self._idle: list = []  # (index, actor)
        self._busy: dict = {}  # run ref -> (index, actor, job)
        self._pids: dict[int, int] = {}
        self._seen: dict[int, int] = {}  # frames reported by each busy actor

    def request_stop(self) -> None:
        self._stop_requested = True

    def check_resources(self, fixed: bool) -> None:
        """Refuse (``fixed``: a Ray this batch started, which cannot grow) or warn about actors
        that no node can hold: Ray would wait for such a node for ever."""
        for key, need in (("CPU", self.cpus), ("GPU", self.gpus)):
            largest = max(
                (n.get("Resources", {}).get(key, 0) for n in self.ray.nodes() if n.get("Alive")),
                default=0,
            )
            if need and need > largest:
                option = f"--{key.lower()}s-per-worker {need:g}"
                message = (
                    f"{option}: no node of the Ray cluster has {need:g} {key}s "
                    f"(at most {largest:g})"
                )
                if fixed:
                    raise VostrackError(message)
                log.warning("%s; the actors wait until one joins the cluster", message)

    def run(self, dispatcher: Dispatcher) -> None:
        ray = self.ray
        self._actor_class = ray.remote(SegmentActor)
        budget = self.workers + 2 * (len(dispatcher.pending) + 1)
        polled = time.monotonic()
        try:
            for _ in range(min(self.workers, len(dispatcher.pending))):
                self._start_actor()
            while dispatcher.busy:
                if self._stop_requested and not dispatcher.stopping:
                    dispatcher.stop()
                    for _, actor, _ in self._busy.values():
                        actor.stop.remote()
                refs = [*self._loading, *self._busy]
                ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S) if refs else ([], [])
                for ref in ready:
                    if ref in self._loading:
                        self._loaded(ref, dispatcher)
                    else:
                        self._finished(ref, dispatcher)
                wanted = min(self.workers, len(dispatcher.pending) + len(dispatcher.running))
                actors = len(self._loading) + len(self._idle) + len(self._busy)
                if not dispatcher.stopping and actors < wanted:
                    if self._started < budget:
                        self._start_actor()
                    elif not actors:
                        dispatcher.fail_pending("worker died: no Ray actor would start")
                self._dispatch(dispatcher)
                if time.monotonic() - polled > POLL_S:
                    polled = time.monotonic()
                    self._poll_progress(dispatcher)
        finally:
            for _, actor in [*self._loading.values(), *self._idle]:
                self._kill(actor)
            for _, actor, _ in self._busy.values():
                self._kill(actor)

    # ------------------------------------------------------------------------- internals
    def _start_actor(self) -> None:
        index = self._started
        self._started += 1
        options = {"num_cpus": self.cpus, "max_concurrency": 3, "max_restarts": 0}
        if self.gpus:
            options["num_gpus"] = self.gpus
        actor = self._actor_class.options(**options).remote(
            self.spec, self.options, self.threads, self.log_level
        )
        self._loading[actor.load.remote()] = (index, actor)

    def _loaded(self, ref, dispatcher: Dispatcher) -> None:
        index, actor = self._loading.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            log.warning("Ray actor %d died while loading the model (%s)", index, first_line(exc))
            return
        if "error" in info:
            # The model cannot load: the same for every actor, and before any work. It is
            # the batch's error (exit 2), as a bad --model is segment's.
            raise VostrackError(info["error"])
        self._pids[index] = info["pid"]
        log.debug("Ray actor %d (pid %d) loaded the model", index, info["pid"])
        self._idle.append((index, actor))

    def _finished(self, ref, dispatcher: Dispatcher) -> None:
        index, actor, job = self._busy.pop(ref)
        seen = self._seen.pop(index, 0)
        try:
            row = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            log.debug("Ray actor %d died: %s", index, exc)
            self._kill(actor)
            dispatcher.died(job, f"Ray actor {index} (pid {self._pids.get(index)}) died")
            return
        dispatcher.add_frames(max(0, row.get("frames_computed", 0) - seen))
        dispatcher.finished(job, row)
        self._idle.append((index, actor))

    def _dispatch(self, dispatcher: Dispatcher) -> None:
        while self._idle:
            job = dispatcher.next_job()
            if job is None:  # nothing left for idle actors: give their resources back
                for _, actor in self._idle:
                    self._kill(actor)
                self._idle.clear()
                return
            index, actor = self._idle.pop()
            self._busy[actor.run.remote(job)] = (index, actor, job)
            log.debug("Ray actor %d (pid %s): video %s", index, self._pids.get(index), job.name)
            if dispatcher.stopping:
                actor.stop.remote()

    def _poll_progress(self, dispatcher: Dispatcher) -> None:
        busy = list(self._busy.values())
        if not busy:
            return
        refs = [actor.progress.remote() for _, actor, _ in busy]
        with contextlib.suppress(Exception):  # a dead actor's video reports through its run
            answers = self.ray.get(refs, timeout=5.0)
            for (index, _, job), (name, count) in zip(busy, answers):
                if name == job.name:  # not the count of its previous video
                    dispatcher.add_frames(max(0, count - self._seen.get(index, 0)))
                    self._seen[index] = max(count, self._seen.get(index, 0))

    def _kill(self, actor) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)
