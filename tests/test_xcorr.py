"""Batched depthwise cross-correlation against a naive numpy loop."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from tests.layer_harness import check_traced
from tests.reference.xcorr import depthwise_xcorr as naive_depthwise_xcorr
from vostrack.network.xcorr import depthwise_xcorr, xcorr


@pytest.mark.parametrize(
    "shapes",
    [((3, 10, 11, 4), (3, 3, 4, 4)), ((1, 9, 9, 2), (1, 9, 9, 2)), ((5, 12, 8, 3), (5, 1, 1, 3))],
)
def test_depthwise_xcorr_matches_a_numpy_loop(shapes):
    rng = np.random.RandomState(0)
    search = rng.randn(*shapes[0]).astype(np.float32)
    template = rng.randn(*shapes[1]).astype(np.float32)
    expected = naive_depthwise_xcorr(search, template)
    got = ops.convert_to_numpy(depthwise_xcorr(search, template))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    summed = ops.convert_to_numpy(xcorr(search, template))
    assert summed.shape == expected.shape[:3] + (1,)
    np.testing.assert_allclose(summed[..., 0], expected.sum(-1), atol=1e-4, rtol=1e-5)


def test_each_sample_uses_its_own_template():
    # Swapping the templates of two samples must swap their outputs (not mix them).
    rng = np.random.RandomState(1)
    search = rng.randn(2, 6, 6, 3).astype(np.float32)
    template = rng.randn(2, 2, 2, 3).astype(np.float32)
    swapped = ops.convert_to_numpy(xcorr(search[::-1], template[::-1]))
    np.testing.assert_allclose(
        swapped[::-1], ops.convert_to_numpy(xcorr(search, template)), atol=1e-5
    )


def test_mismatched_channels_are_refused():
    with pytest.raises(ValueError):
        depthwise_xcorr(np.zeros((1, 5, 5, 3), np.float32), np.zeros((1, 2, 2, 4), np.float32))


def test_unknown_number_of_samples_in_a_tf_graph():
    pytest.importorskip("tensorflow")
    rng = np.random.RandomState(2)
    search = rng.randn(4, 7, 7, 3).astype(np.float32)
    template = rng.randn(4, 3, 3, 3).astype(np.float32)
    # Every dimension but the channels unknown.
    (graph,) = check_traced(depthwise_xcorr, [(search, template)])
    np.testing.assert_allclose(graph, naive_depthwise_xcorr(search, template), atol=1e-5)
