"""The LiteRT export: the network's two graph functions as one ``.tflite`` file of builtin ops
only, which ``ai-edge-litert`` runs without TensorFlow (XNNPACK on the CPU).

LiteRT has no builtin for TF's antialiased resize (``ScaleAndTranslate``) nor for float64, so
this export starts one step later than the frozen graph: it takes the frame already resized to
the working size and padded (:func:`vostrack.inference.resample.prepare_frame`, numpy), the
reference probabilities at the working size, and, for ``step``, the sizes it must map back to:
- ``encode_reference``: image float32 (hp, wp, 3) in [0, 1], probs float32 (h, w, K+1), and
  the part inputs -> the frozen graph's outputs
- ``step``: image, sizes int32 [h, w, H, W], the memory and the part inputs -> the same
  outputs as the frozen graph's ``step`` (index and probs at the frame's size H, W)
Everything after that first step is the same network code as the frozen graph's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from vostrack.errors import VostrackError
from vostrack.network.config import PART_REFERENCE_INPUTS, PART_STEP_INPUTS

LITERT_MODEL = "model.tflite"


def litert_functions(network: Any) -> dict[str, Any]:
    """The graph functions as tf.functions on prepared images (see the module's docstring)."""
    import tensorflow as tf

    from vostrack.serving.export import memory_specs, part_specs

    spec = tf.TensorSpec
    image_spec = spec([None, None, 3], tf.float32, name="image")
    parts = part_specs(network)
    reference_parts = {k: parts[k] for k in PART_REFERENCE_INPUTS if k in parts}
    step_parts = {k: parts[k] for k in PART_STEP_INPUTS if k in parts}

    def features(image: Any) -> dict[str, Any]:
        return network.frame_features(network.image_features(tf.expand_dims(image, 0)), 0)

    @tf.function(
        input_signature=[
            image_spec,
            spec([None, None, None], tf.float32, name="probs"),
            reference_parts,
        ]
    )
    def encode_reference(image: Any, probs: Any, parts: dict) -> dict:
        work_hw = (tf.shape(probs)[0], tf.shape(probs)[1])
        pad_hw = (tf.shape(image)[0], tf.shape(image)[1])
        return network.encode_reference(
            None, probs, work_hw, pad_hw, parts or None, features(image), resized=True
        )

    @tf.function(
        input_signature=[
            image_spec,
            spec([4], tf.int32, name="sizes"),
            memory_specs(network),
            step_parts,
        ]
    )
    def step(image: Any, sizes: Any, memory: dict, parts: dict) -> dict:
        pad_hw = (tf.shape(image)[0], tf.shape(image)[1])
        return network.step(
            None,
            memory,
            (sizes[0], sizes[1]),
            pad_hw,
            parts or None,
            features=features(image),
            frame_hw=(sizes[2], sizes[3]),
        )

    return {"encode_reference": encode_reference, "step": step}


def _named(frozen: Any, function: Any) -> Any:
    """A signature function that calls the frozen ``frozen`` and names its outputs as
    ``function`` does (a frozen function's outputs are a flat list, in sorted key order)."""
    import tensorflow as tf

    names = sorted(function.get_concrete_function().structured_outputs)
    order = [t.name.split(":")[0] for t in frozen.inputs]
    specs = {s.name: s for s in tf.nest.flatten(function.input_signature)}

    @tf.function(input_signature=[specs[name] for name in order])
    def run(*flat: Any) -> dict:
        return dict(zip(names, frozen(*flat)))

    return run.get_concrete_function()


def export_litert(network: Any, path: Path) -> None:
    """Write the LiteRT model of ``network`` to ``path`` (builtin ops only, float32 weights).

    Float32 weights only: a float16 file is dequantized by the interpreter or its delegate,
    whose compute precision would then be the engine's choice; float32 leaves it none (and the
    masks were checked in float32 only)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    parts = network.settings.parts
    if network.config.parts and parts.track:
        # The tracker correlates each part's template with a depthwise convolution whose
        # filters are inputs: not a LiteRT builtin.
        raise VostrackError(
            "the LiteRT export needs parts.track=false (the shipped setting): the part "
            "tracker's correlation is not a LiteRT builtin"
        )
    functions = litert_functions(network)
    signatures = {
        name: _named(convert_variables_to_constants_v2(f.get_concrete_function()), f)
        for name, f in functions.items()
    }
    with tempfile.TemporaryDirectory(prefix=".litert-") as tmp:
        tf.saved_model.save(tf.Module(), tmp, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(signatures))
        # Builtins only: a Select-TF op would need TensorFlow's flex delegate to run.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        blob = converter.convert()
    Path(path).write_bytes(blob)
