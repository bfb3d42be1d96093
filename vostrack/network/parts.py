"""Part geometry in numpy: splitting a mask into parts, boxes, windows, response labels and
decoding. Runs once per annotation and inside the training data pipeline; the in-graph (per-frame)
counterparts of the window and decoding maths are in :mod:`vostrack.network.tracker`, tested to
agree with these.

Conventions (shared by :mod:`vostrack.network.roi` and :mod:`vostrack.network.tracker`):

- A box is ``[y0, x0, y1, x1]`` float32 in **pixel coordinates** of the frame the network sees
  (after padding to a multiple of 32), corners continuous: pixel ``(r, c)`` covers
  ``[r, r + 1) x [c, c + 1)`` and its centre is ``(r + 0.5, c + 0.5)``. A mask's tight box is
  ``[rmin, cmin, rmax + 1, cmax + 1]``, so a box's height is the number of rows it covers.
- A stride-``s`` feature cell ``j`` is centred on pixel ``s * j + s - 1`` (continuous coordinate
  ``s * j + s - 0.5``). That is what TF "SAME" padding gives when every stride-2 layer sees an even
  size (DESIGN.md's claim, checked here on the EfficientNet-Lite2 backbone by back-propagating from
  one cell of C2/C3 and taking the centre of its receptive field; ``tests/test_parts.py`` keeps
  that check). It holds for frames whose sides divide by 32 (the pipeline pads 854 to 864); on a
  480x854 frame the centres drift (C2 cell j of a 250-px side is centred on 4j + 1, not 4j + 3).
- Parts are padded to a fixed count ``max_parts`` with a boolean validity mask, so that array
  shapes do not change from one video to the next (JAX compiles once per shape).
- A part's tracker geometry (SiamFC): the *template window* is a square around the part, of side
  ``sqrt((h + p) * (w + p))`` with context ``p = context * (h + w)``; the *search window* has the
  same centre and ``search_size / template_size`` times that side, so that the template crop
  (``template_size`` samples) and the search crop (``search_size`` samples) share one sample
  spacing ``d``. Response cell ``(i, j)`` (size ``R = search_size - template_size + 1``) places the
  part's centre at ``window_y0 + (i + template_size / 2) * d``; the centre cell ``(R - 1) / 2``
  is "no motion" (R is odd when search_size - template_size is even, which the tracker requires).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


# --------------------------------------------------------------------------- boxes


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight box ``[rmin, cmin, rmax + 1, cmax + 1]`` (float32) of a 2-D mask, None if empty."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(mask, axis=0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


def box_centres_sizes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(cy, cx, h, w) of boxes (..., 4)."""
    boxes = np.asarray(boxes, np.float32)
    return ((boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2,
            boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])


def boxes_from_centres_sizes(cy: np.ndarray, cx: np.ndarray, h: np.ndarray,
                             w: np.ndarray) -> np.ndarray:
    """Boxes (..., 4) from centres and sizes."""
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1).astype(np.float32)


def expand_box(boxes: np.ndarray, context: float = 0.5, min_side: float = 0.0,
               square: bool = True) -> np.ndarray:
    """Boxes grown by the context ``p = context * (h + w)``: SiamFC's template window, the square
    of side ``max(sqrt((h + p)(w + p)), min_side)`` around each box's centre, or with
    ``square=False`` the box ``(h + p) x (w + p)`` (e.g. for a mask crop).

    Square for the tracker, because its crops are square: a thin part then keeps its aspect ratio
    in the template instead of being stretched, and the context (background around the part) is
    what lets the correlation tell the part from look-alikes.
    """
    cy, cx, h, w = box_centres_sizes(boxes)
    pad = context * (h + w)
    if not square:
        return boxes_from_centres_sizes(cy, cx, np.maximum(h + pad, min_side),
                                        np.maximum(w + pad, min_side))
    side = np.maximum(np.sqrt(np.maximum(h + pad, 0) * np.maximum(w + pad, 0)), min_side)
    return boxes_from_centres_sizes(cy, cx, side, side)


def scale_box(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Boxes scaled by ``factor`` about their centres."""
    cy, cx, h, w = box_centres_sizes(boxes)
    return boxes_from_centres_sizes(cy, cx, h * factor, w * factor)


def search_window(boxes: np.ndarray, context: float = 0.5, factor: float = 3.0,
                  min_side: float = 0.0) -> np.ndarray:
    """The search window around each part box: its template window (:func:`expand_box`) scaled by
    ``factor`` (= search_size / template_size for the tracker)."""
    return scale_box(expand_box(boxes, context, min_side), factor)


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Boxes clipped to the frame ``[0, height] x [0, width]``."""
    boxes = np.asarray(boxes, np.float32).copy()
    boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, height)
    boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, width)
    return boxes


def pixel_to_feature(coords: np.ndarray, stride: int) -> np.ndarray:
    """Continuous pixel coordinates -> feature-index coordinates at ``stride`` (cell j at j)."""
    return (np.asarray(coords, np.float32) - (stride - 0.5)) / stride


def feature_to_pixel(coords: np.ndarray, stride: int) -> np.ndarray:
    """Feature-index coordinates -> continuous pixel coordinates (cell j -> s*j + s - 0.5)."""
    return np.asarray(coords, np.float32) * stride + (stride - 0.5)


# --------------------------------------------------------------------------- parts


@dataclasses.dataclass(frozen=True)
class PartsConfig:
    """How a mask is split into parts.

    max_parts: the fixed (padded) number of parts per object.
    min_part_area: pixels per part: an object gets ``area // min_part_area`` parts, at least one
        and at most ``max_parts``, so that a small object is not cut into parts too small to hold
        a distinctive template (at stride 8 a 32x32-px part is 4x4 cells).
    max_points: the k-means runs on at most this many mask pixels (an even subsample), which
        bounds its cost on a 1080p mask; the final assignment uses every pixel.
    iterations: Lloyd iterations at most (it usually converges in fewer).
    """

    max_parts: int = 6
    min_part_area: float = 32.0 * 32.0
    max_points: int = 4096
    iterations: int = 20

    def __post_init__(self) -> None:
        if self.max_parts < 1:
            raise ValueError(f"max_parts must be >= 1, got {self.max_parts}")


@dataclasses.dataclass(frozen=True)
class Parts:
    """The parts of one object: ``boxes`` (max_parts, 4) float32 (zeros where invalid) and
    ``valid`` (max_parts,) bool; valid parts come first."""

    boxes: np.ndarray
    valid: np.ndarray

    @property
    def count(self) -> int:
        return int(self.valid.sum())


def _farthest_point_init(points: np.ndarray, k: int) -> np.ndarray:
    # Maximin init: deterministic (no RNG), spreads the seeds over the whole shape, and never
    # picks the same point twice while there are k distinct points.
    centroid = points.mean(axis=0)
    chosen = [int(np.argmax(((points - centroid) ** 2).sum(1)))]
    nearest = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(1))
    return points[chosen].copy()


def nearest_centre(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index (N,) int64 of the nearest of ``centres`` (k, 2) to each of ``points`` (N, 2), by
    squared distance computed in their dtype; a tie goes to the first (lowest-index) centre.

    One pass per centre with a running minimum: O(points) memory, so the final assignment of
    every pixel of a 1080p mask does not build a (pixels, k, 2) array.
    """
    best = np.full(len(points), np.inf)
    labels = np.zeros(len(points), np.int64)
    for index, (cy, cx) in enumerate(centres):
        distance = (points[:, 0] - cy) ** 2 + (points[:, 1] - cx) ** 2
        closer = distance < best
        best = np.where(closer, distance, best)
        labels[closer] = index
    return labels


@dataclasses.dataclass(frozen=True)
class KMeansParts:
    """The k-means split of one mask (:func:`kmeans_parts`).

    boxes: (n, 4) float32, the tight boxes of the n non-empty clusters in :func:`split_mask`'s
        order (by mean pixel: top to bottom, then left to right).
    cluster_centres: (k, 2) float64, every cluster's centre (row, col; pixel centres at +0.5) in
        cluster (seed) order, the order in which :func:`nearest_centre` breaks ties as the split
        did: assign new points to these to continue the split (e.g. on a later frame).
    cluster_part: (k,) int64, each cluster's row in ``boxes``, -1 for a cluster with no pixel.
    """

    boxes: np.ndarray
    cluster_centres: np.ndarray
    cluster_part: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        """(n, 2) float64: the centre of each part, aligned with ``boxes``."""
        centres = np.zeros((len(self.boxes), 2))
        kept = self.cluster_part >= 0
        centres[self.cluster_part[kept]] = self.cluster_centres[kept]
        return centres


def kmeans_parts(mask: np.ndarray, config: PartsConfig = PartsConfig()) -> KMeansParts:
    """The parts of :func:`split_mask` (its valid boxes, in its order) with their k-means centres.

    k-means of the mask's pixel coordinates into ``area // min_part_area`` clusters (at least 1,
    at most ``max_parts``): farthest-point seeds, Lloyd iterations on an even subsample of at
    most ``max_points`` pixels, then every pixel assigned to its nearest centre. A single
    cluster's centre is the mean pixel. An empty mask gives no part.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"split_mask needs a 2-D mask, got shape {mask.shape}")
    rows, cols = np.nonzero(mask)
    area = rows.size
    if area == 0:
        return KMeansParts(np.zeros((0, 4), np.float32), np.zeros((0, 2)), np.zeros(0, np.int64))
    k = int(np.clip(area // config.min_part_area, 1, config.max_parts))
    k = min(k, area)
    points = np.stack([rows, cols], axis=1).astype(np.float64) + 0.5
    if k > 1:
        sample = points
        if area > config.max_points:
            sample = points[np.linspace(0, area - 1, config.max_points).astype(np.int64)]
        centres = _farthest_point_init(sample, k)
        labels = nearest_centre(sample, centres)
        for _ in range(config.iterations):
            # Each cluster's mean, summed by bincount in point order: the same sequential sum
            # as ``sample[labels == c].mean(0)`` (axis-0 reductions are not pairwise), so the
            # same centres to the last bit, in one pass instead of k gathers. An empty cluster
            # keeps its centre (cannot happen from distinct seeds on the first step; kept for
            # safety on later steps).
            counts = np.bincount(labels, minlength=k)
            sums = np.stack([np.bincount(labels, sample[:, 0], minlength=k),
                             np.bincount(labels, sample[:, 1], minlength=k)], axis=1)
            new_centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None],
                                   centres)
            new_labels = nearest_centre(sample, new_centres)
            centres = new_centres
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
        labels = nearest_centre(points, centres)
    else:
        labels = np.zeros(area, np.int64)
        centres = points.mean(0, keepdims=True)
    found = []
    for c in range(k):
        members = labels == c
        if not np.any(members):
            continue
        r, q = rows[members], cols[members]
        found.append(((r.mean(), q.mean()), c, [r.min(), q.min(), r.max() + 1, q.max() + 1]))
    found.sort(key=lambda item: item[0])
    boxes = np.array([box for _, _, box in found], np.float32).reshape(-1, 4)
    cluster_part = np.full(k, -1, np.int64)
    for position, (_, c, _) in enumerate(found):
        cluster_part[c] = position
    return KMeansParts(boxes, centres, cluster_part)


def split_mask(mask: np.ndarray, config: PartsConfig = PartsConfig()) -> Parts:
    """Split a 2-D object mask into at most ``config.max_parts`` part boxes.

    k-means on the pixel coordinates of the mask (:func:`kmeans_parts`), rather than cells of a
    grid over the object's box: every mask pixel belongs to exactly one part, so the part boxes
    always cover the whole mask (a grid drops the cells under its mask threshold: thin limbs, the
    tips of a diagonal object); the parts follow the shape instead of the box (an L-shaped or
    diagonal object gives no near-empty cells); and the parts have similar areas, so every
    template holds a similar amount of object. Deterministic: farthest-point seeds, no RNG, parts
    sorted by centre (top to bottom, then left to right). An empty mask gives no valid part; a
    mask smaller than ``min_part_area`` gives one part, its tight box.
    """
    found = kmeans_parts(mask, config).boxes
    boxes = np.zeros((config.max_parts, 4), np.float32)
    valid = np.zeros(config.max_parts, bool)
    boxes[:len(found)] = found
    valid[:len(found)] = True
    return Parts(boxes, valid)


@dataclasses.dataclass(frozen=True)
class PartBatch:
    """Parts of several objects as one batch of ``num_objects * max_parts`` rows: object ``o``'s
    parts are rows ``o * max_parts .. (o + 1) * max_parts - 1``."""

    boxes: np.ndarray  # (num_objects * max_parts, 4) float32
    object_index: np.ndarray  # (num_objects * max_parts,) int32
    valid: np.ndarray  # (num_objects * max_parts,) bool


def batch_parts(parts: Sequence[Parts]) -> PartBatch:
    """Stack the parts of several objects (all with the same ``max_parts``)."""
    if not parts:
        return PartBatch(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, bool))
    sizes = {p.boxes.shape[0] for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"all objects need the same max_parts, got {sorted(sizes)}")
    max_parts = sizes.pop()
    return PartBatch(np.concatenate([p.boxes for p in parts]).astype(np.float32),
                     np.repeat(np.arange(len(parts), dtype=np.int32), max_parts),
                     np.concatenate([p.valid for p in parts]))


# --------------------------------------------------------------------------- responses


def response_size(template_size: int, search_size: int) -> int:
    """Side of the correlation response."""
    return search_size - template_size + 1


def response_to_pixel(cells: np.ndarray, window_start: np.ndarray, window_side: np.ndarray,
                      template_size: int, search_size: int) -> np.ndarray:
    """Response coordinates (cell i, continuous) -> the part-centre pixel coordinate they stand
    for, along one axis, for search windows starting at ``window_start`` of side ``window_side``."""
    spacing = np.asarray(window_side, np.float32) / search_size
    return window_start + (np.asarray(cells, np.float32) + template_size / 2) * spacing


def pixel_to_response(coords: np.ndarray, window_start: np.ndarray, window_side: np.ndarray,
                      template_size: int, search_size: int) -> np.ndarray:
    """Inverse of :func:`response_to_pixel`."""
    spacing = np.asarray(window_side, np.float32) / search_size
    return (np.asarray(coords, np.float32) - window_start) / spacing - template_size / 2


def cosine_window(size: int) -> np.ndarray:
    """SiamFC's Hann window (size, size), 1 at the centre (odd size), 0 on the border."""
    hann = np.hanning(size).astype(np.float32)
    return np.outer(hann, hann)


def response_labels(size: int, centre: Sequence[float], radius: float) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """SiamFC training labels for one response map: ``labels`` (size, size) float32, 1 for cells
    within ``radius`` cells of ``centre`` = (cy, cx) (response coordinates, see
    :func:`pixel_to_response`; the map's centre for a target that did not move), 0 elsewhere; and
    ``weights`` that give the positives and the negatives half of the total weight each (SiamFC's
    balancing: positives are a handful of cells against hundreds of negatives)."""
    i, j = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32),
                       indexing="ij")
    distance = np.hypot(i - centre[0], j - centre[1])
    labels = (distance <= radius).astype(np.float32)
    num_pos = labels.sum()
    num_neg = labels.size - num_pos
    weights = np.zeros_like(labels)
    if num_pos:
        weights += labels * (0.5 / num_pos)
    if num_neg:
        weights += (1 - labels) * (0.5 / num_neg)
    if not num_pos or not num_neg:
        weights *= 2  # one class only: it carries the whole weight
    return labels, weights


def encode_offsets(target_boxes: np.ndarray, previous_boxes: np.ndarray, windows: np.ndarray,
                   template_size: int, search_size: int) -> np.ndarray:
    """Box-regression targets (N, R, R, 4) for every response cell: ``[dy, dx, dlog_h, dlog_w]``,
    where (dy, dx) is the target centre's offset from the cell's own centre in response cells
    (sample spacings) and dlog_* the log of the target size over the previous box size.
    :func:`decode_response` inverts it at the peak cell. Train it on the positive cells only."""
    r = response_size(template_size, search_size)
    tcy, tcx, th, tw = box_centres_sizes(target_boxes)
    _, _, ph, pw = box_centres_sizes(previous_boxes)
    windows = np.asarray(windows, np.float32)
    side_y = windows[:, 2] - windows[:, 0]
    side_x = windows[:, 3] - windows[:, 1]
    ty = pixel_to_response(tcy, windows[:, 0], side_y, template_size, search_size)
    tx = pixel_to_response(tcx, windows[:, 1], side_x, template_size, search_size)
    cells = np.arange(r, dtype=np.float32)
    dy = np.broadcast_to(ty[:, None, None] - cells[None, :, None], (len(ty), r, r))
    dx = np.broadcast_to(tx[:, None, None] - cells[None, None, :], (len(tx), r, r))
    dh = np.broadcast_to(np.log(np.maximum(th, 1e-6) / np.maximum(ph, 1e-6))[:, None, None],
                         dy.shape)
    dw = np.broadcast_to(np.log(np.maximum(tw, 1e-6) / np.maximum(pw, 1e-6))[:, None, None],
                         dy.shape)
    return np.stack([dy, dx, dh, dw], axis=-1).astype(np.float32)


def _parabola_offset(left: np.ndarray, centre: np.ndarray, right: np.ndarray) -> np.ndarray:
    # Vertex of the parabola through three neighbours; only where the peak is a strict maximum
    # (curvature < 0), and never more than half a cell: beyond that another cell is the peak.
    curvature = left - 2 * centre + right
    safe = np.where(curvature < 0, curvature, -1.0)
    offset = np.where(curvature < 0, 0.5 * (left - right) / safe, 0.0)
    return np.clip(offset, -0.5, 0.5)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def decode_response(response: np.ndarray, windows: np.ndarray, previous_boxes: np.ndarray,
                    template_size: int, search_size: int, offsets: np.ndarray | None = None,
                    window_influence: float = 0.25, size_lr: float = 1.0,
                    valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """New part boxes (N, 4) and scores (N,) from response logits (N, R, R[, 1]).

    The peak is the argmax of ``(1 - window_influence) * normalised response + window_influence *
    cosine window`` (SiamFC's motion prior: the response is min-max normalised per part so that
    the prior weighs the same for sharp and flat maps). The centre is refined below a cell by the
    box offsets at the peak when given, else by a parabola through the peak's neighbours in the
    raw response. The size is the previous size times ``exp(size_lr * dlog)`` with offsets (the
    SiamFC-style damping of scale changes for ``size_lr`` < 1), unchanged without. The score is
    ``sigmoid`` of the raw response at the peak cell. Invalid parts keep their box and score 0.
    """
    response = np.asarray(response, np.float32)
    if response.ndim == 4:
        response = response[..., 0]
    n, r, _ = response.shape
    flat = response.reshape(n, r * r)
    low = flat.min(1, keepdims=True)
    high = flat.max(1, keepdims=True)
    normalised = (flat - low) / np.maximum(high - low, 1e-12)
    penalised = (1 - window_influence) * normalised + window_influence * cosine_window(r).ravel()
    peak = np.argmax(penalised, axis=1)
    pi, pj = peak // r, peak % r
    rows = np.arange(n)
    if offsets is not None:
        at_peak = np.asarray(offsets, np.float32)[rows, pi, pj]
        fy, fx = at_peak[:, 0], at_peak[:, 1]
        scale_h, scale_w = np.exp(size_lr * at_peak[:, 2]), np.exp(size_lr * at_peak[:, 3])
    else:
        centre = response[rows, pi, pj]
        up = response[rows, np.maximum(pi - 1, 0), pj]
        down = response[rows, np.minimum(pi + 1, r - 1), pj]
        left = response[rows, pi, np.maximum(pj - 1, 0)]
        right = response[rows, pi, np.minimum(pj + 1, r - 1)]
        inner_y = (pi > 0) & (pi < r - 1)
        inner_x = (pj > 0) & (pj < r - 1)
        fy = np.where(inner_y, _parabola_offset(up, centre, down), 0.0)
        fx = np.where(inner_x, _parabola_offset(left, centre, right), 0.0)
        scale_h = scale_w = np.ones(n, np.float32)
    windows = np.asarray(windows, np.float32)
    cy = response_to_pixel(pi + fy, windows[:, 0], windows[:, 2] - windows[:, 0], template_size,
                           search_size)
    cx = response_to_pixel(pj + fx, windows[:, 1], windows[:, 3] - windows[:, 1], template_size,
                           search_size)
    _, _, ph, pw = box_centres_sizes(previous_boxes)
    boxes = boxes_from_centres_sizes(cy, cx, ph * scale_h, pw * scale_w)
    scores = _sigmoid(response[rows, pi, pj]).astype(np.float32)
    if valid is not None:
        valid = np.asarray(valid, bool)
        boxes = np.where(valid[:, None], boxes, np.asarray(previous_boxes, np.float32))
        scores = np.where(valid, scores, 0.0).astype(np.float32)
    return boxes.astype(np.float32), scores
