"""The matching branch against a naive numpy implementation."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from tests.reference.matching import naive_propagation
from vostrack.network.cosine import l2_normalize
from vostrack.network.matching import (
    KEY_EPSILON,
    UNKNOWN,
    propagate_labels,
    read_votes,
    window_affinity,
    window_indices,
)


def test_propagation_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    h, w, c, m, k1 = 5, 6, 8, 3, 3
    query = rng.normal(size=(h, w, c)).astype(np.float32)
    query /= np.linalg.norm(query, axis=-1, keepdims=True)
    keys = rng.normal(size=(m, h, w, c)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    probs = rng.dirichlet(np.ones(k1), size=(m, h, w)).astype(np.float32)
    local = np.array([False, True, True])
    valid = np.array([True, True, False])
    ref, rec = ~local, local
    got = ops.convert_to_numpy(
        propagate_labels(
            query,
            keys[ref],
            probs[ref],
            valid[ref],
            keys[rec],
            probs[rec],
            valid[rec],
            radius=1,
            top_k=4,
            temperature=0.1,
        )
    )
    want = naive_propagation(query, keys, probs, local, valid, 1, 4, 0.1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_fewer_allowed_matches_than_top_k_do_not_vote_with_garbage():
    query = np.ones((1, 2, 4), np.float32) / 2
    keys = np.ones((1, 1, 2, 4), np.float32) / 2
    probs = np.array([[[[0, 1], [1, 0]]]], np.float32)
    got = ops.convert_to_numpy(
        propagate_labels(
            query,
            keys,
            probs,
            np.array([False]),
            keys,
            probs,
            np.array([True]),
            radius=0,
            top_k=2,
            temperature=0.05,
        )
    )
    np.testing.assert_allclose(got[0], [[0, 1], [1, 0]], atol=1e-6)  # each only sees itself


@pytest.mark.parametrize(
    "h, w, radius, tile",
    [(30, 54, 8, 8), (5, 6, 1, 8), (17, 9, 2, 4), (3, 20, 4, 8), (8, 8, 8, 8)],
)
def test_the_windowed_affinity_is_the_dense_one_inside_each_window(h, w, radius, tile):
    """Tiles smaller and larger than the frame, sizes that are not whole tiles, windows wider
    than the frame: inside the frame, every window value is the dense affinity's."""
    rng = np.random.default_rng(h * w)
    query = rng.normal(size=(h, w, 8)).astype(np.float32)
    keys = rng.normal(size=(3, h, w, 8)).astype(np.float32)
    index, inside = (np.asarray(a) for a in window_indices(h, w, radius))
    dense = np.einsum("qc,mnc->mqn", query.reshape(h * w, 8), keys.reshape(3, h * w, 8))
    expected = np.take_along_axis(dense, index[None], axis=2)
    got = ops.convert_to_numpy(window_affinity(query, keys, radius, tile))
    assert got.shape == (3, h * w, (2 * radius + 1) ** 2)
    np.testing.assert_allclose(
        np.where(inside[None], got, 0), np.where(inside[None], expected, 0), atol=1e-5
    )


def test_window_indices_and_normalisation():
    index, inside = (ops.convert_to_numpy(a) for a in window_indices(3, 4, 1))
    assert index.shape == (12, 9) and inside[0].sum() == 4 and inside[5].sum() == 9
    assert sorted(index[5][inside[5]].tolist()) == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    for rsqrt in (False, True):
        x = ops.convert_to_numpy(l2_normalize(np.array([[3.0, 4.0]]), KEY_EPSILON, rsqrt=rsqrt))
        np.testing.assert_allclose(x, [[0.6, 0.8]], atol=1e-6)
    # An all-zero cell (outside the frame) stays zero.
    zero = ops.convert_to_numpy(l2_normalize(np.zeros((1, 3), np.float32), 1e-6, rsqrt=True))
    assert not zero.any() and np.isfinite(zero).all()


def test_votes_of_frames_that_never_saw_an_object_do_not_count_against_it():
    weights = np.array([[0.5, 0.5]], np.float32)
    # candidate 0 (an old frame) knows object 1 only and calls the pixel background;
    # candidate 1 (a newer frame) knows both and says object 2
    votes = np.array([[[1.0, 0.0, UNKNOWN], [0.0, 0.0, 1.0]]], np.float32)
    out = ops.convert_to_numpy(read_votes(weights, votes))[0]
    np.testing.assert_allclose(out, [0.0, 0.0, 1.0], atol=1e-6)
    everyone_knows = np.array([[[1.0, 0.0, 0.0], [0.0, 0.2, 0.8]]], np.float32)
    np.testing.assert_allclose(
        ops.convert_to_numpy(read_votes(weights, everyone_knows))[0], [0.5, 0.1, 0.4], atol=1e-6
    )  # = sum_j w_j p_j, as before


def test_a_reference_share_mixes_the_two_groups_own_reads():
    rng = np.random.default_rng(1)
    h, w, c, k1 = 4, 5, 8, 3
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    query = unit(rng.normal(size=(h, w, c))).astype(np.float32)
    keys = unit(rng.normal(size=(3, h, w, c))).astype(np.float32)
    probs = rng.dirichlet(np.ones(k1), size=(3, h, w)).astype(np.float32)
    local = np.array([False, True, True])
    on = np.array([True, True, True])

    def share(s, recent_valid=on[1:]):
        return ops.convert_to_numpy(
            propagate_labels(
                query,
                keys[:1],
                probs[:1],
                on[:1],
                keys[1:],
                probs[1:],
                recent_valid,
                radius=1,
                top_k=3,
                temperature=0.1,
                reference_share=s,
            )
        )

    alone_ref = naive_propagation(query, keys, probs, local, [True, False, False], 1, 3, 0.1)
    alone_recent = naive_propagation(query, keys, probs, local, [False, True, True], 1, 3, 0.1)
    np.testing.assert_allclose(share(0.3), 0.3 * alone_ref + 0.7 * alone_recent, atol=1e-5)
    np.testing.assert_allclose(share(1.0), alone_ref, atol=1e-5)
    # No recent frame yet: the annotated frames' read alone, whatever the share.
    np.testing.assert_allclose(share(0.3, np.array([False, False])), alone_ref, atol=1e-5)
    together = naive_propagation(query, keys, probs, local, on, 1, 3, 0.1)
    assert np.abs(share(0.3) - together).max() > 1e-2  # not the single top-k's read
