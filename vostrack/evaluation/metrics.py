"""DAVIS region (J) and boundary (F) measures and their per-sequence statistics.

These follow the official davis2017-evaluation toolkit (``davis2017/metrics.py`` and
``davis2017/utils.py``) number for number, so that scores are comparable with published ones.
Only numpy and OpenCV are used: scikit-image is not a runtime dependency, so its ``disk`` is
rebuilt here with the same formula.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["jaccard", "boundary_f", "statistics", "disk", "seg2bmap", "boundary_tolerance"]


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D HxW mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_shapes(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void mask shape {void.shape} differs from mask shape {gt.shape}")


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J: intersection over union of two HxW masks.

    Void pixels count in neither the intersection nor the union. Two empty masks score 1.0
    (the object is correctly absent), as in the official ``db_eval_iou``.
    """
    gt = _as_bool(gt, "gt")
    pred = _as_bool(pred, "pred")
    void = None if void is None else _as_bool(void, "void")
    _check_shapes(gt, pred, void)
    inter = gt & pred
    union = gt | pred
    if void is not None:
        valid = ~void
        inter &= valid
        union &= valid
    n_union = int(np.count_nonzero(union))
    if n_union == 0:
        return 1.0
    return int(np.count_nonzero(inter)) / n_union


def disk(radius: float) -> np.ndarray:
    """The uint8 disk structuring element of skimage's ``disk(radius)``: x^2 + y^2 <= r^2.

    ``np.arange(-r, r + 1)`` is kept even for a float radius because that is what skimage does
    (and so what the official scores were computed with).
    """
    axis = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(axis, axis)
    return (x**2 + y**2 <= radius**2).astype(np.uint8)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map of a binary mask, as the official ``_seg2bmap`` at the mask's own size.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour.
    The last row and column only compare along themselves and the bottom-right pixel is never a
    boundary: an odd rule, but the official one.
    """
    seg = _as_bool(seg, "seg")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = 0.008) -> float:
    """Matching distance in pixels: ``bound_th`` itself when >= 1, else that fraction of the
    image diagonal."""
    if bound_th >= 1:
        return bound_th
    return float(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_f(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> float:
    """Contour accuracy F: boundary F-measure of ``pred`` against ``gt``, as official ``f_measure``.

    Boundary pixels match when the other mask's boundary lies within the tolerance (8 px at
    854x480). Void pixels are cleared from both masks before the boundaries are taken.
    """
    gt = _as_bool(gt, "gt")
    pred = _as_bool(pred, "pred")
    void = None if void is None else _as_bool(void, "void")
    _check_shapes(gt, pred, void)
    if void is not None:
        gt = gt & ~void
        pred = pred & ~void

    element = disk(boundary_tolerance(gt.shape, bound_th))
    fg_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    fg_dilated = cv2.dilate(fg_boundary.astype(np.uint8), element).astype(bool)
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), element).astype(bool)

    n_fg = int(np.count_nonzero(fg_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = int(np.count_nonzero(fg_boundary & gt_dilated)) / n_fg
        recall = int(np.count_nonzero(gt_boundary & fg_dilated)) / n_gt

    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(per_frame: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame scores, as official ``db_statistics``.

    recall is the fraction of frames scoring above 0.5; decay is the mean of the first quarter
    of the frames minus the mean of the last quarter (the quarters overlap by one frame).
    An empty input gives NaNs.
    """
    values = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    n = values.size
    if n == 0:
        return math.nan, math.nan, math.nan
    # All-NaN input is legal and yields NaN; numpy's warning about it is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        # Official casts ids to uint8, which wraps past 256 frames; plain ints are used here.
        ids = [int(i) for i in np.round(np.linspace(1, n, 5) + 1e-10) - 1]
        bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay
