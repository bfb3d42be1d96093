"""`vostrack train`: the training loop, with its logging and periodic validation.

One loop for every backend: the batch of each step (vostrack/data/batches.py, made ahead by
vostrack/data/prefetch.py), the loss (:func:`vostrack.training.clip_loss.clip_loss`), the
gradient step of the backend (vostrack/training/steps.py), metrics, validation, checkpoints.
Recipe (vostrack/training/schedule.py): warm-up + cosine learning rate, the ImageNet backbone
frozen for the first ``freeze_steps`` steps and then trained by its own optimizer at
``backbone_lr`` times the heads' rate, joint gradient clipping, XMem's annealed bootstrapping.

The rest of training has its own modules: the config (vostrack/training/config.py), the
checkpoint format (vostrack/training/checkpoints.py) and run folders, new or resumed
(vostrack/training/runs.py). A run folder gets from here ``checkpoints/`` (every
``checkpoint_every`` steps, at the end and when stopped), ``best/`` (best validation J&F),
``metrics.jsonl`` (one line per logged step) and, where TensorFlow is installed, TensorBoard
scalars in ``tensorboard/``. Resuming restores the network, both optimizers and the step, and
the loader gives the same batch for a step whatever happened before it, so a resumed run ends
with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vostrack.data.prefetch import Prefetcher
from vostrack.errors import InterruptedRun, VostrackError
from vostrack.io.disk import write_failure
from vostrack.training.checkpoints import (
    network_arrays,
    optimizer_arrays,
    read_state,
    restore_network,
    restore_optimizers,
    write_checkpoint,
)
from vostrack.training.config import WEIGHT_FILE_BACKBONES, TrainConfig, dtype_policy

log = logging.getLogger(__name__)


def training_batches(config: TrainConfig) -> Any:
    """The :class:`~vostrack.data.batches.ClipBatches` of a run: a source for each of
    ``config.data`` (mixed by their weights), each with the config's data settings."""
    from vostrack.data.batches import ClipBatches, LoaderConfig, MixedSource, source_from_path
    from vostrack.data.clips import AugmentConfig, GapSchedule, with_settings

    c = config
    gaps = GapSchedule(c.max_gap[0], c.max_gap[1], c.steps)
    augment = with_settings(AugmentConfig, c.augment, size=(c.size, c.size))
    sources = [
        (
            source_from_path(
                d.path,
                num_frames=c.num_frames,
                max_gap=gaps,
                exclude=c.exclude,
                augment=augment,
                video=c.video,
                static=c.static,
                procedural=c.procedural,
                paste=c.paste,
                paste_from=[d.path for d in c.data],
            ),
            d.weight,
        )
        for d in c.data
    ]
    parts = c.settings.parts  # batches hold parts whatever the model
    return ClipBatches(
        MixedSource(sources) if len(sources) > 1 else sources[0][0],
        LoaderConfig(
            batch_size=c.batch_size,
            steps_per_epoch=None,
            max_objects=c.max_objects,
            max_parts=parts.max_parts,
            seed=c.seed,
            parts=parts.splitting(),
        ),
    )


@dataclass
class StepBatches:
    """The batch of a training step, without the loader's bookkeeping (picklable for workers)."""

    loader: Any

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.loader.batch_at_step(step).items() if k != "source"}


class Trainer:
    """Owns the network, the two optimizers, the data and the run folder.

    ``initial_weights`` False builds the network without its starting weights (ImageNet,
    ``init``, ``backbone_weights``): for a run that restores a checkpoint next.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, initial_weights: bool = True):
        import keras

        from vostrack.training.distribute import Replicas

        self.config = config
        self.run_dir = Path(run_dir)
        keras.utils.set_random_seed(config.seed)
        self.replicas = Replicas(config.devices, config.batch_size)
        with self.replicas.scope(), dtype_policy(config.precision):
            self._build(config, initial_weights)
        self.loader = training_batches(config)
        self.step = 0
        self.best = -1.0
        self._stop = threading.Event()
        self._steps: dict[bool, Any] = {}

    def _build(self, config: TrainConfig, initial_weights: bool) -> None:
        import keras

        from vostrack.network.vos import VosNetwork
        from vostrack.training.schedule import BackboneSchedule, WarmupCosine

        whole_init = config.init is not None and not config.init_only
        imagenet = (
            initial_weights
            and not whole_init
            and config.backbone_weights is None
            and config.model.backbone not in WEIGHT_FILE_BACKBONES
        )
        if initial_weights:  # a missing file: refused before the network is built
            for option, path in (
                ("init", config.init),
                ("backbone_weights", config.backbone_weights),
            ):
                if path is not None and not Path(path).exists():
                    raise VostrackError(f"--{option.replace('_', '-')} {path}: not found")
        self.network = VosNetwork(
            config.model, config.settings, weights="imagenet" if imagenet else None
        )
        if initial_weights and config.backbone_weights is not None:
            self._load_backbone_weights(Path(config.backbone_weights))
        if initial_weights and config.init is not None:
            self._load_init(Path(config.init))
        self.backbone_vars = list(self.network.encoder.trainable_variables)
        backbone_ids = {id(v) for v in self.backbone_vars}
        self.head_vars = [v for v in self.network.trainable_variables if id(v) not in backbone_ids]
        heads_lr = WarmupCosine(
            peak_lr=config.peak_lr,
            total_steps=config.steps,
            warmup_steps=config.warmup_steps,
            floor_lr=config.floor_lr,
        )
        self.heads_opt = keras.optimizers.AdamW(heads_lr, weight_decay=config.weight_decay)
        self.backbone_opt = keras.optimizers.AdamW(
            BackboneSchedule(
                heads_lr,
                multiplier=config.backbone_lr,
                freeze_steps=config.freeze_steps,
                rewarmup_steps=min(500, config.warmup_steps),
            ),
            weight_decay=config.weight_decay,
        )
        self.heads_opt.build(self.head_vars)
        self.backbone_opt.build(self.backbone_vars)

    def _load_init(self, path: Path) -> None:
        if path.is_dir():
            restore_network(self.network, path, self.config.init_only or None)
        elif self.config.init_only:
            raise VostrackError(
                f"--init {path}: init_only takes variables of a checkpoint "
                "folder; a weights file loads whole"
            )
        else:
            self.network.load_weights(str(path))

    def _load_backbone_weights(self, path: Path) -> None:
        """The backbone's weights file into the network's encoder (whose variables are the
        backbone's): the backbone's own builder reads the file (refusing one that does not
        fit in one line), then every encoder variable takes its array by path."""
        from vostrack.network.backbones import get_backbone_builder
        from vostrack.training.checkpoints import restore_variables

        if not path.is_file():
            raise VostrackError(
                f"--backbone-weights {path}: not a file (give the .weights.h5 "
                "that vostrack import-backbone writes)"
            )
        loaded = get_backbone_builder(self.config.model.backbone)(weights=str(path))
        encoder = {v.path: v for v in self.network.encoder.variables}
        arrays = {v.path: np.asarray(v.numpy()) for v in loaded.variables if v.path in encoder}
        restore_variables(encoder, arrays, path)
        log.info("backbone weights from %s", path)

    # ---------------------------------------------------------------------- gradient step
    def _loss(self, batch: dict, bootstrap: Any) -> tuple[Any, dict]:
        from vostrack.training.clip_loss import LossWeights, clip_loss

        c = self.config
        return clip_loss(
            self.network, batch, LossWeights(c.loss_mask, c.loss_part, c.loss_track), bootstrap
        )

    def _compiled_step(self, frozen: bool) -> Any:
        if frozen not in self._steps:
            from vostrack.training.steps import StepModel, build_step

            self._steps[frozen] = build_step(
                StepModel(
                    loss=self._loss,
                    variables=list(self.network.variables),
                    head_vars=self.head_vars,
                    backbone_vars=self.backbone_vars,
                    heads_opt=self.heads_opt,
                    backbone_opt=self.backbone_opt,
                    clip_norm=self.config.clip_norm,
                    replicas=self.replicas,
                ),
                frozen,
            )
        return self._steps[frozen]

    # ------------------------------------------------------------------------- the loop
    def request_stop(self) -> None:
        """Stop after the step in progress, with a checkpoint of it (Ctrl-C, SIGTERM). Safe from
        a signal handler: the loop raises between steps, where nothing is half-done."""
        self._stop.set()

    def train(self, steps: int | None = None, progress: bool = True) -> dict:
        """Train up to ``steps`` (default: the config's); returns the last logged metrics."""
        from tqdm import tqdm

        from vostrack.training.schedule import bootstrap_ratio, frozen_backbone

        c = self.config
        end = min(steps if steps is not None else c.steps, c.steps)
        last: dict = {}
        bar = tqdm(
            total=end, initial=self.step, unit="step", disable=not progress, dynamic_ncols=True
        )
        started, first = time.perf_counter(), self.step
        batches = Prefetcher(StepBatches(self.loader), self.step, end, workers=c.workers)
        try:
            for step, batch in batches:
                assert step == self.step
                ratio = bootstrap_ratio(self.step, *c.bootstrap)
                loss, parts, norm = self._compiled_step(frozen_backbone(self.step, c.freeze_steps))(
                    batch, ratio
                )
                self.step += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == end:
                    last = {
                        "step": self.step,
                        "loss": float(loss),
                        "grad_norm": float(norm),
                        **{f"loss_{k}": float(v) for k, v in parts.items()},
                        "lr": float(self.heads_opt.learning_rate),
                        "steps_per_s": (self.step - first) / (time.perf_counter() - started),
                    }
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                    self._log(last)
                if c.val and self.step % c.val_every == 0:
                    self._validate()
                stopping = self._stop.is_set() and self.step < end
                if self.step % c.checkpoint_every == 0 or self.step == end or stopping:
                    saved = self.save()
                    if stopping:
                        raise InterruptedRun(
                            f"stopped at step {self.step} of {end}, saved as {saved.name}; "
                            f"continue with: vostrack train --out {self.run_dir} --resume"
                        )
        finally:
            batches.close()
            bar.close()
        return last

    # --------------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        """Write checkpoints/step_NNNNNNN atomically and point checkpoints/latest at it."""
        optimizers = {"heads": self.heads_opt, "backbone": self.backbone_opt}
        try:
            return write_checkpoint(
                self.run_dir / "checkpoints",
                self.step,
                network_arrays(self.network),
                optimizer_arrays(optimizers, self.network.variables),
                {"step": self.step, "best": self.best, "config": self.config.to_dict()},
            )
        except OSError as exc:  # a full disk: one line; the latest checkpoint stays the last
            raise write_failure(exc, self.run_dir / "checkpoints", "a checkpoint in") from None

    def restore(self, checkpoint: Path) -> None:
        state = read_state(checkpoint)
        restore_network(self.network, checkpoint)
        restore_optimizers(
            {"heads": self.heads_opt, "backbone": self.backbone_opt},
            self.network.variables,
            checkpoint,
        )
        self.step, self.best = int(state["step"]), float(state.get("best", -1.0))

    # ---------------------------------------------------------------------- logging
    def _log(self, metrics: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(metrics) + "\n")
        writer = self._summary_writer()
        if writer is not None:
            import tensorflow as tf

            with writer.as_default(step=metrics["step"]):
                for key, value in metrics.items():
                    if key != "step":
                        tf.summary.scalar(key, value)

    def _summary_writer(self) -> Any:
        if not hasattr(self, "_writer"):
            try:
                import tensorboard  # noqa: F401  (tf.summary needs it; TF no longer brings it)
                import tensorflow as tf

                self._writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
            except ImportError:  # e.g. a GPU machine without TensorFlow: metrics.jsonl only
                self._writer = None
        return self._writer

    # -------------------------------------------------------------------- validation
    def _validate(self) -> float:
        """J&F of the current weights on the validation tree (Keras runtime); keeps the best."""
        from vostrack.evaluation.davis import DavisTree, score
        from vostrack.evaluation.segment_tree import segment_tree
        from vostrack.inference.runtimes import KerasRuntime
        from vostrack.registry import build_propagator

        tree = DavisTree(self.config.val)
        seqs = tree.sequences(names=list(self.config.val_sequences) or None)
        # As `vostrack validate` would run this model: its own mirror setting included.
        propagator = build_propagator(KerasRuntime(self.network))
        with tempfile.TemporaryDirectory() as out:
            segment_tree(tree, seqs, propagator, Path(out))
            jf = score(tree, out, seqs).overall.jf
        self._log({"step": self.step, "val_jf": jf})
        if jf > self.best:
            self.best = jf
            best = self.save()
            target = self.run_dir / "best"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(best, target)
        return jf
