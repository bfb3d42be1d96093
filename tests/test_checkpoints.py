"""Training checkpoints (vostrack.training.checkpoints): arrays keyed by variable path, so that
a restore assigns each array to its own variable whatever order the variables come in; one-line
errors for missing, unexpected and misshapen arrays; partial restores (the backbone only); old
checkpoints keyed by position still load."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from vostrack.errors import VostrackError
from vostrack.training.checkpoints import (
    NETWORK,
    OPTIMIZERS,
    SHARD_BYTES,
    latest_checkpoint,
    load_arrays,
    network_arrays,
    optimizer_arrays,
    optimizer_keys,
    restore_network,
    restore_optimizers,
    save_arrays,
    write_checkpoint,
)


def _network(seed: int, reverse: bool = False) -> SimpleNamespace:
    """A stand-in for the network: a backbone layer (its encoder) and a head of two convs of
    identical shape, as the mask head has; ``reverse`` lists its variables in reverse order."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")
    conv_1 = keras.layers.Conv2D(4, 3, padding="same", name="conv_1")
    conv_2 = keras.layers.Conv2D(4, 3, padding="same", name="conv_2")
    encoder = keras.Model(inputs, stem(inputs), name="encoder")
    keras.Model(inputs, conv_2(conv_1(encoder.output)), name="net")
    variables = [*stem.weights, *conv_1.weights, *conv_2.weights]
    return SimpleNamespace(
        variables=variables[::-1] if reverse else variables,
        encoder=SimpleNamespace(variables=list(stem.weights)),
    )


def _values(network: SimpleNamespace) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v.numpy()) for v in network.variables}


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_arrays_are_keyed_by_path_and_restored_by_path(tmp_path):
    saved = _network(seed=1)
    save_arrays(tmp_path, NETWORK, network_arrays(saved))
    with np.load(tmp_path / "network-000.npz") as shard:
        assert sorted(shard.files) == sorted(v.path for v in saved.variables)
        assert "conv_1/kernel" in shard.files
    expected = _values(saved)
    # The two head convs have the same shape: by position, a reordered build would swap them.
    assert not np.array_equal(expected["conv_1/kernel"], expected["conv_2/kernel"])
    other = _network(seed=2, reverse=True)
    report = restore_network(other, tmp_path)
    assert sorted(report.assigned) == sorted(expected) and not report.kept
    for path, value in _values(other).items():
        np.testing.assert_array_equal(value, expected[path], err_msg=path)


def test_missing_unexpected_and_misshapen_arrays_are_one_line_errors(tmp_path):
    arrays = network_arrays(_network(seed=1))
    cases = [
        ({k: v for k, v in arrays.items() if k != "conv_2/kernel"}, "has no conv_2/kernel"),
        ({**arrays, "conv_3/kernel": arrays["conv_2/kernel"]}, "holds conv_3/kernel"),
        (
            {**arrays, "conv_2/bias": np.zeros(5, np.float32)},
            "does not fit the model (conv_2/bias: (5,) vs (4,))",
        ),
    ]
    for index, (case, needle) in enumerate(cases):
        folder = tmp_path / str(index)
        folder.mkdir()
        save_arrays(folder, NETWORK, case)
        network = _network(seed=2)
        before = _values(network)
        with pytest.raises(VostrackError) as excinfo:
            restore_network(network, folder)
        assert needle in _one_line(excinfo)
        for path, value in _values(network).items():  # a refused restore assigns nothing
            np.testing.assert_array_equal(value, before[path])


def test_a_partial_restore_takes_the_backbone_and_keeps_the_rest_as_built(tmp_path):
    saved = _network(seed=1)
    save_arrays(tmp_path, NETWORK, network_arrays(saved))
    expected = _values(saved)
    network = _network(seed=2, reverse=True)
    built = _values(network)
    report = restore_network(network, tmp_path, only=["backbone"])
    values = _values(network)
    assert sorted(report.assigned) == ["stem/bias", "stem/kernel"]
    assert (
        sorted(report.kept)
        == sorted(report.skipped)
        == ["conv_1/bias", "conv_1/kernel", "conv_2/bias", "conv_2/kernel"]
    )
    for path in values:
        np.testing.assert_array_equal(
            values[path], (expected if path.startswith("stem/") else built)[path], err_msg=path
        )
    # A path prefix takes what lies under it, at a path component only.
    network = _network(seed=3)
    assert sorted(restore_network(network, tmp_path, only=["conv_1"]).assigned) == [
        "conv_1/bias",
        "conv_1/kernel",
    ]
    with pytest.raises(VostrackError) as excinfo:
        restore_network(network, tmp_path, only=["conv"])
    assert "no variable of the model lies under conv" in _one_line(excinfo)


def test_old_checkpoints_keyed_by_position_still_load(tmp_path):
    saved = _network(seed=1)
    np.savez(
        tmp_path / "network-000.npz",
        **{f"a{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(saved.variables)},
    )
    network = _network(seed=2)  # the same config builds the same variables in the same order
    restore_network(network, tmp_path)
    for path, value in _values(network).items():
        np.testing.assert_array_equal(value, _values(saved)[path], err_msg=path)
    # ... with the checks they always had: the count, then the shapes
    short = tmp_path / "short"
    short.mkdir()
    np.savez(
        short / "network-000.npz",
        **{f"a{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(saved.variables[:5])},
    )
    with pytest.raises(VostrackError) as excinfo:
        restore_network(_network(seed=2), short)
    assert "holds 5 arrays, the model has 6: it was made with another config" in _one_line(excinfo)
    with pytest.raises(VostrackError) as excinfo:
        restore_network(_network(seed=2, reverse=True), tmp_path)
    assert "does not fit the model (conv_2/bias: (3, 3, 3, 4) vs (4,))" in _one_line(excinfo)


def _optimizer(network: SimpleNamespace) -> keras.optimizers.Optimizer:
    """AdamW built on the network's variables in their order, after one step (so that its
    slots hold something)."""
    optimizer = keras.optimizers.AdamW(1e-2)
    optimizer.build(network.variables)
    grads = [np.full(v.shape, i + 1.0, np.float32) for i, v in enumerate(network.variables)]
    optimizer.apply(grads, network.variables)
    return optimizer


def test_optimizer_slots_are_keyed_by_their_variable(tmp_path):
    network = _network(seed=1)
    optimizer = _optimizer(network)
    keys = optimizer_keys("heads", optimizer, network.variables)
    assert {
        "heads/iteration",
        "heads/learning_rate",
        "heads/conv_1/kernel/momentum",
        "heads/conv_2/bias/velocity",
    } <= set(keys)
    assert len(keys) == 2 + 2 * len(network.variables)
    save_arrays(tmp_path, OPTIMIZERS, optimizer_arrays({"heads": optimizer}, network.variables))
    saved = load_arrays(tmp_path, OPTIMIZERS)
    assert not np.array_equal(
        saved["heads/conv_1/kernel/momentum"], saved["heads/conv_2/kernel/momentum"]
    )
    # Another process: the optimizer is named adam_w_N, its variables built in another order.
    other = _network(seed=2, reverse=True)
    fresh = keras.optimizers.AdamW(1e-2)
    fresh.build(other.variables)
    restore_optimizers({"heads": fresh}, other.variables, tmp_path)
    restored = optimizer_arrays({"heads": fresh}, other.variables)
    assert restored.keys() == saved.keys()
    for key, value in restored.items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


def test_a_real_network_keys_every_variable_and_slot_by_its_path():
    from vostrack.network.config import ModelConfig
    from vostrack.network.vos import VosNetwork

    network = VosNetwork(ModelConfig(name="tiny"), weights=None)
    paths = [v.path for v in network.variables]
    assert len(set(paths)) == len(paths)
    assert {"mask_head/output/kernel", "stem_conv/kernel"} <= set(paths)
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(network.trainable_variables)
    slots = {
        tuple(k.removeprefix("heads/").rsplit("/", 1))
        for k in optimizer_keys("heads", optimizer, network.variables)
        if k.count("/") > 1
    }
    assert slots == {
        (v.path, s) for v in network.trainable_variables for s in ("momentum", "velocity")
    }


def test_a_checkpoint_folder_is_sharded_and_pointed_at(tmp_path):
    big = {f"w{i}": np.zeros(2 * 2**20, np.float32) for i in range(3)}  # 8 MiB each
    saved = write_checkpoint(
        tmp_path / "checkpoints", 12, big, {"heads/iteration": np.int64(3)}, {"step": 12}
    )
    assert saved.name == "step_0000012" and latest_checkpoint(tmp_path) == saved
    shards = sorted(saved.glob("network-*.npz"))
    assert len(shards) == 3 and max(p.stat().st_size for p in shards) <= SHARD_BYTES
    assert list(load_arrays(saved, NETWORK)) == ["w0", "w1", "w2"]
