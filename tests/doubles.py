"""A test double of the network: implements the per-frame contract with plain numpy.

Each object is its mean colour on the annotated frames; a pixel goes to the object of nearest
colour, if close enough and within ``radius`` pixels of that object's previous mask. Because
the result depends on the state (the previous mask), a loop that loses or garbles the state
(resume, annotations added mid-video) gives visibly different masks. Not shipped: the package
holds no fake propagator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class ColourReference:
    colours: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class ColourState:
    labels: np.ndarray


class ColourPropagator:
    name = "colour-double"

    def __init__(
        self, radius: int = 6, max_distance: float = 60.0, interrupt_at: int | None = None
    ):
        self.radius = radius
        self.max_distance = max_distance
        self.interrupt_at = interrupt_at  # raise KeyboardInterrupt on this step call (Ctrl-C)
        self.steps = 0
        self.frames_seen: list[np.ndarray] = []

    def encode_reference(self, frame, labels, previous=None):
        colours = dict(previous.colours) if previous is not None else {}
        for k in np.unique(labels):
            if k:
                colours[int(k)] = frame[labels == k].reshape(-1, 3).astype(np.float32).mean(0)
        return ColourReference(colours)

    def initial_state(self, frame, labels, reference, encoded=False):
        return ColourState(labels.copy())

    def step(self, frame, reference, state):
        self.steps += 1
        if self.interrupt_at is not None and self.steps == self.interrupt_at:
            raise KeyboardInterrupt
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.radius + 1,) * 2)
        best = np.full(frame.shape[:2], self.max_distance, dtype=np.float32)
        labels = np.zeros(frame.shape[:2], dtype=np.uint8)
        pixels = frame.astype(np.float32)
        for k, colour in sorted(reference.colours.items()):
            near = cv2.dilate((state.labels == k).astype(np.uint8), kernel) > 0
            distance = np.linalg.norm(pixels - colour, axis=-1)
            take = near & (distance < best)
            best[take] = distance[take]
            labels[take] = k
        return labels, ColourState(labels)
