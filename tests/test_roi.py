"""ROI crop-and-resize in keras.ops against tf.image.crop_and_resize, the pixel-box ROI-Align
built on it, and the SAME-aligned resize."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from tests.layer_harness import ALL_BUT_LAST, check_traced
from vostrack.network.roi import crop_and_resize, resize_aligned, roi_align

tf = pytest.importorskip("tensorflow")


def _random_case(seed: int, num_boxes: int = 9):
    rng = np.random.RandomState(seed)
    features = rng.randn(3, 7, 11, 5).astype(np.float32)
    # Corners in [-0.4, 1.4]: many boxes stick out of the image on some side, some are flipped.
    boxes = rng.uniform(-0.4, 1.4, (num_boxes, 4)).astype(np.float32)
    box_indices = rng.randint(0, 3, num_boxes).astype(np.int32)
    return features, boxes, box_indices


@pytest.mark.parametrize("crop_size", [(4, 6), (1, 3), (5, 1), (1, 1), (8, 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_tf_crop_and_resize(seed, crop_size):
    features, boxes, box_indices = _random_case(seed)
    ours = ops.convert_to_numpy(crop_and_resize(features, boxes, box_indices, crop_size))
    ref = tf.image.crop_and_resize(features, boxes, box_indices, crop_size).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_outside_samples_get_the_extrapolation_value():
    features, _, _ = _random_case(2)
    # Left half of the crop lies left of the image (x < 0).
    boxes = np.array([[0.2, -1.0, 0.8, 1.0]], np.float32)
    ours = ops.convert_to_numpy(
        crop_and_resize(features, boxes, np.array([1], np.int32), (3, 5), extrapolation_value=-7.0)
    )
    ref = tf.image.crop_and_resize(features, boxes, [1], (3, 5), extrapolation_value=-7.0).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert np.all(ours[:, :, :2] == -7.0) and not np.any(ours[:, :, 2:] == -7.0)


def test_runs_in_a_tf_graph_with_unknown_sizes():
    features, boxes, box_indices = _random_case(3)
    (graph,) = check_traced(
        lambda f, b, i: crop_and_resize(f, b, i, (4, 4)),
        [(features, boxes, box_indices)],
        [ALL_BUT_LAST, (0,), (0,)],
    )
    ref = tf.image.crop_and_resize(features, boxes, box_indices, (4, 4)).numpy()
    np.testing.assert_allclose(graph, ref, atol=1e-5)


def test_roi_align_samples_bin_centres_of_pixel_boxes():
    stride = 4
    height, width = 6, 8
    # A feature map whose value is the pixel coordinate of the cell centre: y in channel 0,
    # x in channel 1 (cell j centred on the continuous pixel coordinate s*j + s - 0.5).
    ys = stride * np.arange(height) + stride - 0.5
    xs = stride * np.arange(width) + stride - 0.5
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).astype(np.float32)[None]
    boxes = np.array([[8.0, 6.0, 16.0, 22.0]], np.float32)
    crop = ops.convert_to_numpy(roi_align(grid, boxes, np.array([0]), (2, 4), stride))
    # Bin centres of [8, 16) in 2 bins: 10, 14; of [6, 22) in 4 bins: 8, 12, 16, 20.
    np.testing.assert_allclose(crop[0, :, 0, 0], [10, 14], atol=1e-4)
    np.testing.assert_allclose(crop[0, 0, :, 1], [8, 12, 16, 20], atol=1e-4)


def test_resize_aligned_keeps_a_linear_ramp_in_place():
    # A quantity linear in the frame's pixel coordinates, sampled at the cell centres of stride
    # 8 and 16 (the SAME convention): upsampling the coarse one must give the fine one.
    def ramp(stride: int, size: int) -> np.ndarray:
        centres = stride * np.arange(size) + stride - 1.0
        return (3.0 * centres[:, None] - 2.0 * centres[None, :]).astype(np.float32)

    coarse = ramp(16, 6)[None, :, :, None]
    fine = ramp(8, 12)
    up = ops.convert_to_numpy(resize_aligned(coarse, (12, 12), ratio=2))[0, :, :, 0]
    # Interior (cell 0 of the fine grid lies before the first coarse centre: edge value there).
    np.testing.assert_allclose(up[1:, 1:], fine[1:, 1:], atol=1e-4)
    # And for a non-2x size (854-wide frames): output takes the requested shape.
    assert resize_aligned(coarse, (11, 13), ratio=2).shape == (1, 11, 13, 1)
