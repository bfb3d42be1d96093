"""Multi-object video clips: objects cut from still images pasted onto the clips of a video
source (a training config's ``paste`` section).

DAVIS-2016 has one object a video, yet inference must keep several objects apart, through
crossings and occlusions, and away from look-alikes. Pasting is the cheap way to get there (the
static pretraining of STM and XMem pastes objects the same way): each clip the video source makes
gets, with probability ``probability``, 1-4 objects cut by their masks from an images+masks tree
(ECSSD, the Weizmann horses), each a new object id, consistent over the clip:

* each object moves along a smooth path: a constant speed, a heading that turns at a constant
  rate, a constant rate of spin and of scale change (no jitter from frame to frame: a real
  object's motion is smooth, the video's camera already shakes);
* with probability ``cross`` an object's path passes, at a random frame after the reference,
  through the centre of an object already in the clip (the video's own, or one pasted before),
  so that objects cross and occlude each other; otherwise it passes a random point;
* an object is pasted in front of everything pasted before it, or, with probability ``behind``,
  behind the video's own objects (it shows only where the video has background);
* each object is visible on the reference frame (the targets of semi-supervised VOS are the
  objects shown there), by ``min_object_pixels`` at least; later it may leave the frame or be
  hidden.

Labels follow the clip contract (:mod:`vostrack.data.clips`): an occluded object's pixels belong
to its occluder, so its visible area shrinks where another crosses it; boxes and parts are
computed later from these labels (``Clip.to_arrays``), so they cannot disagree. An object's
pixels are those where its warped mask covers at least half of a pixel; its colour is blended
with the frame by the same warped mask, a natural antialiased edge.

Every random number comes from the generator the source is given, so a batch remains a pure
function of its step (vostrack/data/batches.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vostrack.data.clips import VOID, Clip, ClipSource
from vostrack.data.static_clips import read_image_mask

__all__ = ["PasteSettings", "PastedObjectsSource", "paste_objects"]

log = logging.getLogger(__name__)

Reader = Callable[[Path, Path], tuple[np.ndarray, np.ndarray, int]]


@dataclass(frozen=True)
class PasteSettings:
    """Objects pasted onto video clips (a training config's ``paste`` section; off while
    ``probability`` is 0, so configs without the section make the batches they always made).

    ``objects``: images+masks trees to cut objects from; empty: the images+masks folders among
    the run's ``data``. ``count``: objects a clip gets (a range, both ends included); ``size``:
    an object's longer side on the reference, as a fraction of the clip's shorter side. Motion,
    each a per-object constant drawn once: ``speed`` (range) the distance its centre moves a
    frame (fraction of the shorter side), ``turn`` (degrees a frame, drawn in [-turn, turn])
    how its heading bends, ``spin`` (degrees a frame) its rotation, ``scale_change`` (log a
    frame) its growth. ``cross`` and ``behind``: probabilities (module docstring);
    ``colour``: brightness and contrast of each object varied by up to this fraction (so that a
    pasted object's look is no clue). ``min_object_pixels``: an object's least visible area on
    the reference, with ``attempts`` paths tried before it is left out.
    """

    probability: float = 0.0
    objects: tuple[str, ...] = ()
    count: tuple[int, int] = (1, 4)
    size: tuple[float, float] = (0.15, 0.45)
    speed: tuple[float, float] = (0.02, 0.08)
    turn: float = 10.0
    spin: float = 4.0
    scale_change: float = 0.04
    cross: float = 0.7
    behind: float = 0.2
    colour: float = 0.15
    min_object_pixels: int = 100
    attempts: int = 5

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.probability <= 1, f"probability must be in 0..1, got {self.probability}"),
            (
                len(self.count) == 2 and 1 <= self.count[0] <= self.count[1] < VOID - 1,
                f"count must be a range 1 <= min <= max, got {list(self.count)}",
            ),
            (
                len(self.size) == 2 and 0 < self.size[0] <= self.size[1],
                f"size must be a range 0 < min <= max, got {list(self.size)}",
            ),
            (
                len(self.speed) == 2 and 0 <= self.speed[0] <= self.speed[1],
                f"speed must be a range 0 <= min <= max, got {list(self.speed)}",
            ),
            (
                min(self.turn, self.spin, self.scale_change) >= 0,
                "turn, spin and scale_change must be >= 0",
            ),
            (
                0 <= self.cross <= 1 and 0 <= self.behind <= 1 and 0 <= self.colour < 1,
                "cross and behind must be in 0..1, colour in 0..1 (excluded)",
            ),
            (
                self.min_object_pixels >= 1 and self.attempts >= 1,
                "min_object_pixels and attempts must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class _Cutout:
    """An object cut out of its image: colours (h, w, 3) float32 and coverage (h, w) float32
    in 0..1, at a resolution near the largest it is drawn at."""

    image: np.ndarray
    alpha: np.ndarray
    name: str

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of the crop's centre, in OpenCV pixel-centre coordinates."""
        return (self.alpha.shape[1] - 1) / 2, (self.alpha.shape[0] - 1) / 2

    @property
    def extent(self) -> float:
        return float(max(self.alpha.shape))


def _cut(pair: tuple[Path, Path], largest: float, flip: bool, reader: Reader) -> _Cutout | None:
    """The union of the objects of ``pair``'s mask, cropped to its box, shrunk (area
    interpolation, no aliasing) to about ``largest`` pixels on its longer side; None for an
    empty mask."""
    image, labels, _ = reader(*pair)
    mask = (labels != 0) & (labels != VOID)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = image[y0:y1, x0:x1].astype(np.float32)
    alpha = mask[y0:y1, x0:x1].astype(np.float32)
    factor = min(1.0, largest / max(y1 - y0, x1 - x0))
    if factor < 1.0:
        size = (max(int(round((x1 - x0) * factor)), 1), max(int(round((y1 - y0) * factor)), 1))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    if flip:
        crop, alpha = crop[:, ::-1], alpha[:, ::-1]
    return _Cutout(np.ascontiguousarray(crop), np.ascontiguousarray(alpha), Path(pair[0]).stem)


def _path(
    rng: np.random.Generator,
    settings: PasteSettings,
    count: int,
    short: int,
    through: tuple[float, float],
    at: int,
) -> np.ndarray:
    """Centres (count, 2) (x, y) of a smooth path that passes ``through`` at frame ``at``:
    constant speed, heading turning at a constant rate, integrated from ``at`` both ways."""
    speed = rng.uniform(*settings.speed) * short
    heading = rng.uniform(-math.pi, math.pi)
    turn = math.radians(rng.uniform(-settings.turn, settings.turn))
    centres = np.zeros((count, 2), np.float64)
    centres[at] = through
    for t in range(at + 1, count):
        angle = heading + turn * (t - at - 0.5)
        centres[t] = centres[t - 1] + speed * np.array([math.cos(angle), math.sin(angle)])
    for t in range(at - 1, -1, -1):
        angle = heading + turn * (t - at + 0.5)
        centres[t] = centres[t + 1] - speed * np.array([math.cos(angle), math.sin(angle)])
    return centres


def _object_centre(labels: np.ndarray, k: int) -> tuple[float, float] | None:
    rows, cols = np.nonzero(labels == k)
    if rows.size == 0:
        return None
    return float(cols.mean()), float(rows.mean())


def _affine(cutout: _Cutout, centre: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """2x3 map from the cutout to the frame: its centre onto ``centre``, scaled and rotated."""
    a = math.radians(angle)
    linear = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    offset = np.asarray(centre, np.float64) - linear @ np.asarray(cutout.centre, np.float64)
    return np.concatenate([linear, offset[:, None]], axis=1)


def _draw(cutout: _Cutout, affine: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    height, width = size
    alpha = cv2.warpAffine(
        cutout.alpha, affine, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0
    )
    # Replicated edges: the colours blended in at the crop's border are the object's own.
    image = cv2.warpAffine(
        cutout.image,
        affine,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return image, alpha


def paste_objects(
    clip: Clip,
    pairs: Sequence[tuple[Path, Path]],
    settings: PasteSettings,
    rng: np.random.Generator,
    reader: Reader = read_image_mask,
) -> Clip:
    """``clip`` with objects of ``pairs`` pasted on it (see the module docstring): ids
    ``clip.num_objects + 1`` on, those behind the video's objects first, then the others, each
    group in the order drawn; objects not visible enough on the reference are left out (and
    the ids renumbered, :meth:`Clip.relabel_from_reference`)."""
    count = clip.num_frames
    video_ids = np.arange(1, clip.num_objects + 1)
    free_ids = VOID - 1 - clip.num_objects
    wanted = min(int(rng.integers(settings.count[0], settings.count[1] + 1)), free_ids)
    # Drawn once per clip, before any object: the draws of one object never shift another's.
    plans = []
    for _ in range(wanted):
        plans.append(
            {
                "pair": pairs[int(rng.integers(len(pairs)))],
                "behind": bool(rng.random() < settings.behind),
                "seed": int(rng.integers(2**63)),
            }
        )
    frames = clip.frames.astype(np.float32)
    labels = clip.labels.copy()
    video_object = np.isin(clip.labels, video_ids)
    # Where a pasted object may show on the reference: in front, anywhere; behind, only on the
    # video's known background.
    reference_room = {False: None, True: ~video_object[0] & (clip.labels[0] != VOID)}
    # Each object's mask on the reference, so that no object hides most of another there.
    on_reference = [clip.labels[0] == k for k in video_ids]
    # Paths of the objects placed so far (the video's own objects: their label centres).
    centres: list[np.ndarray] = []
    for k in video_ids:
        found = [_object_centre(clip.labels[t], int(k)) for t in range(count)]
        if any(c is not None for c in found):
            first = next(c for c in found if c is not None)
            filled, last = [], first
            for c in found:
                last = c if c is not None else last
                filled.append(last)
            centres.append(np.array(filled, np.float64))
    layers = []
    for plan in plans:
        orng = np.random.default_rng(plan["seed"])
        room = reference_room[plan["behind"]]
        placed = _place(orng, plan, settings, clip, centres, on_reference, room, reader)
        if placed is None:
            continue
        cutout, path, images, alphas = placed
        centres.append(path)
        on_reference.append(alphas[0] >= 0.5)
        layers.append((plan["behind"], cutout, images, alphas))
    # Behind the video's objects first, then in front of everything, each group in draw order.
    layers.sort(key=lambda layer: not layer[0])
    next_id = clip.num_objects + 1
    names = []
    for behind, cutout, images, alphas in layers:
        for t in range(count):
            alpha = alphas[t]
            if behind:
                alpha = alpha * ~video_object[t]
                # Unknown pixels (void) may hide the video's object: nothing is drawn there.
                alpha = alpha * (clip.labels[t] != VOID)
            inside = alpha >= 0.5
            frames[t] = frames[t] * (1 - alpha[..., None]) + images[t] * alpha[..., None]
            labels[t][inside] = next_id
        names.append(cutout.name + ("(behind)" if behind else ""))
        next_id += 1
    result = Clip(
        np.clip(frames + 0.5, 0, 255).astype(np.uint8),
        labels,
        next_id - 1,
        name=f"{clip.name}+" + "+".join(names) if names else clip.name,
        source=clip.source,
    )
    return result.relabel_from_reference(settings.min_object_pixels)


def _place(
    rng: np.random.Generator,
    plan: dict,
    settings: PasteSettings,
    clip: Clip,
    centres: list[np.ndarray],
    on_reference: list[np.ndarray],
    room: np.ndarray | None,
    reader: Reader,
) -> tuple[_Cutout, np.ndarray, list[np.ndarray], list[np.ndarray]] | None:
    """A path and the drawn frames of one object visible on the reference (within ``room``
    when given) that hides at most half of each object of ``on_reference`` there, or None."""
    height, width = clip.size
    short = min(height, width)
    count = clip.num_frames
    length = rng.uniform(*settings.size) * short
    growth = rng.uniform(-settings.scale_change, settings.scale_change)
    largest = length * math.exp(max(growth, 0.0) * (count - 1))
    cutout = _cut(plan["pair"], largest, bool(rng.random() < 0.5), reader)
    if cutout is None:
        log.debug("%s: empty mask, nothing pasted", plan["pair"][1])
        return None
    scale = length / cutout.extent
    for _ in range(settings.attempts):
        at = int(rng.integers(1, count)) if count > 1 else 0
        if centres and rng.random() < settings.cross:
            through = centres[int(rng.integers(len(centres)))][at]
            # Through the object, not exactly its centre: crossings of every depth.
            through = through + rng.normal(0.0, 0.1 * length, 2)
        else:
            through = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        path = _path(rng, settings, count, short, tuple(through), at)
        angle = rng.uniform(-20.0, 20.0)
        spin = rng.uniform(-settings.spin, settings.spin)
        contrast = 1 + rng.uniform(-settings.colour, settings.colour)
        brightness = rng.uniform(-settings.colour, settings.colour) * 128
        images, alphas = [], []
        for t in range(count):
            affine = _affine(cutout, path[t], scale * math.exp(growth * t), angle + spin * t)
            image, alpha = _draw(cutout, affine, (height, width))
            images.append(image * contrast + brightness)
            alphas.append(alpha)
        mask = alphas[0] >= 0.5
        visible = mask if room is None else mask & room
        if np.count_nonzero(visible) < settings.min_object_pixels:
            continue
        # A target mostly hidden on the reference would barely be shown to the network (and
        # one hidden entirely is no target at all): crossings belong to the later frames.
        if all(np.count_nonzero(mask & m) <= 0.5 * np.count_nonzero(m) for m in on_reference):
            return cutout, path, images, alphas
    return None


class PastedObjectsSource:
    """A video :class:`~vostrack.data.clips.ClipSource` whose clips get pasted objects (a
    :class:`ClipSource` itself, under the video source's name: pasting is part of how that
    source's clips are made)."""

    def __init__(
        self,
        base: ClipSource,
        pairs: Sequence[tuple[Path, Path]],
        settings: PasteSettings,
        reader: Reader = read_image_mask,
    ) -> None:
        if not pairs:
            raise ValueError("PastedObjectsSource needs image/mask pairs to cut objects from")
        self.base = base
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.settings = settings
        self.reader = reader
        self.name = base.name
        log.info(
            "%s: objects of %d image/mask pairs pasted on %.0f%% of its clips",
            base.name,
            len(self.pairs),
            100 * settings.probability,
        )

    def __repr__(self) -> str:
        return f"PastedObjectsSource({self.base!r}, {len(self.pairs)} pairs)"

    def sample(self, rng: np.random.Generator, step: int = 0) -> Clip:
        clip = self.base.sample(rng, step)
        if rng.random() >= self.settings.probability:
            return clip
        return paste_objects(clip, self.pairs, self.settings, rng, self.reader)
