"""J, F and their statistics, on masks built here with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vostrack.evaluation.metrics import (
    boundary_f,
    boundary_tolerance,
    disk,
    jaccard,
    seg2bmap,
    statistics,
)

H, W = 480, 854  # DAVIS 480p, where the official tolerance is 8 px


def rect(r0: int, r1: int, c0: int, c1: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def blob() -> np.ndarray:
    """A non-convex object (a rectangle with a notch and a hole) away from the borders."""
    mask = rect(100, 300, 200, 500)
    mask[100:180, 320:380] = False
    mask[230:260, 250:290] = False
    return mask


# ---------------------------------------------------------------- J


def test_jaccard_identical_is_one():
    m = blob()
    assert jaccard(m, m) == 1.0


def test_jaccard_both_empty_is_one():
    empty = np.zeros((H, W), dtype=bool)
    assert jaccard(empty, empty) == 1.0


def test_jaccard_disjoint_is_zero():
    assert jaccard(rect(10, 50, 10, 50), rect(100, 150, 100, 150)) == 0.0


def test_jaccard_one_side_empty_is_zero():
    empty = np.zeros((H, W), dtype=bool)
    assert jaccard(blob(), empty) == 0.0
    assert jaccard(empty, blob()) == 0.0


def test_jaccard_known_overlap():
    a = rect(10, 30, 10, 40)  # 20 x 30 = 600 px
    b = rect(20, 40, 20, 50)  # 20 x 30 = 600 px
    # Intersection rows 20..29, cols 20..39 = 200 px; union = 600 + 600 - 200 = 1000 px.
    assert jaccard(a, b) == pytest.approx(0.2, abs=1e-12)
    assert jaccard(b, a) == pytest.approx(0.2, abs=1e-12)


def test_jaccard_accepts_label_arrays():
    a = rect(10, 30, 10, 40).astype(np.uint8) * 7
    b = rect(20, 40, 20, 50).astype(np.float32)
    assert jaccard(a, b) == pytest.approx(0.2, abs=1e-12)


def test_jaccard_void_is_ignored():
    a = rect(10, 30, 10, 40)
    b = rect(20, 40, 20, 50)
    # Void over everything that disagrees: the masks then agree perfectly.
    assert jaccard(a, b, void=a ^ b) == 1.0
    # Void over the intersection plus 100 px of a only (rows 10..19, cols 10..19):
    # intersection 0, union 1000 - 200 - 100 = 700.
    void = (a & b) | rect(10, 20, 10, 20)
    assert jaccard(a, b, void=void) == 0.0
    # Void over 100 px of a only: intersection 200, union 900.
    assert jaccard(a, b, void=rect(10, 20, 10, 20)) == pytest.approx(200 / 900, abs=1e-12)
    # Everything void: nothing left to compare, as two empty masks.
    assert jaccard(a, b, void=np.ones((H, W), dtype=bool)) == 1.0


def test_jaccard_shape_mismatch_raises():
    with pytest.raises(ValueError):
        jaccard(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


# ---------------------------------------------------------------- F


def test_tolerance_is_8_px_at_480p():
    assert boundary_tolerance((480, 854)) == 8
    assert boundary_tolerance((480, 854), bound_th=3) == 3


def test_disk_matches_explicit_formula_r8():
    r = 8
    expected = np.zeros((2 * r + 1, 2 * r + 1), dtype=np.uint8)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            y, x = i - r, j - r
            expected[i, j] = 1 if x * x + y * y <= r * r else 0
    got = disk(8.0)  # the official code passes the float np.ceil(...)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(disk(8), expected)
    # Spot checks of the shape: (8, 0) in, (6, 6) out (72 > 64), (5, 6) in (61 <= 64).
    assert got[8, 16] == 1 and got[8 + 6, 8 + 6] == 0 and got[8 + 5, 8 + 6] == 1


def test_disk_matches_skimage():
    morphology = pytest.importorskip("skimage.morphology")
    for r in (1, 3, 8, 8.0, 12):
        np.testing.assert_array_equal(disk(r), morphology.disk(r).astype(np.uint8))


def test_seg2bmap_small_square():
    seg = np.zeros((5, 5), dtype=bool)
    seg[1:3, 1:3] = True
    # A pixel is boundary when it differs from its right, lower or lower-right neighbour.
    expected = np.array(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(seg2bmap(seg), expected)


def test_seg2bmap_last_row_and_column_rules():
    # A full mask has no boundary at all: the last row/column only compare along themselves
    # and the bottom-right pixel is forced to 0 (official quirk).
    assert not seg2bmap(np.ones((6, 7), dtype=bool)).any()
    seg = np.zeros((4, 4), dtype=bool)
    seg[3, 1] = True  # on the last row: only its left/right changes count
    expected = np.zeros((4, 4), dtype=bool)
    expected[3, 0] = expected[3, 1] = True
    expected[2, 0] = expected[2, 1] = True  # the row above sees it below / below-right
    np.testing.assert_array_equal(seg2bmap(seg), expected)


def test_boundary_identical_is_one():
    m = blob()
    assert boundary_f(m, m) == 1.0


def test_boundary_both_empty_is_one():
    empty = np.zeros((H, W), dtype=bool)
    assert boundary_f(empty, empty) == 1.0


def test_boundary_one_side_empty_is_zero():
    empty = np.zeros((H, W), dtype=bool)
    # Prediction empty: P=1, R=0 -> F=0; ground truth empty: P=0, R=1 -> F=0.
    assert boundary_f(blob(), empty) == 0.0
    assert boundary_f(empty, blob()) == 0.0


def test_boundary_disjoint_far_apart_is_zero():
    assert boundary_f(rect(10, 50, 10, 50), rect(200, 250, 400, 450)) == 0.0


def test_boundary_shift_within_tolerance_is_one():
    gt = blob()
    for dy, dx in ((0, 5), (5, 0), (4, 4), (0, -7)):
        pred = np.roll(gt, (dy, dx), axis=(0, 1))
        assert boundary_f(gt, pred) == 1.0, (dy, dx)


def test_boundary_shift_beyond_tolerance_is_below_one():
    gt = blob()
    pred = np.roll(gt, 20, axis=1)
    f = boundary_f(gt, pred)
    assert 0.0 < f < 0.9
    # Just over the tolerance on a plain rectangle: the vertical edges no longer match.
    assert boundary_f(rect(100, 300, 200, 500), rect(100, 300, 209, 509)) < 1.0


def test_boundary_pixel_threshold():
    gt = rect(100, 300, 200, 500)
    pred = rect(100, 300, 203, 503)
    assert boundary_f(gt, pred, bound_th=3) == 1.0
    assert boundary_f(gt, pred, bound_th=2) < 1.0


def _brute_force_f(gt: np.ndarray, pred: np.ndarray, tol: float) -> float:
    """F from all pairwise distances between boundary pixels: no dilation, no OpenCV."""
    gt_pts = np.argwhere(seg2bmap(gt)).astype(float)
    fg_pts = np.argwhere(seg2bmap(pred)).astype(float)
    d2 = ((fg_pts[:, None, :] - gt_pts[None, :, :]) ** 2).sum(axis=-1)
    precision = (d2.min(axis=1) <= tol**2).mean()
    recall = (d2.min(axis=0) <= tol**2).mean()
    return 2 * precision * recall / (precision + recall)


def test_boundary_known_value():
    gt = rect(100, 200, 100, 200)
    pred = rect(100, 200, 100, 300)  # shares the left, top and bottom edges
    # seg2bmap marks the row above and the column left of a box (outside it) and its own last
    # row and column: gt 101 + 100 + 100 + 99 = 400 px, pred 201 + 100 + 100 + 199 = 600 px.
    assert int(seg2bmap(gt).sum()) == 400
    assert int(seg2bmap(pred).sum()) == 600
    f = boundary_f(gt, pred)
    assert f == pytest.approx(_brute_force_f(gt, pred, 8), abs=1e-12)
    assert 0.5 < f < 0.9
    # A shape with curves and a hole, shifted beyond the tolerance.
    shifted = np.roll(blob(), (6, 9), axis=(0, 1))
    assert boundary_f(blob(), shifted) == pytest.approx(
        _brute_force_f(blob(), shifted, 8), abs=1e-12
    )


def test_boundary_void_is_removed_before_boundaries():
    gt = blob()
    pred = gt.copy()
    extra = rect(380, 440, 600, 700)
    gt_with_extra = gt | extra
    assert boundary_f(gt_with_extra, pred) < 1.0
    assert boundary_f(gt_with_extra, pred, void=extra) == 1.0
    # Void also clears the prediction.
    assert boundary_f(gt, pred | extra, void=extra) == 1.0


# ---------------------------------------------------------------- statistics


def test_statistics_hand_made_sequence():
    values = [1.0, 0.9, 0.8, 0.5, 0.6, 0.3, 0.2, 0.1]
    mean, recall, decay = statistics(values)
    assert mean == pytest.approx(4.4 / 8, abs=1e-12)
    assert recall == pytest.approx(4 / 8, abs=1e-12)  # 0.5 itself is not > 0.5
    # n=8: ids = [0, 2, 4, 5, 7]; first bin values[0:3], last bin values[5:8].
    assert decay == pytest.approx(0.9 - 0.2, abs=1e-12)


def test_statistics_bins_round_half_up():
    # n=3: linspace(1, 3, 5) = [1, 1.5, 2, 2.5, 3]; the +1e-10 rounds the halves up, so the
    # ids are [0, 1, 1, 2, 2], first bin values[0:2], last bin values[2:3].
    mean, recall, decay = statistics(np.array([1.0, 0.6, 0.0]))
    assert mean == pytest.approx(1.6 / 3, abs=1e-12)
    assert recall == pytest.approx(2 / 3, abs=1e-12)
    assert decay == pytest.approx(0.8, abs=1e-12)


def test_statistics_long_sequence_no_uint8_wrap():
    values = np.linspace(1.0, 0.0, 300)
    _, _, decay = statistics(values)
    # ids = round(linspace(1, 300, 5)) - 1 = [0, 75, 149, 224, 299] (uint8 would wrap 299).
    expected = values[0:76].mean() - values[224:300].mean()
    assert not math.isnan(decay)
    assert decay == pytest.approx(expected, abs=1e-12)


def test_statistics_constant_and_nan():
    assert statistics([1.0] * 10) == (1.0, 1.0, 0.0)
    mean, recall, decay = statistics([math.nan, 1.0, 0.0])
    assert mean == pytest.approx(0.5)
    assert recall == pytest.approx(1 / 3)  # NaN > 0.5 is False, as official
    # ids [0, 1, 1, 2, 2]: first bin [nan, 1] -> 1, last bin [0] -> 0.
    assert decay == pytest.approx(1.0)
    assert all(math.isnan(v) for v in statistics([]))
