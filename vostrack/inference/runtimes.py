"""Runtimes: the network's graph functions (``encode_reference`` and ``step``) on dicts of numpy
arrays, computed either by the Keras model (any Keras backend) or by the frozen TensorFlow graph.
MatchingPropagator drives both through ``run(function, inputs)``, so they are interchangeable
(and tested to agree)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from vostrack.inference.quiet import native_stderr_silenced
from vostrack.network.config import (
    MEMORY_INPUTS,
    PART_REFERENCE_INPUTS,
    PART_STEP_INPUTS,
    InferenceSettings,
    ModelConfig,
    working_size,
)

log = logging.getLogger(__name__)

#: Graph inputs and outputs with a row per part (all part inputs but ``prev_probs``).
PART_INPUTS = tuple(
    dict.fromkeys(k for k in (*PART_REFERENCE_INPUTS, *PART_STEP_INPUTS) if k != "prev_probs")
)
PART_OUTPUTS = ("templates", "ref_p4", "ref_mask", "part_boxes", "part_scores")


def _compile(fn: Callable, static: tuple[str, ...]) -> Callable:
    """Compile ``fn`` for the active Keras backend (sizes are static: one trace per video size)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True, jit_compile=False)
    if backend == "jax":
        import jax

        return jax.jit(fn, static_argnames=static)
    return fn


class KerasRuntime:
    """The Keras network, compiled for the active backend (one trace per frame size)."""

    def __init__(self, network: Any):
        from keras import ops

        self.network = network
        self.config: ModelConfig = network.config
        self.settings: InferenceSettings = network.settings
        self._ops = ops
        parts = bool(network.config.parts)

        def pick(inputs: dict, names: tuple) -> dict | None:
            return {k: inputs[k] for k in names} if parts else None

        self._functions = {
            "encode_reference": _compile(
                lambda inputs, work_hw, pad_hw: network.encode_reference(
                    inputs["frame"],
                    inputs["probs"],
                    work_hw,
                    pad_hw,
                    pick(inputs, PART_REFERENCE_INPUTS),
                ),
                ("work_hw", "pad_hw"),
            ),
            "step": _compile(
                lambda inputs, work_hw, pad_hw: network.step(
                    inputs["frame"],
                    {k: inputs[k] for k in MEMORY_INPUTS},
                    work_hw,
                    pad_hw,
                    pick(inputs, PART_STEP_INPUTS),
                ),
                ("work_hw", "pad_hw"),
            ),
        }

    def run(
        self, function: str, inputs: dict[str, np.ndarray], skip: Collection[str] = ()
    ) -> dict[str, np.ndarray]:
        h, w, hp, wp = working_size(*inputs["frame"].shape[:2], self.settings)
        outputs = self._functions[function](inputs, work_hw=(h, w), pad_hw=(hp, wp))
        return {
            k: np.asarray(self._ops.convert_to_numpy(v))
            for k, v in outputs.items()
            if k not in skip
        }


class FrozenRuntime:
    """The frozen GraphDef (``frozen.pb``) run in a ``tf.compat.v1.Session``; tensors are
    found by the names the manifest records."""

    def __init__(
        self,
        graph_path: Path,
        config: ModelConfig,
        settings: InferenceSettings,
        tensors: dict[str, dict[str, str]],
        threads: int | None = None,
    ):
        """``threads``: the cores one frame's ops may use (None: TensorFlow's choice, every
        core); several runtimes side by side (``vostrack batch``) each take their share, so
        that they do not oversubscribe the cores."""
        import tensorflow as tf

        from vostrack.serving.export import float32_constants

        # The graph holds the settings it was exported with (baked); ``settings`` gives the
        # run-time ones the propagator reads.
        self.config, self.settings = config, settings
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(Path(graph_path).read_bytes())
        graph_def = float32_constants(graph_def)  # weights stored as float16, run as float32
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        session_config = None
        if threads is not None:
            session_config = tf.compat.v1.ConfigProto(
                intra_op_parallelism_threads=int(threads), inter_op_parallelism_threads=1
            )
        self._session = tf.compat.v1.Session(graph=graph, config=session_config)
        self._ran: set[str] = set()  # TF logs oneDNN notes to stderr when a function first runs
        self._inputs = {
            fn: {k: graph.get_tensor_by_name(v) for k, v in names["inputs"].items()}
            for fn, names in tensors.items()
        }
        self._outputs = {
            fn: {k: graph.get_tensor_by_name(v) for k, v in names["outputs"].items()}
            for fn, names in tensors.items()
        }

    def run(
        self, function: str, inputs: dict[str, np.ndarray], skip: Collection[str] = ()
    ) -> dict[str, np.ndarray]:
        feeds = {tensor: inputs[name] for name, tensor in self._inputs[function].items()}
        # An output not fetched is not computed (nor copied out): ``probs``, a float map at the
        # frame's size, costs ~8 ms of a ~280 ms 854x480 frame on 2 cores (interleaved runs).
        fetches = {k: v for k, v in self._outputs[function].items() if k not in skip}
        with native_stderr_silenced(function not in self._ran):
            outputs = self._session.run(fetches, feeds)
        self._ran.add(function)
        return outputs


class LiteRuntime:
    """The LiteRT model (``model.tflite``, :mod:`vostrack.serving.litert`) run by
    ``ai-edge-litert`` (XNNPACK): no TensorFlow. The frame's resize and padding, which the
    frozen graph does in-graph, happen here in numpy (:mod:`vostrack.inference.resample`)."""

    def __init__(
        self,
        model_path: Path,
        config: ModelConfig,
        settings: InferenceSettings,
        threads: int | None = None,
    ):
        import os

        from ai_edge_litert.interpreter import Interpreter

        from vostrack.inference import resample  # SciPy, the litert extra's other half

        self._resample = resample
        self.config, self.settings = config, settings
        self._interpreter = Interpreter(
            model_path=str(model_path), num_threads=int(threads or os.cpu_count() or 1)
        )
        self._runners = {
            name: self._interpreter.get_signature_runner(name)
            for name in ("encode_reference", "step")
        }

    def run(
        self, function: str, inputs: dict[str, np.ndarray], skip: Collection[str] = ()
    ) -> dict[str, np.ndarray]:
        frame = inputs["frame"]
        height, width = frame.shape[:2]
        h, w, hp, wp = working_size(height, width, self.settings)
        feeds = {k: v for k, v in inputs.items() if k not in ("frame", "probs")}
        feeds["image"] = self._resample.prepare_frame(frame, (h, w), (hp, wp))
        if function == "encode_reference":
            feeds["probs"] = self._resample.resize_antialiased(inputs["probs"], (h, w))
        else:
            feeds["sizes"] = np.array([h, w, height, width], np.int32)
        # LiteRT's XNNPACK cannot size a tensor with no rows: no parts go in as one invalid
        # part (which the graph ignores), and its rows are dropped from the outputs.
        no_parts = "part_valid" in feeds and len(feeds["part_valid"]) == 0
        if no_parts:
            for name in PART_INPUTS:
                if name in feeds:
                    feeds[name] = np.zeros((1, *feeds[name].shape[1:]), feeds[name].dtype)
        outputs = self._runners[function](**feeds)
        return {
            k: v[:0] if no_parts and k in PART_OUTPUTS else v
            for k, v in outputs.items()
            if k not in skip
        }
