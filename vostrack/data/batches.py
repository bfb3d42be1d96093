"""Training batches: clip sources mixed with weights, batched into fixed-shape numpy arrays.

numpy and OpenCV only (no Keras, no TensorFlow, no JAX), so that worker processes
(vostrack/data/prefetch.py) can make batches without importing a framework. The trainer asks
:meth:`ClipBatches.batch_at_step` for the batch of each step (vostrack/training/trainer.py).

Reproducible: sample ``i`` of batch ``index`` of epoch ``epoch`` draws every random number from
``np.random.default_rng([seed, epoch, index, i])``, and nothing else (no global RNG, no state
carried from one sample to the next), so a batch is a pure function of (seed, epoch, index): the
same in any worker, in any order, and after a resume. The training step ``epoch *
steps_per_epoch + index`` is passed to the sources, which may grow their difficulty with it
(:class:`~vostrack.data.clips.GapSchedule`).

Batch arrays (B batch, T frames, H x W the training size, K = ``max_objects``, P = ``max_parts``):

=================  ======================  =========  ==========================================
key                shape                   dtype      meaning
=================  ======================  =========  ==========================================
frames             (B, T, H, W, 3)         uint8      RGB, 0..255 (float32 0..255 if asked)
labels             (B, T, H, W)            uint8      0 bg, k object k, 255 void (ignore)
onehot             (B, T, H, W, K + 1)     float32    only with ``one_hot``; void rows all 0
num_objects        (B,)                    int32      objects of the clip, 1..K
object_valid       (B, K)                  bool       object k+1 exists
object_present     (B, T, K)               bool       object k+1 visible on frame t
object_boxes       (B, T, K, 4)            float32    [y0, x0, y1, x1] px of its mask, 0 if absent
part_boxes         (B, T, K, P, 4)         float32    frame 0: split_mask parts; later: carried
part_valid         (B, T, K, P)            bool
source             (B,)                    int32      index of the source in ``source_names``
=================  ======================  =========  ==========================================
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vostrack.data.clips import AugmentConfig, Clip, ClipSource, GapSchedule, with_settings
from vostrack.data.procedural import ProceduralClipConfig, ProceduralClipSettings, ProceduralSource
from vostrack.network.parts import PartsConfig

if TYPE_CHECKING:
    from vostrack.data.pasted_objects import PasteSettings
    from vostrack.data.static_clips import StaticClipSettings
    from vostrack.data.video_datasets import VideoSamplingSettings

__all__ = [
    "MixedSource",
    "source_from_path",
    "LoaderConfig",
    "ClipBatches",
    "collate",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Mixing and construction
# --------------------------------------------------------------------------------------------


class MixedSource:
    """Several sources drawn with probabilities proportional to ``weights``: a
    :class:`ClipSource` whose clips say which source made them (``Clip.source``)."""

    name = "mixed"

    def __init__(self, sources: Sequence[tuple[ClipSource, float]]) -> None:
        if not sources:
            raise ValueError("MixedSource needs at least one (source, weight)")
        weights = np.array([float(w) for _, w in sources], np.float64)
        if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self.sources = [s for s, _ in sources]
        self.weights = weights / weights.sum()
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names} (pass name=...)")
        self.names = names

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {w:.2f}" for n, w in zip(self.names, self.weights))
        return f"MixedSource({parts})"

    def sample(self, rng: np.random.Generator, step: int = 0) -> Clip:
        index = int(rng.choice(len(self.sources), p=self.weights))
        clip = self.sources[index].sample(rng, step)
        return clip.replace(source=self.names[index])


def source_from_path(
    path: str | Path,
    size: tuple[int, int] = (384, 384),
    num_frames: int = 3,
    max_gap: int | GapSchedule = 5,
    exclude: Sequence[str] = (),
    augment: AugmentConfig | None = None,
    video: VideoSamplingSettings | None = None,
    static: StaticClipSettings | None = None,
    procedural: ProceduralClipSettings | None = None,
    paste: PasteSettings | None = None,
    paste_from: Sequence[str | Path] = (),
) -> ClipSource:
    """The source for one ``--data`` argument, its kind found by
    :func:`~vostrack.data.video_datasets.detect_source`: frames per clip, gaps and augmentation
    as the run says, and the settings of that kind of source (defaults where None).

    A video source with ``paste.probability`` above 0 pastes objects on its clips
    (:class:`~vostrack.data.pasted_objects.PastedObjectsSource`), cut from the trees
    ``paste.objects`` names or, when it names none, from the images+masks folders among
    ``paste_from`` (the run's data)."""
    from vostrack.data.static_clips import StaticClipConfig, StaticClipSource
    from vostrack.data.video_datasets import (
        DavisDataset,
        VideoClipSource,
        VideoSamplingConfig,
        YouTubeVOSDataset,
        detect_source,
    )

    run = {"num_frames": num_frames, "augment": augment or AugmentConfig(size=tuple(size))}
    kind = detect_source(path)
    if kind == "procedural":
        return ProceduralSource(
            with_settings(
                ProceduralClipConfig, procedural or ProceduralClipSettings(), max_gap=max_gap, **run
            )
        )
    if kind == "images-masks":
        return StaticClipSource(
            path, with_settings(StaticClipConfig, static or StaticClipSettings(), **run)
        )
    video = video or VideoSamplingSettings()
    dataset = (
        DavisDataset(
            path, split=video.davis_split, resolution=video.davis_resolution, exclude=exclude
        )
        if kind == "davis"
        else YouTubeVOSDataset(path, exclude=exclude, use_meta=video.youtube_meta)
    )
    source = VideoClipSource(
        dataset, with_settings(VideoSamplingConfig, video, max_gap=max_gap, **run)
    )
    if paste is None or paste.probability <= 0:
        return source
    return _with_pasted_objects(source, paste, paste_from)


def _with_pasted_objects(
    source: ClipSource, paste: PasteSettings, paste_from: Sequence[str | Path]
) -> ClipSource:
    from vostrack.data.pasted_objects import PastedObjectsSource
    from vostrack.data.static_clips import find_image_mask_pairs
    from vostrack.data.video_datasets import detect_source
    from vostrack.errors import VostrackError

    trees = list(paste.objects) or [
        p for p in paste_from if str(p) != "procedural" and detect_source(p) == "images-masks"
    ]
    if not trees:
        raise VostrackError(
            "paste: no images+masks folder to cut objects from (name them in paste.objects, "
            "or train on one)"
        )
    pairs = []
    for tree in trees:
        if detect_source(tree) != "images-masks":
            raise VostrackError(f"paste.objects: {tree} is not a folder with images/ and masks/")
        pairs.extend(find_image_mask_pairs(tree))
    return PastedObjectsSource(source, pairs, paste)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderConfig:
    """Batch shape and reproducibility.

    ``steps_per_epoch`` None makes the loader infinite (the epoch stays 0 and the batch index
    is the training step). ``frames_dtype`` "float32" gives frames as float32 0..255 (the
    network normalises itself). ``one_hot`` adds the ``onehot`` masks.
    """

    batch_size: int = 8
    steps_per_epoch: int | None = 1000
    max_objects: int = 4
    max_parts: int = 6
    seed: int = 0
    frames_dtype: str = "uint8"
    one_hot: bool = False
    parts: PartsConfig = field(default_factory=PartsConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.frames_dtype not in ("uint8", "float32"):
            raise ValueError(f"frames_dtype must be uint8 or float32, got {self.frames_dtype!r}")


def collate(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-sample dicts (same keys, same shapes) into a batch dict."""
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def _one_hot(labels: np.ndarray, max_objects: int) -> np.ndarray:
    # Void (255) matches no class, so its row is all zeros: losses that sum over classes
    # ignore it by construction.
    classes = np.arange(max_objects + 1, dtype=np.uint8)
    return (labels[..., None] == classes).astype(np.float32)


class ClipBatches:
    """Batch ``index`` of ``epoch`` (or of a training step) from ``source``: a pure function of
    (seed, epoch, index), see the module docstring."""

    def __init__(self, source: ClipSource, config: LoaderConfig = LoaderConfig()) -> None:
        self.source = source
        self.config = config
        self.source_names = list(getattr(source, "names", [source.name]))

    def __repr__(self) -> str:
        return f"ClipBatches({self.source!r}, batch_size={self.config.batch_size})"

    def step(self, epoch: int, index: int) -> int:
        """The training step of batch ``index`` of ``epoch``."""
        per_epoch = self.config.steps_per_epoch
        return index if per_epoch is None else epoch * per_epoch + index

    def batch_at_step(self, step: int) -> dict[str, np.ndarray]:
        """The batch a run uses at training ``step`` (what a resumed run asks for)."""
        per_epoch = self.config.steps_per_epoch
        if per_epoch is None:
            return self.batch(0, step)
        epoch, index = divmod(step, per_epoch)
        return self.batch(epoch, index)

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """Batch ``index`` of ``epoch``: a pure function of (seed, epoch, index)."""
        samples = [self.sample(epoch, index, i) for i in range(self.config.batch_size)]
        return collate(samples)

    def sample(self, epoch: int, index: int, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` of batch ``index`` of ``epoch``, as per-sample arrays (no batch axis)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch, index, i])
        clip = self.source.sample(rng, self.step(epoch, index))
        clip = clip.limit_objects(cfg.max_objects, rng)
        arrays = clip.to_arrays(cfg.max_objects, cfg.max_parts, cfg.parts)
        if cfg.frames_dtype == "float32":
            arrays["frames"] = arrays["frames"].astype(np.float32)
        if cfg.one_hot:
            arrays["onehot"] = _one_hot(arrays["labels"], cfg.max_objects)
        try:
            arrays["source"] = np.int32(self.source_names.index(clip.source))
        except ValueError:
            arrays["source"] = np.int32(0)
        return arrays
