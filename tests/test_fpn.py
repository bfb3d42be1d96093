"""FPN layer: shapes on frame sizes that do and do not divide by 32, config round-trip and a TF
graph with unknown sizes (tests/layer_harness.py), one training step."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.layer_harness import run_layer_test
from vostrack.network.fpn import FeaturePyramid

CHANNELS = {"C2": 3, "C3": 4, "C4": 5, "C5": 6}


def _inputs(height: int, width: int, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Backbone-like features of a height x width frame: ceil(size / stride) per level, as
    'same'-padded stride-2 convs give."""
    rng = np.random.RandomState(seed)
    out = {}
    for level, channels in CHANNELS.items():
        stride = 2 ** int(level[1])
        out[level] = rng.randn(batch, -(-height // stride), -(-width // stride), channels).astype(
            np.float32
        )
    return out


@pytest.mark.parametrize(
    "height, width, sizes",
    [
        (480, 864, [(120, 216), (60, 108), (30, 54), (15, 27)]),
        (480, 854, [(120, 214), (60, 107), (30, 54), (15, 27)]),
    ],
)
def test_output_shapes(height, width, sizes):
    inputs = _inputs(height, width)
    assert [inputs[f"C{lv}"].shape[1:3] for lv in range(2, 6)] == sizes
    outputs = FeaturePyramid(channels=8)(inputs)
    assert sorted(outputs) == ["P2", "P3", "P4", "P5"]
    for level, (h, w) in zip(range(2, 6), sizes):
        assert tuple(outputs[f"P{level}"].shape) == (1, h, w, 8)


def test_levels_subset_and_missing_input():
    inputs = _inputs(64, 64)
    outputs = FeaturePyramid(channels=4, min_level=3, max_level=4)(inputs)
    assert sorted(outputs) == ["P3", "P4"]
    del inputs["C4"]
    with pytest.raises(ValueError, match="C4"):
        FeaturePyramid(channels=4)(inputs)


def test_top_down_path_reaches_the_finest_level():
    # Changing C5 alone must change P2: the top-down path is wired.
    layer = FeaturePyramid(channels=4)
    inputs = _inputs(64, 96)
    before = keras.ops.convert_to_numpy(layer(inputs)["P2"])
    inputs["C5"] = inputs["C5"] + 1.0
    after = keras.ops.convert_to_numpy(layer(inputs)["P2"])
    assert np.abs(after - before).max() > 1e-3


def test_config_round_trip_and_tf_graph_with_unknown_frame_size():
    # The round trip on a 64x64 frame; in a TF graph with every size but the channels unknown,
    # two frame sizes (one not a multiple of 32) through one trace.
    run_layer_test(
        FeaturePyramid,
        dict(channels=6, min_level=2, max_level=5, kernel_initializer="he_normal", name="fpn"),
        (_inputs(64, 64),),
        traced_arg_sets=[(_inputs(96, 128),), (_inputs(80, 150),)],
        atol=1e-6,
        graph_atol=1e-5,
    )


def test_one_training_step_lowers_the_loss():
    keras.utils.set_random_seed(0)
    symbolic = {k: keras.Input((None, None, c), name=k) for k, c in CHANNELS.items()}
    model = keras.Model(symbolic, FeaturePyramid(channels=4)(symbolic))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    inputs = _inputs(64, 64, batch=2)
    rng = np.random.RandomState(1)
    targets = {
        f"P{lv}": rng.randn(2, 64 // 2**lv, 64 // 2**lv, 4).astype(np.float32) for lv in range(2, 6)
    }
    first = float(np.sum(model.train_on_batch(inputs, targets)))
    second = float(np.sum(model.evaluate(inputs, targets, verbose=0)))
    assert second < first
