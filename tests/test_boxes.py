"""The box maths of the graph and the losses (vostrack.network.boxes, keras.ops) against their
numpy references (tests/reference/parts.py)."""

from __future__ import annotations

import numpy as np
from keras import ops

from tests.reference import parts as R
from vostrack.network import boxes as B
from vostrack.network.mask_head import mask_windows


def _np(x):
    return ops.convert_to_numpy(x)


def _boxes(seed: int = 0, n: int = 8) -> np.ndarray:
    rng = np.random.RandomState(seed)
    corners = rng.uniform(-20, 150, (n, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0, 80, (n, 2))], axis=1)
    boxes[-1] = 0  # a padding row
    return boxes.astype(np.float32)


def test_centres_sizes_and_back():
    boxes = _boxes()
    for got, expected in zip(B.box_centres_sizes(boxes), R.box_centres_sizes(boxes)):
        np.testing.assert_array_equal(_np(got), expected)
    np.testing.assert_array_equal(
        _np(B.boxes_from_centres_sizes(*B.box_centres_sizes(boxes))),
        R.boxes_from_centres_sizes(*R.box_centres_sizes(boxes)),
    )


def test_windows_match_the_numpy_reference():
    boxes = _boxes(1)
    for context, min_side in ((0.5, 0.0), (0.5, 12.0), (0.25, 32.0)):
        for square in (True, False):
            np.testing.assert_allclose(
                _np(B.expand_boxes(boxes, context, min_side, square)),
                R.expand_box(boxes, context, min_side, square),
                rtol=1e-5,
                atol=1e-3,
            )
    np.testing.assert_allclose(
        _np(B.scale_boxes(boxes, 3.0)), R.scale_box(boxes, 3.0), rtol=1e-6, atol=1e-4
    )
    # The mask head's windows are the non-square expansion.
    np.testing.assert_allclose(
        _np(mask_windows(boxes)), R.expand_box(boxes, 0.25, 32.0, False), rtol=1e-5, atol=1e-3
    )


def test_feature_and_response_coordinates():
    coords = np.array([0.0, 7.5, 100.0, -3.25], np.float32)
    for stride in (4, 8, 16):
        np.testing.assert_allclose(
            _np(B.pixel_to_feature(coords, stride)), R.pixel_to_feature(coords, stride), rtol=1e-6
        )
        np.testing.assert_allclose(
            _np(B.feature_to_pixel(coords, stride)), R.feature_to_pixel(coords, stride), rtol=1e-6
        )
    start, side = np.float32(100.0), np.float32(96.0)
    np.testing.assert_allclose(
        _np(B.response_to_pixel(coords, start, side, 8, 24)),
        R.response_to_pixel(coords, start, side, 8, 24),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        _np(B.pixel_to_response(coords, start, side, 8, 24)),
        R.pixel_to_response(coords, start, side, 8, 24),
        rtol=1e-6,
        atol=1e-5,
    )


def test_bin_centres():
    start = np.array([8.0, 6.0], np.float32)
    end = np.array([16.0, 22.0], np.float32)
    got = _np(B.bin_centres(start, end, 4))
    np.testing.assert_allclose(got, [[9, 11, 13, 15], [8, 12, 16, 20]], atol=1e-6)
