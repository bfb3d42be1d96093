"""Training: the loss goes down, a resumed run ends where an uninterrupted one does, the JAX
backend trains too, and `vostrack train` / `export --checkpoint` work end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import jax_env
from vostrack.cli import cli
from vostrack.network.config import InferenceSettings, ModelConfig, PartSettings
from vostrack.training.config import TrainConfig
from vostrack.training.runs import open_run
from vostrack.training.trainer import Trainer

pytestmark = pytest.mark.slow  # training steps, on TF and on JAX: minutes

TINY = TrainConfig(
    model=ModelConfig(name="tiny"),
    settings=InferenceSettings(
        working_short_side=64, parts=PartSettings(max_parts=2, min_part_area=128)
    ),
    size=64,
    batch_size=1,
    max_objects=1,
    steps=4,
    checkpoint_every=2,
    log_every=1,
    freeze_steps=100,
    warmup_steps=1,
    peak_lr=1e-3,
)


def weights(trainer: Trainer) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in trainer.network.variables]


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(tmp_path):
    from vostrack.training.clip_loss import clip_loss

    trainer = open_run(
        tmp_path / "run", dataclasses.replace(TINY, steps=8, checkpoint_every=8), resume=False
    )
    batch = {k: v for k, v in trainer.loader.batch_at_step(0).items() if k != "source"}
    before = float(clip_loss(trainer.network, batch)[0])
    # Every term is a mean over the (clip, frame) steps, so two clips' loss is the mean of each
    # one's: it holds only if each clip's steps read their own frames' features (one backbone
    # call encodes all the batch's frames).
    other = {k: v for k, v in trainer.loader.batch_at_step(1).items() if k != "source"}
    alone = float(clip_loss(trainer.network, other)[0])
    pair = float(
        clip_loss(trainer.network, {k: np.concatenate([batch[k], other[k]]) for k in batch})[0]
    )
    assert abs(alone - before) > 1e-3 * before  # two different clips
    np.testing.assert_allclose(pair, (before + alone) / 2, rtol=1e-4)
    trainer.loader.batch_at_step = lambda step: batch
    trainer.train(progress=False)
    after = float(clip_loss(trainer.network, batch)[0])
    assert after < 0.9 * before, (before, after)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 and {"loss", "loss_mask", "loss_part", "loss_track", "lr"} <= set(
        json.loads(lines[-1])
    )


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight = open_run(tmp_path / "a", TINY, resume=False)
    straight.train(progress=False)
    first = open_run(tmp_path / "b", TINY, resume=False)
    first.train(steps=3, progress=False)
    # as if killed during step 4: step 3 was logged, the last checkpoint is step 2
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_0000003")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step_0000002\n")
    # resumed with batches made by a worker process: the same batches, so the same weights
    resumed = open_run(tmp_path / "b", None, resume=True, workers=1)
    assert resumed.step == 2 and resumed.config.workers == 1
    resumed.train(progress=False)
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert logged == [1, 2, 3, 4]  # step 3 of the stopped run was dropped, then logged again
    shards = list((tmp_path / "b" / "checkpoints" / "step_0000004").glob("*.npz"))
    assert shards and max(p.stat().st_size for p in shards) <= 16 * 2**20


def test_the_jax_backend_runs_training_steps(tmp_path):
    env = jax_env()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY.to_dict(), "steps": 2, "freeze_steps": 1}))
    # As on the GPU machine, which has no TensorFlow: any import of it fails. The GPU recipe's
    # precision: backbone + FPN in bfloat16, heads and weights in float32.
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class NoTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tensorboard"):
                    raise ModuleNotFoundError(f"No module named {{name!r}}")

        sys.meta_path.insert(0, NoTensorFlow())
        from vostrack.cli import main
        sys.argv = ["vostrack", "train", "--config", {str(config)!r}, "--precision",
                    "mixed_bfloat16", "--out", {str(tmp_path / "run")!r}, "-q"]
        main()
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "tensorboard").exists()  # metrics.jsonl only, without TF
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [1, 2] and all(np.isfinite(m["loss"]) for m in metrics)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["precision"] == "mixed_bfloat16"
    shards = sorted((tmp_path / "run" / "checkpoints" / "step_0000002").glob("network-*.npz"))
    for shard in shards:
        with np.load(shard) as arrays:
            assert all(
                arrays[k].dtype == np.float32 or arrays[k].dtype.kind in "iub" for k in arrays.files
            )
    assert shards


def test_train_command_validation_ctrl_c_resume_and_export(tmp_path, monkeypatch):
    from tests.test_cli_validate import make_tree
    from vostrack.data.batches import ClipBatches

    make_tree(tmp_path / "tree", num_frames=5)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({**TINY.to_dict(), "steps": 3, "val_every": 2, "checkpoint_every": 100})
    )
    real_batch = ClipBatches.batch_at_step

    def batch_at_step(self, step):
        if step == 1:  # Ctrl-C while the second step's batch is made: that step still runs
            os.kill(os.getpid(), signal.SIGINT)
        return real_batch(self, step)

    monkeypatch.setattr(ClipBatches, "batch_at_step", batch_at_step)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--config",
            str(config),
            "--out",
            str(run),
            "-q",
            "--val",
            str(tmp_path / "tree"),
        ],
    )
    assert result.exit_code == 130, result.output
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "step 2 of 3" in message and "--resume" in message
    # Stopped after step 2 (validated, as every 2 steps) with a checkpoint of it, though the
    # config saves only at the end: a resumed run goes on from there.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002"]
    assert [
        json.loads(line)["step"] for line in (run / "metrics.jsonl").open() if "loss" in line
    ] == [1, 2]
    scores = [json.loads(line) for line in (run / "metrics.jsonl").open() if "val_jf" in line]
    assert len(scores) == 1 and 0.0 <= scores[0]["val_jf"] <= 1.0
    assert (run / "best" / "state.json").is_file()
    again = CliRunner().invoke(cli, ["train", "--config", str(config), "--out", str(run), "-q"])
    assert again.exit_code == 2 and "--resume" in again.stderr
    mixed = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--steps", "9"])
    assert mixed.exit_code == 2 and "only --out" in mixed.stderr
    nothing = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert nothing.exit_code == 2 and "nothing to resume" in nothing.stderr
    missing = CliRunner().invoke(
        cli, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]
    )
    assert missing.exit_code == 2 and "not found" in missing.stderr

    model = tmp_path / "model"
    exported = CliRunner().invoke(
        cli, ["export", "--checkpoint", str(run), "-o", str(model), "--no-saved-model"]
    )
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["config"]["settings"]["parts"]["max_parts"] == 2
    assert (model / "frozen.pb").is_file()
    more = CliRunner().invoke(
        cli,
        [
            "export",
            "--checkpoint",
            str(run),
            "-o",
            str(model),
            "--no-saved-model",
            "--overwrite",
            "--max-parts",
            "3",
            "--no-part-tracker",
            "--mirror",
        ],
    )
    assert more.exit_code == 0, more.output
    manifest = json.loads((model / "manifest.json").read_text())
    settings = manifest["config"]["settings"]
    assert settings["parts"]["max_parts"] == 3
    assert settings["parts"]["track"] is False
    assert settings["mirror_average"] is True
    assert b"tracker" not in (model / "frozen.pb").read_bytes()  # nor its weights there,
    assert b"tracker" in (model / "network.weights.h5").read_bytes()  # but kept here
