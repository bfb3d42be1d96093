"""The training sample (:class:`Clip`) and the augmentations every data source shares.

A clip is a short run of frames with consistent object ids: frame 0 is the *reference* (the
annotated frame the network is given), then the previous frame, then the current one (more
frames for sequence training). Object ids are defined by the reference frame: an object that is
not visible on frame 0 is not a target (semi-supervised VOS segments only what it was shown), so
its pixels are background on every frame. An object that is visible on frame 0 and vanishes later
(leaves the crop, is occluded) is kept, with an empty mask on those frames and
``object_present`` False there: that is a real situation the network must learn.

Labels are uint8: 0 background, 1..K objects, :data:`VOID` (255) for pixels the loss must ignore
(DAVIS-2017 void, and the padding an augmentation adds outside the source image).

Boxes follow :mod:`vostrack.network.parts`: ``[y0, x0, y1, x1]`` float32 pixels, a mask's tight box
being ``[rmin, cmin, rmax + 1, cmax + 1]``. They are never transformed: they are always recomputed
from the final masks, so augmentation cannot make them disagree.

Parts: the reference parts are exactly :func:`vostrack.network.parts.split_mask` of each object's
frame-0 mask (what inference computes from the given mask). On later frames a part's box is the box
of the object pixels nearest to that part's k-means centre, the centres being carried from frame 0
by the object's box (each frame-t pixel is mapped into frame 0's object box, scaling each axis by
the ratio of the two boxes, and assigned to the nearest frame-0 centre). That is exact for an
object that only translates and scales, approximate under rotation or deformation, and needs no
correspondence the real datasets do not have (the same rule serves every source); a part with no
pixel on a frame is invalid there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np

from vostrack.network.parts import PartsConfig, kmeans_parts, mask_box, nearest_centre

__all__ = [
    "VOID",
    "MIN_FRAMES",
    "PAD_COLOUR",
    "Clip",
    "ClipSource",
    "GapSchedule",
    "AugmentSettings",
    "AugmentConfig",
    "ColourJitter",
    "ClipSourceConfig",
    "with_settings",
    "augment_clip",
    "random_crop_scale",
    "random_flip",
    "colour_jitter",
]

log = logging.getLogger(__name__)

#: Label of pixels the loss ignores.
VOID = 255
#: A clip has at least a reference, a previous and a current frame.
MIN_FRAMES = 3
# Fill colour of frame pixels outside the source image (their labels are VOID): mid grey, so the
# padding is neither a strong edge nor mistaken for a dark object.
PAD_COLOUR = (124, 116, 104)


# --------------------------------------------------------------------------------------------
# The sample
# --------------------------------------------------------------------------------------------


@runtime_checkable
class ClipSource(Protocol):
    """Anything that makes clips: video datasets, static images, procedural scenes, mixtures.

    ``sample`` must draw all its randomness from ``rng`` (so that a clip is reproducible from
    the generator's seed) and return a clip at the training size with at least one object.
    ``step`` is the training step the clip is for, so that a source can grow its difficulty
    (e.g. the frame gap) over training and still be reproducible when a run resumes.
    """

    name: str

    def sample(self, rng: np.random.Generator, step: int = 0) -> Clip: ...


@dataclass(frozen=True)
class GapSchedule:
    """A largest frame gap that grows linearly from ``start`` to ``end`` over ``steps`` training
    steps (constant ``start`` when ``steps`` is 0): short gaps first, harder motion later."""

    start: int = 3
    end: int = 3
    steps: int = 0

    def __post_init__(self) -> None:
        if self.start < 1 or self.end < 1 or self.steps < 0:
            raise ValueError(f"gaps must be >= 1 and steps >= 0, got {self}")

    def at(self, step: int) -> int:
        if self.steps <= 0 or step >= self.steps:
            return self.end if self.steps > 0 else self.start
        return int(round(self.start + (self.end - self.start) * max(step, 0) / self.steps))

    @classmethod
    def of(cls, gap: int | GapSchedule) -> GapSchedule:
        return gap if isinstance(gap, GapSchedule) else cls(int(gap), int(gap), 0)


@dataclass
class Clip:
    """One training sample: ``frames`` (T, H, W, 3) uint8 RGB and ``labels`` (T, H, W) uint8.

    ``num_objects`` is K: ids 1..K are the objects (each visible on frame 0 once the clip has been
    through :meth:`relabel_from_reference`), 0 background, :data:`VOID` ignored. ``name`` says
    where the clip came from (for logs and debugging), ``source`` which source made it.
    """

    frames: np.ndarray
    labels: np.ndarray
    num_objects: int
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        frames, labels = self.frames, self.labels
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
            )
        if labels.shape != frames.shape[:3] or labels.dtype != np.uint8:
            raise ValueError(
                f"labels must be (T, H, W) uint8 matching frames {frames.shape[:3]}, "
                f"got {labels.shape} {labels.dtype}"
            )
        if frames.shape[0] < MIN_FRAMES:
            raise ValueError(f"a clip needs at least {MIN_FRAMES} frames, got {frames.shape[0]}")
        if not 0 <= self.num_objects < VOID:
            raise ValueError(f"num_objects must be in 0..{VOID - 1}, got {self.num_objects}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def replace(self, **changes) -> Clip:
        return dataclasses.replace(self, **changes)

    # ---- objects ---------------------------------------------------------------------------

    def object_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (T, K, 4) float32 of every object on every frame (zeros where absent) and
        ``present`` (T, K) bool."""
        t_count, k_count = self.num_frames, self.num_objects
        boxes = np.zeros((t_count, k_count, 4), np.float32)
        present = np.zeros((t_count, k_count), bool)
        for t in range(t_count):
            for k in range(1, k_count + 1):
                box = mask_box(self.labels[t] == k)
                if box is not None:
                    boxes[t, k - 1] = box
                    present[t, k - 1] = True
        return boxes, present

    def keep_objects(self, ids: Sequence[int]) -> Clip:
        """The clip with only objects ``ids`` (in that order, renumbered 1..len(ids)); the pixels
        of the other objects become background, void stays void."""
        lut = np.zeros(256, np.uint8)
        lut[VOID] = VOID
        for new, old in enumerate(ids, start=1):
            if not 1 <= old <= self.num_objects:
                raise ValueError(f"object id {old} not in 1..{self.num_objects}")
            lut[old] = new
        return self.replace(labels=lut[self.labels], num_objects=len(ids))

    def relabel_from_reference(self, min_pixels: int = 1) -> Clip:
        """Keep the objects with at least ``min_pixels`` pixels on frame 0, renumbered in id
        order (see the module docstring for why the reference frame decides)."""
        counts = np.bincount(self.labels[0].reshape(-1), minlength=256)
        keep = [k for k in range(1, self.num_objects + 1) if counts[k] >= min_pixels]
        if keep == list(range(1, self.num_objects + 1)):
            return self
        return self.keep_objects(keep)

    def limit_objects(self, max_objects: int, rng: np.random.Generator) -> Clip:
        """At most ``max_objects`` objects: a random subset (in id order) when there are more."""
        if self.num_objects <= max_objects:
            return self
        chosen = np.sort(rng.choice(self.num_objects, size=max_objects, replace=False)) + 1
        return self.keep_objects([int(k) for k in chosen])

    # ---- parts -----------------------------------------------------------------------------

    def part_boxes(self, config: PartsConfig = PartsConfig()) -> tuple[np.ndarray, np.ndarray]:
        """Part boxes (T, K, P, 4) float32 and validity (T, K, P) bool, P = ``config.max_parts``.

        Frame 0: the parts of :func:`split_mask` of each object (its :func:`kmeans_parts`).
        Later frames: the carried nearest-centroid assignment of the module docstring. Invalid
        parts have zero boxes.
        """
        t_count, k_count, p_count = self.num_frames, self.num_objects, config.max_parts
        boxes = np.zeros((t_count, k_count, p_count, 4), np.float32)
        valid = np.zeros((t_count, k_count, p_count), bool)
        for k in range(1, k_count + 1):
            ref_mask = self.labels[0] == k
            split = kmeans_parts(ref_mask, config)
            ref_boxes = split.boxes
            n = len(ref_boxes)
            if n == 0:
                continue
            boxes[0, k - 1, :n] = ref_boxes
            valid[0, k - 1, :n] = True
            ref_box = mask_box(ref_mask)
            for t in range(1, t_count):
                mask = self.labels[t] == k
                box = mask_box(mask)
                if box is None:
                    continue
                boxes[t, k - 1, :n], valid[t, k - 1, :n] = _carried_part_boxes(
                    mask, box, ref_box, split.cluster_centres, split.cluster_part, n
                )
        return boxes, valid

    # ---- fixed-shape arrays ----------------------------------------------------------------

    def to_arrays(
        self, max_objects: int, max_parts: int, parts_config: PartsConfig | None = None
    ) -> dict[str, np.ndarray]:
        """The clip as fixed-shape arrays (JAX compiles once per shape), objects and parts padded.

        Returns (T frames, K = ``max_objects``, P = ``max_parts``):

        - ``frames`` (T, H, W, 3) uint8, ``labels`` (T, H, W) uint8 (0 bg, 1..n objects, 255 void)
        - ``num_objects`` () int32, ``object_valid`` (K,) bool: object k+1 exists in this clip
        - ``object_present`` (T, K) bool: visible on frame t; ``object_boxes`` (T, K, 4) float32
        - ``part_boxes`` (T, K, P, 4) float32, ``part_valid`` (T, K, P) bool; row ``k`` of frame 0
          is ``split_mask`` of object k+1's reference mask (reshape (K, P) -> K * P to get
          :func:`vostrack.network.parts.batch_parts`' row order).
        """
        if self.num_objects > max_objects:
            raise ValueError(
                f"clip has {self.num_objects} objects, more than max_objects="
                f"{max_objects}; call limit_objects first"
            )
        config = (
            PartsConfig(max_parts=max_parts)
            if parts_config is None
            else dataclasses.replace(parts_config, max_parts=max_parts)
        )
        t_count, n = self.num_frames, self.num_objects
        object_boxes = np.zeros((t_count, max_objects, 4), np.float32)
        object_present = np.zeros((t_count, max_objects), bool)
        part_boxes = np.zeros((t_count, max_objects, max_parts, 4), np.float32)
        part_valid = np.zeros((t_count, max_objects, max_parts), bool)
        if n:
            object_boxes[:, :n], object_present[:, :n] = self.object_boxes()
            part_boxes[:, :n], part_valid[:, :n] = self.part_boxes(config)
        object_valid = np.zeros(max_objects, bool)
        object_valid[:n] = True
        return {
            "frames": self.frames,
            "labels": self.labels,
            "num_objects": np.int32(n),
            "object_valid": object_valid,
            "object_present": object_present,
            "object_boxes": object_boxes,
            "part_boxes": part_boxes,
            "part_valid": part_valid,
        }


def _carried_part_boxes(
    mask: np.ndarray,
    box: np.ndarray,
    ref_box: np.ndarray,
    centres: np.ndarray,
    cluster_part: np.ndarray,
    count: int,
) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(mask)
    scale = (ref_box[2:] - ref_box[:2]) / np.maximum(box[2:] - box[:2], 1e-6)
    points = np.stack([rows, cols], axis=1).astype(np.float32) + np.float32(0.5)
    # Into frame 0's object box: (point - box corner) scaled by the box ratio, per axis.
    # float32 is plenty here (no tie-breaking to match, unlike frame 0) and halves the work.
    mapped = (ref_box[:2] + (points - box[:2]) * scale).astype(np.float32)
    part = cluster_part[nearest_centre(mapped, centres.astype(np.float32))]
    boxes = np.zeros((count, 4), np.float32)
    valid = np.zeros(count, bool)
    for c in range(count):
        sel = part == c
        if sel.any():
            r, q = rows[sel], cols[sel]
            boxes[c] = (r.min(), q.min(), r.max() + 1, q.max() + 1)
            valid[c] = True
    return boxes, valid


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColourJitter:
    """Colour jitter ranges; one draw per clip, then each frame varies it by ``per_frame``
    (relative), so that a clip's frames differ a little as real exposure does."""

    brightness: float = 0.3  # factor in [1 - b, 1 + b]
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.04  # shift in turns of the colour wheel, [-h, h]
    per_frame: float = 0.1
    probability: float = 0.8  # of jittering a clip at all


@dataclass(frozen=True)
class AugmentSettings:
    """Crop/scale, flip and colour augmentation: the settings a training config holds (its
    ``augment`` section); :class:`AugmentConfig` adds the output size, which is the run's.

    The crop covers the output at ``zoom`` 1 (the source is scaled so that it just covers
    the output size); zoom > 1 crops closer, < 1 shows the whole source with VOID padding. With
    probability ``object_centred`` the crop contains the centre of a random reference object
    (otherwise it is uniform), so most samples hold a target. Each frame after the reference
    moves its crop by up to ``frame_shift`` of the crop size and scales it by up to
    ``frame_scale`` (log), a camera that moves. Objects with fewer than ``min_object_pixels`` on
    the augmented reference frame are dropped; ``attempts`` crops are tried before giving up on
    keeping at least one object.
    """

    zoom: tuple[float, float] = (0.8, 1.5)
    aspect: float = 1.15  # largest anisotropic stretch factor
    object_centred: float = 0.8
    frame_shift: float = 0.04
    frame_scale: float = 0.05
    flip: float = 0.5
    colour: ColourJitter | None = ColourJitter()
    min_object_pixels: int = 64
    attempts: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.zoom[0] <= self.zoom[1]:
            raise ValueError(f"zoom must satisfy 0 < min <= max, got {self.zoom}")


@dataclass(frozen=True)
class AugmentConfig(AugmentSettings):
    """:class:`AugmentSettings` to a fixed training ``size`` (height, width)."""

    size: tuple[int, int] = (384, 384)

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"size must be (height, width) >= 8, got {self.size}")
        super().__post_init__()


_Config = TypeVar("_Config")


def with_settings(cls: type[_Config], settings: Any, **values: Any) -> _Config:
    """A ``cls`` (a dataclass extending the class of ``settings`` with what the run decides)
    from ``settings`` and the run's ``values``. The fields are taken as they are:
    ``dataclasses.asdict`` would turn nested dataclasses (a :class:`ColourJitter`) into dicts."""
    return cls(
        **{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}, **values
    )


@dataclass(frozen=True)
class ClipSourceConfig:
    """What the run gives every clip source (the static, procedural and video ones each extend
    their own settings with it): ``num_frames`` per clip, and the augmentation at the training
    size."""

    num_frames: int = MIN_FRAMES
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.num_frames < MIN_FRAMES:
            raise ValueError(f"num_frames must be >= {MIN_FRAMES}, got {self.num_frames}")


def _crop_affine(scale_y: float, scale_x: float, top: float, left: float) -> np.ndarray:
    # Continuous coordinates (pixel (r, c) covers [r, r+1)); OpenCV's integer pixel centres are
    # at +0.5 of those, hence the -0.5 terms: output = scale * (source - window corner).
    return np.array(
        [[scale_x, 0.0, scale_x * (0.5 - left) - 0.5], [0.0, scale_y, scale_y * (0.5 - top) - 0.5]],
        np.float64,
    )


def _flip_affine(affine: np.ndarray, width: int) -> np.ndarray:
    flipped = affine.copy()
    flipped[0] = -flipped[0]
    flipped[0, 2] += width - 1
    return flipped


def _warp_frame(frame: np.ndarray, affine: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    scale = math.sqrt(abs(np.linalg.det(affine[:, :2])))
    if scale < 0.6:
        # warpAffine samples bilinearly: a strong downscale would alias (moire on textures,
        # jagged edges) unlike what the network sees at inference, so shrink with INTER_AREA
        # first and warp the rest of the way.
        factor = min(scale / 0.8, 1.0)
        small = cv2.resize(frame, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        fy = small.shape[0] / frame.shape[0]
        fx = small.shape[1] / frame.shape[1]
        # Small pixel i is source position (i + 0.5) / f - 0.5 (OpenCV centres): compose.
        pre = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5]])
        affine = np.concatenate(
            [affine[:, :2] @ pre[:, :2], (affine[:, :2] @ pre[:, 2] + affine[:, 2])[:, None]],
            axis=1,
        )
        frame = small
    return cv2.warpAffine(
        frame,
        affine,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=PAD_COLOUR,
    )


def _uniform_log(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high)))) if high > low else low


def _window_centre(rng: np.random.Generator, centre: float, window: float, extent: int) -> float:
    """Keep a crop window inside the source where it fits; where it does not (zoom < 1), place
    the source at a random position inside the window instead."""
    if window <= extent:
        return float(np.clip(centre, window / 2, extent - window / 2))
    return extent / 2 + rng.uniform(-0.5, 0.5) * (window - extent)


def random_crop_scale(clip: Clip, config: AugmentConfig, rng: np.random.Generator) -> Clip:
    """Scale and crop every frame to ``config.size`` (see :class:`AugmentConfig`).

    Frames are resampled bilinearly, labels by nearest neighbour with the same affine maps, and
    outside the source they become VOID; then objects too small on the reference are dropped
    (:meth:`Clip.relabel_from_reference`). The last attempt is a plain zoom-1 crop centred on a
    reference object, the likeliest to keep it.
    """
    height, width = clip.size
    out_h, out_w = config.size
    fit = max(out_h / height, out_w / width)
    boxes, present = clip.object_boxes()
    candidates = np.flatnonzero(present[0]) if clip.num_objects else np.zeros(0, np.int64)
    result = clip
    for attempt in range(max(config.attempts, 1)):
        last = attempt == max(config.attempts, 1) - 1 and attempt > 0
        zoom = 1.0 if last else _uniform_log(rng, *config.zoom)
        stretch = 1.0 if last else _uniform_log(rng, 1 / config.aspect, config.aspect)
        scale_y = fit * zoom * math.sqrt(stretch)
        scale_x = fit * zoom / math.sqrt(stretch)
        win_h, win_w = out_h / scale_y, out_w / scale_x
        if len(candidates) and (last or rng.random() < config.object_centred):
            k = int(candidates[rng.integers(len(candidates))])
            y0, x0, y1, x1 = boxes[0, k]
            spread = 0.0 if last else 0.35
            cy = (y0 + y1) / 2 + rng.uniform(-spread, spread) * win_h
            cx = (x0 + x1) / 2 + rng.uniform(-spread, spread) * win_w
        else:
            cy = rng.uniform(0, height)
            cx = rng.uniform(0, width)
        frames = np.empty((clip.num_frames, out_h, out_w, 3), np.uint8)
        labels = np.empty((clip.num_frames, out_h, out_w), np.uint8)
        for t in range(clip.num_frames):
            jitter = 0.0 if t == 0 or last else 1.0
            s = math.exp(jitter * rng.uniform(-config.frame_scale, config.frame_scale))
            fy = cy + jitter * rng.uniform(-config.frame_shift, config.frame_shift) * win_h
            fx = cx + jitter * rng.uniform(-config.frame_shift, config.frame_shift) * win_w
            wy, wx = win_h / s, win_w / s
            top = _window_centre(rng, fy, wy, height) - wy / 2
            left = _window_centre(rng, fx, wx, width) - wx / 2
            affine = _crop_affine(scale_y * s, scale_x * s, top, left)
            frames[t] = _warp_frame(clip.frames[t], affine, config.size)
            labels[t] = cv2.warpAffine(
                clip.labels[t],
                affine,
                (out_w, out_h),
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=VOID,
            )
        result = clip.replace(frames=frames, labels=labels).relabel_from_reference(
            config.min_object_pixels
        )
        if result.num_objects > 0 or clip.num_objects == 0:
            return result
    log.debug("%s: no object left after %d crops", clip.name, config.attempts)
    return result


def random_flip(clip: Clip, probability: float, rng: np.random.Generator) -> Clip:
    """Mirror every frame left-right with ``probability`` (the whole clip, so motion stays
    coherent)."""
    if rng.random() >= probability:
        return clip
    return clip.replace(
        frames=np.ascontiguousarray(clip.frames[:, :, ::-1]),
        labels=np.ascontiguousarray(clip.labels[:, :, ::-1]),
    )


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def colour_jitter(clip: Clip, jitter: ColourJitter, rng: np.random.Generator) -> Clip:
    """Brightness, contrast, saturation and hue jitter of the frames (labels untouched)."""
    if rng.random() >= jitter.probability:
        return clip
    brightness = rng.uniform(1 - jitter.brightness, 1 + jitter.brightness)
    contrast = rng.uniform(1 - jitter.contrast, 1 + jitter.contrast)
    saturation = rng.uniform(1 - jitter.saturation, 1 + jitter.saturation)
    hue = rng.uniform(-jitter.hue, jitter.hue)
    out = np.empty_like(clip.frames)
    luma = _LUMA.astype(np.float64)
    for t in range(clip.num_frames):
        vary = 1 + rng.uniform(-jitter.per_frame, jitter.per_frame, 4)
        frame = clip.frames[t]
        shift = int(round(hue * vary[3] * 256)) % 256
        if shift:
            # OpenCV's *_FULL HSV puts the hue on 0..255 for uint8, so a shift wraps with uint8
            # arithmetic and the round trip costs two fast table-driven conversions.
            hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] += np.uint8(shift)
            frame = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        # Saturation (blend with the luma), contrast (about the mean luma) and brightness (a
        # factor) are all affine in RGB: one 3x4 matrix, applied by cv2.transform in one pass
        # with rounding and saturation to uint8.
        s = saturation * vary[0]
        c = contrast * vary[1]
        b = brightness * vary[2]
        mean = float(cv2.mean(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))[0])
        matrix = b * c * (s * np.eye(3) + (1 - s) * np.outer(np.ones(3), luma))
        offset = b * (1 - c) * mean * np.ones((3, 1))
        out[t] = cv2.transform(frame, np.concatenate([matrix, offset], axis=1))
    return clip.replace(frames=out)


def augment_clip(
    clip: Clip, config: AugmentConfig, rng: np.random.Generator, geometric: bool = True
) -> Clip:
    """Crop/scale to ``config.size`` (when ``geometric``; sources that render at the training
    size already skip it), flip, then colour jitter. Draws from ``rng`` in a fixed order, so a
    clip is reproducible from the generator's state."""
    if geometric:
        clip = random_crop_scale(clip, config, rng)
    elif clip.size != tuple(config.size):
        raise ValueError(
            f"clip is {clip.size}, expected {tuple(config.size)} without the geometric augmentation"
        )
    clip = random_flip(clip, config.flip, rng)
    if config.colour is not None:
        clip = colour_jitter(clip, config.colour, rng)
    return clip
