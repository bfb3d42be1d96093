"""The Siamese part tracker: geometry and decoding against the numpy reference, localisation of
a moved patch with untrained heads, padding, config round-trip, a training step, a TF graph."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from tests.layer_harness import ALL_BUT_LAST, check_traced, run_layer_test
from tests.reference import parts as R
from vostrack.network.parts import response_size
from vostrack.network.tracker import (
    PartTracker,
    decode_response,
    search_windows,
    template_windows,
)

STRIDE, CHANNELS, SIZE = 4, 16, 48  # features of a 192x192 frame


def _tracker(**kwargs) -> PartTracker:
    options = dict(
        stride=STRIDE, template_size=8, search_size=24, adjust_channels=8, head_channels=8
    )
    options.update(kwargs)
    return PartTracker(**options)


def _scene(moves: list[tuple[int, int]], seed: int = 0):
    """Two frames of random background features (independent noise) with distinctive 3x3-cell
    patches; patch k sits at cells (12 + 14k, 12 + 10k) on frame 0 and moves by moves[k] cells
    on frame 1. Returns features (2, SIZE, SIZE, C) and the frame-0 part boxes in pixels."""
    rng = np.random.RandomState(seed)
    frames = 0.3 * rng.randn(2, SIZE, SIZE, CHANNELS).astype(np.float32)
    boxes = []
    for k, (dy, dx) in enumerate(moves):
        patch = 2.0 * rng.randn(3, 3, CHANNELS).astype(np.float32)
        y, x = 12 + 14 * k, 12 + 10 * k
        frames[0, y : y + 3, x : x + 3] += patch
        frames[1, y + dy : y + dy + 3, x + dx : x + dx + 3] += patch
        # Cells y..y+2 span the pixels [STRIDE * y, STRIDE * (y + 3)).
        boxes.append([STRIDE * y, STRIDE * x, STRIDE * (y + 3), STRIDE * (x + 3)])
    return frames, np.array(boxes, np.float32)


def test_windows_match_the_numpy_reference():
    rng = np.random.RandomState(0)
    boxes = np.concatenate([rng.uniform(0, 100, (6, 2)), rng.uniform(100, 200, (6, 2))], axis=1)
    boxes = boxes[:, [0, 1, 2, 3]].astype(np.float32)
    boxes[-1] = 0  # a padding row
    np.testing.assert_allclose(
        ops.convert_to_numpy(template_windows(boxes, 0.5, 12.0)),
        R.expand_box(boxes, 0.5, 12.0),
        rtol=1e-5,
        atol=1e-3,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(search_windows(boxes, 0.5, 3.0, 12.0)),
        R.search_window(boxes, 0.5, 3.0, 12.0),
        rtol=1e-5,
        atol=1e-3,
    )


@pytest.mark.parametrize("with_offsets", [False, True])
def test_decode_matches_the_numpy_reference(with_offsets):
    rng = np.random.RandomState(1)
    n, t, x = 5, 8, 24
    r = response_size(t, x)
    response = rng.randn(n, r, r, 1).astype(np.float32)
    offsets = 0.3 * rng.randn(n, r, r, 4).astype(np.float32) if with_offsets else None
    previous = np.array([[10, 20, 40, 60]] * n, np.float32) + rng.uniform(0, 50, (n, 1))
    windows = R.search_window(previous, 0.5, 3.0)
    valid = np.array([True, True, False, True, True])
    ref_boxes, ref_scores = R.decode_response(
        response, windows, previous, t, x, offsets, window_influence=0.3, size_lr=0.7, valid=valid
    )
    boxes, scores = decode_response(
        response, windows, previous, t, x, offsets, window_influence=0.3, size_lr=0.7, valid=valid
    )
    np.testing.assert_allclose(ops.convert_to_numpy(boxes), ref_boxes, atol=1e-3)
    np.testing.assert_allclose(ops.convert_to_numpy(scores), ref_scores, atol=1e-5)


@pytest.mark.parametrize("moves", [[(3, -2), (-4, 1)], [(0, 0), (2, 5)]])
def test_untrained_tracker_follows_moved_patches(moves):
    frames, boxes = _scene(moves)
    tracker = _tracker(use_offsets=False)
    templates = tracker.crop_templates(frames, boxes, np.zeros(len(boxes), np.int32))
    out = tracker.track(frames, templates, boxes, np.ones(len(boxes), np.int32))
    expected = boxes + STRIDE * np.array([[dy, dx, dy, dx] for dy, dx in moves], np.float32)
    got = ops.convert_to_numpy(out["boxes"])
    # Within a quarter of a feature cell.
    np.testing.assert_allclose(got, expected, atol=STRIDE / 4)
    scores = ops.convert_to_numpy(out["scores"])
    # The same search on a frame without the patches scores lower: the score means something.
    empty = frames.copy()
    empty[1] = 0.3 * np.random.RandomState(9).randn(SIZE, SIZE, CHANNELS)
    lost = ops.convert_to_numpy(
        tracker.track(empty, templates, boxes, np.ones(len(boxes), np.int32))["scores"]
    )
    assert np.all(lost < scores - 0.05), (lost, scores)


def test_padded_parts_do_not_affect_valid_ones():
    moves = [(3, -2), (-4, 1)]
    frames, boxes = _scene(moves)
    tracker = _tracker(use_offsets=False)
    valid = np.array([True, True, False, False])
    results = []
    for padding in (
        np.zeros((2, 4), np.float32),
        np.array([[5, 5, 90, 7], [-50, 300, -40, 310]], np.float32),
    ):
        padded = np.concatenate([boxes, padding])
        templates = tracker.crop_templates(frames, padded, np.zeros(4, np.int32))
        out = tracker.track(frames, templates, padded, np.ones(4, np.int32), valid=valid)
        got = ops.convert_to_numpy(out["boxes"])
        scores = ops.convert_to_numpy(out["scores"])
        assert np.all(np.isfinite(got)) and np.all(np.isfinite(scores))
        np.testing.assert_array_equal(got[2:], padding)  # padding rows keep their boxes
        np.testing.assert_array_equal(scores[2:], 0)
        results.append((got[:2], scores[:2]))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-6)


def test_output_shapes_and_config_round_trip():
    templates = np.random.RandomState(0).randn(3, 8, 8, CHANNELS).astype(np.float32)
    search = np.random.RandomState(1).randn(3, 24, 24, CHANNELS).astype(np.float32)
    options = dict(
        stride=STRIDE,
        template_size=8,
        search_size=24,
        adjust_channels=None,
        head_channels=4,
        name="tracker",
    )
    # No graph check here: the crops' sizes are static (T, X); the call with an unknown number
    # of parts is traced in test_tf_graph_with_unknown_number_of_parts.
    out = run_layer_test(PartTracker, options, (templates, search), unknown_axes=None).outputs
    assert out["response"].shape == (3, 17, 17, 1)
    assert out["offsets"].shape == (3, 17, 17, 4)
    # Untrained: the response is the affine map of the cosine similarity, offsets are zero.
    np.testing.assert_allclose(out["response"], 5.0 * out["similarity"] - 2.5, atol=1e-5)
    assert not out["offsets"].any()
    assert out["similarity"].min() >= -1 and out["similarity"].max() <= 1
    with pytest.raises(ValueError, match="even"):
        PartTracker(template_size=8, search_size=23)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # the offsets are not trained here
def test_one_training_step_lowers_the_loss():
    keras.utils.set_random_seed(0)
    frames, boxes = _scene([(3, -2), (-4, 1)])
    tracker = _tracker()
    templates = ops.convert_to_numpy(tracker.crop_templates(frames, boxes, np.zeros(2, np.int32)))
    search, windows = tracker.crop_search(frames, boxes, np.ones(2, np.int32))
    search = ops.convert_to_numpy(search)
    windows = ops.convert_to_numpy(windows)
    target = boxes + STRIDE * np.array([[3, -2, 3, -2], [-4, 1, -4, 1]], np.float32)
    cy, cx, _, _ = R.box_centres_sizes(target)
    side = windows[:, 2] - windows[:, 0]
    labels = []
    for n in range(2):
        centre = (
            R.pixel_to_response(cy[n], windows[n, 0], side[n], 8, 24),
            R.pixel_to_response(cx[n], windows[n, 1], side[n], 8, 24),
        )
        labels.append(R.response_labels(17, centre, radius=1.5)[0])
    labels = np.stack(labels)[..., None]

    template_in = keras.Input((8, 8, CHANNELS))
    search_in = keras.Input((24, 24, CHANNELS))
    model = keras.Model([template_in, search_in], tracker(template_in, search_in)["response"])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    first = float(model.train_on_batch([templates, search], labels))
    second = float(model.evaluate([templates, search], labels, verbose=0))
    assert second < first


def test_tf_graph_with_unknown_number_of_parts():
    pytest.importorskip("tensorflow")
    frames, boxes = _scene([(3, -2), (-4, 1)])
    tracker = _tracker(use_offsets=False)
    templates = ops.convert_to_numpy(tracker.crop_templates(frames, boxes, np.zeros(2, np.int32)))

    def track_frame(features, templates, boxes, indices, valid):
        out = tracker.track(features, templates, boxes, indices, valid)
        return out["boxes"], out["scores"]

    args = (frames, templates, boxes, np.ones(2, np.int32), np.ones(2, bool))
    # The frame's size and the number of parts unknown; the crops' sizes static.
    ((graph_boxes, graph_scores),) = check_traced(
        track_frame, [args], [ALL_BUT_LAST, (0,), (0,), (0,), (0,)], atol=1e-4, traces=2
    )  # the tracker is built in the graph: its variables cost a second trace
    eager = tracker.track(*args)
    np.testing.assert_allclose(graph_scores, ops.convert_to_numpy(eager["scores"]), atol=1e-6)
