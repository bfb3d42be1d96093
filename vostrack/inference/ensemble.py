"""MirroredPropagator: a propagator run on the video and on its mirror image at once.

Test-time mirroring, as segmentation and VOS methods use it: the mirror image puts every
object on a different phase of the network's stride-16 and stride-4 grids (the frame is padded
at the bottom right), so the two members' errors along boundaries and on look-alikes are partly
independent. Each frame's labels are the argmax of the two members' probabilities averaged;
both members then move on from those labels (where the part path places its parts), each with
its own memory. Twice the network's time per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vostrack.inference.propagator import MatchingPropagator, PartsPropagator, label_map


def mirror(image: np.ndarray) -> np.ndarray:
    """Left-right mirror image of an (H, W, ...) array, contiguous (graphs are fed copies)."""
    return np.ascontiguousarray(image[:, ::-1])


@dataclass(frozen=True)
class Mirrored:
    """A reference or state of each member: ``plain`` on the frames, ``mirrored`` on their
    mirror images."""

    plain: Any
    mirrored: Any

    @property
    def object_ids(self) -> tuple[int, ...]:
        return self.plain.object_ids


class MirroredPropagator:
    """The per-frame contract (contract.py) of ``base`` on a frame and its mirror image."""

    def __init__(self, base: MatchingPropagator | PartsPropagator):
        self.base = base
        self.name = base.name

    def encode_reference(
        self, frame: np.ndarray, labels: np.ndarray, previous: Mirrored | None = None
    ) -> Mirrored:
        return Mirrored(
            self.base.encode_reference(frame, labels, previous.plain if previous else None),
            self.base.encode_reference(
                mirror(frame), mirror(labels), previous.mirrored if previous else None
            ),
        )

    def initial_state(
        self, frame: np.ndarray, labels: np.ndarray, reference: Mirrored, encoded: bool = False
    ) -> Mirrored:
        return Mirrored(
            self.base.initial_state(frame, labels, reference.plain, encoded),
            self.base.initial_state(mirror(frame), mirror(labels), reference.mirrored, encoded),
        )

    def step(
        self, frame: np.ndarray, reference: Mirrored, state: Mirrored
    ) -> tuple[np.ndarray, Mirrored]:
        # the members' probabilities decide; their own label maps are not needed
        plain = self.base.run_step(frame, reference.plain, state.plain, skip=("index",))
        mirrored = self.base.run_step(
            mirror(frame), reference.mirrored, state.mirrored, skip=("index",)
        )
        probs = plain["probs"] + mirrored["probs"][:, ::-1]
        labels = label_map(np.argmax(probs, axis=-1), reference.object_ids)
        return labels, Mirrored(
            self.base.advance(plain, reference.plain, state.plain, labels),
            self.base.advance(mirrored, reference.mirrored, state.mirrored, mirror(labels)),
        )
