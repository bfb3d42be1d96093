"""The LiteRT runtime: the frame resampling it does in numpy equals TF's in-graph resize, and
the LiteRT model (``vostrack export --litert``) gives the frozen graph's masks, on the video's
own size and on a 1080p input that it must downscale first, without importing TensorFlow."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tests.test_parts_model import CONFIG, run
from tests.test_parts_model import SETTINGS as TRACKED
from vostrack.data.procedural import SceneConfig, make_clip
from vostrack.errors import VostrackError
from vostrack.inference.propagator import PartsPropagator
from vostrack.inference.resample import prepare_frame, resize_antialiased
from vostrack.inference.runtimes import FrozenRuntime, LiteRuntime
from vostrack.network.config import InferenceSettings, working_size
from vostrack.network.vos import VosNetwork, load_network
from vostrack.registry import load_propagator, manifest_config, read_manifest
from vostrack.serving.export import export_model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "size, out",
    [
        ((1080, 1920), (480, 853)),  # the 1080p downscale, antialiased over ~2.25 pixels
        ((480, 854), (480, 854)),  # DAVIS frames: no resize at all
        ((100, 70), (480, 336)),  # an upscale: plain bilinear
        ((481, 853), (480, 851)),  # a one-pixel change, where spans are clipped
        ((37, 61), (23, 90)),  # down one axis, up the other
    ],
)
def test_the_numpy_resize_is_tfs_antialiased_bilinear(size, out):
    image = np.random.default_rng(0).random((*size, 3), dtype=np.float32)
    expected = tf.image.resize(image[None], out, method="bilinear", antialias=True)[0].numpy()
    np.testing.assert_allclose(resize_antialiased(image, out), expected, rtol=0, atol=1e-6)


def test_a_prepared_frame_is_the_graphs():
    frame = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    h, w, hp, wp = working_size(1080, 1920, InferenceSettings())
    graph = VosNetwork.prepare_frames(tf.constant(frame[None]), (h, w), (hp, wp))
    np.testing.assert_allclose(
        prepare_frame(frame, (h, w), (hp, wp)), graph[0].numpy(), rtol=0, atol=1e-6
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The shipped network (trained weights: an untrained one's activations grow so large that
    float32 rounding alone flips its masks) at a small working size, exported with LiteRT."""
    shipped = REPO / "models" / "default"
    config, settings = manifest_config(shipped, read_manifest(shipped))
    settings = dataclasses.replace(settings, working_short_side=96, mirror_average=False)
    network = load_network(shipped, config, settings, "network.weights.h5")
    folder = tmp_path_factory.mktemp("litert") / "shipped-96"
    return export_model(network, folder, "shipped-96", saved_model=False, litert=True)


@pytest.fixture(scope="module")
def clip():
    return make_clip(
        SceneConfig(height=96, width=160, num_frames=6, num_objects=2, seed=3, appear_at={2: 2})
    )


def _iou(a, b):
    a, b = a > 0, b > 0
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.slow
@pytest.mark.parametrize("frame_size", [None, (1080, 1920)])
def test_litert_gives_the_frozen_graphs_masks(model, clip, frame_size):
    frames, labels = clip
    if frame_size is not None:  # the same video at 1080p: the runtimes must downscale it alike
        frames = [cv2.resize(f, frame_size[::-1], interpolation=cv2.INTER_LINEAR) for f in frames]
        labels = [cv2.resize(x, frame_size[::-1], interpolation=cv2.INTER_NEAREST) for x in labels]
    manifest = read_manifest(model)
    assert manifest["files"]["litert"] == "model.tflite"
    config, settings = manifest_config(model, manifest)
    frozen = PartsPropagator(
        FrozenRuntime(model / "frozen.pb", config, settings, manifest["tensors"])
    )
    lite = PartsPropagator(LiteRuntime(model / "model.tflite", config, settings))
    frozen_masks, frozen_states, _ = run(frozen, frames, np.stack(labels))
    lite_masks, lite_states, _ = run(lite, frames, np.stack(labels))
    assert frozen_masks.shape == lite_masks.shape
    for t in range(len(frames)):
        assert _iou(frozen_masks[t], lite_masks[t]) >= 0.99, t
    np.testing.assert_allclose(lite_states[-1].part_boxes, frozen_states[-1].part_boxes, atol=0.05)


@pytest.mark.slow
def test_the_litert_runtime_runs_without_tensorflow(model, clip, tmp_path):
    frames, labels = clip
    np.save(tmp_path / "frames.npy", np.stack(frames[:3]))
    np.save(tmp_path / "labels.npy", labels[0])
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from vostrack.registry import load_propagator
        frames = np.load({str(tmp_path / "frames.npy")!r})
        labels = np.load({str(tmp_path / "labels.npy")!r})
        propagator, info = load_propagator({str(model)!r}, "litert", mirror=True)
        assert info["runtime"] == "litert"
        reference = propagator.encode_reference(frames[0], labels)
        # Not reusing the reference's encoding: the frame is encoded with no part rows, which
        # LiteRT cannot size (the runtime stands one invalid row in for them).
        state = propagator.initial_state(frames[0], labels, reference)
        for frame in frames[1:]:
            predicted, state = propagator.step(frame, reference, state)
        heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules)
        print(info["runtime"], predicted.shape, ",".join(heavy) or "-")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["litert", "(96,", "160)", "-"], done.stdout


def test_the_export_refuses_the_part_tracker_in_one_line(tmp_path):
    with pytest.raises(VostrackError, match="needs parts.track=false"):
        export_model(VosNetwork(CONFIG, TRACKED), tmp_path / "m", "m", litert=True)
    assert not (tmp_path / "m").exists()


def test_a_model_without_a_litert_file_is_refused_in_one_line(tiny_model):
    with pytest.raises(VostrackError, match="has no LiteRT model; make one with"):
        load_propagator(str(tiny_model), "litert")


def test_without_the_litert_package_the_runtime_is_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    with pytest.raises(VostrackError, match=r"--runtime litert needs the litert extra"):
        load_propagator("default", "litert")


def test_the_litert_export_computes_with_the_stored_weights(tiny_network):
    """The LiteRT file is made from the live network with its weights rounded as the frozen
    graph stores them (float16 where that keeps them), and the network is given back as it was."""
    from vostrack.serving.export import _rounded_weights, to_half

    before = [np.array(v.numpy()) for v in tiny_network.weights]
    with _rounded_weights(tiny_network, "float16"):
        inside = [np.array(v.numpy()) for v in tiny_network.weights]
    after = [np.array(v.numpy()) for v in tiny_network.weights]
    rounded = 0
    for original, during, restored in zip(before, inside, after):
        half = to_half(original)
        expected = original if half is None else half.astype(np.float32)
        np.testing.assert_array_equal(during, expected)
        np.testing.assert_array_equal(restored, original)
        rounded += half is not None and not np.array_equal(expected, original)
    assert rounded > 0  # the tiny network's weights are float32: some did change
    with _rounded_weights(tiny_network, "float32"):
        for variable, original in zip(tiny_network.weights, before):
            np.testing.assert_array_equal(variable.numpy(), original)
