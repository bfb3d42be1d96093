"""Training batches: clip sources mixed with weights, batched into fixed-shape numpy arrays.

numpy and OpenCV only (no Keras, no TensorFlow, no JAX), so that worker processes
(vostrack/data/prefetch.py) can make batches without importing a framework;
:class:`vostrack.data.loader.ClipLoader` wraps :class:`ClipBatches` as a ``keras.utils.PyDataset``.

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

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vostrack.data.clips import AugmentConfig, Clip, ClipSource, GapSchedule, augment_clip
from vostrack.data.procedural import Scene, SceneConfig
from vostrack.errors import VostrackError
from vostrack.network.parts import PartsConfig

__all__ = [
    "ProceduralClipConfig",
    "ProceduralSource",
    "MixedSource",
    "source_from_path",
    "LoaderConfig",
    "ClipBatches",
    "collate",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Procedural source
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProceduralClipConfig:
    """Random procedural scenes (:mod:`vostrack.data.procedural`), one per clip.

    Each clip draws a :class:`SceneConfig`: ``objects`` objects (inclusive range), a base radius
    range inside ``object_size`` (fractions of the shorter side), a speed in ``speed``, objects
    leaving the frame with ``leave_frame`` probability, depth order changes (occluder and
    occluded swap) with ``depth_changes`` probability; then ``num_frames`` frames with gaps of
    at most ``max_gap`` frames between them (a faster effective motion). Scenes render at the
    training size directly (then flip and colour jitter): a crop of a bigger render would cost
    more and add nothing a random scene does not already vary.
    """

    num_frames: int = 3
    objects: tuple[int, int] = (1, 4)
    object_size: tuple[float, float] = (0.08, 0.3)
    speed: tuple[float, float] = (0.004, 0.025)
    max_gap: int | GapSchedule = 4
    leave_frame: float = 0.4
    depth_changes: float = 0.3
    scene_length: int = 240
    min_object_pixels: int = 64
    attempts: int = 10
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.num_frames < 3:
            raise ValueError(f"num_frames must be >= 3, got {self.num_frames}")
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be a range 1 <= min <= max, got {self.objects}")


class ProceduralSource:
    """Clips of random procedural scenes: needs no data. A :class:`ClipSource`."""

    kind = "procedural"

    def __init__(self, config: ProceduralClipConfig = ProceduralClipConfig(),
                 name: str = "procedural") -> None:
        self.config = config
        self.name = name
        self._gaps = GapSchedule.of(config.max_gap)

    def __repr__(self) -> str:
        return f"ProceduralSource({self.config.augment.size})"

    def scene_config(self, rng: np.random.Generator, step: int = 0) -> SceneConfig:
        cfg = self.config
        height, width = cfg.augment.size
        low = rng.uniform(cfg.object_size[0], (cfg.object_size[0] + cfg.object_size[1]) / 2)
        high = rng.uniform(low, cfg.object_size[1])
        return SceneConfig(
            height=height, width=width, num_frames=cfg.scene_length,
            num_objects=int(rng.integers(cfg.objects[0], cfg.objects[1] + 1)),
            seed=int(rng.integers(0, 2**31 - 1)), object_size=(low, high),
            speed=float(rng.uniform(*cfg.speed)), rotation_speed=float(rng.uniform(0.0, 0.05)),
            scale_amplitude=float(rng.uniform(0.0, 0.25)),
            deform_amplitude=float(rng.uniform(0.0, 0.15)),
            background_pan=float(rng.uniform(0.0, 1.5)),
            leave_frame=bool(rng.random() < cfg.leave_frame),
            depth_change_every=int(rng.integers(5, 30)) if rng.random() < cfg.depth_changes
            else 0)

    def sample(self, rng: np.random.Generator, step: int = 0) -> Clip:
        cfg = self.config
        gap = self._gaps.at(step)
        for _ in range(cfg.attempts):
            scene_cfg = self.scene_config(rng, step)
            gaps = rng.integers(1, gap + 1, cfg.num_frames - 1)
            span = int(gaps.sum())
            if span >= scene_cfg.num_frames:
                scene_cfg = dataclasses.replace(scene_cfg, num_frames=span + 1)
            start = int(rng.integers(0, scene_cfg.num_frames - span))
            times = start + np.concatenate([[0], np.cumsum(gaps)])
            if rng.random() < 0.5:
                times = times[::-1]  # played backwards: objects that appear as well as leave
            scene = Scene(scene_cfg)
            rendered = [scene.render(int(t)) for t in times]
            clip = Clip(np.stack([r.frame for r in rendered]),
                        np.stack([r.labels for r in rendered]), scene_cfg.num_objects,
                        name=f"scene{scene_cfg.seed}:" + ",".join(str(int(t)) for t in times),
                        source=self.name)
            clip = clip.relabel_from_reference(cfg.min_object_pixels)
            if clip.num_objects:
                return augment_clip(clip, cfg.augment, rng, geometric=False)
        raise VostrackError("procedural scenes gave no visible object "
                            f"after {cfg.attempts} attempts (object_size too small?)")


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


def source_from_path(path: str | Path, size: tuple[int, int] = (384, 384),
                     num_frames: int = 3, max_gap: int | GapSchedule = 5,
                     exclude: Sequence[str] = (), augment: AugmentConfig | None = None,
                     ) -> ClipSource:
    """The source for one ``--data`` argument, its kind found by
    :func:`~vostrack.data.video_datasets.detect_source`, with default settings for the rest."""
    from vostrack.data.static_clips import StaticClipConfig, StaticClipSource
    from vostrack.data.video_datasets import (DavisDataset, VideoClipSource, VideoSamplingConfig,
                                              YouTubeVOSDataset, detect_source)

    augment = augment or AugmentConfig(size=tuple(size))
    kind = detect_source(path)
    if kind == "procedural":
        return ProceduralSource(ProceduralClipConfig(num_frames=num_frames, augment=augment,
                                                     max_gap=max_gap))
    if kind == "images-masks":
        return StaticClipSource(path, StaticClipConfig(num_frames=num_frames, augment=augment))
    dataset = (DavisDataset(path, exclude=exclude) if kind == "davis"
               else YouTubeVOSDataset(path, exclude=exclude))
    return VideoClipSource(dataset, VideoSamplingConfig(num_frames=num_frames, max_gap=max_gap,
                                                        augment=augment))


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
