"""Procedural FlyingChairs-style scenes: textured shapes moving over a textured background.

Why this exists: the project needs videos whose ground truth is known exactly, in any number
and any length, without shipping third-party media. Tests use tiny clips, the README example
uses a short 854x480 clip, the memory benchmark streams 10,000-frame videos and a training
pipeline can draw unlimited (frame, mask, box) triples from it. So the generator must be

* deterministic given a seed (a failing test or a benchmark can be reproduced exactly);
* streaming: every per-frame quantity is a closed-form function of the frame index, so frame
  ``t`` can be rendered without rendering frames ``0..t-1`` and memory does not grow with the
  number of frames (only the textures, made once, are kept);
* fast: textures are made once; each frame is one ``cv2.warpAffine`` of the background plus, per
  object, one ``cv2.fillPoly`` and one ``cv2.warpAffine`` confined to the object's bounding box;
* hard enough to be a real test: every object carries its own texture (pattern + two shades of
  its own hue, modulated by noise), so it cannot be segmented by a single flat colour; objects
  rotate, scale and deform smoothly, occlude each other in a depth order (which may change), can
  appear late, disappear early, or leave the frame partially; the background pans.

Coordinates follow OpenCV: ``x`` is the column, ``y`` the row, pixel centres at integers.
Only numpy and OpenCV are needed at runtime.

:class:`ProceduralSource` draws a random scene for each training clip (the ``procedural``
training data), as :mod:`vostrack.data.static_clips` and :mod:`vostrack.data.video_datasets`
hold the sources of the other kinds.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from vostrack.data.clips import Clip, ClipSourceConfig, GapSchedule, augment_clip
from vostrack.errors import VostrackError

__all__ = [
    "SHAPE_KINDS",
    "TEXTURE_KINDS",
    "SceneConfig",
    "SceneFrame",
    "ProceduralClipSettings",
    "ProceduralClipConfig",
    "ProceduralSource",
    "Scene",
    "iter_scene",
    "make_clip",
    "object_boxes",
    "stack_frames",
    "value_noise",
]

#: Shapes an object can take. Every shape is a closed polygon in the object's own frame, given
#: as vertex angles and radii, so one deformation / transform / rasterisation path serves all.
SHAPE_KINDS: tuple[str, ...] = ("ellipse", "polygon", "star", "blob")

#: Texture patterns an object can carry (each mixed with noise and drawn in its own hue).
TEXTURE_KINDS: tuple[str, ...] = ("noise", "stripes", "checker", "gradient")

# Number of vertices of the smooth shapes (ellipse, blob): enough for a smooth outline at
# 854x480, few enough for fillPoly to stay cheap.
_SMOOTH_VERTICES = 72
# Sub-pixel precision of fillPoly (bits): motion stays smooth below one pixel per frame.
_SHIFT = 4


@dataclass(frozen=True)
class SceneConfig:
    """Everything that defines a scene; the same config always renders the same frames.

    Sizes and speeds are relative to ``min(height, width)`` so that a 64x96 test clip looks like
    a scaled-down 854x480 one (same number of crossings, same relative object sizes).
    Object ids are 1..num_objects, as in the label maps.
    """

    height: int = 480
    width: int = 854
    num_frames: int = 96
    num_objects: int = 3
    seed: int = 0
    #: Range of the base radius of an object, as a fraction of min(height, width).
    object_size: tuple[float, float] = (0.13, 0.22)
    #: Typical speed of an object's centre, in min(height, width) per frame.
    speed: float = 0.012
    #: Largest rotation speed, radians per frame.
    rotation_speed: float = 0.03
    #: Relative amplitude of the slow periodic scale change (0.15 = +-15 %).
    scale_amplitude: float = 0.15
    #: Relative amplitude of the outline deformation (radial wobble of the shape).
    deform_amplitude: float = 0.10
    #: Background pan speed, pixels per frame.
    background_pan: float = 0.5
    #: Shape of each object (cycled if shorter than num_objects); None draws them at random.
    shapes: tuple[str, ...] | None = None
    #: Texture of each object (cycled); None gives a random, as-distinct-as-possible assignment.
    textures: tuple[str, ...] | None = None
    #: Object id -> first frame on which it exists (default 0). The object pops in there, placed
    #: away from the objects already present, so its mask on that frame is a clean reference.
    appear_at: Mapping[int, int] = field(default_factory=dict)
    #: Object id -> first frame on which it no longer exists (default: never disappears).
    disappear_at: Mapping[int, int] = field(default_factory=dict)
    #: Let objects move partially out of the frame (otherwise they stay fully inside when the
    #: frame is big enough).
    leave_frame: bool = False
    #: With ``leave_frame``: the largest fraction of an object's width that may be outside.
    exit_fraction: float = 0.5
    #: If > 0, the depth order is redrawn every this many frames (occluder and occluded swap).
    depth_change_every: int = 0
    #: Soften object edges in the frame (labels stay hard); real footage has blended edges.
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"frame too small: {self.height}x{self.width} (need at least 8x8)")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not 1 <= self.num_objects <= 255:
            raise ValueError(f"num_objects must be in 1..255, got {self.num_objects}")
        lo, hi = self.object_size
        if not 0 < lo <= hi:
            raise ValueError(f"object_size must satisfy 0 < min <= max, got {self.object_size}")
        if not 0 <= self.exit_fraction <= 1:
            raise ValueError(f"exit_fraction must be in [0, 1], got {self.exit_fraction}")
        if self.depth_change_every < 0:
            raise ValueError("depth_change_every must be >= 0")
        for name, kinds, allowed in (
            ("shapes", self.shapes, SHAPE_KINDS),
            ("textures", self.textures, TEXTURE_KINDS),
        ):
            if kinds is not None:
                if len(kinds) == 0:
                    raise ValueError(f"{name} must not be empty (use None for random)")
                bad = [k for k in kinds if k not in allowed]
                if bad:
                    raise ValueError(f"unknown {name} {bad}; choose from {allowed}")
        for name, mapping in (("appear_at", self.appear_at), ("disappear_at", self.disappear_at)):
            for obj_id, frame in mapping.items():
                if not 1 <= obj_id <= self.num_objects:
                    raise ValueError(f"{name}: object id {obj_id} not in 1..{self.num_objects}")
                if frame < 0:
                    raise ValueError(f"{name}: frame {frame} for object {obj_id} is negative")
        for obj_id, end in self.disappear_at.items():
            if end <= self.appear_at.get(obj_id, 0):
                raise ValueError(f"object {obj_id} disappears (frame {end}) before it appears")

    def first_frame(self, obj_id: int) -> int:
        """First frame on which object ``obj_id`` exists."""
        return int(self.appear_at.get(obj_id, 0))

    def end_frame(self, obj_id: int) -> int | None:
        """First frame on which object ``obj_id`` no longer exists (None: never)."""
        end = self.disappear_at.get(obj_id)
        return None if end is None else int(end)


@dataclass
class SceneFrame:
    """One rendered frame with everything a test or a data pipeline needs, all consistent.

    ``present[k-1]`` says object ``k`` exists on this frame (appeared, not yet gone); it may still
    be invisible (fully occluded or out of the frame): its label area is what counts.
    ``amodal`` (only when asked for) holds each object's full shape, occluded parts included.
    """

    index: int
    frame: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8, 0 = background, k = object k (the visible one on top)
    present: np.ndarray  # (N,) bool
    depth_order: tuple[int, ...]  # object ids, back to front
    amodal: np.ndarray | None = None  # (N, H, W) bool full shapes, or None

    @property
    def boxes(self) -> np.ndarray:
        """Boxes of the visible parts, see :func:`object_boxes`."""
        return object_boxes(self.labels, len(self.present))


def object_boxes(labels: np.ndarray, num_objects: int | None = None) -> np.ndarray:
    """Bounding boxes of each object's labelled pixels, as an ``(N, 4)`` int32 array.

    Row ``k-1`` is ``(x0, y0, x1, y1)`` for object ``k`` with ``x1``/``y1`` exclusive, so the
    box of an object with no pixel is ``(0, 0, 0, 0)`` and has zero width: ``x1 > x0`` tells
    whether the object is visible. ``num_objects`` defaults to the largest id in ``labels``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if num_objects is None:
        num_objects = int(labels.max()) if labels.size else 0
    boxes = np.zeros((num_objects, 4), dtype=np.int32)
    if num_objects == 0:
        return boxes
    # One pass over the image: per-row and per-column presence of each id, via bincount on
    # (id, row) and (id, col) pairs of the non-background pixels only.
    ys, xs = np.nonzero(labels)
    if ys.size == 0:
        return boxes
    ids = labels[ys, xs].astype(np.int64)
    keep = ids <= num_objects
    ys, xs, ids = ys[keep], xs[keep], ids[keep]
    for k in np.unique(ids):
        sel = ids == k
        kx, ky = xs[sel], ys[sel]
        boxes[k - 1] = (kx.min(), ky.min(), kx.max() + 1, ky.max() + 1)
    return boxes


# --------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------


def value_noise(
    rng: np.random.Generator,
    height: int,
    width: int,
    cells: float = 4.0,
    octaves: int = 4,
    persistence: float = 0.5,
) -> np.ndarray:
    """Multi-octave value noise in [0, 1], float32 (H, W), periodic in both directions.

    ``cells`` is the number of random lattice cells along the shorter side at the coarsest
    octave; each octave doubles it. Lattices are sampled with bicubic interpolation and wrapped
    borders, so the result tiles seamlessly: the background can pan forever by wrapping around
    without a seam and without a texture that grows with the video length.
    """
    short = min(height, width)
    out = np.zeros((height, width), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)
    xs = np.arange(width, dtype=np.float32)
    amplitude, total = 1.0, 0.0
    for octave in range(octaves):
        c = cells * (2**octave)
        ny = max(1, round(c * height / short))
        nx = max(1, round(c * width / short))
        lattice = rng.random((ny, nx), dtype=np.float32)
        map_x = np.broadcast_to((xs + 0.5) * (nx / width) - 0.5, (height, width))
        map_y = np.broadcast_to(((ys + 0.5) * (ny / height) - 0.5)[:, None], (height, width))
        layer = cv2.remap(
            lattice,
            np.ascontiguousarray(map_x),
            np.ascontiguousarray(map_y),
            interpolation=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_WRAP,
        )
        out += amplitude * layer
        total += amplitude
        amplitude *= persistence
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _mix(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[..., None]
    return c0 * (1.0 - t) + c1 * t


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _object_texture(rng: np.random.Generator, size: int, kind: str, hue: float) -> np.ndarray:
    """A square uint8 RGB texture: a pattern in two shades of ``hue``, modulated by noise.

    Two shades (bright and dark) of one saturated hue make every object internally varied but
    still one 'thing'; the hues of different objects are far apart, and the background is
    desaturated, so objects are segmentable, but not by thresholding a single colour.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    warp = value_noise(rng, size, size, cells=2.0, octaves=2)
    if kind == "noise":
        pattern = value_noise(rng, size, size, cells=rng.uniform(2.5, 4.0), octaves=4)
        pattern = np.clip((pattern - 0.5) * 1.8 + 0.5, 0, 1)
    elif kind == "stripes":
        period = rng.uniform(9.0, 18.0)
        pattern = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + 2.5 * warp)
    elif kind == "checker":
        cell = rng.uniform(10.0, 20.0)
        pattern = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
        pattern = cv2.GaussianBlur(pattern, (0, 0), 0.8)
    elif kind == "gradient":
        # One smooth light-to-dark wave across the object, bent by noise: a colour gradient.
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * u / (0.8 * size) + rng.uniform(0, 2 * math.pi))
        pattern = np.clip(0.75 * wave + 0.5 * (warp - 0.5) + 0.125, 0, 1)
    else:  # pragma: no cover - guarded by SceneConfig
        raise ValueError(kind)
    bright = _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.65, 0.85), rng.uniform(0.85, 1.0))
    dark = _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.75, 1.0), rng.uniform(0.30, 0.50))
    image = _mix(bright, dark, pattern.astype(np.float32))
    grain = value_noise(rng, size, size, cells=size / 6.0, octaves=1)
    image *= (0.88 + 0.24 * grain)[..., None]
    return _to_uint8(image)


def _background_texture(
    rng: np.random.Generator, height: int, width: int, hue: float
) -> np.ndarray:
    """A seamlessly tiling, desaturated, mid-contrast uint8 RGB background of the frame's size."""
    base = value_noise(rng, height, width, cells=3.0, octaves=5, persistence=0.55)
    c0 = _hsv(hue, rng.uniform(0.15, 0.35), rng.uniform(0.25, 0.40))
    c1 = _hsv(hue + rng.uniform(0.08, 0.15), rng.uniform(0.10, 0.30), rng.uniform(0.65, 0.80))
    image = _mix(c0, c1, base)
    # A faint periodic plane wave with whole wave numbers, so the texture still tiles; it gives
    # the background straight structures that move with the pan (like floor tiles or bricks).
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kx, ky = int(rng.integers(3, 9)), int(rng.integers(2, 6))
    wave = np.sin(2 * math.pi * (kx * xs / width + ky * ys / height))
    image *= (1.0 + 0.10 * wave)[..., None]
    grain = value_noise(rng, height, width, cells=min(height, width) / 5.0, octaves=1)
    image *= (0.9 + 0.2 * grain)[..., None]
    return _to_uint8(image)


# --------------------------------------------------------------------------------------------
# Shapes and motion
# --------------------------------------------------------------------------------------------


def _shape_outline(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertex angles and radii (max radius 1) of a shape in its own frame."""
    if kind == "ellipse":
        phi = np.linspace(0, 2 * math.pi, _SMOOTH_VERTICES, endpoint=False)
        b = rng.uniform(0.5, 0.85)
        r = b / np.sqrt((b * np.cos(phi)) ** 2 + np.sin(phi) ** 2)
    elif kind == "polygon":
        n = int(rng.integers(3, 8))
        phi = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * math.pi / n)
        r = rng.uniform(0.7, 1.0, n)
    elif kind == "star":
        n = int(rng.integers(5, 9))
        phi = np.arange(2 * n) * (math.pi / n) + rng.uniform(-0.08, 0.08, 2 * n)
        r = np.where(
            np.arange(2 * n) % 2 == 0, rng.uniform(0.9, 1.0, 2 * n), rng.uniform(0.42, 0.58)
        )
    elif kind == "blob":
        phi = np.linspace(0, 2 * math.pi, _SMOOTH_VERTICES, endpoint=False)
        r = np.ones_like(phi)
        for k in range(1, 6):
            r += rng.uniform(0.08, 0.22) / k**0.5 * np.sin(k * phi + rng.uniform(0, 2 * math.pi))
        r = 0.6 + 0.4 * (r - r.min()) / max(np.ptp(r), 1e-6)
    else:  # pragma: no cover - guarded by SceneConfig
        raise ValueError(kind)
    r = r / r.max()
    return phi.astype(np.float64), r.astype(np.float64)


def _axis_path(
    rng: np.random.Generator, lo: float, hi: float, speed: float
) -> tuple[float, float, float, float, float]:
    """(mid, amplitude, omega, phase0, phase1) of a smooth bounded 1-D path in [lo, hi].

    x(t) = mid + amp * (0.75 sin(w t + p0) + 0.25 sin(2.3 w t + p1)): closed form (streaming,
    random access), smooth, always within [lo, hi], and irregular enough not to look periodic.
    """
    mid, amp = (lo + hi) / 2.0, max(hi - lo, 0.0) / 2.0
    omega = min(speed * rng.uniform(0.6, 1.4) / max(amp, 1.0), 0.25)
    return mid, amp, omega, rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)


def _axis_value(path: tuple[float, float, float, float, float], t: float) -> float:
    mid, amp, omega, p0, p1 = path
    return mid + amp * (0.75 * math.sin(omega * t + p0) + 0.25 * math.sin(2.3 * omega * t + p1))


@dataclass
class _Object:
    """Everything fixed about one object; its pose at frame t is a closed-form function of t."""

    obj_id: int
    shape: str
    texture_kind: str
    phi: np.ndarray  # vertex angles
    radii: np.ndarray  # vertex radii, in pixels at scale 1 (before deformation)
    extent: float  # largest distance of any outline point from the centre, pixels
    path_x: tuple[float, float, float, float, float]
    path_y: tuple[float, float, float, float, float]
    angle0: float
    spin: float  # radians / frame
    scale_omega: float
    scale_phase: float
    deform_terms: list[tuple[int, float, float, float]]  # (harmonic, weight, omega, phase)
    texture: np.ndarray  # (S, S, 3) uint8, texture in the object's frame, centre at the middle
    first: int
    end: int | None

    def centre(self, t: float) -> tuple[float, float]:
        return _axis_value(self.path_x, t), _axis_value(self.path_y, t)

    def present(self, t: int) -> bool:
        return t >= self.first and (self.end is None or t < self.end)


class Scene:
    """A procedural scene: made once from a :class:`SceneConfig`, rendered frame by frame.

    Construction makes the textures and draws every random parameter; :meth:`render` is then a
    pure function of the frame index, so frames can be rendered in any order, in parallel
    processes (each with its own Scene), and always identically.
    """

    def __init__(self, config: SceneConfig) -> None:
        self.config = config
        cfg = config
        rng = np.random.default_rng([int(cfg.seed) & 0xFFFFFFFF, 0x5CE4E])
        short = min(cfg.height, cfg.width)
        n = cfg.num_objects

        bg_hue = float(rng.random())
        self._background = _background_texture(rng, cfg.height, cfg.width, bg_hue)
        pan_angle = rng.uniform(0, 2 * math.pi)
        self._pan = (
            cfg.background_pan * math.cos(pan_angle),
            cfg.background_pan * math.sin(pan_angle),
        )
        self._pan_wobble = (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi))

        # Object hues spread evenly around the colour wheel, starting away from the background's.
        hue_offset = rng.uniform(0.0, 1.0 / (n + 1))
        hues = [bg_hue + 0.5 / (n + 1) + hue_offset + i / (n + 1) for i in range(n)]
        hues = [hues[i] for i in rng.permutation(n)]
        if cfg.shapes is None:
            shapes = [SHAPE_KINDS[i] for i in rng.integers(0, len(SHAPE_KINDS), n)]
        else:
            shapes = [cfg.shapes[i % len(cfg.shapes)] for i in range(n)]
        if cfg.textures is None:
            order = list(rng.permutation(len(TEXTURE_KINDS)))
            textures = [TEXTURE_KINDS[order[i % len(order)]] for i in range(n)]
        else:
            textures = [cfg.textures[i % len(cfg.textures)] for i in range(n)]

        speed = cfg.speed * short
        self._objects: list[_Object] = []
        # Place objects in order of appearance, each where it overlaps least with the objects
        # already present on its first frame: reference masks start clean, occlusions come later.
        ids_by_first = sorted(range(1, n + 1), key=lambda k: (cfg.first_frame(k), k))
        by_id: dict[int, _Object] = {}
        for obj_id in ids_by_first:
            obj_rng = np.random.default_rng([int(cfg.seed) & 0xFFFFFFFF, 0x0B1EC7, obj_id])
            shape = shapes[obj_id - 1]
            phi, unit_r = _shape_outline(obj_rng, shape)
            r0 = obj_rng.uniform(*cfg.object_size) * short
            radii = unit_r * r0
            extent = float(radii.max()) * (1 + cfg.deform_amplitude) * (1 + cfg.scale_amplitude)

            def bounds(size: int, extent: float = extent) -> tuple[float, float]:
                inset = extent * (1 - 2 * cfg.exit_fraction) if cfg.leave_frame else extent
                lo, hi = inset, size - 1 - inset
                if lo > hi:  # frame smaller than the object: it wobbles about the middle
                    lo = hi = (size - 1) / 2.0
                return lo, hi

            first = cfg.first_frame(obj_id)
            best: tuple[float, tuple, tuple] | None = None
            for _ in range(48):
                px = _axis_path(obj_rng, *bounds(cfg.width), speed)
                py = _axis_path(obj_rng, *bounds(cfg.height), speed)
                cx, cy = _axis_value(px, first), _axis_value(py, first)
                clearance = math.inf
                for other in by_id.values():
                    if other.present(first):
                        ox, oy = other.centre(first)
                        gap = math.hypot(cx - ox, cy - oy) - (extent + other.extent) * 0.85
                        clearance = min(clearance, gap)
                if best is None or clearance > best[0]:
                    best = (clearance, px, py)
                if clearance >= 0:
                    break
            assert best is not None
            _, path_x, path_y = best

            deform_terms = []
            weights = obj_rng.uniform(0.3, 1.0, 3)
            weights /= weights.sum()
            for harmonic, w in zip((2, 3, 5), weights):
                deform_terms.append(
                    (
                        harmonic,
                        float(w),
                        obj_rng.uniform(0.03, 0.10),
                        obj_rng.uniform(0, 2 * math.pi),
                    )
                )
            half = int(math.ceil(float(radii.max()) * (1 + cfg.deform_amplitude))) + 3
            texture = _object_texture(obj_rng, 2 * half + 1, textures[obj_id - 1], hues[obj_id - 1])
            obj = _Object(
                obj_id=obj_id,
                shape=shape,
                texture_kind=textures[obj_id - 1],
                phi=phi,
                radii=radii,
                extent=extent,
                path_x=path_x,
                path_y=path_y,
                angle0=obj_rng.uniform(0, 2 * math.pi),
                spin=float(
                    obj_rng.choice([-1, 1]) * obj_rng.uniform(0.3, 1.0) * cfg.rotation_speed
                ),
                scale_omega=2 * math.pi / obj_rng.uniform(40, 100),
                scale_phase=obj_rng.uniform(0, 2 * math.pi),
                deform_terms=deform_terms,
                texture=texture,
                first=first,
                end=cfg.end_frame(obj_id),
            )
            by_id[obj_id] = obj
        self._objects = [by_id[k] for k in range(1, n + 1)]
        self._base_order = tuple(int(k) + 1 for k in rng.permutation(n))

    # ---- per-frame quantities (closed form in t) -------------------------------------------

    def __len__(self) -> int:
        return self.config.num_frames

    def __iter__(self) -> Iterator[SceneFrame]:
        for t in range(self.config.num_frames):
            yield self.render(t)

    @property
    def shapes(self) -> tuple[str, ...]:
        """Shape kind of each object (index k-1 for object k)."""
        return tuple(o.shape for o in self._objects)

    @property
    def textures(self) -> tuple[str, ...]:
        """Texture kind of each object (index k-1 for object k)."""
        return tuple(o.texture_kind for o in self._objects)

    def depth_order(self, t: int) -> tuple[int, ...]:
        """Object ids from back to front on frame ``t``."""
        every = self.config.depth_change_every
        if every <= 0 or t < every:
            return self._base_order
        segment = t // every
        rng = np.random.default_rng([int(self.config.seed) & 0xFFFFFFFF, 0xDE97, segment])
        return tuple(int(k) + 1 for k in rng.permutation(self.config.num_objects))

    def outline(self, obj_id: int, t: int) -> np.ndarray:
        """Object ``obj_id``'s outline on frame ``t``: (K, 2) float64 (x, y) frame coordinates."""
        obj = self._objects[obj_id - 1]
        return self._outline(obj, t)[0]

    def _outline(self, obj: _Object, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(outline vertices (K, 2), 2x3 affine from texture pixels to frame pixels)."""
        cfg = self.config
        wobble = np.zeros_like(obj.phi)
        for harmonic, weight, omega, phase in obj.deform_terms:
            wobble += weight * np.sin(harmonic * obj.phi + phase + omega * t)
        r = obj.radii * (1.0 + cfg.deform_amplitude * wobble)
        scale = 1.0 + cfg.scale_amplitude * math.sin(obj.scale_omega * t + obj.scale_phase)
        angle = obj.angle0 + obj.spin * t
        cx, cy = obj.centre(t)
        ca, sa = scale * math.cos(angle), scale * math.sin(angle)
        lx, ly = r * np.cos(obj.phi), r * np.sin(obj.phi)
        pts = np.stack([cx + ca * lx - sa * ly, cy + sa * lx + ca * ly], axis=1)
        mid = (obj.texture.shape[0] - 1) / 2.0
        affine = np.array(
            [[ca, -sa, cx - (ca - sa) * mid], [sa, ca, cy - (sa + ca) * mid]], dtype=np.float64
        )
        return pts, affine

    def _background_at(self, t: int) -> np.ndarray:
        cfg = self.config
        wob = cfg.background_pan * 12.0
        ox = self._pan[0] * t + wob * math.sin(t / 47.0 + self._pan_wobble[0])
        oy = self._pan[1] * t + wob * math.sin(t / 61.0 + self._pan_wobble[1])
        # The texture tiles, so only the offset modulo its size matters; reducing it keeps
        # float32 precision for very long videos.
        m = np.array([[1, 0, ox % cfg.width], [0, 1, oy % cfg.height]], dtype=np.float64)
        return cv2.warpAffine(
            self._background,
            m,
            (cfg.width, cfg.height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_WRAP,
        )

    def render(self, t: int, *, amodal: bool = False, hide: Collection[int] = ()) -> SceneFrame:
        """Render frame ``t``.

        ``amodal`` also returns each object's full (unoccluded, unclipped-by-others) shape.
        ``hide`` leaves the listed object ids out (everything else identical): tests use it to
        show that exactly the pixels labelled as an object carry that object's texture.
        """
        cfg = self.config
        if not 0 <= t < cfg.num_frames:
            raise IndexError(f"frame {t} out of range 0..{cfg.num_frames - 1}")
        h, w = cfg.height, cfg.width
        frame = self._background_at(t)
        labels = np.zeros((h, w), dtype=np.uint8)
        full = np.zeros((cfg.num_objects, h, w), dtype=bool) if amodal else None
        present = np.array([o.present(t) for o in self._objects], dtype=bool)
        order = self.depth_order(t)
        for obj_id in order:
            obj = self._objects[obj_id - 1]
            if not present[obj_id - 1] or obj_id in hide:
                continue
            pts, affine = self._outline(obj, t)
            x0 = max(int(math.floor(pts[:, 0].min())) - 2, 0)
            y0 = max(int(math.floor(pts[:, 1].min())) - 2, 0)
            x1 = min(int(math.ceil(pts[:, 0].max())) + 3, w)
            y1 = min(int(math.ceil(pts[:, 1].max())) + 3, h)
            if x1 <= x0 or y1 <= y0:
                continue  # entirely outside the frame
            bw, bh = x1 - x0, y1 - y0
            mask = np.zeros((bh, bw), dtype=np.uint8)
            poly = np.round((pts - (x0, y0)) * (1 << _SHIFT)).astype(np.int32)
            cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_8, shift=_SHIFT)
            inside = mask > 0
            if not inside.any():
                continue
            local = affine.copy()
            local[:, 2] -= (x0, y0)
            tex = cv2.warpAffine(
                obj.texture,
                local,
                (bw, bh),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT_101,
            )
            region = frame[y0:y1, x0:x1]
            if cfg.antialias:
                # Soft edge: labelled pixels keep >= 5/9 of the object's colour, pixels just
                # outside get at most 4/9; the label stays the hard polygon.
                alpha = cv2.blur(mask, (3, 3)).astype(np.uint16)[..., None]
                region[...] = ((region * (255 - alpha) + tex * alpha + 127) // 255).astype(np.uint8)
            else:
                region[inside] = tex[inside]
            labels[y0:y1, x0:x1][inside] = obj_id
            if full is not None:
                full[obj_id - 1, y0:y1, x0:x1] = inside
        return SceneFrame(
            index=t, frame=frame, labels=labels, present=present, depth_order=order, amodal=full
        )


def iter_scene(config: SceneConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frame, labels)`` for every frame, one at a time.

    ``frame`` is (H, W, 3) uint8 RGB, ``labels`` (H, W) uint8 with 0 for the background and k for
    object k where it is visible (the front-most object wins). Memory stays constant however
    long the video: each frame is rendered when asked for and nothing is kept.
    """
    scene = Scene(config)
    for t in range(config.num_frames):
        out = scene.render(t)
        yield out.frame, out.labels


def make_clip(config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """The whole clip as arrays: frames (T, H, W, 3) uint8 and labels (T, H, W) uint8."""
    frames = np.empty((config.num_frames, config.height, config.width, 3), dtype=np.uint8)
    labels = np.empty((config.num_frames, config.height, config.width), dtype=np.uint8)
    for t, (frame, label) in enumerate(iter_scene(config)):
        frames[t] = frame
        labels[t] = label
    return frames, labels


def stack_frames(frames: Sequence[SceneFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack rendered :class:`SceneFrame` s into (frames, labels, boxes) arrays.

    A convenience for data pipelines that want masks, boxes and frames from the same render.
    """
    if not frames:
        raise ValueError("no frames")
    return (
        np.stack([f.frame for f in frames]),
        np.stack([f.labels for f in frames]),
        np.stack([f.boxes for f in frames]),
    )


# --------------------------------------------------------------------------------------------
# Clip source: a random scene per training clip
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProceduralClipSettings:
    """How random scenes are drawn for training clips (a training config's ``procedural``
    section).

    Each clip draws a :class:`SceneConfig`: ``objects`` objects (inclusive range), a base radius
    range inside ``object_size`` (fractions of the shorter side), a speed in ``speed``; rotation
    speed, scale and outline amplitudes and background pan each uniform in their range; objects
    leaving the frame with ``leave_frame`` probability, depth order changes (occluder and
    occluded swap) with ``depth_changes`` probability, every ``depth_change_every`` frames
    (inclusive range). The scene is ``scene_length`` frames long, the clip is played backwards
    with probability ``reverse`` (objects that appear as well as leave). A scene whose reference
    frame keeps no object of ``min_object_pixels`` is drawn again, ``attempts`` times at most.
    """

    objects: tuple[int, int] = (1, 4)
    object_size: tuple[float, float] = (0.08, 0.3)
    speed: tuple[float, float] = (0.004, 0.025)
    rotation_speed: tuple[float, float] = (0.0, 0.05)
    scale_amplitude: tuple[float, float] = (0.0, 0.25)
    deform_amplitude: tuple[float, float] = (0.0, 0.15)
    background_pan: tuple[float, float] = (0.0, 1.5)
    leave_frame: float = 0.4
    depth_changes: float = 0.3
    depth_change_every: tuple[int, int] = (5, 29)
    reverse: float = 0.5
    scene_length: int = 240
    min_object_pixels: int = 64
    attempts: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be a range 1 <= min <= max, got {self.objects}")
        if not 1 <= self.depth_change_every[0] <= self.depth_change_every[1]:
            raise ValueError(
                f"depth_change_every must be a range 1 <= min <= max, got {self.depth_change_every}"
            )


@dataclass(frozen=True)
class ProceduralClipConfig(ProceduralClipSettings, ClipSourceConfig):
    """:class:`ProceduralClipSettings` with the run's frames per clip, augmentation and
    ``max_gap``: frames of a clip are at most that many scene frames apart (an int, or a
    :class:`~vostrack.data.clips.GapSchedule`). Scenes render at the training size directly
    (then flip and colour jitter): a crop of a bigger render would cost more and add nothing a
    random scene does not already vary."""

    max_gap: int | GapSchedule = 4

    def __post_init__(self) -> None:
        ClipSourceConfig.__post_init__(self)
        ProceduralClipSettings.__post_init__(self)


class ProceduralSource:
    """Clips of random procedural scenes: needs no data. A
    :class:`~vostrack.data.clips.ClipSource`."""

    kind = "procedural"

    def __init__(
        self, config: ProceduralClipConfig = ProceduralClipConfig(), name: str = "procedural"
    ) -> None:
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
        # The draws stay in this order whatever the settings: a clip is a function of the seed.
        return SceneConfig(
            height=height,
            width=width,
            num_frames=cfg.scene_length,
            num_objects=int(rng.integers(cfg.objects[0], cfg.objects[1] + 1)),
            seed=int(rng.integers(0, 2**31 - 1)),
            object_size=(low, high),
            speed=float(rng.uniform(*cfg.speed)),
            rotation_speed=float(rng.uniform(*cfg.rotation_speed)),
            scale_amplitude=float(rng.uniform(*cfg.scale_amplitude)),
            deform_amplitude=float(rng.uniform(*cfg.deform_amplitude)),
            background_pan=float(rng.uniform(*cfg.background_pan)),
            leave_frame=bool(rng.random() < cfg.leave_frame),
            depth_change_every=int(
                rng.integers(cfg.depth_change_every[0], cfg.depth_change_every[1] + 1)
            )
            if rng.random() < cfg.depth_changes
            else 0,
        )

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
            if rng.random() < cfg.reverse:
                times = times[::-1]  # played backwards: objects that appear as well as leave
            scene = Scene(scene_cfg)
            rendered = [scene.render(int(t)) for t in times]
            clip = Clip(
                np.stack([r.frame for r in rendered]),
                np.stack([r.labels for r in rendered]),
                scene_cfg.num_objects,
                name=f"scene{scene_cfg.seed}:" + ",".join(str(int(t)) for t in times),
                source=self.name,
            )
            clip = clip.relabel_from_reference(cfg.min_object_pixels)
            if clip.num_objects:
                return augment_clip(clip, cfg.augment, rng, geometric=False)
        raise VostrackError(
            "procedural scenes gave no visible object "
            f"after {cfg.attempts} attempts (object_size too small?)"
        )
