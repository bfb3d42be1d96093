"""Run folders: a new run, or the resumed one.

A run folder (``vostrack train --out RUN``) holds ``config.json`` (the whole training config,
vostrack/training/config.py), ``checkpoints/`` (vostrack/training/checkpoints.py),
``metrics.jsonl``, ``tensorboard/`` and ``best/`` (vostrack/training/trainer.py). Its own module
because starting and resuming a run is about that folder, not about training: a new run is
refused where one is (``--resume`` continues it), a resumed one takes its saved config, its
latest checkpoint and the metrics logged up to that checkpoint, so that it ends as an
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from vostrack.errors import VostrackError
from vostrack.io.atomic import write_json, write_text
from vostrack.training.checkpoints import latest_checkpoint, read_state
from vostrack.training.config import TrainConfig
from vostrack.training.trainer import Trainer

log = logging.getLogger(__name__)


def open_run(
    run_dir: Path,
    config: TrainConfig | None,
    resume: bool,
    workers: int | None = None,
    devices: int | None = None,
) -> Trainer:
    """A new run in ``run_dir`` (refused if one is there) or the resumed one.

    ``workers`` and ``devices`` override the saved config of a resumed run: the batch of a step
    depends on neither (a run may resume on another machine).
    """
    run_dir = Path(run_dir)
    saved = run_dir / "config.json"
    if workers is not None and config is not None:
        config = dataclasses.replace(config, workers=workers)
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if not saved.is_file() or checkpoint is None:
            raise VostrackError(f"nothing to resume in {run_dir}: no checkpoint")
        config = TrainConfig.from_dict(json.loads(saved.read_text()))
        step = _checkpoint_step(checkpoint)
        if step is not None and step >= config.steps:
            raise VostrackError(
                f"nothing to resume in {run_dir}: the run is complete (step "
                f"{step} of {config.steps}, saved as {checkpoint})"
            )
        config = dataclasses.replace(
            config,
            **{k: v for k, v in (("workers", workers), ("devices", devices)) if v is not None},
        )
        # The checkpoint replaces every weight: the initial ones (ImageNet, init,
        # backbone_weights) are neither loaded nor needed where the run resumes.
        trainer = Trainer(config, run_dir, initial_weights=False)
        trainer.restore(checkpoint)
        _truncate_metrics(run_dir / "metrics.jsonl", trainer.step)
        log.info("resumed %s at step %d", run_dir, trainer.step)
        return trainer
    if saved.exists():
        raise VostrackError(
            f"{run_dir} already holds a run; use --resume to continue it or choose another --out"
        )
    trainer = Trainer(config, run_dir)  # before the folder: a refused start leaves none
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(saved, config.to_dict())
    return trainer


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop what a stopped run logged after its last checkpoint: the resumed run logs it again."""
    if path.is_file():
        lines = [
            ln
            for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= step
        ]
        write_text(path, "".join(ln + "\n" for ln in lines))


def _checkpoint_step(checkpoint: Path) -> int | None:
    try:
        return int(read_state(checkpoint)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
