"""The segment job: frames in, VideoSegmenter, writers out, with resume and clean interruption.

Output folder layout: ``<frame name>.png`` per frame (DAVIS palette) and ``summary.json``, which
is written when the run starts (status ``running``), when it stops early (``interrupted`` or
``failed``) and when it completes. PNGs are written atomically and in frame order, so after any
stop, even a killed process, the PNGs present from frame 0 on are complete: ``--resume``
continues after the last of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
from tqdm import tqdm

import vostrack
from vostrack.errors import InterruptedRun, VostrackError
from vostrack.inference.contract import Propagator
from vostrack.inference.segmenter import VideoSegmenter
from vostrack.io.atomic import write_json
from vostrack.io.frames import FrameSource
from vostrack.io.masks import Annotation
from vostrack.io.palette import read_label_png
from vostrack.io.writers import FrameResult, OverlayVideo, ResultWriter

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
T = TypeVar("T")


@dataclass(frozen=True)
class OutputOptions:
    output_dir: Path
    overlay: Path | None = None
    overwrite: bool = False
    resume: bool = False
    progress: bool = True


def segment_video(source: FrameSource, annotations: list[Annotation], propagator: Propagator,
                  options: OutputOptions, model: dict | None = None) -> dict:
    """Segment every frame of ``source``; returns the summary that is also written to disk."""
    return SegmentRun(source, annotations, propagator, options, model).run()


class SegmentRun:
    """One segment job. Creating it checks (and claims) the outputs, so every problem is
    reported before any work is done; :meth:`run` does the work."""

    def __init__(self, source: FrameSource, annotations: list[Annotation],
                 propagator: Propagator, options: OutputOptions, model: dict | None = None):
        if options.resume and options.overwrite:
            raise VostrackError("--resume and --overwrite exclude each other: resume keeps "
                                "what was written, overwrite starts again")
        self.source, self.annotations, self.propagator = source, annotations, propagator
        self.options = options
        job = _job_record(source, annotations,
                          model or {"name": getattr(propagator, "name", "?")})
        self.start, earlier = (_resume_point(Path(options.output_dir), source, job, options)
                               if options.resume else (0, {}))
        self._earlier_areas = earlier.get("areas")  # of the frames a resumed run replays
        self.output_dir = _prepare_output_dir(options)
        if not options.resume:
            _refuse_or_clear_existing(self.output_dir, source, options)
        self.summary = {**job, "status": "running", "output_dir": str(self.output_dir),
                        "overlay": str(options.overlay) if options.overlay else None,
                        "frames_done": self.start,
                        "resumed_from": self.start if options.resume else None}
        write_json(self.output_dir / SUMMARY_NAME, self.summary)
        self._stop = threading.Event()

    def request_stop(self) -> None:
        """Stop after the frame in progress, as Ctrl-C does. Safe from a signal handler: the
        loop raises KeyboardInterrupt itself between frames, because a KeyboardInterrupt raised
        by Python's own handler wherever the main thread happens to be can land in a finalizer
        (``__del__``), where Python drops it and the run goes on."""
        self._stop.set()

    def run(self) -> dict:
        source, options, start, summary = self.source, self.options, self.start, self.summary
        overlay = (OverlayVideo(options.overlay, source.width, source.height, source.fps)
                   if options.overlay else None)
        writer = ResultWriter(self.output_dir, source.frame_names, overlay)
        annotated = {a.frame: a.labels for a in self.annotations}
        segmenter = VideoSegmenter(self.propagator)
        bar = tqdm(total=source.num_frames, initial=start, unit="frame",
                   disable=not options.progress, dynamic_ncols=True, leave=True)
        started_at = time.perf_counter()
        try:
            for index, frame in enumerate(prefetch(source)):
                if index < start:  # written by the stopped run; a stop need not wait for them
                    _replay(segmenter, writer, self.output_dir, source, index, frame, annotated,
                            is_last=index == start - 1, need_frame=overlay is not None)
                else:
                    labels = segmenter.step(frame, annotated.get(index))
                    writer.put(FrameResult(index, labels, frame if overlay else None))
                    bar.update(1)
                if self._stop.is_set():
                    raise KeyboardInterrupt
            writer.close()
        except BaseException as exc:
            writer.abort()
            bar.close()
            interrupted = isinstance(exc, KeyboardInterrupt)
            done, areas = writer.frames_written, _areas(writer)
            if done < start:  # stopped while replaying: the earlier run's frames stay done
                done, areas = start, self._earlier_areas
            summary.update(status="interrupted" if interrupted else "failed", frames_done=done)
            if areas is None:  # the earlier run was killed before it could count them
                summary.pop("areas", None)
            else:
                summary["areas"] = areas
            if not interrupted:
                summary["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            write_json(self.output_dir / SUMMARY_NAME, summary)
            if interrupted:
                raise InterruptedRun(
                    f"interrupted after {done} of {source.num_frames} frames; "
                    f"run the same command with --resume to continue") from None
            raise
        bar.close()
        runtime = time.perf_counter() - started_at
        processed = source.num_frames - start
        summary.update(status="complete", frames_done=source.num_frames,
                       runtime_s=round(runtime, 3),
                       frames_per_second=round(processed / runtime, 3) if runtime > 0 else None,
                       areas=_areas(writer))
        write_json(self.output_dir / SUMMARY_NAME, summary)
        return summary


def _replay(segmenter: VideoSegmenter, writer: ResultWriter, output_dir: Path,
            source: FrameSource, index: int, frame: np.ndarray, annotated: dict,
            is_last: bool, need_frame: bool) -> None:
    """Rebuild what a resumed run needs from a frame the stopped run already wrote: the
    reference of annotated frames, the state at the last written frame, the overlay and areas."""
    labels = read_label_png(output_dir / f"{source.frame_names[index]}.png")
    if index in annotated:
        segmenter.add_reference(frame, labels)
    if is_last and segmenter.started:
        segmenter.reseed(frame, labels)
    writer.put(FrameResult(index, labels, frame if need_frame else None, write_png=False))


def _areas(writer: ResultWriter) -> dict[str, list[int]]:
    return {str(k): v for k, v in sorted(writer.areas.items())}


def _job_record(source: FrameSource, annotations: list[Annotation], model: dict) -> dict:
    """What identifies a run, so that --resume can refuse to mix two different jobs."""
    return {
        "vostrack_version": vostrack.__version__,
        "input": {**source.describe(), "path": str(source.path.resolve())},
        "annotations": [{"frame": a.frame, "frame_name": source.frame_names[a.frame],
                         "masks": [str(p) for p in a.sources], "objects": a.object_ids,
                         "sha1": hashlib.sha1(a.labels.tobytes()).hexdigest()}
                        for a in annotations],
        "objects": sorted({k for a in annotations for k in a.object_ids}),
        "model": model,
    }


def _prepare_output_dir(options: OutputOptions) -> Path:
    out = Path(options.output_dir)
    if out.exists() and not out.is_dir():
        raise VostrackError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".vostrack-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise VostrackError(f"output folder {out} is not writable ({exc.strerror or exc})") from None
    if options.overlay is not None:
        parent = Path(options.overlay).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise VostrackError(f"cannot write the overlay video: folder {parent} "
                                "does not exist or is not writable")
    return out


def _refuse_or_clear_existing(out: Path, source: FrameSource, options: OutputOptions) -> None:
    existing = [out / SUMMARY_NAME] if (out / SUMMARY_NAME).exists() else []
    existing += [p for p in (out / f"{n}.png" for n in source.frame_names) if p.exists()]
    overlay_exists = options.overlay is not None and Path(options.overlay).exists()
    if not options.overwrite:
        if existing:
            raise VostrackError(f"{out} already holds results ({existing[0].name} ...); "
                                "use --overwrite to replace them or --resume to continue them")
        if overlay_exists:
            raise VostrackError(f"overlay {options.overlay} already exists; use --overwrite "
                                "to replace it")
        return
    # Stale frames of an older run must go: a later --resume would take them as done.
    for path in existing:
        path.unlink()


def _resume_point(out: Path, source: FrameSource, job: dict, options: OutputOptions
                  ) -> tuple[int, dict]:
    """The frames already written (every PNG from frame 0 on) and the earlier run's summary."""
    summary_path = out / SUMMARY_NAME
    if not summary_path.is_file():
        raise VostrackError(f"nothing to resume in {out}: no {SUMMARY_NAME} from an earlier run")
    try:
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VostrackError(f"nothing to resume in {out}: {SUMMARY_NAME} is unreadable") from None
    for key, what in (("input", "input"), ("annotations", "masks"), ("model", "model")):
        if previous.get(key) != json.loads(json.dumps(job[key])):
            raise VostrackError(f"cannot resume in {out}: the earlier run used another {what}")
    if previous.get("status") == "complete":
        raise VostrackError(f"nothing to resume in {out}: that run is complete")
    if options.overlay is not None and Path(options.overlay).exists():
        raise VostrackError(f"overlay {options.overlay} already exists; remove it or give "
                            "another path (a resumed run writes the whole overlay again)")
    done = 0
    for name in source.frame_names:
        if not (out / f"{name}.png").exists():
            break
        done += 1
    log.info("resuming after %d of %d frames", done, source.num_frames)
    return done, previous


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Iterate ``items`` on a background thread, ``depth`` items ahead (decoding overlaps
    compute). Errors of the producer are raised here, in the consumer's thread."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    source = iter(items)

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as exc:
            buffer.put((done, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator over a video: stop its ffmpeg process now

    thread = threading.Thread(target=produce, name="vostrack-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
