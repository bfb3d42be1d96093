"""Runtimes: the network's three graph functions on numpy arrays, computed either by the Keras
model (any Keras backend) or by the frozen TensorFlow graph. MatchingPropagator drives both
through the same interface, so they are interchangeable (and tested to agree)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vostrack.network.config import ModelConfig, working_size

#: The memory read by read_memory, in this order: annotated frames (searched globally), then
#: recent frames (searched in a window); keys (N, h, w, C), probs (N, h, w, K+1), valid (N,).
MEMORY_INPUTS = ("reference_keys", "reference_probs", "reference_valid",
                 "recent_keys", "recent_probs", "recent_valid")

log = logging.getLogger(__name__)


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
    """The Keras network, compiled for the active backend."""

    def __init__(self, network: Any):
        from keras import ops

        self.network = network
        self.config: ModelConfig = network.config
        self._ops = ops
        self._encode_frame = _compile(
            lambda frame, work_hw, pad_hw: network.encode_frame(frame, work_hw, pad_hw),
            ("work_hw", "pad_hw"))
        self._encode_mask = _compile(
            lambda probs, work_hw, pad_hw: network.encode_mask(probs, work_hw, pad_hw),
            ("work_hw", "pad_hw"))
        self._read = _compile(
            lambda key, memory, frame_hw, work_hw: network.read_memory(
                key, *memory, frame_hw, work_hw),
            ("frame_hw", "work_hw"))

    def _sizes(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        h, w, hp, wp = working_size(height, width, self.config)
        return (h, w), (hp, wp)

    def encode_frame(self, frame: np.ndarray) -> np.ndarray:
        work_hw, pad_hw = self._sizes(*frame.shape[:2])
        return self._numpy(self._encode_frame(frame, work_hw=work_hw, pad_hw=pad_hw))

    def encode_mask(self, probs: np.ndarray) -> np.ndarray:
        work_hw, pad_hw = self._sizes(*probs.shape[:2])
        return self._numpy(self._encode_mask(probs, work_hw=work_hw, pad_hw=pad_hw))

    def read_memory(self, key, memory, frame_hw):
        work_hw, _ = self._sizes(*frame_hw)
        index, grid = self._read(key, tuple(memory), frame_hw=tuple(int(v) for v in frame_hw),
                                 work_hw=work_hw)
        return self._numpy(index), self._numpy(grid)

    def _numpy(self, x: Any) -> np.ndarray:
        return np.asarray(self._ops.convert_to_numpy(x))


class FrozenRuntime:
    """The frozen GraphDef (``frozen.pb``) run in a ``tf.compat.v1.Session``."""

    def __init__(self, graph_path: Path, config: ModelConfig, tensors: dict[str, dict[str, str]]):
        import tensorflow as tf

        self.config = config
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(Path(graph_path).read_bytes())
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self._session = tf.compat.v1.Session(graph=graph)
        self._t = {fn: {k: graph.get_tensor_by_name(v) for k, v in names.items()}
                   for fn, names in tensors.items()}

    def encode_frame(self, frame: np.ndarray) -> np.ndarray:
        t = self._t["encode_frame"]
        return self._session.run(t["key"], {t["frame"]: frame})

    def encode_mask(self, probs: np.ndarray) -> np.ndarray:
        t = self._t["encode_mask"]
        return self._session.run(t["grid"], {t["probs"]: probs})

    def read_memory(self, key, memory, frame_hw):
        t = self._t["read_memory"]
        feeds = {t[name]: value for name, value in zip(MEMORY_INPUTS, memory)}
        feeds.update({t["key"]: key, t["frame_size"]: np.asarray(frame_hw, np.int32)})
        return self._session.run([t["index"], t["grid"]], feeds)
