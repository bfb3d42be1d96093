"""`vostrack train --backbone resnet50_v2 --backbone-weights FILE`: the weights that `vostrack
import-backbone` writes start the network's encoder, and what cannot is refused in one line."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import fails
from tests.test_training import TINY
from vostrack.cli import cli
from vostrack.network.backbones.resnet_v2 import resnet50_v2
from vostrack.training.checkpoints import NETWORK, load_arrays

# Keras' own save_weights on the TF backend calls np.array(tensor, copy=False): not ours.
# Loading a file of another model, Keras warns about each layer it finds no weights for, then fails.
pytestmark = [
    pytest.mark.slow,  # a training step: a minute
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning"),
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A resnet50_v2 weights file as import-backbone writes it (the model with its top), of
    random weights, and its arrays by variable path."""
    keras.utils.set_random_seed(7)
    model = resnet50_v2(weights=None, include_top=True)
    path = tmp_path_factory.mktemp("backbone") / "resnet50_v2.weights.h5"
    model.save_weights(str(path))
    return path, {v.path: np.asarray(v.numpy()) for v in model.variables}


def test_training_starts_from_the_imported_backbone(tmp_path, imported):
    weights, expected = imported
    config = tmp_path / "config.json"
    # One step with the backbone frozen (and its batch norms in inference mode): the step's
    # checkpoint holds the encoder exactly as it started.
    config.write_text(
        json.dumps(
            {
                **TINY.to_dict(),
                "steps": 1,
                "warmup_steps": 0,
                "freeze_steps": 1,
                "checkpoint_every": 1,
            }
        )
    )
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--config",
            str(config),
            "--backbone",
            "resnet50_v2",
            "--backbone-weights",
            str(weights),
            "--size",
            "64",
            "--out",
            str(run),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["backbone_weights"] == str(weights)
    assert saved["model"]["backbone"] == "resnet50_v2"
    assert saved["procedural"] == TINY.to_dict()["procedural"]  # the whole config, sections too
    arrays = load_arrays(run / "checkpoints" / "step_0000001", NETWORK)
    encoder = [k for k in arrays if k in expected]
    assert len(encoder) == len(expected) - 2  # all but the classifier (logits kernel and bias)
    for key in encoder:
        np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)
    assert "mask_head/output/kernel" in arrays


def test_what_cannot_start_the_backbone_is_refused_in_one_line(tmp_path, imported):
    weights, _ = imported
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY.to_dict(), "steps": 1, "warmup_steps": 0}))
    run = tmp_path / "run"
    base = ["train", "--config", config, "--out", run, "-q"]
    fails(
        [*base, "--backbone-weights", weights],
        "the efficientnet_lite2 backbone takes no weights file",
    )
    fails(
        [*base, "--backbone", "resnet50_v2"],
        "resnet50_v2 backbone has no ImageNet weights",
        "--backbone-weights",
    )
    fails(
        [*base, "--backbone", "resnet50_v2", "--backbone-weights", tmp_path / "none.weights.h5"],
        "--backbone-weights",
        "none.weights.h5: not found",
    )
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    wrong = tmp_path / "other.weights.h5"
    other.save_weights(str(wrong))
    fails(
        [*base, "--backbone", "resnet50_v2", "--backbone-weights", wrong],
        f"cannot load {wrong} into resnet50_v2",
    )
    assert not run.exists()  # a refused start leaves no run folder
