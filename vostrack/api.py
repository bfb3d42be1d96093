"""The Python API: load a model once, then segment videos with it.

>>> model = vostrack.load_model()                                   # doctest: +SKIP
>>> for index, labels in model.masks("clip.mp4", ["mask.png"]):    # doctest: +SKIP
...     ...
>>> summary = model.segment("clip.mp4", ["mask.png"], "out/clip")  # doctest: +SKIP

``vostrack segment`` and the workers of ``vostrack batch`` are built on the same calls:
:func:`load_model`, then :func:`prepare` (open the input, read the masks, check the outputs: no
model needed, so a refusal costs no wait) and :meth:`SegmentJob.start` (a
:class:`~vostrack.inference.pipeline.SegmentRun`, whose ``request_stop`` stops it cleanly).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vostrack import registry
from vostrack.errors import VostrackError
from vostrack.inference.contract import Propagator
from vostrack.inference.passes import VideoPasses
from vostrack.inference.pipeline import OutputOptions, SegmentRun, preflight
from vostrack.inference.plan import Plan
from vostrack.inference.segmenter import VideoSegmenter
from vostrack.io.frames import FrameSource, open_frames
from vostrack.io.masks import Annotation, MaskReader, fit_to_frame, load_annotations

PathLike = str | Path
# A mask: a PNG path, or (in a dict keyed by frame) an (H, W) array of object ids.
Masks = PathLike | Sequence[PathLike] | Mapping[int, PathLike | np.ndarray]
Frames = PathLike | Iterable[np.ndarray]

__all__ = ["Model", "SegmentJob", "load_model", "prepare"]


@dataclass
class Model:
    """A loaded model: a propagator and the description of it that summaries record. One model
    serves any number of videos, one after the other (its state lives in each run)."""

    propagator: Propagator
    info: dict

    def masks(
        self,
        frames: Frames,
        masks: Masks,
        fps: float | None = None,
        direction: str | None = None,
        start_frame: int = 0,
        end_frame: int | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame_index, labels)`` for every frame, lazily: frames are read as results
        are taken (a video's decoder runs a few frames ahead), so memory does not grow with the
        video. The input is opened and the masks read at the call, so a bad one fails there.

        ``frames``: a video path, a frame folder, or any iterable of (H, W, 3) uint8 RGB arrays.
        ``masks``: a dict ``{frame_index: label array or mask path}``, or mask paths (a list or
        one path) placed as ``segment --mask`` places them (by the frame they are named after,
        else frame 0). ``labels`` is an (H, W) uint8 map of object ids (0 = background).

        ``direction``, ``start_frame`` and ``end_frame`` as ``segment`` takes them (the frames of
        the range are yielded); ``direction`` None: ``both`` for a video or folder, ``forward``
        for frames given as arrays (going backward needs the video or folder itself). A backward
        pass runs before the first result, its label maps (and a video's frames) waiting in a
        temporary folder.
        """
        if isinstance(frames, (str, Path)):
            source = open_frames(frames, fps=fps)
            annotations = annotations_for(source, masks, default_frame=start_frame)
            plan = Plan.make(
                source.num_frames,
                {a.frame: a.object_ids for a in annotations},
                direction or "both",
                start_frame,
                end_frame,
            )
            return self._planned(source, annotations, plan)
        annotated = _annotations_for_arrays(masks)
        if start_frame or end_frame is not None:
            raise VostrackError("frames given as arrays: give the frames of the range alone")
        if direction not in (None, "forward"):
            raise VostrackError(
                "frames given as arrays propagate forward only: give a video or a frame "
                "folder to go backward"
            )
        return self._masks(_checked_frames(frames), annotated)

    def _planned(
        self, source: FrameSource, annotations: list[Annotation], plan: Plan
    ) -> Iterator[tuple[int, np.ndarray]]:
        with tempfile.TemporaryDirectory(prefix="vostrack-") as folder:
            passes = VideoPasses(
                source, annotations, self.propagator, plan, Path(folder), Path(folder)
            )
            passes.run_backward()
            for _, frame, _, labels in passes.final():
                yield frame, np.array(labels, dtype=np.uint8)

    def _masks(self, stream: Iterator[np.ndarray], annotated: dict) -> Iterator:
        segmenter = VideoSegmenter(self.propagator)
        last = -1
        try:
            for index, frame in enumerate(stream):
                last = index
                labels = segmenter.step(frame, _fit(annotated.get(index), frame))
                yield index, np.array(labels, dtype=np.uint8)  # never the caller's mask array
        finally:
            stream.close()  # a caller that stops early stops the reader (and ffmpeg) too
        beyond = sorted(k for k in annotated if k > last)
        if beyond:
            raise VostrackError(
                f"a mask is given for frame {beyond[0]}, but there are only {last + 1} frames"
            )

    def segment(
        self,
        input: PathLike,
        masks: Masks,
        output_dir: PathLike,
        overlay: PathLike | None = None,
        overwrite: bool = False,
        resume: bool = False,
        progress: bool = False,
        fps: float | None = None,
        direction: str = "both",
        start_frame: int = 0,
        end_frame: int | None = None,
        corrections: Masks | None = None,
    ) -> dict:
        """Segment a video or frame folder into ``output_dir`` (a palette PNG per frame and
        ``summary.json``), as ``vostrack segment`` does; returns the summary. ``direction``,
        ``start_frame``, ``end_frame`` and ``corrections`` as :func:`prepare` takes them."""
        job = prepare(
            input,
            masks,
            output_dir,
            overlay=overlay,
            fps=fps,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
            direction=direction,
            start_frame=start_frame,
            end_frame=end_frame,
            corrections=corrections,
        )
        return job.start(self).run()


def load_model(
    name: str = registry.DEFAULT_MODEL,
    runtime: str = "frozen",
    mirror: bool | None = None,
    settings: Sequence[str] = (),
    threads: int | None = None,
) -> Model:
    """Load a model (an installed name or a model folder's path) for ``runtime`` (``frozen``
    or ``keras``). ``mirror`` overrides the model's mirror averaging (None: its own);
    ``settings`` are ``--set`` values (``"parts.max_parts=4"``); ``threads`` the cores the
    frozen graph's ops may use (None: all)."""
    # Looked up on the module at each call, so that a replaced loader (the tests' network
    # double) serves the CLI too; ``threads`` only when given, for loaders without it.
    extra = {} if threads is None else {"threads": threads}
    propagator, info = registry.load_propagator(name, runtime, mirror, tuple(settings), **extra)
    return Model(propagator, info)


@dataclass
class SegmentJob:
    """One video's inputs, read and checked against its outputs, before any model is loaded."""

    source: FrameSource
    annotations: list[Annotation]
    options: OutputOptions
    reader: MaskReader = field(default_factory=MaskReader)
    corrections: list[Annotation] = field(default_factory=list)

    def start(self, model: Model, propagator: Propagator | None = None) -> SegmentRun:
        """Claim the outputs and return the run (``run()`` does the work). ``propagator``
        stands in for the model's own (a wrapper of it, e.g. one that counts frames)."""
        return SegmentRun(
            self.source,
            self.annotations,
            propagator or model.propagator,
            self.options,
            model.info,
            self.corrections,
        )


def prepare(
    input: PathLike,
    masks: Masks,
    output_dir: PathLike,
    mask_frames: Sequence[int] = (),
    overlay: PathLike | None = None,
    fps: float | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    direction: str = "both",
    start_frame: int = 0,
    end_frame: int | None = None,
    corrections: Masks | None = None,
    correction_frames: Sequence[int] = (),
) -> SegmentJob:
    """Open ``input``, read ``masks`` (paths placed by ``mask_frames`` or by name, as ``segment
    --mask/--mask-frame`` do, or a dict ``{frame: path or array}``) and refuse, with one line,
    outputs that cannot or must not be written: all before any model is loaded.

    ``direction`` (both, forward, backward), ``start_frame`` .. ``end_frame`` (inclusive) and
    ``corrections`` (masks that correct the complete run in ``output_dir``, placed by
    ``correction_frames`` or by name) are ``segment``'s options of the same names."""
    source = open_frames(input, fps=fps)
    reader = MaskReader()
    annotations = annotations_for(source, masks, mask_frames, reader, start_frame)
    fixes = []
    if corrections is not None:
        fixes = annotations_for(source, corrections, correction_frames, reader, start_frame)
    options = OutputOptions(
        Path(output_dir),
        None if overlay is None else Path(overlay),
        overwrite,
        resume,
        progress,
        direction,
        start_frame,
        end_frame,
    )
    return checked_job(source, annotations, options, reader, fixes)


def checked_job(
    source: FrameSource,
    annotations: list[Annotation],
    options: OutputOptions,
    reader: MaskReader | None = None,
    corrections: Sequence[Annotation] = (),
) -> SegmentJob:
    """The job of inputs already opened, once its outputs pass every check that needs no
    model (for callers that choose the options after looking at the input, as batch does)."""
    preflight(source, annotations, options, corrections)
    return SegmentJob(source, annotations, options, reader or MaskReader(), list(corrections))


def annotations_for(
    source: FrameSource,
    masks: Masks,
    mask_frames: Sequence[int] = (),
    reader: MaskReader | None = None,
    default_frame: int = 0,
) -> list[Annotation]:
    """The annotations of ``source`` from paths (``segment --mask`` rules; a mask not named
    after a frame goes to ``default_frame``) or a dict."""
    reader = reader or MaskReader()
    if isinstance(masks, (str, Path)):
        masks = [masks]
    if not isinstance(masks, Mapping):
        return load_annotations(list(masks), mask_frames, source, reader, default_frame)
    if mask_frames:
        raise VostrackError("masks given as {frame: mask} take no separate mask frames")
    entries = sorted(((_frame_index(k), v) for k, v in masks.items()), key=lambda e: e[0])
    paths = [(k, v) for k, v in entries if not isinstance(v, np.ndarray)]
    annotations = (
        load_annotations([v for _, v in paths], [k for k, _ in paths], source, reader)
        if paths
        else []
    )
    for frame, value in entries:
        if not isinstance(value, np.ndarray):
            continue
        if frame >= source.num_frames:
            raise VostrackError(
                f"a mask is given for frame {frame}, but the input has {source.num_frames} frames"
            )
        labels = fit_to_frame(_label_array(value, frame), source, Path(f"<frame {frame}>"))
        annotations.append(Annotation(frame, labels, ()))
    return sorted(annotations, key=lambda a: a.frame)


def _frame_index(key: object) -> int:
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) or key < 0:
        raise VostrackError(f"mask frame {key!r}: give a frame index (an integer from 0)")
    return int(key)


def _label_array(value: np.ndarray, frame: int) -> np.ndarray:
    labels = np.asarray(value)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise VostrackError(
            f"the mask of frame {frame} must be an (H, W) integer array of object ids, "
            f"not {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() > 254:
        raise VostrackError(f"the mask of frame {frame}: object ids go from 1 to 254")
    if not labels.any():
        raise VostrackError(f"the mask of frame {frame} holds no object (all background)")
    return labels.astype(np.uint8)  # a copy: the caller's array is never changed


def _annotations_for_arrays(masks: Masks) -> dict[int, np.ndarray | tuple[np.ndarray, Path]]:
    """Masks of frames that come as arrays (no frame names, no size until the first frame):
    read now, fitted to the frames when they come."""
    reader = MaskReader()
    if isinstance(masks, (str, Path)):
        masks = [masks]
    items: list[tuple[int, PathLike | np.ndarray]]
    if isinstance(masks, Mapping):
        items = [(_frame_index(k), v) for k, v in masks.items()]
    else:
        # Named after their frame number (00012.png is frame 12), else frame 0.
        items = [(int(Path(p).stem) if Path(p).stem.isdigit() else 0, p) for p in masks]
    if not items:
        raise VostrackError("no mask given: give the objects' mask on at least one frame")
    annotated: dict[int, np.ndarray | tuple[np.ndarray, Path]] = {}
    for frame, value in items:
        if isinstance(value, np.ndarray):
            labels = _label_array(value, frame)
            path = Path(f"<frame {frame}>")
        else:
            path = Path(value)
            labels = reader.read(path)
            if not labels.any():
                raise VostrackError(f"mask {path} holds no object (every pixel is background)")
        if frame in annotated:
            raise VostrackError(f"two masks are given for frame {frame}; merge them into one")
        annotated[frame] = (labels, path)
    return annotated


def _fit(entry, frame: np.ndarray) -> np.ndarray | None:
    """An annotation of array frames, checked against its frame's size (as segment checks)."""
    if entry is None or isinstance(entry, np.ndarray):
        return entry
    labels, path = entry
    height, width = frame.shape[:2]
    shape = FrameSource(Path("<frames>"), "frames", width, height, 0.0, ())
    return fit_to_frame(labels, shape, path)


def _checked_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        raise VostrackError("frames: give an iterable of (H, W, 3) arrays, not a single frame")
    size = None
    for index, frame in zip(itertools.count(), frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise VostrackError(
                f"frame {index}: give (H, W, 3) uint8 RGB arrays, not {frame.dtype} {frame.shape}"
            )
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise VostrackError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is "
                f"{size[1]}x{size[0]}; all frames must have one size"
            )
        yield frame
