"""VideoSegmenter: how annotations and predictions combine."""

from __future__ import annotations

import numpy as np

from tests.doubles import ColourPropagator
from vostrack.inference.segmenter import VideoSegmenter, merge_annotation


def test_annotation_is_authoritative_for_its_objects_only():
    predicted = np.array([[1, 1, 2, 2, 0]], np.uint8)
    annotation = np.array([[0, 0, 0, 1, 3]], np.uint8)
    assert merge_annotation(predicted, annotation).tolist() == [[0, 0, 2, 1, 3]]


def test_frames_before_the_first_annotation_are_empty_and_state_follows():
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:, :3] = (200, 0, 0)
    labels = np.zeros((4, 6), np.uint8)
    labels[:, :3] = 1
    segmenter = VideoSegmenter(ColourPropagator(radius=1))
    assert not segmenter.step(frame).any() and not segmenter.started
    assert np.array_equal(segmenter.step(frame, labels), labels)
    moved = np.roll(frame, 1, axis=1)  # the object moves one pixel: within the radius
    assert np.array_equal(segmenter.step(moved), np.roll(labels, 1, axis=1))
