"""MatchingPropagator: the per-frame contract (contract.py) on top of a runtime.

The runtime (Keras model on any backend, or the frozen TF graph: runtimes.py) computes; this
class owns nothing but the bookkeeping of one video's reference and state, as small typed
values: which channel is which object, and the bounded memory of encoded frames.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Protocol

import cv2
import numpy as np

from vostrack.network.config import (
    UNKNOWN,
    InferenceSettings,
    MatchingSettings,
    ModelConfig,
    working_size,
)
from vostrack.network.parts import split_mask


class Runtime(Protocol):
    """The network's graph functions on numpy arrays (see vostrack/network/vos.py)."""

    config: ModelConfig
    settings: InferenceSettings

    def run(
        self, function: str, inputs: dict[str, np.ndarray], skip: Collection[str] = ()
    ) -> dict[str, np.ndarray]:
        """The function's outputs on ``inputs``, but for those named in ``skip``."""


@dataclass(frozen=True)
class MemoryFrame:
    key: np.ndarray  # (h, w, C) float32
    probs: np.ndarray  # (h, w, K+1) float32, channel 0 = background

    def with_objects(self, old_ids: tuple[int, ...], new_ids: tuple[int, ...]) -> MemoryFrame:
        """The same frame with channels for objects it has never seen: UNKNOWN, not 0 (it may
        well show them, as background: see vostrack.network.matching.read_votes)."""
        if old_ids == new_ids:
            return self
        probs = np.full(self.probs.shape[:2] + (len(new_ids) + 1,), UNKNOWN, np.float32)
        probs[..., 0] = self.probs[..., 0]
        for channel, k in enumerate(old_ids, start=1):
            probs[..., new_ids.index(k) + 1] = self.probs[..., channel]
        return replace(self, probs=probs)


@dataclass(frozen=True)
class MatchingReference:
    object_ids: tuple[int, ...]  # channel c (1-based) holds object object_ids[c - 1]
    frames: tuple[MemoryFrame, ...]  # annotated frames, searched over the whole frame

    @functools.cached_property
    def memory(self) -> dict[str, np.ndarray]:
        """The annotated frames as ``step`` reads them: stacked once, not on every frame."""
        return stack_memory("reference", self.frames)


@dataclass(frozen=True)
class MatchingState:
    recent: tuple[MemoryFrame, ...] = field(default_factory=tuple)  # newest last
    #: older frames kept for the long term (matching.long_term_*), newest last
    long_term: tuple[MemoryFrame, ...] = field(default_factory=tuple)
    frames_seen: int = 0  # frames segmented since the state began


class Memory:
    """The bounded memory of one video, as both propagators keep it: the annotated frames (the
    first never dropped, at most ``max_references``), the last ``memory_frames`` frames and,
    when ``long_term_every`` is set, at most ``long_term_frames`` older ones (every N-th frame,
    the oldest dropped first). A new annotation starts the state afresh, long term included."""

    def __init__(self, settings: MatchingSettings):
        self.settings = settings

    def with_reference(
        self, previous: MatchingReference | None, ids: tuple[int, ...], encoded: MemoryFrame
    ) -> MatchingReference:
        old_ids = previous.object_ids if previous else ()
        frames = tuple(f.with_objects(old_ids, ids) for f in previous.frames) if previous else ()
        if len(frames) >= self.settings.max_references:
            frames = frames[:1] + frames[2:]  # the first annotation is never dropped
        return MatchingReference(ids, frames + (encoded,))

    def with_recent(self, state: MatchingState, out: dict[str, np.ndarray]) -> MatchingState:
        new = MemoryFrame(out["key"], out["grid"])
        seen = state.frames_seen + 1
        long_term, every = state.long_term, self.settings.long_term_every
        if every and seen % every == 0:
            long_term = (long_term + (new,))[-self.settings.long_term_frames :]
        recent = (state.recent + (new,))[-self.settings.memory_frames :]
        return MatchingState(recent, long_term, seen)


class MatchingPropagator:
    """The matching branch alone: label propagation against a bounded memory (annotated frames
    + the last few frames)."""

    def __init__(self, runtime: Runtime, name: str = "vostrack"):
        self.runtime = runtime
        self.name = name
        self.memory = Memory(runtime.settings.matching)

    def encode_reference(
        self, frame: np.ndarray, labels: np.ndarray, previous: MatchingReference | None = None
    ) -> MatchingReference:
        old_ids = previous.object_ids if previous else ()
        ids = tuple(sorted(set(old_ids) | {int(k) for k in np.unique(labels) if k}))
        out = self.runtime.run("encode_reference", {"frame": frame, "probs": one_hot(labels, ids)})
        return self.memory.with_reference(previous, ids, MemoryFrame(out["key"], out["grid"]))

    def initial_state(
        self,
        frame: np.ndarray,
        labels: np.ndarray,
        reference: MatchingReference,
        encoded: bool = False,
    ) -> MatchingState:
        if encoded:  # the reference was just made from this frame: its encoding serves
            return MatchingState((reference.frames[-1],))
        out = self.runtime.run(
            "encode_reference", {"frame": frame, "probs": one_hot(labels, reference.object_ids)}
        )
        return MatchingState((MemoryFrame(out["key"], out["grid"]),))

    def step(
        self, frame: np.ndarray, reference: MatchingReference, state: MatchingState
    ) -> tuple[np.ndarray, MatchingState]:
        return step_in_halves(self, frame, reference, state)

    # ``step`` in two halves, so that an ensemble (vostrack.inference.ensemble) can decide a
    # frame's labels from several members' outputs before each member moves on.
    def run_step(
        self,
        frame: np.ndarray,
        reference: MatchingReference,
        state: MatchingState,
        skip: Collection[str] = ("probs",),
    ) -> dict[str, np.ndarray]:
        """The network's outputs on the next frame (``index``, ``probs``, ...), but ``skip``:
        by default the probabilities, which only an ensemble reads."""
        return self.runtime.run("step", {"frame": frame, **memory_inputs(reference, state)}, skip)

    def advance(
        self,
        out: dict[str, np.ndarray],
        reference: MatchingReference,
        state: MatchingState,
        labels: np.ndarray,
    ) -> MatchingState:
        """The state after a frame: ``out`` of :meth:`run_step`, ``labels`` as decided."""
        return self.memory.with_recent(state, out)


def step_in_halves(
    propagator: MatchingPropagator | PartsPropagator,
    frame: np.ndarray,
    reference: object,
    state: object,
) -> tuple[np.ndarray, object]:
    """``step`` of the contract from a propagator's two halves (``run_step``, ``advance``)."""
    out = propagator.run_step(frame, reference, state)
    labels = label_map(out["index"], reference.object_ids)
    return labels, propagator.advance(out, reference, state, labels)


def label_map(index: np.ndarray, ids: tuple[int, ...]) -> np.ndarray:
    """(H, W) indices into [background, *ids] -> uint8 object ids."""
    return np.array((0,) + ids, dtype=np.uint8)[index]


def one_hot(labels: np.ndarray, ids: tuple[int, ...]) -> np.ndarray:
    """(H, W) labels -> (H, W, K+1) float32 probabilities of [background, *ids]."""
    return (labels[..., None] == np.array((0,) + ids, np.uint8)).astype(np.float32)


def stack_memory(group: str, frames: tuple[MemoryFrame, ...]) -> dict[str, np.ndarray]:
    return {
        f"{group}_keys": np.stack([m.key for m in frames]),
        f"{group}_probs": np.stack([m.probs for m in frames]),
        f"{group}_valid": np.ones(len(frames), bool),
    }


def memory_inputs(reference: MatchingReference, state: MatchingState) -> dict[str, np.ndarray]:
    """The memory inputs of ``step`` (see vostrack.network.config.MEMORY_INPUTS): the
    long-term frames are searched as the annotated ones are."""
    searched = reference.memory
    if state.long_term:
        more = stack_memory("reference", state.long_term)
        searched = {k: np.concatenate([v, more[k]]) for k, v in searched.items()}
    return {**searched, **stack_memory("recent", state.recent)}


# ------------------------------------------------------------------------------- part path
@dataclass(frozen=True)
class PartRows:
    """Every object's parts as rows (``max_parts`` per object, padded), with what the network
    encoded of each on its reference frame. Boxes are pixels of the padded working frame."""

    object_ids: np.ndarray  # (N,) int, the object of each row
    valid: np.ndarray  # (N,) bool
    boxes: np.ndarray  # (N, 4) float32 reference boxes
    anchors: np.ndarray  # (N, 3) float32 the object's (cy, cx, sqrt(area)) on that frame
    templates: np.ndarray
    ref_p4: np.ndarray
    ref_mask: np.ndarray

    def __add__(self, other: PartRows) -> PartRows:
        return PartRows(
            *(
                np.concatenate([a, b])
                for a, b in zip(self.__dict__.values(), other.__dict__.values())
            )
        )

    def channels(self, ids: tuple[int, ...]) -> np.ndarray:
        lookup = {k: c for c, k in enumerate(ids)}
        return np.array([lookup[int(k)] for k in self.object_ids], np.int32)


@dataclass(frozen=True)
class PartsReference:
    matching: MatchingReference
    parts: PartRows
    prev_probs: np.ndarray  # (H/4, W/4, K) of the last annotated frame

    @property
    def object_ids(self) -> tuple[int, ...]:
        return self.matching.object_ids


@dataclass(frozen=True)
class PartsState:
    matching: MatchingState
    part_boxes: np.ndarray  # (N, 4) float32, where each part was last found
    prev_probs: np.ndarray  # (H/4, W/4, K) the objects on the last frame


class PartsPropagator:
    """The full network: matching branch + part tracker + per-part mask head.

    Parts are made once per object, on the first frame that annotates it (k-means on its mask,
    vostrack.network.parts); their templates and reference crops are kept for the whole video.
    The tracker moves them from frame to frame, or with ``parts.track`` off the parts follow
    their object's predicted mask (:meth:`_reseed` on each frame's labels).
    """

    def __init__(self, runtime: Runtime, name: str = "vostrack"):
        self.runtime = runtime
        self.name = name
        self.memory = Memory(runtime.settings.matching)
        self.part_settings = runtime.settings.parts

    def encode_reference(
        self, frame: np.ndarray, labels: np.ndarray, previous: PartsReference | None = None
    ) -> PartsReference:
        old_ids = previous.object_ids if previous else ()
        ids = tuple(sorted(set(old_ids) | {int(k) for k in np.unique(labels) if k}))
        known = set(previous.parts.object_ids.tolist()) if previous else set()
        work = self._working_labels(labels)
        rows = [self._split(work, k) for k in ids if k not in known]
        boxes = np.concatenate([r[0] for r in rows]) if rows else np.zeros((0, 4), np.float32)
        valid = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, bool)
        objects = np.concatenate([r[2] for r in rows]) if rows else np.zeros(0, np.int64)
        anchors = np.concatenate([r[3] for r in rows]) if rows else np.zeros((0, 3), np.float32)
        out = self.runtime.run(
            "encode_reference",
            {
                "frame": frame,
                "probs": one_hot(labels, ids),
                "part_boxes": boxes,
                "part_object": np.array([ids.index(int(k)) for k in objects], np.int32),
                "part_valid": valid,
            },
        )
        new = PartRows(
            objects, valid, boxes, anchors, out["templates"], out["ref_p4"], out["ref_mask"]
        )
        matching = self.memory.with_reference(
            previous.matching if previous else None, ids, MemoryFrame(out["key"], out["grid"])
        )
        return PartsReference(
            matching, previous.parts + new if previous else new, out["prev_probs"]
        )

    def initial_state(
        self,
        frame: np.ndarray,
        labels: np.ndarray,
        reference: PartsReference,
        encoded: bool = False,
    ) -> PartsState:
        ids = reference.object_ids
        if encoded:  # the reference was just made from this frame: its encoding serves
            entry, prev_probs = reference.matching.frames[-1], reference.prev_probs
        else:
            out = self.runtime.run(
                "encode_reference",
                {
                    "frame": frame,
                    "probs": one_hot(labels, ids),
                    "part_boxes": np.zeros((0, 4), np.float32),
                    "part_object": np.zeros(0, np.int32),
                    "part_valid": np.zeros(0, bool),
                },
            )
            entry, prev_probs = MemoryFrame(out["key"], out["grid"]), out["prev_probs"]
        return PartsState(
            MatchingState((entry,)), self._reseed(reference.parts, labels), prev_probs
        )

    def step(
        self, frame: np.ndarray, reference: PartsReference, state: PartsState
    ) -> tuple[np.ndarray, PartsState]:
        return step_in_halves(self, frame, reference, state)

    def run_step(
        self,
        frame: np.ndarray,
        reference: PartsReference,
        state: PartsState,
        skip: Collection[str] = ("probs",),
    ) -> dict[str, np.ndarray]:
        parts = reference.parts
        return self.runtime.run(
            "step",
            {
                "frame": frame,
                **memory_inputs(reference.matching, state.matching),
                "templates": parts.templates,
                "ref_p4": parts.ref_p4,
                "ref_mask": parts.ref_mask,
                "part_object": parts.channels(reference.object_ids),
                "part_valid": parts.valid,
                "part_boxes": state.part_boxes,
                "prev_probs": state.prev_probs,
            },
            skip,
        )

    def advance(
        self,
        out: dict[str, np.ndarray],
        reference: PartsReference,
        state: PartsState,
        labels: np.ndarray,
    ) -> PartsState:
        boxes = (
            out["part_boxes"]
            if self.part_settings.track
            else self._reseed(reference.parts, labels, state.part_boxes)
        )
        return PartsState(self.memory.with_recent(state.matching, out), boxes, out["prev_probs"])

    # ------------------------------------------------------------------------ helpers
    def _working_labels(self, labels: np.ndarray) -> np.ndarray:
        h, w, _, _ = working_size(*labels.shape, self.runtime.settings)
        return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)

    def _split(self, work: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
        mask = work == k
        parts = split_mask(mask, self.part_settings.splitting())
        n = len(parts.valid)
        return (
            parts.boxes.astype(np.float32),
            parts.valid,
            np.full(n, k),
            np.tile(_anchor(mask), (n, 1)),
        )

    def _reseed(
        self, parts: PartRows, labels: np.ndarray, unseen: np.ndarray | None = None
    ) -> np.ndarray:
        """Part boxes on a frame known only by its labels: each object's reference parts moved
        and scaled with the object (its centroid and the square root of its area). Parts made
        on this very frame come back unchanged; the parts of an object not on the frame stay
        where ``unseen`` has them (default: where they were made)."""
        work = self._working_labels(labels)
        boxes = (parts.boxes if unseen is None else unseen).copy()
        for k in np.unique(parts.object_ids):
            rows = parts.object_ids == k
            now = _anchor(work == k)
            then = parts.anchors[rows][0]
            if now[2] == 0 or then[2] == 0:
                continue  # the object is not visible: leave its parts where they were
            scale = now[2] / then[2]
            centre = np.array([then[0], then[1], then[0], then[1]], np.float32)
            moved = np.array([now[0], now[1], now[0], now[1]], np.float32)
            boxes[rows] = (parts.boxes[rows] - centre) * scale + moved
        return boxes


def _anchor(mask: np.ndarray) -> np.ndarray:
    """(cy, cx, sqrt(area)) of a mask, zeros when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros(3, np.float32)
    return np.array([ys.mean(), xs.mean(), np.sqrt(len(ys))], np.float32)
