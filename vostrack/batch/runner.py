"""One video of a batch, in a worker (a process or a Ray actor) that holds the loaded model.

The rule for a video's output folder ``OUT_ROOT/<name>/``:
- ``summary.json`` says ``complete`` for the same input, masks and model (the job record
  ``segment`` writes), with every frame's PNG present: skipped;
- it says anything else (``running`` after a kill, ``interrupted``, ``failed``): resumed after
  its last written frame (the pipeline refuses, with one line, a folder of another job);
- no summary: a new run (existing results without one are refused, as ``segment`` does);
- ``--overwrite``: redone from the start.
Whatever happens is returned as a result row; nothing but a dead process escapes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vostrack import api
from vostrack.batch.jobs import VideoJob
from vostrack.errors import InterruptedRun, VostrackError, first_line
from vostrack.inference.pipeline import SUMMARY_NAME, OutputOptions, SegmentRun, job_record
from vostrack.io.frames import open_frames

log = logging.getLogger(__name__)

# With --overlay, each video's overlay goes inside its own folder: a name of its own can never
# meet another video's folder or file in OUT_ROOT.
OVERLAY_NAME = "overlay.mp4"
# The job record (the pipeline's) must match for a complete run to count as this job's,
# whatever version wrote it; how its parts are named in an error.
UNCHECKED = ("vostrack_version",)
IDENTITY = {"annotations": "masks", "objects": "masks", "propagation": "frame range"}


@dataclass(frozen=True)
class ModelSpec:
    """The model every worker loads (the batch's --model, --runtime, --mirror, --set)."""

    name: str
    runtime: str = "frozen"
    mirror: bool | None = None
    settings: tuple[str, ...] = ()

    def load(self, threads: int | None = None) -> api.Model:
        return api.load_model(self.name, self.runtime, self.mirror, self.settings, threads)


@dataclass(frozen=True)
class BatchOptions:
    out_root: Path
    overlay: bool = False
    overwrite: bool = False


class VideoRunner:
    """Segments videos one after the other with one loaded model. :meth:`request_stop` (from
    a signal handler or another thread) stops the video in progress after its frame in
    progress, as Ctrl-C stops ``segment``, and the runner then takes no more."""

    def __init__(self, model: api.Model, options: BatchOptions):
        self.model, self.options = model, options
        self._stop = threading.Event()
        self._run: SegmentRun | None = None
        self.frames = 0  # frames computed for the video in progress (its progress)
        self.current: str | None = None  # that video's name

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()
        run = self._run
        if run is not None:
            run.request_stop()

    def run(
        self,
        job: VideoJob,
        on_frame: Callable[[], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> dict:
        """Segment ``job``; returns its row: status (complete, skipped, failed, interrupted),
        frames, frames_per_second, error, runtime_s. ``on_frame`` is called after each frame
        computed, ``on_start(frames, already_done)`` when the run starts."""
        self.frames, self.current = 0, job.name
        started = time.perf_counter()
        row: dict = {"name": job.name, "status": "failed", "frames": 0, "error": None}
        try:
            row.update(self._segment(job, on_frame, on_start))
        except InterruptedRun:
            row["status"] = "interrupted"
        except VostrackError as exc:
            row["error"] = first_line(exc)
        except Exception as exc:  # a bug, or a library's own error: this video fails alone
            log.debug("%s failed", job.name, exc_info=True)
            row["error"] = f"unexpected {type(exc).__name__}: {first_line(exc)}"
        finally:
            run, self._run = self._run, None
            if run is not None:
                row.setdefault("frames_per_second", run.summary.get("frames_per_second"))
                row["frames"] = run.summary.get("frames_done", 0)
                row["frames_computed"] = self.frames
        row.setdefault("frames_per_second", None)
        row["runtime_s"] = round(time.perf_counter() - started, 3)
        return row

    def _segment(
        self,
        job: VideoJob,
        on_frame: Callable[[], None] | None,
        on_start: Callable[[int, int], None] | None,
    ) -> dict:
        out = self.options.out_root / job.name
        overlay = out / OVERLAY_NAME if self.options.overlay else None
        source = open_frames(job.input, fps=job.fps)
        annotations = api.annotations_for(source, list(job.masks), job.mask_frames)
        mode, earlier = self._plan(out, overlay, source, annotations)
        if mode == "skip":
            return {"status": "skipped", "frames": earlier.get("frames_done", source.num_frames)}
        if mode == "resume" and overlay is not None and overlay.is_file():
            # An overlay beside an unfinished run is an earlier complete run's, which this
            # job replaced: the resumed run writes the whole overlay again.
            log.info("%s: removing the earlier run's %s (it is written again)", job.name, overlay)
            overlay.unlink()
        options = OutputOptions(
            out, overlay, overwrite=mode == "overwrite", resume=mode == "resume", progress=False
        )
        prepared = api.checked_job(source, annotations, options)
        if self.stopping:
            raise InterruptedRun("stopped before the video started")
        counting = _Counting(self.model.propagator, self._count(on_frame))
        self._run = prepared.start(self.model, counting)
        if self.stopping:  # a stop that came while the run was being set up
            self._run.request_stop()
        if on_start is not None:
            on_start(source.num_frames, self._run.start)
        summary = self._run.run()
        return {"status": "complete", "frames": summary["frames_done"]}

    def _count(self, on_frame: Callable[[], None] | None) -> Callable[[], None]:
        def counted() -> None:
            self.frames += 1
            if on_frame is not None:
                on_frame()

        return counted

    def _plan(self, out: Path, overlay: Path | None, source, annotations) -> tuple[str, dict]:
        """skip, resume, new or overwrite (see the module's docstring), and the earlier
        summary."""
        if self.options.overwrite:
            return "overwrite", {}
        earlier = _read_summary(out)
        if earlier is None:
            return "new", {}
        if earlier.get("status") != "complete":
            return "resume", earlier
        job = json.loads(json.dumps(job_record(source, annotations, self.model.info)))
        for key, value in job.items():
            # A key the earlier summary lacks is one an earlier version did not record.
            if key not in UNCHECKED and key in earlier and earlier[key] != value:
                raise VostrackError(
                    f"{out} holds the complete results of another job (another "
                    f"{IDENTITY.get(key, key)}); --overwrite replaces them"
                )
        missing = [n for n in source.frame_names if not (out / f"{n}.png").is_file()]
        if missing:
            log.warning("%s: %s.png is missing; segmenting it again", out, missing[0])
            return "overwrite", earlier
        if overlay is not None and not overlay.is_file():
            log.info("%s: no overlay yet; segmenting it again to write one", out)
            return "overwrite", earlier
        return "skip", earlier


def _read_summary(out: Path) -> dict | None:
    """The earlier run's summary (an unreadable one counts as a run to resume, which then says
    what is wrong with it in one line)."""
    path = out / SUMMARY_NAME
    if not path.exists():
        return None
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(summary, dict):
            return summary
    return {}


class _Counting:
    """The model's propagator, calling ``on_step`` after each frame it computes (the batch's
    progress); the results are the propagator's own."""

    def __init__(self, propagator, on_step: Callable[[], None]):
        self._propagator, self._on_step = propagator, on_step

    def __getattr__(self, name: str):
        return getattr(self._propagator, name)

    def step(self, frame, reference, state):
        result = self._propagator.step(frame, reference, state)
        self._on_step()
        return result
