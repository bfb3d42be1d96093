"""The segment job: frames in, VideoSegmenter, writers out, with resume and clean interruption.

Output folder layout: ``<frame name>.png`` per frame (DAVIS palette) and ``summary.json``, which
is written when the run starts (status ``running``), when it stops early (``interrupted`` or
``failed``) and when it completes. PNGs are written atomically and in frame order, so after any
stop, even a killed process, the PNGs present from frame 0 on are complete: ``--resume``
continues after the last of them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

import vostrack
from vostrack.errors import InterruptedRun, VostrackError, first_line
from vostrack.inference.contract import Propagator
from vostrack.inference.segmenter import VideoSegmenter
from vostrack.io.aliasing import refuse_overlap
from vostrack.io.atomic import remove_stale_temps, write_json
from vostrack.io.disk import SpaceReserve, write_failure
from vostrack.io.frames import FrameSource
from vostrack.io.masks import Annotation
from vostrack.io.palette import read_label_png
from vostrack.io.writers import FrameResult, OverlayVideo, ResultWriter

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
SUMMARY_STEM = "summary"
T = TypeVar("T")


@dataclass(frozen=True)
class OutputOptions:
    output_dir: Path
    overlay: Path | None = None
    overwrite: bool = False
    resume: bool = False
    progress: bool = True


def segment_video(
    source: FrameSource,
    annotations: list[Annotation],
    propagator: Propagator,
    options: OutputOptions,
    model: dict | None = None,
) -> dict:
    """Segment every frame of ``source``; returns the summary that is also written to disk."""
    return SegmentRun(source, annotations, propagator, options, model).run()


class SegmentRun:
    """One segment job. Creating it checks (and claims) the outputs, so every problem is
    reported before any work is done; :meth:`run` does the work."""

    def __init__(
        self,
        source: FrameSource,
        annotations: list[Annotation],
        propagator: Propagator,
        options: OutputOptions,
        model: dict | None = None,
    ):
        preflight(source, annotations, options)
        self.source, self.annotations, self.propagator = source, annotations, propagator
        self.options = options
        job = _job_record(source, annotations, model or {"name": getattr(propagator, "name", "?")})
        out = Path(options.output_dir)
        created = not out.exists()
        self._lock = _claim_output_dir(out)
        try:
            self.start, earlier = (
                _resume_point(out, source, job, options) if options.resume else (0, {})
            )
            self._earlier_areas = earlier.get("areas")  # of the frames a resumed run replays
            self.output_dir = out
            if options.overlay is not None:
                Path(options.overlay).parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out, [*source.frame_names, SUMMARY_STEM, SpaceReserve.STEM])
            if options.resume and options.overlay is not None:
                remove_stale_temps(Path(options.overlay).parent, [Path(options.overlay).stem])
            if options.overwrite:
                _clear_earlier_results(out, source)
            self.summary = {
                **job,
                "status": "running",
                "output_dir": str(out),
                "overlay": str(options.overlay) if options.overlay else None,
                "frame_names": list(source.frame_names),
                "frames_done": self.start,
                "resumed_from": self.start if options.resume else None,
            }
            # Kept free until the final summary is written: it fits even on a disk found full.
            self._reserve = SpaceReserve(out, _summary_size_bound(source, annotations))
            write_json(out / SUMMARY_NAME, self.summary)
        except BaseException as exc:  # close() gives the reserve and the lock back
            self.close()
            if created:  # refused before any work: leave no empty folder behind
                with contextlib.suppress(OSError):
                    out.rmdir()
            if isinstance(exc, OSError):
                raise write_failure(exc, out) from None
            raise
        self._stop = threading.Event()

    def request_stop(self) -> None:
        """Stop after the frame in progress, as Ctrl-C does. Safe from a signal handler: the
        loop raises KeyboardInterrupt itself between frames, because a KeyboardInterrupt raised
        by Python's own handler wherever the main thread happens to be can land in a finalizer
        (``__del__``), where Python drops it and the run goes on."""
        self._stop.set()

    def close(self) -> None:
        """Give the output folder back (done by :meth:`run` when it ends)."""
        reserve = getattr(self, "_reserve", None)
        if reserve is not None:
            reserve.release()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict:
        source, options, start, summary = self.source, self.options, self.start, self.summary
        writer = None
        bar = tqdm(
            total=source.num_frames,
            initial=start,
            unit="frame",
            disable=not options.progress,
            dynamic_ncols=True,
            leave=True,
        )
        started_at = time.perf_counter()
        try:
            overlay = None
            if options.overlay:
                overlay = _open_overlay(options.overlay, source)
            writer = ResultWriter(self.output_dir, source.frame_names, overlay)
            annotated = {a.frame: a.labels for a in self.annotations}
            segmenter = VideoSegmenter(self.propagator)
            for index, frame in enumerate(prefetch(source)):
                if index < start:  # written by the stopped run; a stop need not wait for them
                    _replay(
                        segmenter,
                        writer,
                        self.output_dir,
                        source,
                        index,
                        frame,
                        annotated,
                        is_last=index == start - 1,
                        need_frame=overlay is not None,
                    )
                else:
                    labels = segmenter.step(frame, annotated.get(index))
                    writer.put(FrameResult(index, labels, frame if overlay else None))
                    bar.update(1)
                if self._stop.is_set():
                    raise KeyboardInterrupt
            writer.close()
        except BaseException as exc:
            if writer is not None:
                writer.abort()
            bar.close()
            interrupted = isinstance(exc, KeyboardInterrupt)
            done, areas = (writer.frames_written, _areas(writer)) if writer else (0, None)
            if done < start:  # stopped while replaying: the earlier run's frames stay done
                done, areas = start, self._earlier_areas
            summary.update(status="interrupted" if interrupted else "failed", frames_done=done)
            if areas is None:  # the earlier run was killed before it could count them
                summary.pop("areas", None)
            else:
                summary["areas"] = areas
            error = exc
            if isinstance(exc, OSError):
                error = write_failure(exc, self.output_dir)
            if not interrupted:
                summary["error"] = first_line(error)
            self._reserve.release()
            try:
                write_json(self.output_dir / SUMMARY_NAME, summary)
            except OSError as failed:  # the error that stopped the run is the one to report
                log.warning(
                    "could not record the %s run in %s (%s)",
                    summary["status"],
                    SUMMARY_NAME,
                    failed.strerror or failed,
                )
            if interrupted:
                raise InterruptedRun(
                    f"interrupted after {done} of {source.num_frames} frames; "
                    f"run the same command with --resume to continue"
                ) from None
            if error is not exc:
                raise error from None
            raise
        bar.close()
        runtime = time.perf_counter() - started_at
        processed = source.num_frames - start
        summary.update(
            status="complete",
            frames_done=source.num_frames,
            runtime_s=round(runtime, 3),
            frames_per_second=round(processed / runtime, 3) if runtime > 0 else None,
            areas=_areas(writer),
        )
        self._reserve.release()
        try:
            write_json(self.output_dir / SUMMARY_NAME, summary)
        except OSError as exc:
            raise write_failure(exc, self.output_dir / SUMMARY_NAME) from None
        return summary


def _open_overlay(path: Path, source: FrameSource) -> OverlayVideo:
    if source.variable_rate:
        log.warning(
            "%s has a variable frame rate; the overlay is written at a constant %g "
            "fps, so its timing differs from the input's",
            source.path.name,
            source.fps,
        )
    try:
        return OverlayVideo(path, source.width, source.height, source.fps)
    except OSError as exc:
        raise write_failure(exc, path, "the overlay video") from None


def _replay(
    segmenter: VideoSegmenter,
    writer: ResultWriter,
    output_dir: Path,
    source: FrameSource,
    index: int,
    frame: np.ndarray,
    annotated: dict,
    is_last: bool,
    need_frame: bool,
) -> None:
    """Rebuild what a resumed run needs from a frame the stopped run already wrote: the
    reference of annotated frames, the state at the last written frame, the overlay and areas."""
    path = output_dir / f"{source.frame_names[index]}.png"
    try:
        labels = read_label_png(path)
    except (OSError, ValueError) as exc:
        raise VostrackError(
            f"cannot resume: {path} is unreadable ({first_line(exc)}); run again with --overwrite"
        ) from None
    if index in annotated:
        segmenter.add_reference(frame, labels)
    if is_last and segmenter.started:
        segmenter.reseed(frame, labels)
    writer.put(FrameResult(index, labels, frame if need_frame else None, write_png=False))


def _areas(writer: ResultWriter) -> dict[str, list[int]]:
    return {str(k): v for k, v in sorted(writer.areas.items())}


def _summary_size_bound(source: FrameSource, annotations: list[Annotation]) -> int:
    """More bytes than summary.json can take (its areas hold one line per frame and object)."""
    objects = len({k for a in annotations for k in a.object_ids})
    names = sum(len(n) + 8 for n in source.frame_names)
    paths = sum(len(str(p)) + 8 for a in annotations for p in a.sources)
    return 64 * 1024 + names + paths + source.num_frames * objects * 24


def _job_record(source: FrameSource, annotations: list[Annotation], model: dict) -> dict:
    """What identifies a run, so that --resume can refuse to mix two different jobs."""
    return {
        "vostrack_version": vostrack.__version__,
        "input": {**source.describe(), "path": str(source.path.resolve())},
        "annotations": [
            {
                "frame": a.frame,
                "frame_name": source.frame_names[a.frame],
                "masks": [str(p) for p in a.sources],
                "objects": a.object_ids,
                "sha1": hashlib.sha1(a.labels.tobytes()).hexdigest(),
            }
            for a in annotations
        ],
        "objects": sorted({k for a in annotations for k in a.object_ids}),
        "model": model,
    }


def preflight(source: FrameSource, annotations: list[Annotation], options: OutputOptions) -> None:
    """Every check of the outputs that needs no model and writes nothing, so that the CLI can
    refuse a run before it loads a model. :class:`SegmentRun` runs it again."""
    if options.resume and options.overwrite:
        raise VostrackError(
            "--resume and --overwrite exclude each other: resume keeps "
            "what was written, overwrite starts again"
        )
    out = Path(options.output_dir)
    if out.exists() and not out.is_dir():
        raise VostrackError(f"output {out} exists and is not a folder")
    blocker = next((p for p in Path(os.path.abspath(out)).parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise VostrackError(f"output folder {out}: {blocker} is a file, not a folder")
    overlay = Path(options.overlay) if options.overlay is not None else None
    if overlay is not None:
        _check_overlay_path(overlay, options)
    inputs = [(f"the input {'video' if source.kind == 'video' else 'frame folder'}", source.path)]
    inputs += [("the mask", p) for a in annotations for p in a.sources]
    outputs = [("the output folder", out)]
    if overlay is not None:
        outputs.append(("the overlay", overlay))
    if out.is_dir():  # a file of the folder may be a link to an input
        names = [SUMMARY_NAME, *(f"{n}.png" for n in source.frame_names)]
        outputs += [("the output file", out / n) for n in names if os.path.lexists(out / n)]
    refuse_overlap(inputs, outputs)
    if options.resume:
        _earlier_summary(out)
        if overlay is not None and os.path.lexists(overlay):
            raise VostrackError(
                f"overlay {overlay} already exists; remove it or give another "
                "path (a resumed run writes the whole overlay again)"
            )
        return
    if not options.overwrite:
        existing = _existing_results(out, source)
        if existing:
            raise VostrackError(
                f"{out} already holds results ({existing[0].name} ...); "
                "use --overwrite to replace them or --resume to continue them"
            )


def _check_overlay_path(overlay: Path, options: OutputOptions) -> None:
    if overlay.suffix.lower() not in OverlayVideo.MUXERS:
        raise VostrackError(
            f"overlay {overlay}: give a video file name ending in {', '.join(OverlayVideo.MUXERS)}"
        )
    if overlay.is_dir():
        raise VostrackError(f"overlay {overlay} is a folder; give a video file name")
    # A missing folder is made (as -o's is); the first one that exists must take it.
    parent = next(p for p in Path(os.path.abspath(overlay)).parents if p.exists())
    if not parent.is_dir():
        raise VostrackError(f"cannot write the overlay video: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise VostrackError(f"cannot write the overlay video: folder {parent} is not writable")
    if os.path.lexists(overlay) and not options.overwrite and not options.resume:
        raise VostrackError(f"overlay {overlay} already exists; use --overwrite to replace it")


def _existing_results(out: Path, source: FrameSource) -> list[Path]:
    if not out.is_dir():
        return []
    existing = [out / SUMMARY_NAME] if os.path.lexists(out / SUMMARY_NAME) else []
    return existing + [
        p for p in (out / f"{n}.png" for n in source.frame_names) if os.path.lexists(p)
    ]


def _claim_output_dir(out: Path) -> int:
    """Create the output folder and lock it for this run (another run writing to the same
    folder would interleave frames); returns the descriptor that holds the lock."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise VostrackError(
            f"output folder {out} is not writable ({exc.strerror or exc})"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            # a file system without locks (some network mounts): run unguarded, as before
            log.debug("cannot lock %s (%s); going on without the lock", out, exc.strerror)
        else:
            os.close(fd)
            raise VostrackError(
                f"another vostrack run is writing to {out}; wait for it or give another folder"
            ) from None
    if not os.access(out, os.W_OK):
        os.close(fd)
        raise VostrackError(f"output folder {out} is not writable (permission denied)")
    return fd


def _earlier_frame_names(out: Path) -> set[str]:
    """The frames an earlier run of this folder wrote, by its summary (plain names only: a
    summary is a file anyone could have edited, and nothing outside the folder may go)."""
    try:
        earlier = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(earlier, dict):
        return set()
    names = earlier.get("frame_names")
    if not isinstance(names, list):  # a summary of an older version: videos name frames 00000..
        info = earlier.get("input")
        count = info.get("num_frames") if isinstance(info, dict) else None
        if not (
            isinstance(info, dict)
            and info.get("kind") == "video"
            and isinstance(count, int)
            and 0 < count < 10**8
        ):
            return set()
        digits = max(5, len(str(count - 1)))
        names = [f"{i:0{digits}d}" for i in range(count)]
    return {
        n
        for n in names
        if isinstance(n, str)
        and n
        and n not in (".", "..")
        and "/" not in n
        and os.sep not in n
        and "\0" not in n
    }


def _clear_earlier_results(out: Path, source: FrameSource) -> None:
    """--overwrite: the earlier run's frames and summary go, also frames this run will not
    write (a longer earlier input), since a later --resume would take them as done."""
    names = _earlier_frame_names(out) | set(source.frame_names)
    for path in [out / SUMMARY_NAME, *(out / f"{n}.png" for n in sorted(names))]:
        if os.path.lexists(path) and not os.path.isdir(path):
            path.unlink()


def _earlier_summary(out: Path) -> dict:
    """The summary of the run to resume in ``out``, or a one-line error."""
    summary_path = out / SUMMARY_NAME
    if not summary_path.is_file():
        raise VostrackError(f"nothing to resume in {out}: no {SUMMARY_NAME} from an earlier run")
    try:
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VostrackError(f"nothing to resume in {out}: {SUMMARY_NAME} is unreadable") from None
    if not isinstance(previous, dict):
        raise VostrackError(f"nothing to resume in {out}: {SUMMARY_NAME} is not a run summary")
    if previous.get("status") == "complete":
        raise VostrackError(f"nothing to resume in {out}: that run is complete")
    return previous


def _resume_point(
    out: Path, source: FrameSource, job: dict, options: OutputOptions
) -> tuple[int, dict]:
    """The frames already written (every PNG from frame 0 on) and the earlier run's summary."""
    previous = _earlier_summary(out)
    for key, what in (("input", "input"), ("annotations", "masks"), ("model", "model")):
        before, now = previous.get(key), json.loads(json.dumps(job[key]))
        if before == now:
            continue
        if (
            key == "input"
            and isinstance(before, dict)
            and before.get("fps") != now["fps"]
            and {**before, "fps": now["fps"]} == now
        ):
            raise VostrackError(
                f"cannot resume in {out}: the earlier run's frame rate was "
                f"{before.get('fps')} fps, this one's {now['fps']:g} (give the "
                "same --fps)"
            )
        raise VostrackError(f"cannot resume in {out}: the earlier run used another {what}")
    done = 0
    for name in source.frame_names:
        if not (out / f"{name}.png").is_file():
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
