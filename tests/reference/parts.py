"""Numpy references of the part path's maths (the test oracles, as ``tests/reference/xcorr.py``):
box and window geometry, the part batch, the tracker's response geometry, SiamFC's training
labels, box-regression targets and response decoding.

The product computes all of this in ``keras.ops`` inside its graphs
(:mod:`vostrack.network.boxes`, :func:`vostrack.network.tracker.decode_response`,
:func:`vostrack.training.losses.tracking_targets`); these numpy expressions, written apart from
the graph code, are what the tests compare it against. Nothing in ``vostrack/`` imports this
module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from vostrack.network.parts import Parts, cosine_window, response_size

# --------------------------------------------------------------------------- boxes


def box_centres_sizes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(cy, cx, h, w) of boxes (..., 4)."""
    boxes = np.asarray(boxes, np.float32)
    return (
        (boxes[..., 0] + boxes[..., 2]) / 2,
        (boxes[..., 1] + boxes[..., 3]) / 2,
        boxes[..., 2] - boxes[..., 0],
        boxes[..., 3] - boxes[..., 1],
    )


def boxes_from_centres_sizes(
    cy: np.ndarray, cx: np.ndarray, h: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """Boxes (..., 4) from centres and sizes."""
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1).astype(np.float32)


def expand_box(
    boxes: np.ndarray, context: float = 0.5, min_side: float = 0.0, square: bool = True
) -> np.ndarray:
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
        return boxes_from_centres_sizes(
            cy, cx, np.maximum(h + pad, min_side), np.maximum(w + pad, min_side)
        )
    side = np.maximum(np.sqrt(np.maximum(h + pad, 0) * np.maximum(w + pad, 0)), min_side)
    return boxes_from_centres_sizes(cy, cx, side, side)


def scale_box(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Boxes scaled by ``factor`` about their centres."""
    cy, cx, h, w = box_centres_sizes(boxes)
    return boxes_from_centres_sizes(cy, cx, h * factor, w * factor)


def search_window(
    boxes: np.ndarray, context: float = 0.5, factor: float = 3.0, min_side: float = 0.0
) -> np.ndarray:
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


# --------------------------------------------------------------------------- part batches


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
    return PartBatch(
        np.concatenate([p.boxes for p in parts]).astype(np.float32),
        np.repeat(np.arange(len(parts), dtype=np.int32), max_parts),
        np.concatenate([p.valid for p in parts]),
    )


# --------------------------------------------------------------------------- responses


def response_to_pixel(
    cells: np.ndarray,
    window_start: np.ndarray,
    window_side: np.ndarray,
    template_size: int,
    search_size: int,
) -> np.ndarray:
    """Response coordinates (cell i, continuous) -> the part-centre pixel coordinate they stand
    for, along one axis, for search windows starting at ``window_start`` of side ``window_side``."""
    spacing = np.asarray(window_side, np.float32) / search_size
    return window_start + (np.asarray(cells, np.float32) + template_size / 2) * spacing


def pixel_to_response(
    coords: np.ndarray,
    window_start: np.ndarray,
    window_side: np.ndarray,
    template_size: int,
    search_size: int,
) -> np.ndarray:
    """Inverse of :func:`response_to_pixel`."""
    spacing = np.asarray(window_side, np.float32) / search_size
    return (np.asarray(coords, np.float32) - window_start) / spacing - template_size / 2


def response_labels(
    size: int, centre: Sequence[float], radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """SiamFC training labels for one response map: ``labels`` (size, size) float32, 1 for cells
    within ``radius`` cells of ``centre`` = (cy, cx) (response coordinates, see
    :func:`pixel_to_response`; the map's centre for a target that did not move), 0 elsewhere; and
    ``weights`` that give the positives and the negatives half of the total weight each (SiamFC's
    balancing: positives are a handful of cells against hundreds of negatives)."""
    i, j = np.meshgrid(
        np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij"
    )
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


def encode_offsets(
    target_boxes: np.ndarray,
    previous_boxes: np.ndarray,
    windows: np.ndarray,
    template_size: int,
    search_size: int,
) -> np.ndarray:
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
    dh = np.broadcast_to(
        np.log(np.maximum(th, 1e-6) / np.maximum(ph, 1e-6))[:, None, None], dy.shape
    )
    dw = np.broadcast_to(
        np.log(np.maximum(tw, 1e-6) / np.maximum(pw, 1e-6))[:, None, None], dy.shape
    )
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


def decode_response(
    response: np.ndarray,
    windows: np.ndarray,
    previous_boxes: np.ndarray,
    template_size: int,
    search_size: int,
    offsets: np.ndarray | None = None,
    window_influence: float = 0.25,
    size_lr: float = 1.0,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
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
    cy = response_to_pixel(
        pi + fy, windows[:, 0], windows[:, 2] - windows[:, 0], template_size, search_size
    )
    cx = response_to_pixel(
        pj + fx, windows[:, 1], windows[:, 3] - windows[:, 1], template_size, search_size
    )
    _, _, ph, pw = box_centres_sizes(previous_boxes)
    boxes = boxes_from_centres_sizes(cy, cx, ph * scale_h, pw * scale_w)
    scores = _sigmoid(response[rows, pi, pj]).astype(np.float32)
    if valid is not None:
        valid = np.asarray(valid, bool)
        boxes = np.where(valid[:, None], boxes, np.asarray(previous_boxes, np.float32))
        scores = np.where(valid, scores, 0.0).astype(np.float32)
    return boxes.astype(np.float32), scores
