"""Part maths: mask splitting; the numpy references of boxes and windows, response labels and
decoding (tests/reference/parts.py: the oracles must be right too); and the cell-centre convention
checked on the real backbone."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference import parts as R
from vostrack.data.procedural import Scene, SceneConfig
from vostrack.network import parts as P
from vostrack.network.boxes import feature_to_pixel


def _coverage(mask: np.ndarray, boxes: np.ndarray, valid: np.ndarray) -> float:
    covered = np.zeros_like(mask, bool)
    for y0, x0, y1, x1 in boxes[valid].astype(int):
        covered[y0:y1, x0:x1] = True
    return (covered & mask).sum() / mask.sum()


def _rectangle(height=120, width=160, box=(20, 30, 90, 140)) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[box[0] : box[2], box[1] : box[3]] = True
    return mask


def _l_shape() -> np.ndarray:
    mask = np.zeros((120, 120), bool)
    mask[10:110, 10:40] = True
    mask[80:110, 10:110] = True
    return mask


def test_mask_box_convention():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    np.testing.assert_array_equal(P.mask_box(mask), [2, 3, 5, 9])
    assert P.mask_box(np.zeros((4, 4), bool)) is None


@pytest.mark.parametrize("mask_fn", [_rectangle, _l_shape])
@pytest.mark.parametrize("max_parts", [4, 6, 9])
def test_parts_cover_the_mask_and_stay_in_the_object_box(mask_fn, max_parts):
    mask = mask_fn()
    parts = P.split_mask(mask, P.PartsConfig(max_parts=max_parts, min_part_area=100))
    assert parts.boxes.shape == (max_parts, 4) and parts.valid.shape == (max_parts,)
    assert parts.count == max_parts  # large masks use every part
    assert _coverage(mask, parts.boxes, parts.valid) >= 0.95
    box = P.mask_box(mask)
    valid = parts.boxes[parts.valid]
    assert np.all(valid[:, :2] >= box[:2]) and np.all(valid[:, 2:] <= box[2:])
    assert np.all(valid[:, 2:] > valid[:, :2])
    # Parts are smaller than the object: the split really splits.
    areas = (valid[:, 2] - valid[:, 0]) * (valid[:, 3] - valid[:, 1])
    assert areas.max() < 0.75 * (box[2] - box[0]) * (box[3] - box[1])


def test_l_shape_parts_follow_the_shape():
    mask = _l_shape()
    parts = P.split_mask(mask, P.PartsConfig(max_parts=4, min_part_area=100))
    for y0, x0, y1, x1 in parts.boxes[parts.valid].astype(int):
        # Every part is mostly object, unlike the empty upper-right cell of a grid.
        assert mask[y0:y1, x0:x1].mean() > 0.5


def test_padding_and_small_masks():
    config = P.PartsConfig(max_parts=5, min_part_area=400)
    empty = P.split_mask(np.zeros((40, 40), bool), config)
    assert empty.count == 0 and empty.boxes.shape == (5, 4) and not empty.boxes.any()
    tiny = np.zeros((40, 40), bool)
    tiny[10:13, 20:22] = True
    parts = P.split_mask(tiny, config)
    assert parts.count == 1
    np.testing.assert_array_equal(parts.boxes[0], [10, 20, 13, 22])
    assert not parts.boxes[1:].any()
    single = np.zeros((40, 40), bool)
    single[5, 7] = True
    assert P.split_mask(single, config).count == 1
    # 1000 pixels with 400 per part: two parts, the rest padding; valid parts come first.
    medium = np.zeros((60, 60), bool)
    medium[10:35, 10:50] = True
    parts = P.split_mask(medium, config)
    np.testing.assert_array_equal(parts.valid, [True, True, False, False, False])


def test_split_is_deterministic_and_ordered():
    rng = np.random.RandomState(0)
    mask = _l_shape() & (rng.rand(120, 120) > 0.1)
    config = P.PartsConfig(max_parts=6, min_part_area=50, max_points=500)
    first = P.split_mask(mask, config)
    second = P.split_mask(mask.copy(), config)
    np.testing.assert_array_equal(first.boxes, second.boxes)
    centres = R.box_centres_sizes(first.boxes[first.valid])[0]
    assert first.count == 6
    assert _coverage(mask, first.boxes, first.valid) == 1.0  # subsampled k-means, full assignment
    assert np.all(np.diff(centres) >= -20)  # roughly top to bottom


def test_kmeans_parts_are_split_mask_parts():
    masks = []
    rect = np.zeros((100, 200), bool)
    rect[10:80, 20:150] = True
    masks.append(rect)
    yy, xx = np.mgrid[:150, :150]
    masks.append((yy - 70) ** 2 / 900 + (xx - 80) ** 2 / 3600 < 1)
    for seed in range(6):
        labels = (
            Scene(SceneConfig(height=192, width=256, num_frames=1, num_objects=3, seed=seed))
            .render(0)
            .labels
        )
        masks += [labels == k for k in (1, 2, 3)]
    config = P.PartsConfig(min_part_area=400.0)
    for mask in masks:
        parts = P.split_mask(mask, config)
        split = P.kmeans_parts(mask, config)
        boxes, centres = split.boxes, split.centres
        np.testing.assert_array_equal(boxes, parts.boxes[: parts.count])
        assert centres.shape == (parts.count, 2)
        # Centres lie inside their part's box.
        assert np.all(centres >= boxes[:, :2]) and np.all(centres <= boxes[:, 2:])
        # Assigning the mask's pixels to the cluster centres (in cluster order) gives the parts.
        rows, cols = np.nonzero(mask)
        part = split.cluster_part[
            P.nearest_centre(np.stack([rows, cols], 1) + 0.5, split.cluster_centres)
        ]
        for index, box in enumerate(boxes):
            sel = part == index
            np.testing.assert_array_equal(
                box, [rows[sel].min(), cols[sel].min(), rows[sel].max() + 1, cols[sel].max() + 1]
            )
    empty = P.kmeans_parts(np.zeros((8, 8), bool), config)
    assert empty.boxes.shape == (0, 4) and empty.centres.shape == (0, 2)


def test_nearest_centre_ties_go_to_the_first_centre():
    points = np.array([[0.5, 0.5], [0.5, 2.5], [0.5, 1.5]])
    centres = np.array([[0.5, 2.5], [0.5, 0.5]])
    np.testing.assert_array_equal(P.nearest_centre(points, centres), [1, 0, 0])


def test_batch_parts():
    config = P.PartsConfig(max_parts=3, min_part_area=100)
    a = P.split_mask(_rectangle(), config)
    b = P.split_mask(np.zeros((10, 10), bool), config)
    batch = R.batch_parts([a, b])
    assert batch.boxes.shape == (6, 4)
    np.testing.assert_array_equal(batch.object_index, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(batch.valid, [True, True, True, False, False, False])
    with pytest.raises(ValueError):
        R.batch_parts([a, P.split_mask(_rectangle(), P.PartsConfig(max_parts=4))])


def test_box_helpers():
    box = np.array([[10, 20, 30, 60]], np.float32)  # h 20, w 40
    window = R.expand_box(box, context=0.5)
    cy, cx, h, w = R.box_centres_sizes(window)
    np.testing.assert_allclose([cy[0], cx[0]], [20, 40])
    np.testing.assert_allclose([h[0], w[0]], [np.sqrt(50 * 70)] * 2, rtol=1e-6)
    np.testing.assert_allclose(R.expand_box(box, 0.5, square=False), [[-5, 5, 45, 75]])
    np.testing.assert_allclose(
        R.expand_box(np.zeros((1, 4), np.float32), min_side=8), [[-4, -4, 4, 4]]
    )
    search = R.search_window(box, context=0.5, factor=3)
    np.testing.assert_allclose(R.box_centres_sizes(search)[2], 3 * h, rtol=1e-6)
    np.testing.assert_allclose(
        R.clip_boxes(np.array([[-5, 3, 50, 200]]), 40, 100), [[0, 3, 40, 100]]
    )
    coords = np.array([0.0, 7.5, 100.0])
    np.testing.assert_allclose(
        R.feature_to_pixel(R.pixel_to_feature(coords, 8), 8), coords, atol=1e-5
    )
    # Cell 0 at stride 8 is centred on pixel 7 (continuous 7.5), cell 2 on pixel 23.
    np.testing.assert_allclose(R.feature_to_pixel(np.array([0, 2]), 8), [7.5, 23.5])


def test_cell_centre_convention_holds_on_the_backbone():
    """DESIGN.md: with 'same' padding and sizes divisible by the stride, stride-s cell j is
    centred on pixel s*j + s - 1. The receptive field of one cell is symmetric about its centre,
    so the middle of the input rows it depends on (gradient support) is that centre."""
    pytest.importorskip("tensorflow")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("uses tf.GradientTape")
    from vostrack.network.backbones.efficientnet_lite import efficientnet_lite2

    model = efficientnet_lite2(weights=None)
    size = 128
    image = tf.Variable(np.random.RandomState(0).randn(1, size, size, 3).astype(np.float32))
    rng = np.random.RandomState(1)
    for level, stride in (("C2", 4), ("C3", 8)):
        with tf.GradientTape() as tape:
            features = model(image, training=False)[level]
            j = features.shape[1] // 2
            weights = rng.randn(features.shape[-1]).astype(np.float32)
            value = tf.reduce_sum(features[0, j, j, :] * weights)
        support = np.abs(tape.gradient(value, image).numpy()[0]).sum(axis=(1, 2)) > 0
        rows = np.flatnonzero(support)
        assert 0 < rows[0] and rows[-1] < size - 1, "receptive field clipped by the border"
        centre_pixel = (rows[0] + rows[-1]) / 2
        assert centre_pixel == stride * j + stride - 1
        # The convention the graph computes with (vostrack.network.boxes).
        assert (
            float(
                keras.ops.convert_to_numpy(
                    feature_to_pixel(keras.ops.convert_to_tensor([j], "float32"), stride)
                )[0]
            )
            == centre_pixel + 0.5
        )


def test_response_geometry_round_trip_and_centre():
    window = np.array([[100.0, 40.0, 196.0, 136.0]], np.float32)  # side 96, 24 samples: d = 4
    t, x = 8, 24
    r = P.response_size(t, x)
    assert r == 17
    centre = R.response_to_pixel(np.array([(r - 1) / 2]), window[:, 0], 96.0, t, x)
    np.testing.assert_allclose(centre, [148.0])  # the window's centre: no motion
    np.testing.assert_allclose(
        R.response_to_pixel(np.array([9.0]), window[:, 0], 96.0, t, x), [152.0]
    )  # one cell = one sample spacing
    coords = np.array([123.4, 150.0])
    back = R.response_to_pixel(R.pixel_to_response(coords, 100.0, 96.0, t, x), 100.0, 96.0, t, x)
    np.testing.assert_allclose(back, coords, atol=1e-4)


def test_response_labels():
    labels, weights = R.response_labels(17, (8, 10), radius=2)
    assert labels[8, 10] == 1 and labels[8, 12] == 1 and labels[8, 13] == 0
    assert labels[6, 10] == 1 and labels[10, 12] == 0
    assert labels.sum() == 13
    np.testing.assert_allclose(weights[labels == 1].sum(), 0.5, rtol=1e-6)
    np.testing.assert_allclose(weights[labels == 0].sum(), 0.5, rtol=1e-6)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)


def _planted(r: int, peak: tuple[float, float], n: int = 1, sharpness: float = 0.5):
    i, j = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
    bump = np.exp(-sharpness * ((i - peak[0]) ** 2 + (j - peak[1]) ** 2))
    return np.repeat((6.0 * bump - 3.0)[None, :, :, None], n, axis=0).astype(np.float32)


def test_decode_finds_a_planted_peak():
    t, x = 8, 24
    r = P.response_size(t, x)
    previous = np.array([[130.0, 40.0, 150.0, 70.0]], np.float32)  # centre (140, 55), 20 x 30
    window = R.search_window(previous, 0.5, x / t)
    side = window[0, 2] - window[0, 0]
    peak = (11.3, 5.6)  # continuous response coordinates, off the centre (8, 8)
    response = _planted(r, peak)
    boxes, scores = R.decode_response(response, window, previous, t, x, window_influence=0.1)
    expected_cy = R.response_to_pixel(peak[0], window[0, 0], side, t, x)
    expected_cx = R.response_to_pixel(peak[1], window[0, 1], side, t, x)
    cy, cx, h, w = R.box_centres_sizes(boxes)
    spacing = side / x
    # A Gaussian is not a parabola: the refinement is good to a small fraction of a cell.
    assert abs(cy[0] - expected_cy) < 0.15 * spacing and abs(cx[0] - expected_cx) < 0.15 * spacing
    np.testing.assert_allclose([h[0], w[0]], [20, 30])
    assert 0.9 < scores[0] <= 1.0


def test_decode_with_offsets_and_window_penalty():
    t, x = 8, 24
    r = P.response_size(t, x)
    previous = np.array([[100.0, 100.0, 120.0, 140.0]], np.float32)
    target = np.array([[110.0, 90.0, 140.0, 120.0]], np.float32)
    window = R.search_window(previous, 0.5, x / t)
    offsets = R.encode_offsets(target, previous, window, t, x)
    assert offsets.shape == (1, r, r, 4)
    # The peak cell is the one nearest the target; decoding its offsets gives back the box.
    ty = R.pixel_to_response(125.0, window[0, 0], window[0, 2] - window[0, 0], t, x)
    tx = R.pixel_to_response(105.0, window[0, 1], window[0, 3] - window[0, 1], t, x)
    response = _planted(r, (round(float(ty)), round(float(tx))), sharpness=2.0)
    boxes, _ = R.decode_response(response, window, previous, t, x, offsets=offsets)
    np.testing.assert_allclose(boxes, target, atol=1e-3)
    # Two equal peaks: the cosine window picks the one nearer the centre.
    two = np.maximum(_planted(r, (8, 11), sharpness=2.0), _planted(r, (8, 2), sharpness=2.0))
    boxes, _ = R.decode_response(two, window, previous, t, x)
    cx = R.box_centres_sizes(boxes)[1][0]
    expected = R.response_to_pixel(11.0, window[0, 1], window[0, 3] - window[0, 1], t, x)
    assert abs(cx - expected) < 1e-3


def test_decode_keeps_invalid_parts():
    t, x = 8, 24
    r = P.response_size(t, x)
    previous = np.array([[10, 10, 30, 30], [0, 0, 0, 0]], np.float32)
    window = R.search_window(previous, 0.5, 3.0)
    response = _planted(r, (3, 13), n=2)
    boxes, scores = R.decode_response(
        response, window, previous, t, x, valid=np.array([True, False])
    )
    assert not np.allclose(boxes[0], previous[0])
    np.testing.assert_array_equal(boxes[1], previous[1])
    assert scores[1] == 0 and scores[0] > 0.5
    assert np.all(np.isfinite(boxes))
