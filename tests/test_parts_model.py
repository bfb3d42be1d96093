"""The full network (matching + part tracker + per-part mask head), untrained: it runs end to
end through both runtimes, the frozen graph agrees with Keras, and its part state is right."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from vostrack.data.procedural import SceneConfig, make_clip
from vostrack.inference.propagator import PartsPropagator
from vostrack.inference.runtimes import FrozenRuntime, KerasRuntime
from vostrack.network.config import InferenceSettings, ModelConfig, PartSettings
from vostrack.network.vos import VosNetwork, load_network
from vostrack.registry import read_manifest
from vostrack.serving.export import export_model

CONFIG = ModelConfig(name="tiny-parts")
SETTINGS = InferenceSettings(
    working_short_side=96, parts=PartSettings(max_parts=3, min_part_area=256)
)


@pytest.fixture(scope="module")
def network():
    return VosNetwork(CONFIG, SETTINGS)


@pytest.fixture(scope="module")
def clip():
    return make_clip(
        SceneConfig(
            height=96,
            width=160,
            num_frames=6,
            num_objects=2,
            seed=3,
            object_size=(0.25, 0.3),
            appear_at={2: 2},
        )
    )


@contextlib.contextmanager
def eager():
    """The Keras runtime's step without tracing it: faster for six tiny frames (the traced and
    frozen graph are tested against it in test_frozen_graph_agrees_with_keras)."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


def run(propagator, frames, labels):
    """Object 1 annotated on frame 0, object 2 (which appears later) on frame 2."""
    reference = propagator.encode_reference(frames[0], np.where(labels[0] == 1, 1, 0))
    state = propagator.initial_state(
        frames[0], np.where(labels[0] == 1, 1, 0), reference, encoded=True
    )
    masks, states = [labels[0]], [state]
    for t in range(1, len(frames)):
        predicted, state = propagator.step(frames[t], reference, state)
        if t == 2:
            merged = np.where(labels[2] == 2, 2, predicted).astype(np.uint8)
            reference = propagator.encode_reference(frames[2], merged, reference)
            state = propagator.initial_state(frames[2], merged, reference, encoded=True)
            predicted = merged
        masks.append(predicted)
        states.append(state)
    return np.stack(masks), states, reference


def test_part_rows_and_state(network, clip):
    frames, labels = clip
    with eager():
        masks, states, reference = run(PartsPropagator(KerasRuntime(network)), frames, labels)
    parts = reference.parts
    assert parts.object_ids.tolist() == [1, 1, 1, 2, 2, 2]  # max_parts rows per object
    assert parts.valid[:3].any() and parts.valid[3:].any()
    assert parts.templates.shape == (6, 6, 6, 120) and parts.ref_p4.shape[:3] == (6, 8, 8)
    assert states[-1].part_boxes.shape == (6, 4) and states[-1].prev_probs.shape == (24, 40, 2)
    # parts of object 2 start where its mask is on frame 2 (working size = frame size here)
    ys, xs = np.nonzero(labels[2] == 2)
    box = parts.boxes[3:][parts.valid[3:]]
    assert box[:, 0].min() >= ys.min() - 1 and box[:, 2].max() <= ys.max() + 2
    assert set(np.unique(masks[-1])) <= {0, 1, 2} and (masks[-1] == 2).any()


def test_without_the_tracker_the_parts_follow_the_objects_mask(network, clip):
    """The ``parts.track=False`` ablation: the graph leaves the boxes it is given, and the
    propagator moves each object's reference parts with its predicted mask."""
    import dataclasses

    frames, labels = clip
    settings = network.settings
    network.settings = dataclasses.replace(
        settings, parts=dataclasses.replace(settings.parts, track=False)
    )
    try:
        runtime = KerasRuntime(network)
        given, moved = [], []
        real_run = runtime.run

        def spy(function, inputs, skip=()):
            out = real_run(function, inputs, skip)
            if function == "step":
                given.append(inputs["part_boxes"])
                moved.append(out["part_boxes"])
            return out

        runtime.run = spy
        with eager():
            masks, states, reference = run(PartsPropagator(runtime), frames, labels)
    finally:
        network.settings = settings
    assert len(given) == len(frames) - 1
    for a, b in zip(given, moved):
        np.testing.assert_array_equal(a, b)  # the graph does not track
    parts = reference.parts
    checked = 0
    for t in (3, 5):  # after the second annotation: both objects' parts follow their masks
        for k in (1, 2):
            rows = (parts.object_ids == k) & parts.valid
            mask = masks[t] == k
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            now = np.array([ys.mean(), xs.mean()]), np.sqrt(mask.sum())
            then_cy, then_cx, then_side = parts.anchors[rows][0]
            moved = (_centres(parts.boxes[rows]) - [then_cy, then_cx]) * now[1] / then_side
            expected = moved + now[0]
            np.testing.assert_allclose(_centres(states[t].part_boxes[rows]), expected, atol=1e-3)
            checked += 1
    assert checked >= 2  # not vacuous: predicted masks were there to follow


@pytest.mark.slow
def test_frozen_graph_agrees_with_keras(network, clip, tmp_path):
    frames, labels = clip
    exported = export_model(network, tmp_path / "parts", "parts", saved_model=False)
    manifest = read_manifest(exported)
    assert {"templates", "part_boxes", "prev_probs"} <= set(manifest["tensors"]["step"]["inputs"])
    keras_masks, keras_states, _ = run(PartsPropagator(KerasRuntime(network)), frames, labels)
    frozen = PartsPropagator(
        FrozenRuntime(exported / "frozen.pb", CONFIG, SETTINGS, manifest["tensors"])
    )
    frozen_masks, frozen_states, _ = run(frozen, frames, labels)
    for t in range(len(frames)):
        a, b = keras_masks[t] > 0, frozen_masks[t] > 0
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.99, t
    np.testing.assert_allclose(frozen_states[-1].part_boxes, keras_states[-1].part_boxes, atol=0.05)
    reloaded = load_network(exported, CONFIG, SETTINGS, manifest["files"]["keras_weights"])
    weights = [w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in reloaded.weights]
    assert len(weights) == len(network.weights)
    np.testing.assert_array_equal(weights[-1], np.asarray(network.weights[-1]))


def test_a_batch_of_frames_encodes_as_each_frame_alone(network, clip):
    # Training encodes all its clips' frames in one call (vostrack/training/clip_loss.py);
    # inference, one frame at a time: the two must give the same features.
    frames = clip[0][:3]
    size = frames.shape[1:3]
    together = network.batch_features(frames, size, size)
    assert set(together) == {"key", "P2", "P3", "P4", "P5"}
    for t in range(3):
        alone = network.features(frames[t], size, size)
        picked = network.frame_features(together, t)
        for name, value in alone.items():
            assert picked[name].shape == value.shape, name
            np.testing.assert_allclose(
                np.asarray(picked[name]), np.asarray(value), atol=2e-4, err_msg=name
            )


def _centres(boxes: np.ndarray) -> np.ndarray:
    """(cy, cx) of [y0, x0, y1, x1] boxes."""
    return np.stack([boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], 1) / 2
