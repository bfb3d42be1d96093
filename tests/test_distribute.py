"""Several devices: one data-parallel step over two (virtual CPU) devices moves the weights as
one device does on the same batch, with TF's MirroredStrategy and Keras's DataParallel on JAX.

On JAX the step is a frozen-backbone one, which keeps compilation (most of the test's time)
down: the gradients' all-reduce is what differs between 1 and N devices, the backbone's own
optimizer runs the same code either way, and test_training.py trains its unfrozen step on JAX.
On TF, where nothing else trains the backbone, the step trains it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import jax_env

SCRIPT = """
import dataclasses, json, sys, tempfile
import numpy as np
import keras
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.test_training import TINY
from vostrack.training.trainer import Trainer

config = dataclasses.replace(TINY, batch_size=2, steps=1, warmup_steps=0,
                             freeze_steps=int(sys.argv[1]))
deltas, spread = {}, {}
for devices in (2, 1):
    trainer = Trainer(dataclasses.replace(config, devices=devices), tempfile.mkdtemp())
    before = [np.asarray(v.numpy()) for v in trainer.network.trainable_variables]
    trainer.train(progress=False)
    after = [np.asarray(v.numpy()) for v in trainer.network.trainable_variables]
    deltas[devices] = [a - b for a, b in zip(after, before)]
    spread[devices] = trainer.replicas.count
    if keras.backend.backend() == "jax" and devices == 2:
        assert len(trainer.network.trainable_variables[0].value.sharding.device_set) == 2
    if keras.backend.backend() == "tensorflow" and devices == 2:
        assert trainer.replicas.strategy.num_replicas_in_sync == 2
moved = max(float(np.abs(d).max()) for d in deltas[1])
worst = max(float(np.abs(a - b).max()) for a, b in zip(deltas[1], deltas[2]))
print(json.dumps({"spread": spread, "moved": moved, "worst": worst}))
"""


def run(env: dict, freeze_steps: int) -> dict:
    import json

    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(freeze_steps)],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(result: dict) -> None:
    assert result["spread"] == {"2": 2, "1": 1}
    assert result["moved"] > 1e-4  # the step did move the weights ...
    assert result["worst"] < 1e-2 * result["moved"], result  # ... and the same way on 2 devices


@pytest.mark.slow
def test_mirrored_strategy_step_matches_one_device():
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
    )
    check(run(env, freeze_steps=0))


@pytest.mark.slow
def test_jax_data_parallel_step_matches_one_device():
    env = jax_env()
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    check(run(env, freeze_steps=1))


def test_a_batch_that_does_not_split_is_refused():
    from vostrack.errors import VostrackError
    from vostrack.training.distribute import Replicas

    with pytest.raises(VostrackError, match="devices"):
        Replicas(devices=5, batch_size=3)  # more devices than this machine has
