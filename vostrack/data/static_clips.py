"""Synthetic clips from still images with masks: the static pretraining of RGMP, STM and XMem.

A folder ``ROOT/images/<stem>.<ext>`` + ``ROOT/masks/<stem>.png|jpg`` becomes unlimited training
clips. Each clip takes one image as its scene and moves it like a video:

* every frame views the image through its own affine transform (rotation, scale, shear,
  translation), the transforms of successive frames being a random walk so that consecutive
  frames are closer to each other than to the reference, as in a real video;
* each frame adds a smooth non-rigid deformation, a thin-plate spline through randomly displaced
  control points or an elastic (smoothed random) displacement field;
* sometimes the object is cut out onto another image of the set moving differently (the
  background then moves independently of the object, which a still image cannot show);
* sometimes a masked object of another image is pasted on top: either as a second *labelled*
  object (multi-object clips, occlusion between targets) or as an *unlabelled distractor*
  (label 0 where it covers: occlusion by a look-alike, which is the hard case for matching),
  present on every frame or appearing after the reference.

Frame and mask of every layer are resampled with the same coordinate maps (``cv2.remap``:
bilinear for the image, nearest for the mask), so labels stay exactly where the pixels are.
Pixels outside a source image are VOID. Then the flip and colour jitter shared by all sources
(:func:`vostrack.data.clips.augment_clip`) apply.

Masks may be JPEG (grayscale, thresholded at 128) and smaller than their image: they are scaled
up bilinearly *before* thresholding (a smooth outline, where scaling the thresholded mask with
nearest neighbour would leave 2-3 px stairs), grayscale PNGs (ECSSD's 0/255 masks, the same
size as the photo), or palette PNGs whose index is the object id. A palette PNG that holds only
indices 0 and 255 is a 0/255 mask saved with a palette, one object, as DAVIS-2016's masks are
read (vostrack/data/video_datasets.py); read as ids, all of it would be void.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vostrack.data.clips import PAD_COLOUR, VOID, Clip, ClipSourceConfig, augment_clip
from vostrack.errors import VostrackError
from vostrack.io.frames import IMAGE_SUFFIXES, natural_key, read_image_rgb

__all__ = [
    "find_image_mask_pairs",
    "read_image_mask",
    "StaticClipSettings",
    "StaticClipConfig",
    "StaticClipSource",
    "tps_displacement",
    "elastic_displacement",
    "make_static_clip",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def find_image_mask_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of ``root/images`` and ``root/masks`` matched by file stem, in natural
    order; a PNG mask is preferred to another format with the same stem."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise VostrackError(f"{root}: expected images/ and masks/ folders")
    masks: dict[str, Path] = {}
    for path in masks_dir.iterdir():
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem not in masks or path.suffix.lower() == ".png":
                masks[path.stem] = path
    pairs = []
    unmatched = 0
    for path in sorted(images_dir.iterdir(), key=lambda p: natural_key(p.name)):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in masks:
            pairs.append((path, masks[path.stem]))
        else:
            unmatched += 1
    if unmatched:
        log.warning("%s: %d image(s) without a mask of the same name ignored", root, unmatched)
    if not pairs:
        raise VostrackError(f"{root}: no image in images/ has a mask of the same name in masks/")
    return pairs


def read_image_mask(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(image RGB uint8 (H, W, 3), labels uint8 (H, W), number of objects).

    A palette PNG keeps its indices (ids 1..K, 255 void), unless they are only 0 and 255 (a
    0/255 mask with a palette); any other mask is grayscale, scaled to the image size
    bilinearly and thresholded at 128 into one object.
    """
    image = read_image_rgb(image_path)
    height, width = image.shape[:2]
    data = np.fromfile(str(mask_path), dtype=np.uint8)
    palette = None
    if mask_path.suffix.lower() == ".png":
        from PIL import Image  # only palette PNGs need Pillow; cv2 would turn them into colours

        with Image.open(mask_path) as im:
            if im.mode == "P":
                palette = np.array(im, dtype=np.uint8)
    gray = None
    if palette is not None and palette.any() and np.isin(palette, (0, VOID)).all():
        gray, palette = palette, None  # the grayscale reading below: one object
    if palette is not None:
        labels = palette
        if labels.shape != (height, width):
            labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        ids = np.unique(labels)
        ids = ids[(ids != 0) & (ids != VOID)]
        # Renumber to 1..K so that a mask with ids {3, 7} still gives a dense id range.
        lut = np.zeros(256, np.uint8)
        lut[VOID] = VOID
        lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint8)
        return image, lut[labels], len(ids)
    if gray is None:
        gray = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if gray is None:
        raise VostrackError(f"{mask_path}: not a readable mask image")
    if gray.shape != (height, width):
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_LINEAR)
    labels = (gray >= 128).astype(np.uint8)
    return image, labels, int(labels.any())


# --------------------------------------------------------------------------------------------
# Deformations
# --------------------------------------------------------------------------------------------


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    # U(r) = r^2 log r^2, with U(0) = 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-20)), 0.0)


def tps_displacement(
    size: tuple[int, int],
    rng: np.random.Generator,
    grid: int = 4,
    sigma: float = 0.03,
    step: int = 8,
) -> np.ndarray:
    """A thin-plate-spline displacement field (H, W, 2) float32 (dx, dy in pixels).

    Control points on a ``grid`` x ``grid`` lattice over the frame (plus its corners) move by
    Gaussian offsets of ``sigma`` * min(H, W); the TPS interpolates them with the least bending.
    It is solved once and evaluated every ``step`` pixels, then scaled up bilinearly (the field
    is smooth, so this is exact to a fraction of a pixel and much cheaper).
    """
    height, width = size
    ys = np.linspace(0, height - 1, grid)
    xs = np.linspace(0, width - 1, grid)
    control = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # (n, 2) x, y
    n = len(control)
    offsets = rng.normal(0.0, sigma * min(height, width), (n, 2))
    scale = float(max(height, width))
    c = control / scale  # conditioning: kernel values O(1)
    kernel = _tps_kernel(((c[:, None] - c[None]) ** 2).sum(-1))
    affine = np.concatenate([np.ones((n, 1)), c], axis=1)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = kernel
    system[:n, n:] = affine
    system[n:, :n] = affine.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = offsets
    coeffs = np.linalg.solve(system, rhs)
    gh, gw = (height + step - 1) // step + 1, (width + step - 1) // step + 1
    gy = np.linspace(0, height - 1, gh)
    gx = np.linspace(0, width - 1, gw)
    points = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2) / scale
    u = _tps_kernel(((points[:, None] - c[None]) ** 2).sum(-1))
    field = u @ coeffs[:n] + np.concatenate([np.ones((len(points), 1)), points], 1) @ coeffs[n:]
    field = field.reshape(gh, gw, 2).astype(np.float32)
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)


def elastic_displacement(
    size: tuple[int, int], rng: np.random.Generator, alpha: float = 0.03, cells: int = 5
) -> np.ndarray:
    """An elastic displacement field (H, W, 2) float32: random offsets on a coarse ``cells``
    lattice (std ``alpha`` * min(H, W)) interpolated bicubically, i.e. a smoothed random field
    (Simard et al.'s elastic distortion, with the smoothing done by the coarse lattice)."""
    height, width = size
    coarse = rng.normal(0.0, alpha * min(height, width), (cells, cells, 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


# --------------------------------------------------------------------------------------------
# Clip synthesis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticClipSettings:
    """How synthetic clips are made (a training config's ``static`` section).

    ``object_size``: the main object's longer box side as a fraction of the output's shorter
    side on the reference. Motion per frame (random walk): ``rotation`` degrees, ``scale`` (log),
    ``shear``, ``translation`` (fraction of the output). ``deform``: "tps", "elastic" or "random"
    (either, per clip), strength ``deform_sigma`` (fraction of the output). Probabilities:
    ``background_swap`` (object cut onto another image), ``paste_object`` (a second labelled
    object), ``paste_distractor`` (an unlabelled pasted object), each pasted thing's longer side
    a ``pasted_size`` fraction of the output. A clip whose reference keeps no object of
    ``min_object_pixels`` is drawn again, ``attempts`` times at most.
    """

    object_size: tuple[float, float] = (0.3, 0.8)
    rotation: float = 8.0
    scale: float = 0.1
    shear: float = 0.08
    translation: float = 0.06
    deform: str = "random"
    deform_sigma: float = 0.025
    background_swap: float = 0.3
    paste_object: float = 0.3
    paste_distractor: float = 0.3
    pasted_size: tuple[float, float] = (0.2, 0.5)
    min_object_pixels: int = 100
    attempts: int = 10

    def __post_init__(self) -> None:
        if self.deform not in ("tps", "elastic", "random", "none"):
            raise ValueError(f"deform must be tps, elastic, random or none, got {self.deform!r}")


@dataclass(frozen=True)
class StaticClipConfig(StaticClipSettings, ClipSourceConfig):
    """:class:`StaticClipSettings` with the run's frames per clip and augmentation (the output
    size is ``augment.size``)."""

    def __post_init__(self) -> None:
        ClipSourceConfig.__post_init__(self)
        StaticClipSettings.__post_init__(self)


@dataclass
class _Layer:
    image: np.ndarray
    labels: np.ndarray  # uint8 ids (VOID outside what is known)


def _walk(
    rng: np.random.Generator,
    cfg: StaticClipConfig,
    count: int,
    centre: tuple,
    scale: float,
    size: tuple[int, int],
    cover: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """2x3 affines (source -> output) of ``count`` frames: a random walk of rotation, log-scale,
    shear and translation, starting from a random pose that puts source point ``centre`` (x, y)
    near the middle of the output at ``scale``. With ``cover`` (the source's height, width), the
    start is moved so that the source covers the output (up to rotation and shear): less VOID
    padding when the image is the whole scene."""
    out_h, out_w = size
    short = min(out_h, out_w)
    angle = rng.uniform(-cfg.rotation, cfg.rotation)
    log_scale = math.log(scale) + rng.uniform(-cfg.scale, cfg.scale)
    shear = rng.uniform(-cfg.shear, cfg.shear)
    tx = out_w / 2 + rng.uniform(-0.15, 0.15) * out_w
    ty = out_h / 2 + rng.uniform(-0.15, 0.15) * out_h
    if cover is not None:
        s = math.exp(log_scale)
        # The output column 0 shows source x = centre_x - tx / s: keep [that, + out_w / s] inside.
        for value, c, extent, out in (
            (tx, centre[0], cover[1], out_w),
            (ty, centre[1], cover[0], out_h),
        ):
            low, high = (c - extent) * s + out, c * s
            clamped = float(np.clip(value, low, high)) if low <= high else (low + high) / 2
            if out == out_w:
                tx = clamped
            else:
                ty = clamped
    affines = []
    for t in range(count):
        if t:
            angle += rng.uniform(-cfg.rotation, cfg.rotation)
            log_scale += rng.uniform(-cfg.scale, cfg.scale)
            shear += rng.uniform(-cfg.shear, cfg.shear) / 2
            tx += rng.uniform(-cfg.translation, cfg.translation) * short
            ty += rng.uniform(-cfg.translation, cfg.translation) * short
        a = math.radians(angle)
        s = math.exp(log_scale)
        linear = (
            s
            * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            @ np.array([[1.0, shear], [0.0, 1.0]])
        )
        offset = np.array([tx, ty]) - linear @ np.asarray(centre, np.float64)
        affines.append(np.concatenate([linear, offset[:, None]], axis=1))
    return affines


def _render(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    displacement: np.ndarray | None,
    grid: np.ndarray,
) -> _Layer:
    """Warp one source through ``affine`` (source -> output) after the output-space
    ``displacement``: output pixel p samples the source at affine^-1(p + d(p)). The image and
    its labels share the coordinate maps (bilinear / nearest)."""
    points = grid if displacement is None else grid + displacement
    inverse = cv2.invertAffineTransform(affine)
    (a, b, c), (d, e, f) = (tuple(float(v) for v in row) for row in inverse)
    px, py = points[..., 0], points[..., 1]
    map_x = a * px + b * py + c  # float32: plain Python floats keep numpy from upcasting
    map_y = d * px + e * py + f
    out_labels = cv2.remap(
        labels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=VOID
    )
    scale = math.sqrt(abs(np.linalg.det(affine[:, :2])))
    if scale < 0.6:
        # A strong shrink would alias under bilinear sampling: sample a copy shrunk with
        # INTER_AREA instead, its pixel i lying at source position (i + 0.5) / f - 0.5.
        factor = scale / 0.8
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        fy = image.shape[0] / labels.shape[0]
        fx = image.shape[1] / labels.shape[1]
        map_x = map_x * fx + (0.5 * fx - 0.5)
        map_y = map_y * fy + (0.5 * fy - 0.5)
    out_image = cv2.remap(
        image,
        map_x,
        map_y,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=PAD_COLOUR,
    )
    return _Layer(out_image, out_labels)


def _object_pose(labels: np.ndarray, ids: Sequence[int]) -> tuple[tuple[float, float], float]:
    """Centre (x, y) and longer box side of the union of objects ``ids``."""
    mask = np.isin(labels, ids)
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        h, w = labels.shape
        return (w / 2, h / 2), float(max(h, w))
    return (
        ((cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2),
        float(max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])),
    )


def _cover_scale(shape: tuple[int, int], size: tuple[int, int]) -> float:
    return max(size[0] / shape[0], size[1] / shape[1])


def _composite(frame: np.ndarray, layer: _Layer, mask: np.ndarray) -> None:
    # A 3x3 feathered edge as real footage has; labels keep the hard mask (labelled pixels keep
    # at least 5/9 of the pasted colour). Only the mask's box (+1 px of feather) is touched.
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return
    y0, y1 = max(rows[0] - 1, 0), rows[-1] + 2
    x0, x1 = max(cols[0] - 1, 0), cols[-1] + 2
    alpha = cv2.blur(
        mask[y0:y1, x0:x1].astype(np.float32), (3, 3), borderType=cv2.BORDER_REPLICATE
    )[..., None]
    region = frame[y0:y1, x0:x1]
    region[...] = (region * (1 - alpha) + layer.image[y0:y1, x0:x1] * alpha + 0.5).astype(np.uint8)


def make_static_clip(
    pairs: Sequence[tuple[Path, Path]],
    config: StaticClipConfig,
    rng: np.random.Generator,
    reader=read_image_mask,
) -> Clip:
    """One synthetic clip (before flip/colour augmentation) from a random pair of ``pairs``;
    ``reader`` maps (image path, mask path) to (image, labels, number of objects)."""
    size = tuple(config.augment.size)
    out_h, out_w = size
    grid = np.stack(
        np.meshgrid(np.arange(out_w, dtype=np.float32), np.arange(out_h, dtype=np.float32)), axis=-1
    )
    count = config.num_frames
    deform = config.deform
    if deform == "random":
        deform = ("tps", "elastic")[int(rng.integers(2))]

    def displacement() -> np.ndarray | None:
        if deform == "tps":
            return tps_displacement(size, rng, sigma=config.deform_sigma)
        if deform == "elastic":
            return elastic_displacement(size, rng, alpha=config.deform_sigma)
        return None

    def other_pair(exclude: int) -> int:
        if len(pairs) == 1:
            return exclude
        j = int(rng.integers(len(pairs) - 1))
        return j + (j >= exclude)

    main = int(rng.integers(len(pairs)))
    image, labels, num_objects = reader(*pairs[main])
    ids = list(range(1, num_objects + 1))
    centre, extent = _object_pose(labels, ids)
    short = min(out_h, out_w)
    scale = rng.uniform(*config.object_size) * short / max(extent, 1.0)
    swap = len(pairs) > 1 and rng.random() < config.background_swap
    if not swap:
        # The image is the whole scene: do not zoom out past the point where it covers the output.
        # 1.2: room for the rotation and drift of the walk before the image border shows.
        scale = max(scale, 1.2 * _cover_scale(labels.shape, size))
    affines = _walk(rng, config, count, centre, scale, size, cover=None if swap else labels.shape)
    frames = np.empty((count, out_h, out_w, 3), np.uint8)
    out_labels = np.empty((count, out_h, out_w), np.uint8)
    if swap:
        bg_index = other_pair(main)
        bg_image, bg_labels, _ = reader(*pairs[bg_index])
        # The background's own objects are unlabelled scenery (they are not targets).
        bg_labels = np.where(bg_labels == VOID, VOID, 0).astype(np.uint8)
        bg_scale = _cover_scale(bg_labels.shape, size) * math.exp(rng.uniform(0.0, 0.4))
        bh, bw = bg_labels.shape
        bg_scale *= 1.2
        bg_affines = _walk(rng, config, count, (bw / 2, bh / 2), bg_scale, size, cover=(bh, bw))
    for t in range(count):
        layer = _render(image, labels, affines[t], displacement(), grid)
        if swap:
            bg = _render(bg_image, bg_labels, bg_affines[t], displacement(), grid)
            inside = (layer.labels != 0) & (layer.labels != VOID)
            frames[t] = bg.image
            _composite(frames[t], layer, inside)
            out_labels[t] = np.where(inside, layer.labels, bg.labels)
        else:
            frames[t] = layer.image
            out_labels[t] = layer.labels
    pasted = []
    if len(pairs) > 1 and rng.random() < config.paste_object and num_objects < VOID - 1:
        pasted.append(("object", 0))
    if len(pairs) > 1 and rng.random() < config.paste_distractor:
        pasted.append(("distractor", 0 if rng.random() < 0.5 else int(rng.integers(1, count))))
    for kind, first in pasted:
        index = other_pair(main)
        p_image, p_labels, p_count = reader(*pairs[index])
        if p_count == 0:
            continue
        # One pasted thing: the union of its objects.
        p_mask = ((p_labels != 0) & (p_labels != VOID)).astype(np.uint8)
        p_centre, p_extent = _object_pose(p_mask, [1])
        p_scale = rng.uniform(*config.pasted_size) * short / max(p_extent, 1.0)
        p_affines = _walk(rng, config, count, p_centre, p_scale, size)
        if rng.random() < 0.5:
            # Near the main object on the reference, so that it occludes it on later frames.
            target = affines[0] @ np.array([centre[0], centre[1], 1.0])
            jitter = rng.uniform(-0.3, 0.3, 2) * short
            shift = target + jitter - p_affines[0] @ np.array([p_centre[0], p_centre[1], 1.0])
            for a in p_affines:
                a[:, 2] += shift
        new_id = num_objects + 1
        for t in range(first, count):
            layer = _render(p_image, p_mask, p_affines[t], displacement(), grid)
            inside = layer.labels == 1
            _composite(frames[t], layer, inside)
            out_labels[t][inside] = new_id if kind == "object" else 0
        if kind == "object":
            num_objects += 1
    name = f"{Path(pairs[main][0]).stem}" + "".join(f"+{k}" for k, _ in pasted)
    return Clip(frames, out_labels, num_objects, name=name)


class StaticClipSource:
    """Synthetic clips from a folder of images + masks: a
    :class:`vostrack.data.clips.ClipSource`."""

    kind = "images-masks"

    def __init__(
        self,
        root: str | Path | Sequence[tuple[Path, Path]],
        config: StaticClipConfig = StaticClipConfig(),
        name: str | None = None,
    ) -> None:
        if isinstance(root, (str, Path)):
            self.root = Path(root)
            self.pairs = find_image_mask_pairs(self.root)
        else:
            self.pairs = [(Path(a), Path(b)) for a, b in root]
            self.root = self.pairs[0][0].parent.parent if self.pairs else Path(".")
            if not self.pairs:
                raise VostrackError("no image/mask pairs given")
        self.config = config
        self.name = name or f"images-masks:{self.root.name}"
        log.info("%s: %d image/mask pairs", self.root, len(self.pairs))

    def __repr__(self) -> str:
        return f"StaticClipSource({str(self.root)!r}, {len(self.pairs)} pairs)"

    def sample(self, rng: np.random.Generator, step: int = 0) -> Clip:
        cfg = self.config
        for _ in range(cfg.attempts):
            clip = make_static_clip(self.pairs, cfg, rng)
            clip = clip.relabel_from_reference(cfg.min_object_pixels)
            if clip.num_objects == 0:
                continue
            clip = augment_clip(clip, cfg.augment, rng, geometric=False)
            return clip.replace(source=self.name)
        raise VostrackError(
            f"{self.root}: no synthetic clip with a visible object after "
            f"{cfg.attempts} attempts (are the masks empty?)"
        )
