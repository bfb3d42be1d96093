"""The gradient step of training, built once per backend (and per frozen / trained backbone).

Its own module because it is the only backend-specific code of training: the loss
(vostrack/training/clip_loss.py) is keras.ops and runs anywhere, the loop
(vostrack/training/trainer.py) calls whatever step this returns. TensorFlow: a ``tf.function``
with a GradientTape, run by the replicas (``tf.distribute`` on several devices). JAX: a jitted
stateless step (``keras.StatelessScope`` + ``jax.value_and_grad`` +
``optimizer.stateless_apply``), its results assigned back to the variables after each call.
Both clip the gradients of heads and backbone jointly, then apply them with their own
optimizers (the backbone's not at all while it is frozen).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vostrack.errors import VostrackError

#: ``step(batch, bootstrap_ratio) -> (loss, loss parts, gradient norm)``
Step = Callable[[dict, float], tuple[Any, dict, Any]]


@dataclass
class StepModel:
    """What a gradient step reads and updates."""

    loss: Callable[[dict, Any], tuple[Any, dict]]  # (batch, bootstrap) -> (loss, its parts)
    variables: list  # every variable of the network (JAX passes the untrained ones through)
    head_vars: list
    backbone_vars: list
    heads_opt: Any
    backbone_opt: Any
    clip_norm: float
    replicas: Any  # vostrack.training.distribute.Replicas


def build_step(model: StepModel, frozen: bool) -> Step:
    """The step for the active Keras backend; ``frozen``: the backbone is not trained."""
    import keras

    backend = keras.backend.backend()
    make = {"tensorflow": tf_step, "jax": jax_step}.get(backend)
    if make is None:
        raise VostrackError(f"training needs the tensorflow or jax backend, not {backend}")
    return make(model, frozen)


def tf_step(model: StepModel, frozen: bool) -> Step:
    import tensorflow as tf

    from vostrack.training.schedule import clip_by_global_norm

    variables = model.head_vars + ([] if frozen else model.backbone_vars)
    heads = len(model.head_vars)
    replicas = model.replicas.count

    def replica_step(batch, bootstrap):
        with tf.GradientTape() as tape:
            loss, parts = model.loss(batch, bootstrap)
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        if replicas > 1:
            # Clip the mean gradient of the whole batch, as one device would; Keras's
            # optimizer then sums what each replica applies, hence the 1/replicas.
            context = tf.distribute.get_replica_context()
            grads, loss, parts = context.all_reduce("MEAN", (grads, loss, parts))
        grads, norm = clip_by_global_norm(grads, model.clip_norm)
        if replicas > 1:
            grads = [g / replicas for g in grads]
        model.heads_opt.apply(grads[:heads], model.head_vars)
        if not frozen:
            model.backbone_opt.apply(grads[heads:], model.backbone_vars)
        return loss, parts, norm

    @tf.function(reduce_retracing=True)
    def step(batch, bootstrap):
        return model.replicas.run_tf(replica_step, batch, bootstrap)

    return lambda batch, bootstrap: step(
        model.replicas.place(batch), tf.constant(bootstrap, tf.float32)
    )


def jax_step(model: StepModel, frozen: bool) -> Step:
    import jax
    import keras

    from vostrack.training.schedule import clip_by_global_norm

    heads, backbone = model.head_vars, model.backbone_vars
    trained = {id(x) for x in heads + backbone}
    others = [v for v in model.variables if id(v) not in trained]

    def compute(head_values, backbone_values, other_values, batch, bootstrap):
        mapping = (
            list(zip(heads, head_values))
            + list(zip(backbone, backbone_values))
            + list(zip(others, other_values))
        )
        with keras.StatelessScope(state_mapping=mapping):
            loss, parts = model.loss(batch, bootstrap)
        return loss, parts

    grad_fn = jax.value_and_grad(compute, argnums=(0,) if frozen else (0, 1), has_aux=True)

    @jax.jit
    def step(state, batch, bootstrap):
        head_values, backbone_values, other_values, head_opt, backbone_opt = state
        (loss, parts), grads = grad_fn(head_values, backbone_values, other_values, batch, bootstrap)
        flat = list(grads[0]) + ([] if frozen else list(grads[1]))
        flat, norm = clip_by_global_norm(flat, model.clip_norm)
        head_values, head_opt = model.heads_opt.stateless_apply(
            head_opt, flat[: len(heads)], head_values
        )
        if not frozen:
            backbone_values, backbone_opt = model.backbone_opt.stateless_apply(
                backbone_opt, flat[len(heads) :], backbone_values
            )
        return (
            (head_values, backbone_values, other_values, head_opt, backbone_opt),
            loss,
            parts,
            norm,
        )

    def run(batch, bootstrap):
        state = (
            [v.value for v in heads],
            [v.value for v in backbone],
            [v.value for v in others],
            [v.value for v in model.heads_opt.variables],
            [v.value for v in model.backbone_opt.variables],
        )
        state, loss, parts, norm = step(state, model.replicas.place(batch), bootstrap)
        for group, values in zip(
            (heads, backbone, others, model.heads_opt.variables, model.backbone_opt.variables),
            state,
        ):
            for variable, value in zip(group, values):
                variable.assign(value)
        return loss, parts, norm

    return run
