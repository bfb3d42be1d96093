"""`vostrack train`: the training loop, checkpoints and periodic validation.

One loop for every backend: the loss is :func:`vostrack.training.clip_loss.clip_loss`; the
gradient step is a ``tf.function`` with a GradientTape on TensorFlow and a jitted stateless step
(``keras.StatelessScope`` + ``jax.value_and_grad`` + ``optimizer.stateless_apply``) on JAX.
Recipe (vostrack/training/schedule.py): warm-up + cosine learning rate, the ImageNet backbone
frozen for the first ``freeze_steps`` steps and then trained by its own optimizer at
``backbone_lr`` times the heads' rate, joint gradient clipping, XMem's annealed bootstrapping.

Run folder: ``config.json`` (the whole TrainConfig), ``checkpoints/step_NNNNNNN/`` (written to a
temporary name and renamed; variables in npz shards of at most 15 MiB so that a checkpoint can
travel to and from a GPU machine), ``checkpoints/latest`` (the newest), ``best/`` (best
validation J&F), ``metrics.jsonl`` (one line per logged step) and, where TensorFlow is
installed, TensorBoard scalars in ``tensorboard/``. Resuming restores the network, both
optimizers and the step, and the loader gives the same batch for a step whatever happened
before it, so a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vostrack.data.prefetch import Prefetcher
from vostrack.errors import InterruptedRun, VostrackError
from vostrack.io.atomic import atomic_path, write_json, write_text
from vostrack.io.disk import write_failure
from vostrack.network.config import ModelConfig, PartsModelConfig

log = logging.getLogger(__name__)

SHARD_BYTES = 15 * 2**20
# bfloat16 keeps float32's exponent range, so it needs no loss scaling (float16 would: a
# LossScaleOptimizer around both optimizers); every GPU this trains on (Ampere, Hopper) has it.
PRECISIONS = ("float32", "mixed_bfloat16")


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Layers built in here take Keras's ``name`` policy; the heads pin float32 themselves."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@dataclass(frozen=True)
class DataSpec:
    path: str  # a DAVIS / YouTube-VOS tree, an images+masks folder, or "procedural"
    weight: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        name="vostrack-parts", parts=PartsModelConfig()))
    data: tuple[DataSpec, ...] = (DataSpec("procedural"),)
    exclude: tuple[str, ...] = ()  # sequence names never to train on (e.g. DAVIS val)
    size: int = 384
    num_frames: int = 3
    batch_size: int = 4
    max_objects: int = 3
    steps: int = 20000
    checkpoint_every: int = 500
    log_every: int = 10
    peak_lr: float = 2e-4
    warmup_steps: int = 500
    floor_lr: float = 2e-6
    weight_decay: float = 1e-4
    freeze_steps: int = 5000
    backbone_lr: float = 0.1
    clip_norm: float = 1.0
    max_gap: tuple[int, int] = (3, 10)  # largest frame gap, grown linearly over training
    bootstrap: tuple[int, int] = (2000, 10000)  # steps over which XMem's top-p goes 1 -> 0.15
    loss_mask: float = 1.0
    loss_part: float = 0.5
    loss_track: float = 0.5
    seed: int = 0
    workers: int = 0  # processes making batches ahead of the step (0: in the loop)
    devices: int = 0  # data-parallel devices: 0 = every GPU (or one CPU), N = the first N
    precision: str = "float32"  # or "mixed_bfloat16": backbone + FPN in bfloat16 (GPU)
    val: str | None = None  # a DAVIS tree scored every val_every steps (never train on it)
    val_every: int = 1000
    val_sequences: tuple[str, ...] = ()
    init: str | None = None  # network weights (.weights.h5 or a checkpoint folder) to start from

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (0 <= self.warmup_steps <= self.steps,
             f"warmup_steps ({self.warmup_steps}) must lie in 0..steps ({self.steps})"),
            (self.freeze_steps >= 0, "freeze_steps must be >= 0"),
            (self.checkpoint_every >= 1 and self.log_every >= 1 and self.val_every >= 1,
             "checkpoint_every, log_every and val_every must be >= 1"),
            (self.batch_size >= 1 and self.max_objects >= 1 and self.num_frames >= 3,
             "batch_size and max_objects must be >= 1, num_frames >= 3"),
            (self.size >= 64, f"size must be at least 64 pixels, got {self.size}"),
            (0 < self.floor_lr <= self.peak_lr, "need 0 < floor_lr <= peak_lr"),
            (self.bootstrap[0] <= self.bootstrap[1], "bootstrap: start must not exceed end"),
            (bool(self.data), "no training data"),
            (self.workers >= 0 and self.devices >= 0, "workers and devices must be >= 0"),
            (self.precision in PRECISIONS,
             f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (not self.model.parts or self.model.parts.track,
             "parts.track false is an inference setting (the tracking loss needs the tracker): "
             "train with it and export with --no-part-tracker"),
        ]
        for ok, message in checks:
            if not ok:
                raise VostrackError(f"training config: {message}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise VostrackError(f"unknown training option(s): {', '.join(unknown)}")
        if "model" in data:
            data["model"] = ModelConfig.from_dict(data["model"])
        if "data" in data:
            data["data"] = tuple(DataSpec(**d) if isinstance(d, dict) else DataSpec(str(d))
                                 for d in data["data"])
        for key in ("exclude", "val_sequences", "max_gap", "bootstrap"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        return cls(**data)


# ------------------------------------------------------------------------------ checkpoints
def save_arrays(folder: Path, prefix: str, arrays: list[np.ndarray]) -> None:
    """Arrays in order, in npz shards of at most SHARD_BYTES each."""
    shard: dict[str, np.ndarray] = {}
    size, index = 0, 0
    for i, array in enumerate(arrays):
        if shard and size + array.nbytes > SHARD_BYTES:
            np.savez(folder / f"{prefix}-{index:03d}.npz", **shard)
            shard, size, index = {}, 0, index + 1
        shard[f"a{i:05d}"] = array
        size += array.nbytes
    np.savez(folder / f"{prefix}-{index:03d}.npz", **shard)


def load_arrays(folder: Path, prefix: str) -> list[np.ndarray]:
    arrays: dict[int, np.ndarray] = {}
    for path in sorted(folder.glob(f"{prefix}-*.npz")):
        with np.load(path) as data:
            arrays.update({int(k[1:]): data[k] for k in data.files})
    return [arrays[i] for i in range(len(arrays))]


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


@dataclass
class StepBatches:
    """The batch of a training step, without the loader's bookkeeping (picklable for workers)."""

    loader: Any

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.loader.batch_at_step(step).items() if k != "source"}


class Trainer:
    """Owns the network, the two optimizers, the data and the run folder."""

    def __init__(self, config: TrainConfig, run_dir: str | Path):
        import keras

        from vostrack.training.distribute import Replicas

        self.config = config
        self.run_dir = Path(run_dir)
        keras.utils.set_random_seed(config.seed)
        self.replicas = Replicas(config.devices, config.batch_size)
        with self.replicas.scope(), dtype_policy(config.precision):
            self._build(config)
        self.loader = self._make_loader()
        self.step = 0
        self.best = -1.0
        self._stop = threading.Event()
        self._steps: dict[bool, Any] = {}

    def _build(self, config: TrainConfig) -> None:
        import keras

        from vostrack.network.vos import VosNetwork
        from vostrack.training.schedule import BackboneSchedule, WarmupCosine

        self.network = VosNetwork(config.model, weights=None if config.init else "imagenet")
        if config.init:
            self._load_init(Path(config.init))
        self.backbone_vars = list(self.network.encoder.trainable_variables)
        backbone_ids = {id(v) for v in self.backbone_vars}
        self.head_vars = [v for v in self.network.trainable_variables if id(v) not in backbone_ids]
        heads_lr = WarmupCosine(peak_lr=config.peak_lr, total_steps=config.steps,
                                warmup_steps=config.warmup_steps, floor_lr=config.floor_lr)
        self.heads_opt = keras.optimizers.AdamW(heads_lr, weight_decay=config.weight_decay)
        self.backbone_opt = keras.optimizers.AdamW(
            BackboneSchedule(heads_lr, multiplier=config.backbone_lr,
                             freeze_steps=config.freeze_steps,
                             rewarmup_steps=min(500, config.warmup_steps)),
            weight_decay=config.weight_decay)
        self.heads_opt.build(self.head_vars)
        self.backbone_opt.build(self.backbone_vars)

    # -------------------------------------------------------------------------- data
    def _make_loader(self) -> Any:
        from vostrack.data.batches import (ClipBatches, LoaderConfig, MixedSource,
                                           source_from_path)
        from vostrack.data.clips import GapSchedule
        from vostrack.network.parts import PartsConfig

        c = self.config
        gaps = GapSchedule(c.max_gap[0], c.max_gap[1], c.steps)
        sources = [(source_from_path(d.path, size=(c.size, c.size), num_frames=c.num_frames,
                                     max_gap=gaps, exclude=c.exclude), d.weight) for d in c.data]
        parts = c.model.parts or PartsModelConfig()
        return ClipBatches(MixedSource(sources) if len(sources) > 1 else sources[0][0],
                           LoaderConfig(batch_size=c.batch_size, steps_per_epoch=None,
                                        max_objects=c.max_objects, max_parts=parts.max_parts,
                                        seed=c.seed, parts=PartsConfig(
                                            max_parts=parts.max_parts,
                                            min_part_area=parts.min_part_area)))

    # ---------------------------------------------------------------------- gradient step
    def _loss(self, batch: dict, bootstrap: Any) -> tuple[Any, dict]:
        from vostrack.training.clip_loss import LossWeights, clip_loss

        c = self.config
        return clip_loss(self.network, batch, LossWeights(c.loss_mask, c.loss_part, c.loss_track),
                         bootstrap)

    def _compiled_step(self, frozen: bool) -> Any:
        if frozen not in self._steps:
            import keras

            backend = keras.backend.backend()
            make = {"tensorflow": self._tf_step, "jax": self._jax_step}.get(backend)
            if make is None:
                raise VostrackError(f"training needs the tensorflow or jax backend, not {backend}")
            self._steps[frozen] = make(frozen)
        return self._steps[frozen]

    def _tf_step(self, frozen: bool) -> Any:
        import tensorflow as tf

        from vostrack.training.schedule import clip_by_global_norm

        variables = self.head_vars + ([] if frozen else self.backbone_vars)
        heads = len(self.head_vars)

        replicas = self.replicas.count

        def replica_step(batch, bootstrap):
            with tf.GradientTape() as tape:
                loss, parts = self._loss(batch, bootstrap)
            grads = tape.gradient(loss, variables)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
            if replicas > 1:
                # Clip the mean gradient of the whole batch, as one device would; Keras's
                # optimizer then sums what each replica applies, hence the 1/replicas.
                context = tf.distribute.get_replica_context()
                grads, loss, parts = context.all_reduce("MEAN", (grads, loss, parts))
            grads, norm = clip_by_global_norm(grads, self.config.clip_norm)
            if replicas > 1:
                grads = [g / replicas for g in grads]
            self.heads_opt.apply(grads[:heads], self.head_vars)
            if not frozen:
                self.backbone_opt.apply(grads[heads:], self.backbone_vars)
            return loss, parts, norm

        @tf.function(reduce_retracing=True)
        def step(batch, bootstrap):
            return self.replicas.run_tf(replica_step, batch, bootstrap)

        return lambda batch, bootstrap: step(self.replicas.place(batch),
                                             tf.constant(bootstrap, tf.float32))

    def _jax_step(self, frozen: bool) -> Any:
        import jax
        import keras

        from vostrack.training.schedule import clip_by_global_norm

        heads, backbone = self.head_vars, self.backbone_vars
        others = [v for v in self.network.variables
                  if id(v) not in {id(x) for x in heads + backbone}]

        def compute(head_values, backbone_values, other_values, batch, bootstrap):
            mapping = list(zip(heads, head_values)) + list(zip(backbone, backbone_values)) + \
                list(zip(others, other_values))
            with keras.StatelessScope(state_mapping=mapping):
                loss, parts = self._loss(batch, bootstrap)
            return loss, parts

        grad_fn = jax.value_and_grad(compute, argnums=(0,) if frozen else (0, 1), has_aux=True)

        @jax.jit
        def step(state, batch, bootstrap):
            head_values, backbone_values, other_values, head_opt, backbone_opt = state
            (loss, parts), grads = grad_fn(head_values, backbone_values, other_values, batch,
                                           bootstrap)
            flat = list(grads[0]) + ([] if frozen else list(grads[1]))
            flat, norm = clip_by_global_norm(flat, self.config.clip_norm)
            head_values, head_opt = self.heads_opt.stateless_apply(
                head_opt, flat[:len(heads)], head_values)
            if not frozen:
                backbone_values, backbone_opt = self.backbone_opt.stateless_apply(
                    backbone_opt, flat[len(heads):], backbone_values)
            return (head_values, backbone_values, other_values, head_opt, backbone_opt), \
                loss, parts, norm

        def run(batch, bootstrap):
            state = ([v.value for v in heads], [v.value for v in backbone],
                     [v.value for v in others], [v.value for v in self.heads_opt.variables],
                     [v.value for v in self.backbone_opt.variables])
            state, loss, parts, norm = step(state, self.replicas.place(batch), bootstrap)
            for group, values in zip((heads, backbone, others, self.heads_opt.variables,
                                      self.backbone_opt.variables), state):
                for variable, value in zip(group, values):
                    variable.assign(value)
            return loss, parts, norm

        return run

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
        bar = tqdm(total=end, initial=self.step, unit="step", disable=not progress,
                   dynamic_ncols=True)
        started, first = time.perf_counter(), self.step
        batches = Prefetcher(StepBatches(self.loader), self.step, end, workers=c.workers)
        try:
            for step, batch in batches:
                assert step == self.step
                ratio = bootstrap_ratio(self.step, *c.bootstrap)
                loss, parts, norm = self._compiled_step(frozen_backbone(self.step, c.freeze_steps))(
                    batch, ratio)
                self.step += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == end:
                    last = {"step": self.step, "loss": float(loss), "grad_norm": float(norm),
                            **{f"loss_{k}": float(v) for k, v in parts.items()},
                            "lr": float(self.heads_opt.learning_rate),
                            "steps_per_s": (self.step - first) / (time.perf_counter() - started)}
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
                            f"continue with: vostrack train --out {self.run_dir} --resume")
        finally:
            batches.close()
            bar.close()
        return last

    # --------------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        """Write checkpoints/step_NNNNNNN atomically and point checkpoints/latest at it."""
        try:
            return Trainer._save(self)
        except OSError as exc:  # a full disk: one line; the latest checkpoint stays the last
            raise write_failure(exc, self.run_dir / "checkpoints", "a checkpoint in") from None

    def _save(self) -> Path:
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:07d}"
        # An exclusive, randomly named folder: a fixed temporary name could be a planted link.
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 is for the name, not the result
            save_arrays(tmp, "network", [np.asarray(v.numpy()) for v in self.network.variables])
            save_arrays(tmp, "optimizers", [np.asarray(v.numpy()) for v in
                                            self.heads_opt.variables + self.backbone_opt.variables])
            write_json(tmp / "state.json", {"step": self.step, "best": self.best,
                                            "config": self.config.to_dict()})
            shutil.rmtree(folder / name, ignore_errors=True)
            os.replace(tmp, folder / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_text(folder / "latest", name + "\n")
        return folder / name

    def restore(self, checkpoint: Path) -> None:
        state = json.loads((checkpoint / "state.json").read_text())
        self._assign(self.network.variables, load_arrays(checkpoint, "network"), checkpoint)
        self._assign(self.heads_opt.variables + self.backbone_opt.variables,
                     load_arrays(checkpoint, "optimizers"), checkpoint)
        self.step, self.best = int(state["step"]), float(state.get("best", -1.0))

    @staticmethod
    def _assign(variables: list, arrays: list[np.ndarray], where: Path) -> None:
        if len(variables) != len(arrays):
            raise VostrackError(f"checkpoint {where} holds {len(arrays)} arrays, the model has "
                                f"{len(variables)}: it was made with another config")
        for variable, array in zip(variables, arrays):
            if tuple(variable.shape) != array.shape:
                raise VostrackError(f"checkpoint {where} does not fit the model "
                                    f"({variable.path}: {array.shape} vs {tuple(variable.shape)})")
            variable.assign(array)

    def _load_init(self, path: Path) -> None:
        if path.is_dir():
            self._assign(self.network.variables, load_arrays(path, "network"), path)
        elif path.is_file():
            self.network.load_weights(str(path))
        else:
            raise VostrackError(f"--init {path}: not found")

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
        import tempfile

        from vostrack.evaluation.davis import DavisTree, score
        from vostrack.evaluation.segment_tree import segment_tree
        from vostrack.inference.propagator import MatchingPropagator, PartsPropagator
        from vostrack.inference.runtimes import KerasRuntime

        tree = DavisTree(self.config.val)
        seqs = tree.sequences(names=list(self.config.val_sequences) or None)
        propagator = (PartsPropagator if self.config.model.parts else MatchingPropagator)(
            KerasRuntime(self.network))
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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop what a stopped run logged after its last checkpoint: the resumed run logs it again."""
    if path.is_file():
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and json.loads(ln).get("step", 0) <= step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")


def open_run(run_dir: Path, config: TrainConfig | None, resume: bool,
             workers: int | None = None, devices: int | None = None) -> Trainer:
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
            raise VostrackError(f"nothing to resume in {run_dir}: the run is complete (step "
                                f"{step} of {config.steps}, saved as {checkpoint})")
        config = dataclasses.replace(config, **{k: v for k, v in (
            ("workers", workers), ("devices", devices)) if v is not None})
        trainer = Trainer(config, run_dir)
        trainer.restore(checkpoint)
        _truncate_metrics(run_dir / "metrics.jsonl", trainer.step)
        log.info("resumed %s at step %d", run_dir, trainer.step)
        return trainer
    if saved.exists():
        raise VostrackError(f"{run_dir} already holds a run; use --resume to continue it or "
                            "choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(saved, config.to_dict())
    return Trainer(config, run_dir)


def _checkpoint_step(checkpoint: Path) -> int | None:
    try:
        return int(json.loads((checkpoint / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_config(path: Path) -> tuple[Path, TrainConfig]:
    """The checkpoint folder (a run folder stands for its latest one) and its training config."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise VostrackError(f"{path} holds no checkpoint")
        path = found
    if not (path / "state.json").is_file():
        raise VostrackError(f"{path} is not a checkpoint (no state.json)")
    return path, TrainConfig.from_dict(json.loads((path / "state.json").read_text())["config"])


def checkpoint_network(path: Path) -> Any:
    """The network of a checkpoint (or of a run folder's latest one), for export. Built with the
    config it was trained with: the arrays are assigned in variable order."""
    from vostrack.network.vos import VosNetwork

    path, config = checkpoint_config(path)
    network = VosNetwork(config.model, weights=None)
    Trainer._assign(network.variables, load_arrays(path, "network"), path)
    return network
