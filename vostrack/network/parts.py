"""Parts of an object mask, in numpy: the k-means split of a mask into part boxes and its tight
box. Runs once per annotation (:mod:`vostrack.inference.propagator`) and inside the training data
pipeline (:mod:`vostrack.data.clips`); it imports nothing but numpy, so that the loader's worker
processes stay light. Boxes follow the conventions of :mod:`vostrack.network.boxes` (pixel boxes
``[y0, x0, y1, x1]``, continuous corners), which holds the box maths the graph and the losses run.

- Parts are padded to a fixed count ``max_parts`` with a boolean validity mask, so that array
  shapes do not change from one video to the next (JAX compiles once per shape).
- The parts of several objects are one batch of ``num_objects * max_parts`` rows: object ``o``'s
  parts are rows ``o * max_parts .. (o + 1) * max_parts - 1`` (the propagator's and the training
  clips' order; the graph reads each row's object from its ``part_object`` input).

Also here: the two numpy constants of the tracker's graph, :func:`response_size` and
:func:`cosine_window` (the window is built once, in numpy, into the graph as a constant).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# --------------------------------------------------------------------------- boxes


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight box ``[rmin, cmin, rmax + 1, cmax + 1]`` (float32) of a 2-D mask, None if empty."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(mask, axis=0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


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
            # keeps its centre (cannot happen from distinct seeds on the first iteration; kept
            # for safety on later iterations).
            counts = np.bincount(labels, minlength=k)
            sums = np.stack(
                [
                    np.bincount(labels, sample[:, 0], minlength=k),
                    np.bincount(labels, sample[:, 1], minlength=k),
                ],
                axis=1,
            )
            new_centres = np.where(
                counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres
            )
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
    boxes[: len(found)] = found
    valid[: len(found)] = True
    return Parts(boxes, valid)


# ------------------------------------------------------------------- the tracker's constants


def response_size(template_size: int, search_size: int) -> int:
    """Side of the correlation response."""
    return search_size - template_size + 1


def cosine_window(size: int) -> np.ndarray:
    """SiamFC's Hann window (size, size), 1 at the centre (odd size), 0 on the border."""
    hann = np.hanning(size).astype(np.float32)
    return np.outer(hann, hann)
