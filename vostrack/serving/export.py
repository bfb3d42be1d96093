"""Export: the network's graph functions as one frozen GraphDef, a SavedModel, the Keras
weights and a manifest (a model folder that ``--model`` can name).

The graph takes uint8 frames; resizing to the working size, padding and normalisation happen
inside it. Its functions live under name scopes of one GraphDef (see VosNetwork for shapes):
- ``encode_reference``: frame uint8 (H, W, 3), probs float32 (H, W, K+1) -> key, grid
- ``step``: frame and the memory (reference_keys/probs/valid, recent_keys/probs/valid) ->
  index int32 (H, W), grid, key
Every input and output tensor name is recorded in the manifest (frozen outputs are otherwise
anonymous Identity_N).

Weights are stored as float16 by default (``weights_dtype``) and computed in float32: in the
frozen graph each weight constant is a float16 constant cast back to float32 (the frozen
runtime turns them into float32 constants again when it loads the graph, see
:func:`float32_constants`), the SavedModel holds float16 variables read through the same graph,
and the Keras weights file holds float16 arrays that ``load_weights`` casts into the float32
variables. It halves the model folder; all three carry the same rounded weights, so they agree
with each other exactly as a float32 export does.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import vostrack
from vostrack.errors import VostrackError
from vostrack.io.atomic import write_json
from vostrack.io.disk import write_failure
from vostrack.network.config import (
    PART_REFERENCE_INPUTS,
    PART_STEP_INPUTS,
    InferenceSettings,
    model_to_dict,
)

log = logging.getLogger(__name__)

#: What a model folder holds (its manifest's "format"): the whole network, matching branch and
#: part path alike. FORMERLY: the same format under names it had before, still read.
FORMAT = "vostrack-model/1"
FORMERLY = ("vostrack-matching/1",)
FROZEN_GRAPH = "frozen.pb"
SAVED_MODEL = "saved_model"
KERAS_WEIGHTS = "network.weights.h5"
WEIGHT_DTYPES = ("float16", "float32")
# Constants of fewer elements (biases, shapes, scalars) stay float32: they weigh nothing.
HALF_MIN_ELEMENTS = 256
# A tensor that float16 would round by more than this (relative to its largest value), or
# whose values overflow float16, stays float32.
HALF_MAX_ERROR = 1e-3


def tf_working_size(height: Any, width: Any, settings: InferenceSettings) -> tuple[tuple, tuple]:
    """TF-ops twin of :func:`vostrack.network.config.working_size` (tests check they agree)."""
    import tensorflow as tf

    if settings.working_short_side is None:
        h, w = height, width
    else:
        scale = settings.working_short_side / tf.cast(tf.minimum(height, width), tf.float64)
        h = tf.cast(tf.floor(tf.cast(height, tf.float64) * scale + 0.5), tf.int32)
        w = tf.cast(tf.floor(tf.cast(width, tf.float64) * scale + 0.5), tf.int32)
    m = settings.pad_multiple
    return (h, w), ((h + m - 1) // m * m, (w + m - 1) // m * m)


def part_specs(network: Any) -> dict[str, Any]:
    """The part path's graph inputs (none without the part path), named."""
    import tensorflow as tf

    config = network.config
    if not config.parts:
        return {}
    spec = tf.TensorSpec
    channels = int(network.key_channels)
    p = config.parts
    s = p.head_crop
    specs = {
        "part_boxes": spec([None, 4], tf.float32),
        "part_object": spec([None], tf.int32),
        "part_valid": spec([None], tf.bool),
        "templates": spec([None, p.template_size, p.template_size, channels], tf.float32),
        "ref_p4": spec([None, s, s, p.fpn_channels], tf.float32),
        "ref_mask": spec([None, s, s, 1], tf.float32),
        "prev_probs": spec([None, None, None], tf.float32),
    }
    return {k: spec(v.shape, v.dtype, name=k) for k, v in specs.items()}


def memory_specs(network: Any) -> dict[str, Any]:
    """The memory's graph inputs: annotated (``reference_*``) and recent frames, named."""
    import tensorflow as tf

    spec = tf.TensorSpec
    channels = int(network.key_channels)
    specs = {}
    for group in ("reference", "recent"):
        specs[f"{group}_keys"] = spec(
            [None, None, None, channels], tf.float32, name=f"{group}_keys"
        )
        specs[f"{group}_probs"] = spec([None, None, None, None], tf.float32, name=f"{group}_probs")
        specs[f"{group}_valid"] = spec([None], tf.bool, name=f"{group}_valid")
    return specs


def serving_functions(network: Any) -> dict[str, Any]:
    """The graph functions as tf.functions with fixed signatures (sizes computed in-graph)."""
    import tensorflow as tf

    spec = tf.TensorSpec
    frame_spec = spec([None, None, 3], tf.uint8, name="frame")

    def sizes(frame):
        return tf_working_size(tf.shape(frame)[0], tf.shape(frame)[1], network.settings)

    parts = part_specs(network)
    reference_parts = {k: parts[k] for k in PART_REFERENCE_INPUTS if k in parts}
    step_parts = {k: parts[k] for k in PART_STEP_INPUTS if k in parts}

    @tf.function(
        input_signature=[
            frame_spec,
            spec([None, None, None], tf.float32, name="probs"),
            reference_parts,
        ]
    )
    def encode_reference(frame, probs, parts):
        return network.encode_reference(frame, probs, *sizes(frame), parts or None)

    @tf.function(input_signature=[frame_spec, memory_specs(network), step_parts])
    def step(frame, memory, parts):
        return network.step(frame, memory, *sizes(frame), parts or None)

    return {"encode_reference": encode_reference, "step": step}


def freeze(functions: dict[str, Any]) -> tuple[Any, dict[str, dict[str, dict[str, str]]]]:
    """One GraphDef holding every function under its own name scope, and the tensor names:
    ``{function: {"inputs": {name: tensor}, "outputs": {name: tensor}}}``."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    graph = tf.Graph()
    tensors: dict[str, dict[str, dict[str, str]]] = {}
    for name, function in functions.items():
        concrete = function.get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete)
        with graph.as_default():
            tf.compat.v1.import_graph_def(frozen.graph.as_graph_def(), name=name)
        # Every input spec is named, and placeholders carry those names; outputs are anonymous
        # Identity_N, in the sorted order of the returned dict's keys.
        inputs = [t for t in frozen.inputs if t.dtype != tf.resource]
        outputs = dict(zip(sorted(concrete.structured_outputs), frozen.outputs))
        tensors[name] = {
            "inputs": {t.name.split(":")[0]: f"{name}/{t.name}" for t in inputs},
            "outputs": {k: f"{name}/{t.name}" for k, t in outputs.items()},
        }
    return dedupe_constants(graph.as_graph_def()), tensors


def dedupe_constants(graph_def: Any) -> Any:
    """Merge identical constants: every function of the graph was frozen on its own, so each
    holds its own copy of the weights they share (the whole backbone, twice). Exact: only
    constants with the same dtype, shape and bytes are merged."""
    import hashlib

    keep: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    nodes = []
    for node in graph_def.node:
        if node.op == "Const" and node.attr["value"].tensor.tensor_content:
            tensor = node.attr["value"].tensor
            key = (
                tensor.dtype,
                tuple(d.size for d in tensor.tensor_shape.dim),
                hashlib.sha1(tensor.tensor_content).hexdigest(),
            )
            if key in keep:
                rename[node.name] = keep[key]
                continue
            keep[key] = node.name
        nodes.append(node)
    out = _empty_like(graph_def)
    for node in nodes:
        copy = out.node.add()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            control = name.startswith("^")
            base, _, port = name.lstrip("^").partition(":")
            if base in rename:
                copy.input[i] = (
                    ("^" if control else "") + rename[base] + (f":{port}" if port else "")
                )
    return out


def _empty_like(graph_def: Any) -> Any:
    """A GraphDef with ``graph_def``'s versions and function library and no nodes."""
    import tensorflow as tf

    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    return out


def _add_const(graph_def: Any, name: str, array: Any) -> Any:
    import tensorflow as tf

    const = graph_def.node.add()
    const.name, const.op = name, "Const"
    const.attr["dtype"].type = tf.as_dtype(array.dtype).as_datatype_enum
    const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(array))
    return const


def to_half(array: Any) -> Any:
    """``array`` as float16 if that keeps it within HALF_MAX_ERROR, else None."""
    import numpy as np

    if array.dtype != np.float32 or array.size < HALF_MIN_ELEMENTS:
        return None
    scale = float(np.abs(array).max())
    if not np.isfinite(scale) or scale > float(np.finfo(np.float16).max):
        return None
    half = array.astype(np.float16)
    error = float(np.abs(half.astype(np.float32) - array).max())
    return half if error <= HALF_MAX_ERROR * max(scale, 1e-30) else None


def half_constants(graph_def: Any) -> Any:
    """The GraphDef with each float32 weight constant stored as float16 and cast back to
    float32 under its own name (so every consumer and every recorded tensor name stays)."""
    import tensorflow as tf

    out = _empty_like(graph_def)
    for node in graph_def.node:
        half = None
        if node.op == "Const" and node.attr["value"].tensor.tensor_content:
            half = to_half(tf.make_ndarray(node.attr["value"].tensor))
        if half is None:
            out.node.add().CopyFrom(node)
            continue
        const = _add_const(out, f"{node.name}/float16", half)
        cast = out.node.add()
        cast.name, cast.op = node.name, "Cast"
        cast.input.append(const.name)
        cast.attr["SrcT"].type = tf.float16.as_datatype_enum
        cast.attr["DstT"].type = tf.float32.as_datatype_enum
        cast.attr["Truncate"].b = False
    return out


def float32_constants(graph_def: Any) -> Any:
    """The inverse of :func:`half_constants`: each float16 constant cast to float32 becomes a
    float32 constant again. TF's graph optimiser does not fold those casts (folding would grow
    the graph), so a graph run as stored would cast every weight on every call, and oneDNN
    would re-lay out every conv filter each time: a quarter slower per frame."""
    import tensorflow as tf

    halves = {
        node.name: node
        for node in graph_def.node
        if node.op == "Const"
        and node.attr["dtype"].type == tf.float16.as_datatype_enum
        and node.name.endswith("/float16")
    }
    out = _empty_like(graph_def)
    for node in graph_def.node:
        if node.name in halves:
            continue
        source = halves.get(node.input[0]) if node.op == "Cast" and node.input else None
        if source is None:
            out.node.add().CopyFrom(node)
            continue
        _add_const(out, node.name, tf.make_ndarray(source.attr["value"].tensor).astype("float32"))
    return out


def half_weights_file(path: Path) -> None:
    """Rewrite a Keras ``.weights.h5`` with its float32 arrays as float16 (see to_half)."""
    import h5py

    def copy(src: Any, dst: Any) -> None:
        dst.attrs.update(src.attrs)
        for key, item in src.items():
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(key))
                continue
            data = item[()]
            half = to_half(data) if hasattr(data, "dtype") else None
            dst.create_dataset(key, data=data if half is None else half).attrs.update(item.attrs)

    tmp = path.with_name(f".{path.name}.half")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        copy(src, dst)
    tmp.replace(path)


def _calling(pruned: Any, like: Any) -> Any:
    """A function with the parameters of ``like`` that calls ``pruned`` on its flat inputs."""
    import inspect

    import tensorflow as tf

    def run(*args: Any) -> dict:
        return pruned(*tf.nest.flatten(args))

    run.__signature__ = inspect.signature(like)
    return run


def saved_model_from_graph(
    graph_def: Any, tensors: dict, functions: dict[str, Any], path: Path
) -> None:
    """A SavedModel whose signatures run the (frozen) graph, with its weight constants turned
    back into variables: the functions share one stored copy of each weight (in its stored
    dtype), and the signatures are those of the serving functions."""
    import tensorflow as tf

    module = tf.Module()
    weights = {}
    for node in graph_def.node:
        if node.op == "Const" and node.attr["value"].tensor.tensor_content:
            value = tf.make_ndarray(node.attr["value"].tensor)
            if value.size >= HALF_MIN_ELEMENTS:  # the weights, float16 or float32
                weights[node.name] = tf.Variable(value, trainable=False)
    module.weights = list(weights.values())

    def import_graph() -> None:
        tf.compat.v1.import_graph_def(
            graph_def, name="", input_map={f"{k}:0": v.read_value() for k, v in weights.items()}
        )

    graph = tf.compat.v1.wrap_function(import_graph, [])
    signatures = {}
    for fn_name, function in functions.items():
        names = tensors[fn_name]
        specs = tf.nest.flatten(function.input_signature)
        feeds = [names["inputs"][spec.name] for spec in specs]
        pruned = graph.prune(feeds=feeds, fetches=dict(names["outputs"]))
        signatures[fn_name] = tf.function(
            _calling(pruned, function.python_function), input_signature=function.input_signature
        )
        setattr(module, fn_name, signatures[fn_name])
    tf.saved_model.save(module, str(path), signatures=signatures)


@contextlib.contextmanager
def _rounded_weights(network: Any, weights_dtype: str) -> Iterator[None]:
    """``network`` with its weights rounded as the stored files round them (:func:`to_half`
    for float16), restored afterwards: an export derived from the live network then computes
    with the frozen graph's values."""
    import numpy as np

    saved = [np.array(v.numpy()) for v in network.weights]
    try:
        if weights_dtype == "float16":
            for variable, value in zip(network.weights, saved):
                half = to_half(value)
                if half is not None:
                    variable.assign(half.astype(np.float32))
        yield
    finally:
        for variable, value in zip(network.weights, saved):
            variable.assign(value)


def export_model(
    network: Any,
    out_dir: str | Path,
    name: str,
    overwrite: bool = False,
    saved_model: bool = True,
    weights_dtype: str = "float16",
    litert: bool = False,
) -> Path:
    """Write the model folder ``out_dir`` (frozen graph, SavedModel, Keras weights, manifest;
    with ``litert`` also the LiteRT model, :mod:`vostrack.serving.litert`).

    Written into a temporary folder beside ``out_dir`` and renamed into place, so a model folder
    is either complete or absent.
    """
    import keras

    if weights_dtype not in WEIGHT_DTYPES:
        raise VostrackError(
            f"unknown weights dtype {weights_dtype!r} (choose from {', '.join(WEIGHT_DTYPES)})"
        )
    if keras.backend.backend() != "tensorflow":
        raise VostrackError("export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise VostrackError(f"{out_dir} already exists; use --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        functions = serving_functions(network)
        graph_def, tensors = freeze(functions)
        network.save_weights(str(tmp / KERAS_WEIGHTS))
        if weights_dtype == "float16":
            graph_def = half_constants(graph_def)
            half_weights_file(tmp / KERAS_WEIGHTS)
        (tmp / FROZEN_GRAPH).write_bytes(graph_def.SerializeToString())
        files = {"frozen_graph": FROZEN_GRAPH, "keras_weights": KERAS_WEIGHTS}
        if saved_model:
            saved_model_from_graph(graph_def, tensors, functions, tmp / SAVED_MODEL)
            files["saved_model"] = SAVED_MODEL
        if litert:
            from vostrack.serving.litert import LITERT_MODEL, export_litert

            with _rounded_weights(network, weights_dtype):  # the frozen graph's own values
                export_litert(network, tmp / LITERT_MODEL)
            files["litert"] = LITERT_MODEL
        config, settings = network.config, network.settings
        write_json(
            tmp / "manifest.json",
            {
                "format": FORMAT,
                "name": name,
                "version": vostrack.__version__,
                "backbone": config.backbone,
                "config": model_to_dict(config, settings),
                "preprocessing": {
                    "input": "uint8 RGB frame (H, W, 3), any size",
                    "resize": (
                        f"short side to {settings.working_short_side} px (bilinear, antialiased)"
                        if settings.working_short_side
                        else "none"
                    ),
                    "pad": f"edge values, bottom/right, to a multiple of {settings.pad_multiple}",
                    "normalisation": "backbone's own, inside the graph",
                },
                "files": files,
                "weights_dtype": weights_dtype,
                "tensors": tensors,
                "signatures": {fn: sorted(names) for fn, names in tensors.items()},
            },
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except OSError as exc:  # a full disk, most likely: one line, and nothing half-written left
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(exc, out_dir, "the model folder") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s", name, out_dir)
    return out_dir
