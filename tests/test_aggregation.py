"""Paste-back of part crops, the per-object merge, the prior fall-back and soft aggregation;
a TF graph with an unknown number of parts; parity with JAX."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from tests.conftest import run_on_jax
from tests.layer_harness import check_traced
from vostrack.network.aggregation import (
    combine_with_prior,
    paste_parts,
    soft_aggregate,
    soft_aggregate_logits,
)
from vostrack.network.roi import roi_align


def _np(x):
    return ops.convert_to_numpy(x)


def _inside(box, height, width, stride=1):
    """Cells of a stride-``stride`` grid whose centre (stride * i + stride - 0.5) lies in box."""
    cy = stride * np.arange(height) + stride - 0.5
    cx = stride * np.arange(width) + stride - 0.5
    rows = (cy >= box[0]) & (cy < box[2])
    cols = (cx >= box[1]) & (cx < box[3])
    return rows[:, None] & cols[None, :]


@pytest.mark.parametrize("stride", [1, 4])
def test_constant_crop_fills_exactly_its_box(stride):
    box = np.array([10.3, 20.6, 37.2, 47.9], np.float32)
    crop = np.ones((1, 16, 16, 1), np.float32)
    height, width = 64 // stride, 96 // stride
    probs, coverage = paste_parts(
        crop,
        box[None],
        np.array([0]),
        np.array([True]),
        np.array([0.7], np.float32),
        1,
        (height, width),
        stride=stride,
        from_logits=False,
    )
    probs, coverage = _np(probs)[0], _np(coverage)[0]
    inside = _inside(box, height, width, stride)
    assert inside.sum() > 0 and (~inside).sum() > 0
    np.testing.assert_array_equal(probs[inside], 1.0)
    np.testing.assert_array_equal(probs[~inside], 0.0)
    np.testing.assert_allclose(coverage[inside], 0.7)
    np.testing.assert_array_equal(coverage[~inside], 0.0)
    if stride == 1:  # the box's edges, to within half a pixel
        rows = np.flatnonzero(inside.any(1))
        cols = np.flatnonzero(inside.any(0))
        assert abs(rows[0] - box[0]) <= 0.5 and abs(rows[-1] + 1 - box[2]) <= 0.5
        assert abs(cols[0] - box[1]) <= 0.5 and abs(cols[-1] + 1 - box[3]) <= 0.5


def test_overlapping_parts_give_the_score_weighted_average():
    boxes = np.array([[0, 0, 32, 40], [16, 24, 48, 64], [0, 48, 16, 64]], np.float32)
    values = np.stack([np.full((8, 8, 1), v, np.float32) for v in (0.2, 0.8, 0.6)])
    scores = np.array([0.9, 0.3, 0.5], np.float32)
    probs, coverage = paste_parts(
        values, boxes, np.array([0, 0, 1]), np.ones(3, bool), scores, 2, (48, 64), from_logits=False
    )
    probs, coverage = _np(probs), _np(coverage)
    a, b = _inside(boxes[0], 48, 64), _inside(boxes[1], 48, 64)
    np.testing.assert_allclose(probs[0][a & ~b], 0.2, atol=1e-6)
    np.testing.assert_allclose(probs[0][b & ~a], 0.8, atol=1e-6)
    np.testing.assert_allclose(probs[0][a & b], (0.9 * 0.2 + 0.3 * 0.8) / 1.2, atol=1e-6)
    np.testing.assert_allclose(coverage[0][a], 0.9)
    np.testing.assert_allclose(coverage[0][b & ~a], 0.3)
    np.testing.assert_array_equal(probs[0][~(a | b)], 0)
    # Object 1 gets its own part only, even where object 0's parts are.
    c = _inside(boxes[2], 48, 64)
    np.testing.assert_allclose(probs[1][c], 0.6, atol=1e-6)
    np.testing.assert_array_equal(probs[1][~c], 0)
    np.testing.assert_allclose(coverage[1][c], 0.5)


def test_invalid_and_lost_parts_contribute_nothing():
    rng = np.random.RandomState(0)
    boxes = np.array([[4, 4, 30, 40]], np.float32)
    logits = rng.randn(1, 8, 8, 1).astype(np.float32)
    reference = [
        _np(v)
        for v in paste_parts(
            logits, boxes, np.array([0]), np.array([True]), np.array([0.8], np.float32), 1, (40, 48)
        )
    ]
    extra_boxes = np.array([[0, 0, 40, 48], [10, 10, 20, 20], [-5, -5, 60, 70]], np.float32)
    extra_logits = np.stack(
        [
            np.full((8, 8, 1), np.nan, np.float32),  # padding: anything
            np.full((8, 8, 1), 5.0, np.float32),
            np.full((8, 8, 1), 5.0, np.float32),
        ]
    )
    # An invalid row, a valid one with score 0 and one below min_score.
    got = paste_parts(
        np.concatenate([logits, extra_logits]),
        np.concatenate([boxes, extra_boxes]),
        np.zeros(4, np.int32),
        np.array([True, False, True, True]),
        np.array([0.8, 0.9, 0.0, 0.1], np.float32),
        1,
        (40, 48),
        min_score=0.15,
    )
    for expected, value in zip(reference, got):
        assert np.all(np.isfinite(_np(value)))
        np.testing.assert_allclose(_np(value), expected, atol=1e-6)


def test_pasting_roi_crops_of_a_smooth_map_gives_the_map_back():
    height, width = 64, 96
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    smooth = 0.5 + 0.4 * np.sin(y / 9.0) * np.cos(x / 13.0)  # in (0, 1)
    boxes = np.array([[10.5, 12.25, 50.75, 70.5], [3.0, 40.0, 35.0, 90.0]], np.float32)
    crops = roi_align(smooth[None, :, :, None], boxes, np.zeros(2, np.int32), (32, 32), stride=1)
    for from_logits, values in ((False, crops), (True, ops.log(crops) - ops.log(1.0 - crops))):
        probs, coverage = paste_parts(
            values,
            boxes,
            np.array([0, 1]),
            np.ones(2, bool),
            np.ones(2, np.float32),
            2,
            (height, width),
            from_logits=from_logits,
        )
        for k in range(2):
            inside = _inside(boxes[k], height, width)
            half_bin = (boxes[k, 2:] - boxes[k, :2]) / 64  # half the crop's sample spacing
            inner = _inside(
                np.concatenate([boxes[k, :2] + half_bin, boxes[k, 2:] - half_bin]), height, width
            )
            error = np.abs(_np(probs)[k] - smooth)
            # Bilinear interpolation between the samples: (spacing^2 / 8) |f''| ~ 2e-3 here;
            # within half a bin of the window's edge the edge sample is repeated:
            # |f'| * half a bin (|f'| < 0.4 / 9 per pixel).
            assert error[inner].max() < 4e-3, (from_logits, k, error[inner].max())
            assert error[inside].max() < 0.045 * half_bin.max(), (from_logits, k)
            assert error[inside].mean() < 2e-3
            np.testing.assert_array_equal(_np(coverage)[k] > 0, inside)


def test_combine_with_prior_uses_parts_only_where_covered():
    parts = np.full((2, 4, 5), 0.9, np.float32)
    prior = np.full((2, 4, 5), 0.3, np.float32)
    coverage = np.zeros((2, 4, 5), np.float32)
    coverage[0, 1:3, 1:4] = 0.5
    out = _np(combine_with_prior(parts, coverage, prior))
    np.testing.assert_allclose(out[0][coverage[0] > 0], 0.9)
    np.testing.assert_allclose(out[0][coverage[0] == 0], 0.3)
    np.testing.assert_allclose(out[1], 0.3)


def test_soft_aggregate_matches_rgmp():
    rng = np.random.RandomState(0)
    probs = rng.uniform(0, 1, (3, 5, 6)).astype(np.float32)
    probs[:, 0, 0] = [0.0, 1.0, 1.0]  # clipped, still finite
    out = _np(soft_aggregate(probs))
    assert out.shape == (4, 5, 6) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-6)
    # One object at 0.9: odds 9 against the background's 0.1 / 0.9 (not 0.1 itself).
    single = _np(soft_aggregate(np.full((1, 1, 1), 0.9, np.float32)))[:, 0, 0]
    np.testing.assert_allclose(single, [1 / 82, 81 / 82], rtol=1e-5)
    for p in (0.3, 0.5, 0.7):  # one object keeps its 0.5 threshold
        one = _np(soft_aggregate(np.full((1, 1, 1), p, np.float32)))[1, 0, 0]
        assert (one > 0.5) == (p > 0.5) and (one == pytest.approx(0.5)) == (p == 0.5)
    # Two objects at (0.6, 0.3), by hand: background 0.4 * 0.7 = 0.28; odds 0.28 / 0.72,
    # 0.6 / 0.4, 0.3 / 0.7 = 0.388889, 1.5, 0.428571 (sum 2.317460).
    two = _np(soft_aggregate(np.array([0.6, 0.3], np.float32)[:, None, None]))[:, 0, 0]
    np.testing.assert_allclose(two, [0.167808, 0.647260, 0.184932], atol=2e-6)
    logits = _np(soft_aggregate_logits(probs))
    np.testing.assert_allclose(_np(ops.softmax(logits, axis=0)), out, atol=1e-6)
    # Another axis, e.g. a (B, K, h, w) batch.
    batched = _np(soft_aggregate(probs[None], axis=1))
    np.testing.assert_allclose(batched[0], out, atol=1e-6)


def _paste_case(seed: int = 0):
    rng = np.random.RandomState(seed)
    n = 7
    corners = rng.uniform(-10, 70, (n, 2))
    sides = rng.uniform(8, 50, (n, 2))
    boxes = np.concatenate([corners, corners + sides], axis=1)[:, [0, 1, 2, 3]]
    return dict(
        logits=rng.randn(n, 16, 16, 1).astype(np.float32),
        boxes=boxes.astype(np.float32),
        object_index=rng.randint(0, 3, n).astype(np.int32),
        valid=np.array([1, 1, 1, 1, 1, 0, 1], bool),
        scores=rng.uniform(0.2, 1, n).astype(np.float32),
    )


def test_tf_graph_with_unknown_number_of_parts():
    pytest.importorskip("tensorflow")
    case = _paste_case()

    def paste(logits, boxes, object_index, valid, scores, height, width):
        probs, coverage = paste_parts(
            logits, boxes, object_index, valid, scores, 3, (height, width), stride=4
        )
        return probs, coverage, soft_aggregate(probs)

    # The number of parts and the output size (scalars) known at run time only; each output
    # agrees with the eager run.
    (graph,) = check_traced(
        paste,
        [
            (
                case["logits"],
                case["boxes"],
                case["object_index"],
                case["valid"],
                case["scores"],
                np.int32(20),
                np.int32(24),
            )
        ],
        unknown_axes=(0,),
        atol=1e-6,
    )
    assert graph[0].shape == (3, 20, 24)


# --------------------------------------------------------------------------- JAX parity


def test_jax_parity(tmp_path):
    case = _paste_case(1)
    np.savez(tmp_path / "inputs.npz", **case)
    run_on_jax(
        """
        import jax
        import keras
        import numpy as np
        from vostrack.network.aggregation import paste_parts, soft_aggregate
        assert keras.backend.backend() == "jax"

        @jax.jit
        def run(c):
            probs, coverage = paste_parts(c["logits"], c["boxes"], c["object_index"],
                                          c["valid"], c["scores"], 3, (36, 44), stride=2)
            return probs, coverage, soft_aggregate(probs)

        probs, coverage, merged = run(dict(np.load("inputs.npz")))
        np.savez("outputs.npz", probs=np.asarray(probs), coverage=np.asarray(coverage),
                 merged=np.asarray(merged))
    """,
        tmp_path,
    )
    jax_out = np.load(tmp_path / "outputs.npz")
    probs, coverage = paste_parts(
        case["logits"],
        case["boxes"],
        case["object_index"],
        case["valid"],
        case["scores"],
        3,
        (36, 44),
        stride=2,
    )
    assert _np(coverage).max() > 0  # the case pastes something
    np.testing.assert_allclose(jax_out["probs"], _np(probs), atol=1e-5)
    np.testing.assert_allclose(jax_out["coverage"], _np(coverage), atol=1e-6)
    np.testing.assert_allclose(jax_out["merged"], _np(soft_aggregate(probs)), atol=1e-5)
