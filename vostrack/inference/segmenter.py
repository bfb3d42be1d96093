"""VideoSegmenter: the one object that owns a video's state and turns frames into label maps."""

from __future__ import annotations

import numpy as np

from vostrack.inference.contract import Propagator, Reference, State


class VideoSegmenter:
    """Feeds one video, frame by frame, through a stateless :class:`Propagator`.

    ``step(frame, annotation)`` returns the frame's label map. An annotation is authoritative
    for the objects it holds (their predicted pixels elsewhere are dropped); objects it does not
    hold keep their prediction, so masks of objects that appear later can be given alone. With
    ``whole=True`` (a correction: the frame as it should be) it is the frame's labels, objects
    it does not hold included.
    """

    def __init__(self, propagator: Propagator):
        self.propagator = propagator
        self.reference: Reference | None = None
        self.state: State | None = None

    @property
    def started(self) -> bool:
        return self.reference is not None

    def step(
        self, frame: np.ndarray, annotation: np.ndarray | None = None, whole: bool = False
    ) -> np.ndarray:
        if annotation is None:
            if not self.started:
                return np.zeros(frame.shape[:2], dtype=np.uint8)  # no object given yet
            labels, self.state = self.propagator.step(frame, self.reference, self.state)
            return labels
        labels = annotation
        if self.started and not whole:
            predicted, _ = self.propagator.step(frame, self.reference, self.state)
            labels = merge_annotation(predicted, annotation)
        self.reference = self.propagator.encode_reference(frame, labels, self.reference)
        self.state = self.propagator.initial_state(frame, labels, self.reference, encoded=True)
        return labels

    def add_reference(self, frame: np.ndarray, labels: np.ndarray) -> None:
        """Replay an annotated frame without predicting it (resuming a run)."""
        self.reference = self.propagator.encode_reference(frame, labels, self.reference)

    def reseed(self, frame: np.ndarray, labels: np.ndarray) -> None:
        """Continue from a frame whose labels are known (the last frame a stopped run wrote)."""
        self.state = self.propagator.initial_state(frame, labels, self.reference)


def merge_annotation(predicted: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """Predicted labels with an annotation laid over them."""
    merged = predicted.copy()
    for k in np.unique(annotation):
        if k:
            merged[merged == k] = 0
    np.copyto(merged, annotation, where=annotation > 0)
    return merged
