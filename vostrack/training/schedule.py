"""Learning-rate schedules and the backbone recipe of vostrack training (Keras 3, TF and JAX).

Issue 5's recipe: warm-up then cosine decay; the (ImageNet-pretrained) backbone frozen for the
first ``freeze_steps`` steps, then trained with a smaller learning rate; gradient clipping.

How the smaller backbone learning rate is applied: **two optimizers**, one per variable group
-------------------------------------------------------------------------------------------------
Not by scaling the backbone's gradients. Adam and AdamW (what this network trains with) divide
the first moment by the root of the second, so an update is invariant to a constant gradient
scale: ``scale_gradients(grads, factor=0.1)`` would leave the backbone's steps as large as the
heads' (it only works for plain SGD). Keras 3 has no per-variable learning rate, and a second
optimizer is the one mechanism that works the same on every backend: ``optimizer.apply(grads,
variables)`` on TF, ``optimizer.stateless_apply(optimizer_variables, grads, variables)`` inside a
jitted JAX step, each optimizer with its own slots and its own ``iterations`` counter. So:

.. code-block:: python

    heads_lr = WarmupCosine(peak_lr=2e-4, total_steps=steps, warmup_steps=1000, floor_lr=2e-6)
    heads_opt = keras.optimizers.AdamW(heads_lr, weight_decay=1e-4)
    backbone_opt = keras.optimizers.AdamW(
        BackboneSchedule(heads_lr, multiplier=0.1, freeze_steps=freeze, rewarmup_steps=500),
        weight_decay=1e-4)
    heads_vars, backbone_vars = split_variables(model.trainable_variables, is_backbone)
    heads_opt.build(heads_vars)
    backbone_opt.build(backbone_vars)   # built at once, so every checkpoint has the same layout

    for step in range(start, steps):
        if frozen_backbone(step, freeze):
            # Differentiate w.r.t. heads_vars only (backbone features under stop_gradient,
            # backbone BatchNorm in inference mode); apply heads_opt only.
            ...
        else:
            grads, norm = clip_by_global_norm(grads, max_norm)  # both groups together
            heads_opt.apply(heads_grads, heads_vars)
            backbone_opt.apply(backbone_grads, backbone_vars)

Rules the trainer must keep:

- **Apply the backbone optimizer on unfrozen steps only.** Its ``iterations`` then counts the
  steps since unfreezing, which :class:`BackboneSchedule` offsets by ``freeze_steps`` to read the
  heads' schedule at the global step; Adam's bias correction also starts afresh at unfreezing
  (applying it with zero gradients while frozen would leave ``m = v = 0`` with a bias
  correction near 1, and make its first real update up to about 3x too large; AdamW would decay
  the frozen weights). ``backbone_opt.iterations == max(0, step - freeze_steps)`` always, which
  a resume can check.
- **Two compiled steps** (JAX): the frozen step and the unfrozen step differ in what they
  differentiate; select on the host with :func:`frozen_backbone` (a Python bool), which compiles
  each once, rather than a traced condition that would compute both branches' gradients.
- **Clip jointly** with :func:`clip_by_global_norm` before splitting the gradients: an
  optimizer's own ``global_clipnorm`` would clip each group by its own norm.
- Checkpoint both optimizers' variables (their ``iterations`` included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

__all__ = [
    "WarmupCosine",
    "BackboneSchedule",
    "frozen_backbone",
    "bootstrap_ratio",
    "split_variables",
    "clip_by_global_norm",
]


@keras.saving.register_keras_serializable(package="vostrack")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``warmup_start_lr`` to ``peak_lr`` over ``warmup_steps``, then cosine
    decay to ``floor_lr`` at ``total_steps``, and ``floor_lr`` after.

    lr(s) = start + (peak - start) * s / warmup                          for s < warmup
    lr(s) = floor + (peak - floor) * (1 + cos(pi * p)) / 2,  p = clip((s - warmup) /
            (total - warmup), 0, 1)                                      for s >= warmup

    Warm-up (Goyal et al. 2017) because Adam's early second-moment estimates are noisy and the
    freshly initialised heads receive large gradients; the cosine (SGDR, Loshchilov & Hutter
    2017) decays smoothly with no step boundaries to tune; the floor keeps the last steps
    learning a little. Works on a Python int step or a scalar tensor (the optimizer's
    ``iterations``), returns a float32 scalar.
    """

    def __init__(
        self,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        floor_lr: float = 0.0,
        warmup_start_lr: float = 0.0,
        name: str = "WarmupCosine",
    ) -> None:
        super().__init__()
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps], got {warmup_steps}")
        if peak_lr < 0 or floor_lr < 0 or warmup_start_lr < 0:
            raise ValueError("learning rates must be >= 0")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.floor_lr = float(floor_lr)
        self.warmup_start_lr = float(warmup_start_lr)
        self.name = name

    def __call__(self, step: Any) -> Any:
        s = ops.cast(step, "float32")
        warm = max(self.warmup_steps, 1)
        warmup_lr = self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * s / float(warm)
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((s - float(self.warmup_steps)) / decay_steps, 0.0, 1.0)
        cosine_lr = self.floor_lr + 0.5 * (self.peak_lr - self.floor_lr) * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(s < float(self.warmup_steps), warmup_lr, cosine_lr)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "floor_lr": self.floor_lr,
            "warmup_start_lr": self.warmup_start_lr,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="vostrack")
class BackboneSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The backbone optimizer's learning rate: ``multiplier`` times the heads' schedule ``base``
    at the global step, for an optimizer whose ``iterations`` count the steps since the
    backbone was unfrozen (see the module docstring: it is applied on unfrozen steps only):

        lr(it) = multiplier * base(it + freeze_steps) * min(1, (it + 1) / rewarmup_steps)

    ``multiplier`` < 1: the pretrained features should move less than the new heads (SiamRPN++
    trains its backbone at 0.1x the heads' rate after 10 frozen epochs; RGMP and STM fine-tune
    their ImageNet encoders at a reduced rate). ``rewarmup_steps`` (0: none) ramps the backbone
    in again, so that its freshly started Adam moments do not take full-size steps on the first
    noisy gradients through features that have so far been fixed.
    """

    def __init__(
        self,
        base: Any,
        multiplier: float = 0.1,
        freeze_steps: int = 0,
        rewarmup_steps: int = 0,
        name: str = "BackboneSchedule",
    ) -> None:
        super().__init__()
        if freeze_steps < 0 or rewarmup_steps < 0:
            raise ValueError("freeze_steps and rewarmup_steps must be >= 0")
        if isinstance(base, dict):
            base = keras.optimizers.schedules.deserialize(base)
        self.base = base
        self.multiplier = float(multiplier)
        self.freeze_steps = int(freeze_steps)
        self.rewarmup_steps = int(rewarmup_steps)
        self.name = name

    def __call__(self, step: Any) -> Any:
        it = ops.cast(step, "float32")
        base = self.base(it + float(self.freeze_steps)) if callable(self.base) else self.base
        lr = self.multiplier * ops.cast(base, "float32")
        if self.rewarmup_steps > 0:
            lr = lr * ops.minimum((it + 1.0) / float(self.rewarmup_steps), 1.0)
        return lr

    def get_config(self) -> dict[str, Any]:
        base = self.base
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.optimizers.schedules.serialize(base)
        return {
            "base": base,
            "multiplier": self.multiplier,
            "freeze_steps": self.freeze_steps,
            "rewarmup_steps": self.rewarmup_steps,
            "name": self.name,
        }


def frozen_backbone(step: int, freeze_steps: int) -> bool:
    """Whether the backbone is frozen at global step ``step`` (0-based): the first
    ``freeze_steps`` steps train the heads only (the randomly initialised heads would otherwise
    send large, meaningless gradients into the pretrained features; SiamRPN++, and the seed's
    own recipe in issue 5). A host-side Python bool, to pick which compiled step to run."""
    return int(step) < int(freeze_steps)


def bootstrap_ratio(step: Any, start_warm: int, end_warm: int, top_p: float = 0.15) -> Any:
    """XMem's annealed bootstrapping ratio (``BootstrappedCE`` in XMem's ``model/losses.py``):
    1.0 (plain cross-entropy) before ``start_warm``, then linear down to ``top_p`` at
    ``end_warm``, ``top_p`` after. Easy pixels dominate the mean once the model is decent;
    bootstrapping then keeps the gradient on the boundaries and distractors, but from the start
    it would train on noise. A Python float for an int step (give it to :func:`mask_loss` as a
    constant per compiled step, or as a traced scalar: both work), a float32 scalar tensor for a
    tensor step."""
    if end_warm < start_warm:
        raise ValueError(f"end_warm {end_warm} < start_warm {start_warm}")
    span = float(max(end_warm - start_warm, 1))
    if isinstance(step, (int, float)):
        progress = min(max((step - start_warm) / span, 0.0), 1.0)
        return 1.0 + (top_p - 1.0) * progress
    progress = ops.clip((ops.cast(step, "float32") - float(start_warm)) / span, 0.0, 1.0)
    return 1.0 + (float(top_p) - 1.0) * progress


def split_variables(
    variables: Sequence[Any], predicate: Callable[[Any], bool]
) -> tuple[list[Any], list[Any]]:
    """``(others, selected)``: the variables for which ``predicate`` is false (the heads), then
    those for which it is true (e.g. ``lambda v: v.path.startswith("backbone/")``), each in the
    given order, for the two optimizers. The same split applies to a list of gradients aligned
    with the variables: ``split_variables(list(zip(grads, vars)), lambda gv: pred(gv[1]))``."""
    selected, others = [], []
    for variable in variables:
        (selected if predicate(variable) else others).append(variable)
    return others, selected


def clip_by_global_norm(grads: Sequence[Any], max_norm: float | None) -> tuple[list[Any], Any]:
    """Gradients scaled by ``min(1, max_norm / global_norm)`` (Pascanu et al. 2013; what Keras'
    ``global_clipnorm`` does per optimizer), and the float32 global norm before clipping (log
    it). ``None`` gradients stay ``None``; ``max_norm=None`` only measures. Non-finite norms are
    passed through unclipped so that the trainer sees them (and can skip the step), rather than
    turning every gradient into NaN silently.

    Clip here, over both variable groups, before handing each optimizer its share."""
    present = [ops.cast(g, "float32") for g in grads if g is not None]
    if not present:
        return list(grads), ops.convert_to_tensor(0.0, "float32")
    norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in present))
    if max_norm is None:
        return list(grads), norm
    scale = ops.where(
        ops.logical_and(ops.isfinite(norm), norm > float(max_norm)),
        float(max_norm) / ops.maximum(norm, 1e-12),
        1.0,
    )
    return [None if g is None else g * ops.cast(scale, g.dtype) for g in grads], norm
