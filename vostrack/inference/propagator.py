"""MatchingPropagator: the per-frame contract (contract.py) on top of a runtime.

The runtime (Keras model on any backend, or the frozen TF graph: runtimes.py) computes; this
class owns nothing but the bookkeeping of one video's reference and state, as small typed
values: which channel is which object, and the bounded memory of encoded frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from vostrack.network.config import ModelConfig


class Runtime(Protocol):
    """The network's graph functions on numpy arrays (see vostrack/network/vos.py)."""

    config: ModelConfig

    def run(self, function: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class MemoryFrame:
    key: np.ndarray  # (h, w, C) float32
    probs: np.ndarray  # (h, w, K+1) float32, channel 0 = background

    def with_objects(self, old_ids: tuple[int, ...], new_ids: tuple[int, ...]) -> "MemoryFrame":
        """The same frame with channels for objects it has never seen (probability 0)."""
        if old_ids == new_ids:
            return self
        probs = np.zeros(self.probs.shape[:2] + (len(new_ids) + 1,), np.float32)
        probs[..., 0] = self.probs[..., 0]
        for channel, k in enumerate(old_ids, start=1):
            probs[..., new_ids.index(k) + 1] = self.probs[..., channel]
        return replace(self, probs=probs)


@dataclass(frozen=True)
class MatchingReference:
    object_ids: tuple[int, ...]  # channel c (1-based) holds object object_ids[c - 1]
    frames: tuple[MemoryFrame, ...]  # annotated frames, searched over the whole frame
    last_frame: np.ndarray  # the last annotated image: initial_state reuses its encoding


@dataclass(frozen=True)
class MatchingState:
    recent: tuple[MemoryFrame, ...] = field(default_factory=tuple)  # newest last


class MatchingPropagator:
    """Label propagation against a bounded memory: annotated frames + the last few frames."""

    def __init__(self, runtime: Runtime, name: str = "vostrack"):
        self.runtime = runtime
        self.name = name
        self.config = runtime.config.matching

    def encode_reference(self, frame: np.ndarray, labels: np.ndarray,
                         previous: MatchingReference | None = None) -> MatchingReference:
        old_ids = previous.object_ids if previous else ()
        ids = tuple(sorted(set(old_ids) | {int(k) for k in np.unique(labels) if k}))
        encoded = self._encode(frame, labels, ids)
        frames = tuple(f.with_objects(old_ids, ids) for f in previous.frames) if previous else ()
        if len(frames) >= self.config.max_references:
            frames = frames[:1] + frames[2:]  # the first annotation is never dropped
        return MatchingReference(ids, frames + (encoded,), frame)

    def initial_state(self, frame: np.ndarray, labels: np.ndarray,
                      reference: MatchingReference) -> MatchingState:
        if np.array_equal(frame, reference.last_frame):
            return MatchingState((reference.frames[-1],))
        return MatchingState((self._encode(frame, labels, reference.object_ids),))

    def step(self, frame: np.ndarray, reference: MatchingReference,
             state: MatchingState) -> tuple[np.ndarray, MatchingState]:
        inputs = {"frame": frame}
        for group, frames in (("reference", reference.frames), ("recent", state.recent)):
            inputs[f"{group}_keys"] = np.stack([m.key for m in frames])
            inputs[f"{group}_probs"] = np.stack([m.probs for m in frames])
            inputs[f"{group}_valid"] = np.ones(len(frames), bool)
        out = self.runtime.run("step", inputs)
        lut = np.array((0,) + reference.object_ids, dtype=np.uint8)
        recent = (state.recent + (MemoryFrame(out["key"], out["grid"]),))[-self.config.memory_frames:]
        return lut[out["index"]], MatchingState(recent)

    def _encode(self, frame: np.ndarray, labels: np.ndarray, ids: tuple[int, ...]) -> MemoryFrame:
        onehot = (labels[..., None] == np.array((0,) + ids, np.uint8)).astype(np.float32)
        out = self.runtime.run("encode_reference", {"frame": frame, "probs": onehot})
        return MemoryFrame(out["key"], out["grid"])
