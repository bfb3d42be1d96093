"""The checks every layer test of the network repeats, in one place (as KerasHub's
``run_layer_test``):

- :func:`check_traced`: a function (a layer's call, or a chain of network functions) runs inside
  a ``tf.function`` whose signature leaves chosen dimensions unknown (``None``: the frame size,
  the number of parts), one trace serving all the inputs given, and agrees with its eager run;
- :func:`check_config_round_trip`: ``from_config(get_config())`` gives a layer with the same
  config and weights that, given the original's weights, computes the same outputs;
- :func:`check_jax_parity`: the layer, rebuilt from its config and weights in a JAX subprocess
  (:func:`tests.conftest.run_on_jax`), computes the same outputs under ``jax.jit``;
- :func:`run_layer_test`: a layer class, its arguments and example inputs through the first two
  (and the third when asked).

Inputs are the positional arguments of the call: arrays, or dicts of arrays (the network's
layers take both). Only the TF backend traces graphs: elsewhere :func:`check_traced` skips.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import ops

#: ``unknown_axes`` value: every dimension of every array unknown but its last (the channels,
#: which the convs need static).
ALL_BUT_LAST = "all but last"


def _numpy(value: Any) -> Any:
    """Outputs (a tensor, or a dict / tuple of them) as numpy."""
    if isinstance(value, dict):
        return {key: _numpy(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_numpy(item) for item in value)
    return np.asarray(ops.convert_to_numpy(value))


def assert_same_outputs(
    got: Any, expected: Any, atol: float, rtol: float = 0.0, what: str = ""
) -> None:
    """``got`` and ``expected`` (tensors, or dicts / tuples of them) agree to ``atol``."""
    got, expected = _numpy(got), _numpy(expected)
    if isinstance(expected, dict):
        assert sorted(got) == sorted(expected), (what, sorted(got), sorted(expected))
        for key in expected:
            assert_same_outputs(got[key], expected[key], atol, rtol, f"{what}[{key}]")
    elif isinstance(expected, (tuple, list)):
        assert len(got) == len(expected), what
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same_outputs(a, b, atol, rtol, f"{what}[{index}]")
    else:
        assert got.shape == expected.shape, (what, got.shape, expected.shape)
        np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol, err_msg=what)


Axes = str | Sequence[int] | Sequence[str | Sequence[int]]  # see tf_signature


def _spec(value: Any, unknown: str | Sequence[int]) -> Any:
    import tensorflow as tf

    if isinstance(value, dict):
        return {key: _spec(item, unknown) for key, item in value.items()}
    array = np.asarray(value)
    if unknown == ALL_BUT_LAST:
        unknown = range(array.ndim - 1)
    shape = [None if axis in unknown else size for axis, size in enumerate(array.shape)]
    return tf.TensorSpec(shape, tf.as_dtype(array.dtype))


def tf_signature(args: Sequence[Any], unknown_axes: Axes) -> list[Any]:
    """The ``tf.function`` input signature of ``args`` (arrays or dicts of arrays) with the
    dimensions ``unknown_axes`` left unknown: :data:`ALL_BUT_LAST` or one tuple of axes for
    every argument, or one of those per argument (an argument's axes apply to every array of a
    dict). Axes beyond an array's rank are ignored (a scalar stays a scalar)."""
    per_arg = (
        list(unknown_axes)
        if not isinstance(unknown_axes, str)
        and unknown_axes
        and not isinstance(unknown_axes[0], int)
        else [unknown_axes] * len(args)
    )
    if len(per_arg) != len(args):
        raise ValueError(f"{len(per_arg)} unknown_axes tuples for {len(args)} arguments")
    return [_spec(arg, axes) for arg, axes in zip(args, per_arg)]


def check_traced(
    fn: Callable[..., Any],
    arg_sets: Sequence[Sequence[Any]],
    unknown_axes: Axes = ALL_BUT_LAST,
    atol: float = 1e-5,
    rtol: float = 0.0,
    traces: int = 1,
) -> list[Any]:
    """Run ``fn`` inside one ``tf.function`` whose signature (from ``arg_sets[0]``, see
    :func:`tf_signature`) leaves ``unknown_axes`` unknown, on every argument tuple of
    ``arg_sets`` (e.g. two frame sizes, two numbers of parts); each result must agree with
    ``fn``'s eager result to ``atol``, and the function must have been traced ``traces`` times
    in all: once (one trace serves every argument tuple), or twice where the first call builds a
    layer (the first call is the first trace: a layer not built yet is built inside the graph,
    with the unknown sizes, and TF traces a function again when its first trace created
    variables).
    Returns the graph's outputs, as numpy, one per argument tuple (for the caller's own checks,
    e.g. against a numpy reference). Skips where the backend is not TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TF graph check")
    import tensorflow as tf

    traced = tf.function(fn, input_signature=tf_signature(arg_sets[0], unknown_axes))
    results = []
    for index, args in enumerate(arg_sets):
        graph = _numpy(traced(*args))
        assert_same_outputs(graph, fn(*args), atol, rtol, f"inputs {index}: graph vs eager")
        results.append(graph)
    assert traced.experimental_get_tracing_count() == traces
    return results


def randomize_weights(layer: keras.layers.Layer, scale: float = 0.1, seed: int = 0) -> None:
    """Every weight of ``layer`` to ``scale`` times seeded normal noise: zero-initialised outputs
    (the network's heads start as an identity on the prior) would hide a wrong or missing
    weight from an output comparison."""
    rng = np.random.RandomState(seed)
    layer.set_weights(
        [
            (scale * np.asarray(rng.randn(*np.shape(w)))).astype(np.asarray(w).dtype)
            for w in layer.get_weights()
        ]
    )


def check_config_round_trip(
    layer: keras.layers.Layer, args: Sequence[Any], atol: float = 1e-5
) -> keras.layers.Layer:
    """``type(layer).from_config(layer.get_config())`` has the same config and, built on
    ``args``, as many weights; given ``layer``'s weights it computes ``layer``'s outputs.
    Returns the clone."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone(*args)
    assert len(clone.weights) == len(layer.weights)
    clone.set_weights(layer.get_weights())
    assert_same_outputs(clone(*args), layer(*args), atol, what="clone vs original")
    return clone


def _flatten(args: Sequence[Any]) -> dict[str, np.ndarray]:
    flat = {}
    for index, arg in enumerate(args):
        if isinstance(arg, dict):
            flat.update({f"{index}/{key}": np.asarray(value) for key, value in arg.items()})
        else:
            flat[str(index)] = np.asarray(arg)
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> list[Any]:
    args: dict[int, Any] = {}
    for name, value in flat.items():
        index, _, key = name.partition("/")
        if key:
            args.setdefault(int(index), {})[key] = value
        else:
            args[int(index)] = value
    return [args[index] for index in sorted(args)]


def _shapes(args: Sequence[Any]) -> list[Any]:
    return [
        {key: tuple(np.shape(v)) for key, v in arg.items()}
        if isinstance(arg, dict)
        else tuple(np.shape(arg))
        for arg in args
    ]


def run_saved_layer() -> dict[str, np.ndarray]:
    """The JAX side of :func:`check_jax_parity`, run in the subprocess's working folder: the
    layer of ``layer.json`` built on the shapes of ``args.npz``, given ``weights.npz``, called
    on ``args.npz`` under ``jax.jit`` (as in training: one compilation, not one per op).
    Returns its outputs flattened (``"out"`` or ``"out/<key>"``)."""
    import jax

    assert keras.backend.backend() == "jax"
    spec = json.loads(Path("layer.json").read_text())
    cls = getattr(importlib.import_module(spec["module"]), spec["class"])
    layer = cls.from_config(spec["config"])
    args = _unflatten(dict(np.load("args.npz")))
    layer.build(*_shapes(args))
    weights = np.load("weights.npz")
    layer.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])

    @jax.jit
    def run(trainable: list, non_trainable: list, args: list) -> Any:
        return layer.stateless_call(trainable, non_trainable, *args)[0]

    outputs = run(
        [v.value for v in layer.trainable_variables],
        [v.value for v in layer.non_trainable_variables],
        args,
    )
    if isinstance(outputs, dict):
        return {f"out/{key}": np.asarray(value) for key, value in outputs.items()}
    return {"out": np.asarray(outputs)}


def check_jax_parity(
    layer: keras.layers.Layer,
    args: Sequence[Any],
    workdir: Path,
    atol: float = 1e-4,
    config_overrides: dict[str, Any] | None = None,
    extra_script: str = "",
) -> dict[str, np.ndarray]:
    """``layer`` (built, with its weights) rebuilt from its config and weights in a JAX
    subprocess must compute its outputs on ``args`` to ``atol``.

    config_overrides: changes to the config for the JAX side, e.g. ``kernel_initializer="zeros"``
        (JAX compiles a random initialiser per weight shape, seconds each, for weights that are
        all set anyway).
    extra_script: more code for the same subprocess (one JAX start-up, one compilation cache),
        run after the layer with ``np`` and ``outputs`` (a dict) at hand: what it adds to
        ``outputs`` comes back too, for the caller's own comparisons (files it needs go into
        ``workdir`` beforehand).
    Returns everything the subprocess saved (the layer's ``"out"`` / ``"out/<key>"`` and the
    extra script's entries).
    """
    from tests.conftest import run_on_jax

    config = dict(layer.get_config(), **(config_overrides or {}))
    spec = {"module": type(layer).__module__, "class": type(layer).__name__, "config": config}
    workdir = Path(workdir)
    (workdir / "layer.json").write_text(json.dumps(spec))
    np.savez(workdir / "args.npz", **_flatten(args))
    np.savez(workdir / "weights.npz", *layer.get_weights())
    run_on_jax(
        "\n".join(
            [
                "import numpy as np",
                "from tests.layer_harness import run_saved_layer",
                "outputs = run_saved_layer()",
                textwrap.dedent(extra_script),
                'np.savez("outputs.npz", **outputs)',
            ]
        ),
        workdir,
    )
    jax_out = dict(np.load(workdir / "outputs.npz"))
    expected = _numpy(layer(*args))
    if isinstance(expected, dict):
        got = {key: jax_out[f"out/{key}"] for key in expected}
    else:
        got = jax_out["out"]
    assert_same_outputs(got, expected, atol, what="JAX vs TF")
    return jax_out


@dataclasses.dataclass
class LayerTest:
    """What :func:`run_layer_test` leaves for the caller's own assertions."""

    layer: keras.layers.Layer  # built on ``args``, its weights randomised when asked
    outputs: Any  # the layer's outputs on ``args`` with its initial weights, as numpy


def run_layer_test(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    args: Sequence[Any],
    *,
    traced_arg_sets: Sequence[Sequence[Any]] | None = None,
    unknown_axes: Axes | None = ALL_BUT_LAST,
    randomize: float | None = 0.1,
    atol: float = 1e-5,
    graph_atol: float | None = None,
) -> LayerTest:
    """The layer checks of every network layer test.

    1. ``layer_cls(**init_kwargs)`` built on ``args`` (positional call arguments); its outputs
       with the initial weights are returned for the caller's checks (an untrained head's
       pass-through...).
    2. The weights are randomised (``randomize``: the noise scale; None keeps them), so that
       the comparisons below see every weight, zero-initialised ones included.
    3. :func:`check_config_round_trip`.
    4. Unless ``unknown_axes`` is None: :func:`check_traced` of a fresh ``layer_cls(**
       init_kwargs)`` (built inside the graph) on ``traced_arg_sets`` (default: ``[args]``), to
       ``graph_atol`` (default: ``atol``).
    """
    layer = layer_cls(**init_kwargs)
    initial = _numpy(layer(*args))
    if randomize is not None:
        randomize_weights(layer, randomize)
    check_config_round_trip(layer, args, atol)
    if unknown_axes is not None and keras.backend.backend() == "tensorflow":
        fresh = layer_cls(**init_kwargs)
        check_traced(
            lambda *a: fresh(*a),
            traced_arg_sets or [args],
            unknown_axes,
            atol if graph_atol is None else graph_atol,
            traces=2,
        )
    return LayerTest(layer, initial)
