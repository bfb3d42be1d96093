"""The network end to end: geometry, mask/grid alignment, export, and frozen-graph parity."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_matching_config
from vostrack.data.procedural import SceneConfig, make_clip
from vostrack.inference.propagator import MatchingPropagator
from vostrack.inference.runtimes import FrozenRuntime, KerasRuntime
from vostrack.network.config import InferenceSettings, model_from_dict, working_size
from vostrack.network.vos import load_network
from vostrack.registry import read_manifest
from vostrack.serving.export import export_model, float32_constants, tf_working_size, to_half

TINY, TINY_SETTINGS = tiny_matching_config()


@pytest.fixture(scope="module")
def network(tiny_network):
    return tiny_network


@pytest.fixture(scope="module")
def exported(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def reloaded(exported):
    """The network as the model folder holds it (float16-rounded weights)."""
    return load_network(
        exported, TINY, TINY_SETTINGS, read_manifest(exported)["files"]["keras_weights"]
    )


@pytest.fixture(scope="module")
def clip():
    return make_clip(
        SceneConfig(
            height=96, width=160, num_frames=8, num_objects=2, seed=3, object_size=(0.25, 0.3)
        )
    )


def test_working_size_and_its_graph_twin_agree():
    for config in (InferenceSettings(), TINY_SETTINGS, InferenceSettings(working_short_side=None)):
        for h, w in [(480, 854), (1080, 1920), (72, 120), (853, 480), (33, 47), (480, 853)]:
            expected = working_size(h, w, config)
            work, pad = tf_working_size(tf.constant(h), tf.constant(w), config)
            assert tuple(int(v) for v in (*work, *pad)) == expected, (config, h, w)
    assert working_size(480, 854, InferenceSettings()) == (480, 854, 480, 864)


def test_mask_to_grid_and_back_keeps_shapes_in_place(network):
    frame_hw = (96, 160)
    work, pad = (96, 160), (96, 160)
    probs = np.zeros(frame_hw + (2,), np.float32)
    probs[..., 0] = 1
    probs[32:80, 48:112] = (0, 1)  # a 48x64 box aligned with 16-px cells
    grid = np.asarray(network.encode_mask(probs, work, pad))
    assert grid.shape == (6, 10, 2)
    back = np.asarray(network.grid_to_frame(grid, frame_hw, work))
    ys, xs = np.nonzero(back.argmax(-1) == 1)
    # Edges come back where they were: no half-cell drift (corners round off at stride 16).
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (32, 79, 48, 111)


def run_video(propagator, frames, labels):
    reference = propagator.encode_reference(frames[0], labels[0])
    state = propagator.initial_state(frames[0], labels[0], reference)
    out = [labels[0]]
    for frame in frames[1:]:
        predicted, state = propagator.step(frame, reference, state)
        out.append(predicted)
    return np.stack(out)


def test_export_writes_a_complete_model_folder(exported):
    manifest = read_manifest(exported)
    assert manifest["format"] == "vostrack-model/1" and manifest["backbone"] == "efficientnet_lite2"
    assert model_from_dict(manifest["config"]) == (TINY, TINY_SETTINGS)
    for name in ("frozen.pb", "network.weights.h5", "saved_model/saved_model.pb"):
        assert (exported / name).is_file(), name
    assert set(manifest["tensors"]) == {"encode_reference", "step"}
    assert set(manifest["tensors"]["step"]["inputs"]) == {
        "frame",
        "reference_keys",
        "reference_probs",
        "reference_valid",
        "recent_keys",
        "recent_probs",
        "recent_valid",
    }
    assert set(manifest["tensors"]["step"]["outputs"]) == {"index", "probs", "grid", "key"}
    assert not list(exported.parent.glob(".tiny*"))  # written aside, renamed into place
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((exported / "frozen.pb").read_bytes())
    weights = [
        n.attr["value"].tensor.tensor_content
        for n in graph_def.node
        if n.op == "Const" and len(n.attr["value"].tensor.tensor_content) > 1024
    ]
    assert weights and len(weights) == len(set(weights))  # both functions share one copy


def test_frozen_graph_and_keras_model_give_the_same_masks(network, exported, clip):
    frames, labels = clip
    manifest = read_manifest(exported)
    frozen = MatchingPropagator(
        FrozenRuntime(exported / "frozen.pb", TINY, TINY_SETTINGS, manifest["tensors"])
    )
    keras_masks = run_video(MatchingPropagator(KerasRuntime(network)), frames, labels)
    frozen_masks = run_video(frozen, frames, labels)
    for t in range(1, len(frames)):
        for k in (1, 2):
            a, b = keras_masks[t] == k, frozen_masks[t] == k
            assert (a & b).sum() / max((a | b).sum(), 1) > 0.99, (t, k)
    # and the masks are real: the pretrained features follow the objects
    for k in (1, 2):
        ious = [
            ((frozen_masks[t] == k) & (labels[t] == k)).sum()
            / max(((frozen_masks[t] == k) | (labels[t] == k)).sum(), 1)
            for t in range(1, 8)
        ]
        assert np.mean(ious) > 0.6, (k, ious)


def test_saved_model_signatures_run(exported, reloaded, clip):
    loaded = tf.saved_model.load(str(exported / "saved_model"))
    assert set(loaded.signatures) == {"encode_reference", "step"}
    probs = np.ones(clip[0][0].shape[:2] + (1,), np.float32)
    key = loaded.signatures["encode_reference"](
        frame=tf.constant(clip[0][0]), probs=tf.constant(probs)
    )["key"].numpy()
    assert key.shape == (6, 10, 120)  # 96x160 working size, stride 16
    np.testing.assert_allclose(np.linalg.norm(key, axis=-1), 1.0, atol=1e-4)
    expected = KerasRuntime(reloaded).run(
        "encode_reference", {"frame": clip[0][0], "probs": probs}
    )["key"]
    np.testing.assert_allclose(key, expected, atol=1e-4)
    # One stored copy of the weights, in float16: the graph holds no weight constants.
    variables = tf.train.list_variables(str(exported / "saved_model" / "variables" / "variables"))
    assert sum(np.prod(shape) for _, shape in variables) > 1e6
    assert (exported / "saved_model" / "saved_model.pb").stat().st_size < 2e6


def test_weights_are_stored_in_float16_and_computed_in_float32(
    network, exported, reloaded, tmp_path
):
    import h5py

    full = export_model(network, tmp_path / "full", "full", weights_dtype="float32")
    assert read_manifest(exported)["weights_dtype"] == "float16"
    with h5py.File(exported / "network.weights.h5") as half_file:
        dtypes = []
        half_file.visititems(
            lambda _, item: dtypes.append(item.dtype) if isinstance(item, h5py.Dataset) else None
        )
    assert np.dtype("float16") in dtypes and np.dtype("float32") in dtypes  # biases stay
    assert all(v.dtype == "float32" for v in reloaded.weights)
    for name in (
        "frozen.pb",
        "network.weights.h5",
        "saved_model/variables/variables.data-00000-of-00001",
    ):
        ratio = (exported / name).stat().st_size / (full / name).stat().st_size
        assert 0.45 < ratio < 0.6, (name, ratio)
    # Rounding to float16 moves the unit-norm keys by about 1e-3; a float32 export not at all.
    frame = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    inputs = {"frame": frame, "probs": np.ones((96, 160, 2), np.float32) / 2}
    exact = KerasRuntime(network).run("encode_reference", inputs)["key"]
    for folder, low, high in ((exported, 1e-4, 1e-2), (full, 0, 1e-5)):
        manifest = read_manifest(folder)
        key = FrozenRuntime(folder / "frozen.pb", TINY, TINY_SETTINGS, manifest["tensors"]).run(
            "encode_reference", inputs
        )["key"]
        assert low <= np.abs(key - exact).max() <= high, folder


def test_the_frozen_runtime_runs_float16_weights_as_float32_constants(exported, tmp_path):
    """TF does not fold the stored graph's casts, so every weight would be cast (and every conv
    filter laid out again by oneDNN) on every frame: the runtime restores float32 constants."""
    stored = tf.compat.v1.GraphDef()
    stored.ParseFromString((exported / "frozen.pb").read_bytes())
    halves = [n for n in stored.node if n.op == "Const" and n.attr["dtype"].type == tf.float16]
    assert len(halves) > 20
    restored = float32_constants(stored)
    assert not [n for n in restored.node if n.attr["dtype"].type == tf.float16]
    assert len(restored.node) == len(stored.node) - len(halves)  # each const + cast -> one const
    by_name = {n.name: n for n in restored.node}
    for half in halves[:5]:
        again = tf.make_ndarray(by_name[half.name[: -len("/float16")]].attr["value"].tensor)
        assert again.dtype == np.float32
        np.testing.assert_array_equal(again, tf.make_ndarray(half.attr["value"].tensor))


def test_float16_is_used_only_where_it_keeps_the_values():
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, (3, 3, 32, 64)).astype(np.float32)
    assert to_half(weights).dtype == np.float16
    assert to_half(weights[:2, :2, :4, :4]) is None  # too small to matter
    assert to_half(np.full(1000, 1e5, np.float32)) is None  # overflows float16
    # Values this small are float16 subnormals, rounded by several % of their size.
    assert to_half(weights * 1e-4) is None
    assert to_half(weights.astype(np.float64)) is None  # only float32 weights are rounded


def test_frozen_graph_reloads_in_a_fresh_process(reloaded, exported, clip):
    frame = clip[0][0]
    np.save(exported.parent / "frame.npy", frame)
    names = json.dumps(read_manifest(exported)["tensors"]["encode_reference"])
    np.save(exported.parent / "probs.npy", np.ones(frame.shape[:2] + (2,), np.float32) / 2)
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, tensorflow as tf
        names = json.loads({names!r})
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(open({str(exported / "frozen.pb")!r}, 'rb').read())
        frame = np.load({str(exported.parent / "frame.npy")!r})
        probs = np.load({str(exported.parent / "probs.npy")!r})
        inputs, key = names["inputs"], names["outputs"]["key"]
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            a = session.run(key, {{inputs["frame"]: frame, inputs["probs"]: probs}})
        wrapped = tf.compat.v1.wrap_function(
            lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
        pruned = wrapped.prune(feeds=[inputs["frame"], inputs["probs"]], fetches=key)
        b = pruned(tf.constant(frame), tf.constant(probs)).numpy()
        np.save({str(exported.parent / "keys.npy")!r}, np.stack([a, b]))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    session_key, wrapped_key = np.load(exported.parent / "keys.npy")
    expected = KerasRuntime(reloaded).run(
        "encode_reference", {"frame": frame, "probs": np.load(exported.parent / "probs.npy")}
    )["key"]
    np.testing.assert_allclose(session_key, expected, atol=1e-4)
    np.testing.assert_allclose(wrapped_key, expected, atol=1e-4)


def test_objects_added_later_get_channels_everywhere(network, clip):
    frames, labels = clip
    propagator = MatchingPropagator(KerasRuntime(network))
    only_one = np.where(labels[0] == 1, 1, 0).astype(np.uint8)
    reference = propagator.encode_reference(frames[0], only_one)
    later = np.where(labels[3] == 2, 2, 0).astype(np.uint8)
    reference = propagator.encode_reference(frames[3], later, reference)
    assert reference.object_ids == (1, 2)
    assert [f.probs.shape[-1] for f in reference.frames] == [3, 3]
    assert (reference.frames[0].probs[..., 2] == -1).all()  # frame 0 never saw object 2
    state = propagator.initial_state(frames[3], later, reference)
    predicted, _ = propagator.step(frames[4], reference, state)
    assert set(np.unique(predicted)) <= {0, 1, 2} and (predicted == 2).any()
