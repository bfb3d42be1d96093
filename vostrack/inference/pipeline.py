"""The segment job: frames in, VideoSegmenter, writers out, with resume and clean interruption.

Output folder layout: ``<frame name>.png`` per frame (DAVIS palette) and ``summary.json``, which
is written when the run starts (status ``running``), when it stops early (``interrupted`` or
``failed``) and when it completes. PNGs are written atomically and in frame order, so after any
stop, even a killed process, the PNGs present from frame 0 on are complete: ``--resume``
continues after the last of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

import vostrack
from vostrack.errors import InterruptedRun, VostrackError, first_line
from vostrack.inference.contract import Propagator
from vostrack.inference.passes import VideoPasses, only_objects
from vostrack.inference.plan import BACKWARD, Plan
from vostrack.inference.segmenter import VideoSegmenter
from vostrack.io.aliasing import refuse_overlap
from vostrack.io.atomic import (
    is_working_folder,
    remove_stale_temps,
    working_folder,
    write_json,
)
from vostrack.io.disk import SpaceReserve, write_failure
from vostrack.io.frame_store import SPILL_STEM
from vostrack.io.frames import FrameSource
from vostrack.io.locks import claim_folder
from vostrack.io.masks import Annotation
from vostrack.io.palette import read_label_png, write_label_png
from vostrack.io.writers import FrameResult, OverlayVideo, ResultWriter

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
SUMMARY_STEM = "summary"
#: The backward pass's label maps of frames the forward pass also reaches, until it has
#: combined them (hidden; removed when the run completes, kept for --resume until then).
BACKWARD_STORE = ".vostrack-backward"
T = TypeVar("T")


@dataclass(frozen=True)
class OutputOptions:
    """Where and how one segment job writes, and which frames it segments in which direction
    (``direction``: both, forward or backward, vostrack.inference.plan; ``start_frame`` ..
    ``end_frame``, inclusive, None: the last frame)."""

    output_dir: Path
    overlay: Path | None = None
    overwrite: bool = False
    resume: bool = False
    progress: bool = True
    direction: str = "both"
    start_frame: int = 0
    end_frame: int | None = None


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
    reported before any work is done; :meth:`run` does the work.

    ``corrections``: masks that correct a complete earlier run in the output folder (same
    input, masks, model and options): they join its annotations, and only the frames they can
    change are segmented and written again (:func:`frames_to_redo`)."""

    def __init__(
        self,
        source: FrameSource,
        annotations: list[Annotation],
        propagator: Propagator,
        options: OutputOptions,
        model: dict | None = None,
        corrections: Sequence[Annotation] = (),
    ):
        preflight(source, annotations, options, corrections)
        self.source, self.propagator, self.options = source, propagator, options
        job = job_record(
            source, annotations, model or {"name": getattr(propagator, "name", "?")}, options
        )
        out = Path(options.output_dir)
        created = not out.exists()
        self._lock = claim_folder(
            out, f"another vostrack run is writing to {out}; wait for it or give another folder"
        )
        try:
            earlier: dict = {}
            if options.resume or corrections:
                earlier = _earlier_summary(out, complete_ok=bool(corrections))
            self.annotations, self.redo = list(annotations), None  # None: write every frame
            self.corrected: set[int] = set()  # frames whose labels a correction gives whole
            if corrections:
                before, new = _corrections_of(out, earlier, corrections, source, options)
                _check_same_job(out, earlier, {**job, "corrections": earlier.get("corrections")})
                job["corrections"] = [*earlier.get("corrections", [])[: len(before)], *new]
                earlier_corrections = _read_corrections(out, before)
                earlier_annotations = with_corrections(annotations, earlier_corrections)
                self.annotations = with_corrections(earlier_annotations, corrections)
                self.corrected = {c.frame for c in [*earlier_corrections, *corrections]}
                self.redo = frames_to_redo(
                    _plan(source, earlier_annotations, options),
                    _plan(source, self.annotations, options),
                )
                job["objects"] = sorted({k for a in self.annotations for k in a.object_ids})
                if not options.resume:
                    _store_corrections(out, corrections, new)
            elif options.resume:
                _check_same_job(out, earlier, job)
            self.plan = _plan(source, self.annotations, options)
            self.names = source.frame_names[self.plan.first : self.plan.last + 1]
            self.start = _done_in_order(out, self.names) if options.resume else 0
            if self.redo is not None and not options.resume:  # the frames before are kept
                self.start = min(self.redo) - self.plan.first
            self._earlier_areas = earlier.get("areas")  # of the frames a resumed run replays
            self.output_dir = out
            self.store = out / BACKWARD_STORE
            if options.overlay is not None:
                Path(options.overlay).parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(
                out, [*source.frame_names, SUMMARY_STEM, SpaceReserve.STEM, SPILL_STEM]
            )
            if options.resume and options.overlay is not None:
                remove_stale_temps(Path(options.overlay).parent, [Path(options.overlay).stem])
            if not options.resume:  # the backward maps of an earlier run are not this one's
                shutil.rmtree(self.store, ignore_errors=True)
            if options.overwrite:
                _clear_earlier_results(out, source)
            if corrections and not options.resume:
                for t in self.redo:  # rewritten: a resumed correction continues after them
                    with contextlib.suppress(FileNotFoundError):
                        (out / f"{source.frame_names[t]}.png").unlink()
            self.summary = {
                **job,
                "status": "running",
                "output_dir": str(out),
                "overlay": str(options.overlay) if options.overlay else None,
                "frame_names": list(self.names),
                "frames_done": self.start,
                "resumed_from": self.start if options.resume else None,
            }
            if self.redo is not None:
                self.summary["redo"] = _ranges(self.redo)
            # Kept free until the final summary is written: it fits even on a disk found full.
            self._reserve = SpaceReserve(out, _summary_size_bound(source, self.annotations))
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
        backward = next((p for p in self.plan.passes if p.direction == BACKWARD), None)
        work = len(self.names) - start + (len(backward.frames) if backward else 0)
        bar = tqdm(
            total=work,
            unit="frame",
            disable=not options.progress,
            dynamic_ncols=True,
            leave=True,
        )
        started_at = time.perf_counter()

        def tick() -> None:
            bar.update(1)
            if self._stop.is_set():
                raise KeyboardInterrupt

        try:
            passes = self._passes()
            passes.run_backward(tick)
            overlay = None
            if options.overlay:
                overlay = _open_overlay(options.overlay, source)
            writer = ResultWriter(self.output_dir, self.names, overlay)
            self._final_pass(passes, writer, overlay is not None, tick)
            writer.close()
        except BaseException as exc:
            if writer is not None:
                writer.abort()
            bar.close()
            interrupted = isinstance(exc, KeyboardInterrupt)
            done, areas = (writer.frames_written, _areas(writer)) if writer else (start, None)
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
                    f"interrupted after {done} of {len(self.names)} frames; "
                    f"run the same command with --resume to continue"
                ) from None
            if error is not exc:
                raise error from None
            raise
        bar.close()
        shutil.rmtree(self.store, ignore_errors=True)
        runtime = time.perf_counter() - started_at
        processed = len(self.names) - start
        summary.update(
            status="complete",
            frames_done=len(self.names),
            runtime_s=round(runtime, 3),
            frames_per_second=round(processed / runtime, 3) if runtime > 0 else None,
            areas=_areas(writer),
        )
        summary.pop("redo", None)
        if self.redo is not None and summary.get("corrections"):
            summary["corrections"][-1]["frames_redone"] = _ranges(self.redo)
        self._reserve.release()
        try:
            write_json(self.output_dir / SUMMARY_NAME, summary)
        except OSError as exc:
            raise write_failure(exc, self.output_dir / SUMMARY_NAME) from None
        return summary

    # ------------------------------------------------------------------------------ passes
    def _passes(self) -> VideoPasses:
        return VideoPasses(
            self.source,
            self.annotations,
            self.propagator,
            self.plan,
            self.store,
            self.output_dir,
            self.corrected,
        )

    def _final_pass(
        self, passes: VideoPasses, writer: ResultWriter, need_frame: bool, tick: Callable
    ) -> None:
        """The range's frames in order, written; those a stopped run wrote (or that a
        correction keeps) before ``start`` are replayed from their PNGs."""
        names, start = self.names, self.start

        def replay(i: int, t: int, frame: np.ndarray, segmenter: VideoSegmenter | None) -> None:
            encoded = passes.forward_objects(t) if t in passes.annotated else None
            path = self.output_dir / f"{names[i]}.png"
            _replay(segmenter, writer, path, i, frame, encoded, i == start - 1, need_frame)

        for i, t, frame, labels in passes.final(start, replay):
            if self.redo is None or t in self.redo:
                writer.put(FrameResult(i, labels, frame if need_frame else None))
            else:  # a correction keeps this frame: its PNG is not written again
                kept = read_label_png(self.output_dir / f"{names[i]}.png")
                writer.put(FrameResult(i, kept, frame if need_frame else None, write_png=False))
            tick()


def _plan(source: FrameSource, annotations: Sequence[Annotation], options: OutputOptions) -> Plan:
    return Plan.make(
        source.num_frames,
        {a.frame: a.object_ids for a in annotations},
        options.direction,
        options.start_frame,
        options.end_frame,
    )


def frames_to_redo(before: Plan, after: Plan) -> list[int]:
    """The frames whose result a new annotation can change, from the plans without and with it.

    The forward pass is causal (a frame depends on the annotations at or before it) and the
    backward pass anti-causal, with the backward pass of ``both`` fed each object's *first*
    annotation only. So with ``N`` the earliest frame whose annotations differ: forward and
    both redo frames N..last, and both also the frames before N that take an object from the
    backward pass (with or without the new annotation) when an object's first annotation
    changed; backward redoes first..M, M the latest frame whose annotations differ."""
    changed = sorted(
        f
        for f in set(before.annotated) | set(after.annotated)
        if before.annotated.get(f) != after.annotated.get(f)
    ) or [after.first]
    if after.direction == BACKWARD:
        return list(range(after.first, changed[-1] + 1))
    redo = set(range(changed[0], after.last + 1))
    if after.direction == "both":
        if before.first_annotations != after.first_annotations:
            for plan in (before, after):
                for t in range(plan.first, changed[0]):
                    if any((plan.source(t, k) or ("",))[0] == BACKWARD for k in plan.objects):
                        redo.add(t)
    return sorted(redo)


def _ranges(frames: Iterable[int]) -> list[list[int]]:
    """Sorted frame numbers as [first, last] runs (inclusive), for summary.json."""
    runs: list[list[int]] = []
    for t in sorted(frames):
        if runs and runs[-1][1] == t - 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return runs


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
    segmenter: VideoSegmenter | None,
    writer: ResultWriter,
    path: Path,
    index: int,
    frame: np.ndarray,
    encode: list[int] | None,
    is_last: bool,
    need_frame: bool,
) -> None:
    """Rebuild what a resumed run needs from a frame the stopped run already wrote: the
    reference of annotated frames (``encode``: the objects the segmenter encoded there, None
    on a frame without annotation), the state at the last written frame, the overlay and
    areas."""
    try:
        labels = read_label_png(path)
    except (OSError, ValueError) as exc:
        raise VostrackError(
            f"cannot resume: {path} is unreadable ({first_line(exc)}); run again with --overwrite"
        ) from None
    if segmenter is not None:
        if encode is not None:
            segmenter.add_reference(frame, only_objects(labels, encode))
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


def job_record(
    source: FrameSource,
    annotations: list[Annotation],
    model: dict,
    options: OutputOptions | None = None,
) -> dict:
    """What identifies a run, so that --resume can refuse to mix two different jobs."""
    options = options or OutputOptions(Path("."))
    last = source.num_frames - 1 if options.end_frame is None else options.end_frame
    return {
        "vostrack_version": vostrack.__version__,
        "input": {**source.describe(), "path": str(source.path.resolve())},
        "annotations": _records(annotations, source),
        "objects": sorted({k for a in annotations for k in a.object_ids}),
        "model": model,
        "propagation": {
            "direction": options.direction,
            "start_frame": options.start_frame,
            "end_frame": last,
        },
    }


def _records(annotations: Sequence[Annotation], source: FrameSource) -> list[dict]:
    return [
        {
            "frame": a.frame,
            "frame_name": source.frame_names[a.frame],
            "masks": [str(p) for p in a.sources],
            "objects": a.object_ids,
            "sha1": hashlib.sha1(a.labels.tobytes()).hexdigest(),
        }
        for a in annotations
    ]


def with_corrections(
    annotations: Sequence[Annotation], corrections: Sequence[Annotation]
) -> list[Annotation]:
    """The annotations with each correction in place of its frame's: a correction is the
    frame as it should be, every object on it (one it does not hold is gone from it)."""
    by_frame = {a.frame: a for a in annotations}
    by_frame.update({c.frame: c for c in corrections})
    return [by_frame[f] for f in sorted(by_frame)]


CORRECTIONS_DIR = "corrections"


def _corrections_of(
    out: Path,
    earlier: dict,
    corrections: Sequence[Annotation],
    source: FrameSource,
    options: OutputOptions,
) -> tuple[list, list]:
    """The records of the corrections an earlier run applied before these, and of these."""
    recorded = earlier.get("corrections") or []
    if not isinstance(recorded, list):
        raise VostrackError(f"{out}/{SUMMARY_NAME}: corrections must be a list")
    if not options.resume and earlier.get("status") != "complete":
        raise VostrackError(
            f"--correct: the run in {out} is not complete ({earlier.get('status')}); finish it "
            "with --resume first"
        )
    if not options.resume:
        return recorded, _correction_records(corrections, source, len(recorded))
    n = len(corrections)
    given = [(r["frame"], r["sha1"]) for r in _records(corrections, source)]
    stopped = [(r.get("frame"), r.get("sha1")) for r in recorded[-n:] if isinstance(r, dict)]
    if earlier.get("redo") is None or given != stopped:
        raise VostrackError(
            f"cannot resume in {out}: its earlier run did not stop while applying these "
            "corrections (run the correction without --resume)"
        )
    return recorded[:-n], recorded[-n:]


def _store_corrections(out: Path, corrections: Sequence[Annotation], records: list) -> None:
    """Keep each correction's label map in ``out/corrections/`` (what the results were made
    from, in the ids they were made with: a later correction reads them back from there)."""
    working_folder(out / CORRECTIONS_DIR)
    for correction, record in zip(corrections, records):
        write_label_png(out / record["stored"], correction.labels)


def _read_corrections(out: Path, records: list) -> list[Annotation]:
    """The corrections an earlier run applied, from the label maps it kept."""
    corrections = []
    for record in records:
        try:
            stored = out / CORRECTIONS_DIR / Path(record["stored"]).name
            labels = read_label_png(stored)
            if hashlib.sha1(labels.tobytes()).hexdigest() != record["sha1"]:
                raise ValueError(f"{stored} changed since the correction was applied")
            corrections.append(
                Annotation(int(record["frame"]), labels, tuple(Path(p) for p in record["masks"]))
            )
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise VostrackError(
                f"cannot correct {out} again: its earlier corrections are unreadable "
                f"({first_line(exc)}); segment the video again with --overwrite"
            ) from None
    return corrections


def _correction_records(
    corrections: Sequence[Annotation], source: FrameSource, number: int
) -> list[dict]:
    records = _records(corrections, source)
    for i, record in enumerate(records):
        record["stored"] = f"{CORRECTIONS_DIR}/{number + i:03d}-{record['frame_name']}.png"
    return records


def preflight(
    source: FrameSource,
    annotations: list[Annotation],
    options: OutputOptions,
    corrections: Sequence[Annotation] = (),
) -> None:
    """Every check of the outputs that needs no model and writes nothing, so that the CLI can
    refuse a run before it loads a model. :class:`SegmentRun` runs it again."""
    if options.resume and options.overwrite:
        raise VostrackError(
            "--resume and --overwrite exclude each other: resume keeps "
            "what was written, overwrite starts again"
        )
    if corrections and options.overwrite:
        raise VostrackError(
            "--correct keeps the frames a correction cannot change: it does not go with --overwrite"
        )
    _plan(source, with_corrections(annotations, corrections), options)  # range and direction
    out = Path(options.output_dir)
    if out.exists() and not out.is_dir():
        raise VostrackError(f"output {out} exists and is not a folder")
    blocker = next((p for p in Path(os.path.abspath(out)).parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise VostrackError(f"output folder {out}: {blocker} is a file, not a folder")
    overlay = Path(options.overlay) if options.overlay is not None else None
    if overlay is not None:
        _check_overlay_path(overlay, options, replace=bool(corrections))
    inputs = [(f"the input {'video' if source.kind == 'video' else 'frame folder'}", source.path)]
    inputs += [("the mask", p) for a in [*annotations, *corrections] for p in a.sources]
    outputs = [("the output folder", out)]
    if overlay is not None:
        outputs.append(("the overlay", overlay))
    if out.is_dir():  # a file of the folder may be a link to an input
        names = [SUMMARY_NAME, *(f"{n}.png" for n in source.frame_names)]
        outputs += [("the output file", out / n) for n in names if os.path.lexists(out / n)]
    refuse_overlap(inputs, outputs)
    for name in (BACKWARD_STORE, *([CORRECTIONS_DIR] if corrections else [])):
        if os.path.lexists(out / name) and not is_working_folder(out / name):
            working_folder(out / name)  # refuses it, in one line
    if corrections:
        _corrections_of(out, _earlier_summary(out, complete_ok=True), corrections, source, options)
    if options.resume:
        _earlier_summary(out, complete_ok=bool(corrections))
        if overlay is not None and os.path.lexists(overlay):
            raise VostrackError(
                f"overlay {overlay} already exists; remove it or give another "
                "path (a resumed run writes the whole overlay again)"
            )
        return
    if not options.overwrite and not corrections:
        existing = _existing_results(out, source)
        if existing:
            raise VostrackError(
                f"{out} already holds results ({existing[0].name} ...); "
                "use --overwrite to replace them or --resume to continue them"
            )


def _check_overlay_path(overlay: Path, options: OutputOptions, replace: bool = False) -> None:
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
    if os.path.lexists(overlay) and not (options.overwrite or options.resume or replace):
        raise VostrackError(f"overlay {overlay} already exists; use --overwrite to replace it")


def _existing_results(out: Path, source: FrameSource) -> list[Path]:
    if not out.is_dir():
        return []
    existing = [out / SUMMARY_NAME] if os.path.lexists(out / SUMMARY_NAME) else []
    return existing + [
        p for p in (out / f"{n}.png" for n in source.frame_names) if os.path.lexists(p)
    ]


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
    kept = []
    if is_working_folder(out / CORRECTIONS_DIR):  # never through a link
        kept = [out / CORRECTIONS_DIR / n for n in sorted(_earlier_corrections_kept(out))]
    for path in [out / SUMMARY_NAME, *(out / f"{n}.png" for n in sorted(names)), *kept]:
        if os.path.lexists(path) and not os.path.isdir(path):
            path.unlink()
    with contextlib.suppress(OSError):  # only when nothing else is in it
        (out / CORRECTIONS_DIR).rmdir()


def _earlier_corrections_kept(out: Path) -> set[str]:
    """The names of the correction masks the earlier run's summary says it kept."""
    try:
        earlier = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
        records = earlier.get("corrections") or []
        stored = [Path(r["stored"]) for r in records]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return set()
    return {p.name for p in stored if p.parent == Path(CORRECTIONS_DIR) and p.name}


def _earlier_summary(out: Path, complete_ok: bool = False) -> dict:
    """The summary of the run to resume (``complete_ok``: or to correct) in ``out``, or a
    one-line error."""
    summary_path = out / SUMMARY_NAME
    if not summary_path.is_file():
        if complete_ok:
            raise VostrackError(
                f"--correct: {out} holds no run to correct (no {SUMMARY_NAME}); segment the "
                "video into it first"
            )
        raise VostrackError(f"nothing to resume in {out}: no {SUMMARY_NAME} from an earlier run")
    try:
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VostrackError(f"nothing to resume in {out}: {SUMMARY_NAME} is unreadable") from None
    if not isinstance(previous, dict):
        raise VostrackError(f"nothing to resume in {out}: {SUMMARY_NAME} is not a run summary")
    if previous.get("status") == "complete" and not complete_ok:
        raise VostrackError(f"nothing to resume in {out}: that run is complete")
    return previous


def _check_same_job(out: Path, previous: dict, job: dict) -> None:
    """Refuse to continue (or correct) an earlier run of another job in ``out``."""
    keys = (
        ("input", "input"),
        ("annotations", "masks"),
        ("model", "model"),
        ("propagation", "direction or frame range"),
        ("corrections", "set of corrections (give the same --correct masks)"),
    )
    for key, what in keys:
        before, now = previous.get(key), json.loads(json.dumps(job.get(key)))
        if key == "propagation" and before is None:  # an earlier version's run
            continue
        if key == "corrections":
            before, now = before or [], now or []
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


def _done_in_order(out: Path, names: Sequence[str]) -> int:
    """How many frames, in order from the first, a stopped run wrote."""
    done = 0
    for name in names:
        if not (out / f"{name}.png").is_file():
            break
        done += 1
    log.info("resuming after %d of %d frames", done, len(names))
    return done
