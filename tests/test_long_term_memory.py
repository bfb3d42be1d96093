"""The long-term memory (matching.long_term_*): every N-th frame joins a bounded store that
the network searches as it searches the annotated frames."""

from __future__ import annotations

import dataclasses

import numpy as np

from vostrack.inference.propagator import MatchingPropagator
from vostrack.network.config import InferenceSettings, MatchingSettings, ModelConfig


class CountingRuntime:
    """A runtime that records how many frames each ``step`` searched globally and returns a
    key that says which frame made it."""

    config = ModelConfig(parts=None)

    def __init__(self, **matching):
        self.settings = InferenceSettings(matching=MatchingSettings(**matching))
        self.searched: list[list[float]] = []
        self.frame = 0

    def run(self, function, inputs, skip=()):
        h, w = inputs["frame"].shape[:2]
        k = inputs["probs"].shape[-1] if "probs" in inputs else inputs["recent_probs"].shape[-1]
        if function == "step":
            self.searched.append(inputs["reference_keys"][:, 0, 0, 0].tolist())
        self.frame += 1
        key = np.full((2, 2, 3), float(self.frame), np.float32)
        grid = np.zeros((2, 2, k), np.float32)
        grid[..., 0] = 1.0
        return {"key": key, "grid": grid, "index": np.zeros((h, w), np.int64)}


def run(runtime, frames=20):
    propagator = MatchingPropagator(runtime)
    frame = np.zeros((8, 8, 3), np.uint8)
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5] = 1
    reference = propagator.encode_reference(frame, labels)
    state = propagator.initial_state(frame, labels, reference, encoded=True)
    for _ in range(frames):
        _, state = propagator.step(frame, reference, state)
    return runtime.searched, state


def test_every_nth_frame_joins_a_bounded_long_term_store():
    searched, state = run(CountingRuntime(long_term_every=3, long_term_frames=2))
    # the annotated frame (key 1), then the frames made on steps 3, 6, 9, ... (keys 4, 7, ...)
    assert searched[0] == [1.0] and searched[3] == [1.0, 4.0]
    assert searched[6] == [1.0, 4.0, 7.0]
    assert searched[9] == [1.0, 7.0, 10.0]  # at most two: the oldest goes first
    assert all(len(s) <= 3 for s in searched)
    assert len(state.long_term) == 2 and state.frames_seen == 20


def test_without_it_only_the_annotated_frames_are_searched_globally():
    searched, state = run(CountingRuntime())
    assert all(s == [1.0] for s in searched) and state.long_term == ()


def test_the_settings_are_run_time_and_checked():
    from vostrack.network.config import RUN_TIME, apply_overrides, setting_kinds

    assert setting_kinds()["matching.long_term_every"] == RUN_TIME
    changed = apply_overrides(InferenceSettings(), ["matching.long_term_every=10"])
    assert changed.matching.long_term_every == 10
    assert dataclasses.replace(changed.matching, long_term_frames=1).long_term_frames == 1
