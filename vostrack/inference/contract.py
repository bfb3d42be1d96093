"""The per-frame contract between the inference loop and a network (DESIGN.md).

The network is stateless. Everything a video accumulates lives in two values the network
defines and the loop only passes around:
- a *reference*: what the annotated frames say (part templates, reference features and masks);
- a *state*: what the last frame says (part boxes and scores, the previous mask, bounded memory).
Frames are RGB uint8 (H, W, 3); labels are uint8 (H, W) maps of object ids (0 = background).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

Reference = Any
State = Any


@runtime_checkable
class Propagator(Protocol):
    """A network seen through the per-frame contract; one instance serves many videos."""

    name: str

    def encode_reference(
        self, frame: np.ndarray, labels: np.ndarray, previous: Reference | None = None
    ) -> Reference:
        """Encode an annotated frame; ``previous`` is the reference of earlier annotations,
        which the new one extends (objects that appear later, corrections)."""

    def initial_state(
        self, frame: np.ndarray, labels: np.ndarray, reference: Reference, encoded: bool = False
    ) -> State:
        """The state after a frame whose labels are known (an annotation, or the last frame an
        interrupted run wrote). ``encoded``: ``reference`` was just made from this very frame
        and these labels, so the encoding it holds may serve (the caller knows; nothing is
        inferred from the frame's content)."""

    def step(
        self, frame: np.ndarray, reference: Reference, state: State
    ) -> tuple[np.ndarray, State]:
        """Segment the next frame: its label map and the new state."""
