"""Tests of the training sample and the shared augmentations (vostrack.data.clips).

Clips are built from flat-colour shapes on a grey noise background, one unique colour per object,
so that after any augmentation "the pixels labelled k carry object k's colour" can be checked.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vostrack.data.clips import (
    VOID,
    AugmentConfig,
    Clip,
    ColourJitter,
    GapSchedule,
    augment_clip,
    colour_jitter,
    random_crop_scale,
    random_flip,
)
from vostrack.network.parts import PartsConfig, mask_box, split_mask

COLOURS = {1: (250, 20, 20), 2: (20, 240, 30), 3: (30, 40, 250)}


def _background(rng, height, width):
    grey = rng.integers(90, 150, (height, width, 1), dtype=np.uint8)
    return np.repeat(grey, 3, axis=2)


def _clip(num_frames=3, height=120, width=160, seed=0, boxes=None):
    """Rectangles (object id -> per-frame (y0, x0, y1, x1)) of unique colours on grey noise."""
    rng = np.random.default_rng(seed)
    if boxes is None:
        boxes = {
            1: [(20 + 3 * t, 30 + 5 * t, 70 + 3 * t, 90 + 5 * t) for t in range(num_frames)],
            2: [(60, 100 - 4 * t, 100, 140 - 4 * t) for t in range(num_frames)],
        }
    frames = np.stack([_background(rng, height, width) for _ in range(num_frames)])
    labels = np.zeros((num_frames, height, width), np.uint8)
    for k, per_frame in boxes.items():
        for t, box in enumerate(per_frame):
            if box is None:
                continue
            y0, x0, y1, x1 = box
            frames[t, y0:y1, x0:x1] = COLOURS[k]
            labels[t, y0:y1, x0:x1] = k
    return Clip(frames, labels, len(boxes), name="rects")


def _eroded(mask, pixels=2):
    # Eroded from the frame border too: an object edge can lie just outside the frame.
    return (
        cv2.erode(
            mask.astype(np.uint8),
            np.ones((2 * pixels + 1,) * 2, np.uint8),
            borderType=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        > 0
    )


def _assert_consistent(clip: Clip, max_objects=4, max_parts=6):
    """Labelled pixels have their object's colour, boxes are mask boxes, parts inside objects."""
    arrays = clip.to_arrays(max_objects, max_parts)
    for t in range(clip.num_frames):
        for k in range(1, clip.num_objects + 1):
            mask = clip.labels[t] == k
            inner = _eroded(mask)
            if inner.any():
                colours = clip.frames[t][inner].astype(int)
                # Which rectangle it is may change after relabelling; it must be one colour.
                reference = colours[0]
                assert np.abs(colours - reference).max() <= 2
                assert min(np.abs(reference - np.array(c)).max() for c in COLOURS.values()) <= 2
            box = mask_box(mask)
            if box is None:
                assert not arrays["object_present"][t, k - 1]
                assert not arrays["part_valid"][t, k - 1].any()
                np.testing.assert_array_equal(arrays["object_boxes"][t, k - 1], 0)
                continue
            assert arrays["object_present"][t, k - 1]
            np.testing.assert_array_equal(arrays["object_boxes"][t, k - 1], box)
            parts = arrays["part_boxes"][t, k - 1][arrays["part_valid"][t, k - 1]]
            assert len(parts) >= 1
            assert np.all(parts[:, :2] >= box[:2]) and np.all(parts[:, 2:] <= box[2:])
        # The object's colour appears nowhere else (away from edges), void or background.
        for k in range(1, clip.num_objects + 1):
            inner = _eroded(clip.labels[t] == k)
            if not inner.any():
                continue
            colour = clip.frames[t][inner][0].astype(int)
            elsewhere = _eroded(clip.labels[t] != k)
            close = np.abs(clip.frames[t].astype(int) - colour).max(-1) <= 2
            assert not np.any(close & elsewhere)


# ---- the sample ------------------------------------------------------------------------------


def test_clip_validates_shapes():
    clip = _clip()
    with pytest.raises(ValueError, match="at least 3"):
        Clip(clip.frames[:2], clip.labels[:2], 2)
    with pytest.raises(ValueError, match="labels"):
        Clip(clip.frames, clip.labels[:, :-1], 2)
    with pytest.raises(ValueError, match="uint8"):
        Clip(clip.frames.astype(np.float32), clip.labels, 2)


def test_to_arrays_pads_to_fixed_shapes():
    clip = _clip()
    arrays = clip.to_arrays(max_objects=4, max_parts=5)
    assert arrays["frames"].shape == (3, 120, 160, 3) and arrays["frames"].dtype == np.uint8
    assert arrays["labels"].shape == (3, 120, 160) and arrays["labels"].dtype == np.uint8
    assert arrays["num_objects"] == 2 and arrays["num_objects"].dtype == np.int32
    np.testing.assert_array_equal(arrays["object_valid"], [True, True, False, False])
    assert arrays["object_boxes"].shape == (3, 4, 4) and arrays["object_boxes"].dtype == np.float32
    assert arrays["object_present"].shape == (3, 4)
    assert arrays["part_boxes"].shape == (3, 4, 5, 4)
    assert arrays["part_valid"].shape == (3, 4, 5) and arrays["part_valid"].dtype == bool
    assert not arrays["part_valid"][:, 2:].any() and not arrays["object_present"][:, 2:].any()
    with pytest.raises(ValueError, match="max_objects"):
        clip.to_arrays(max_objects=1, max_parts=5)
    _assert_consistent(clip)


def test_reference_parts_are_split_mask_parts():
    # kmeans_parts itself (boxes == split_mask's) is tested in tests/test_parts.py.
    config = PartsConfig(min_part_area=400.0)
    clip = _clip()
    arrays = clip.to_arrays(4, 6, config)
    for k in (1, 2):
        parts = split_mask(clip.labels[0] == k, PartsConfig(max_parts=6, min_part_area=400.0))
        np.testing.assert_array_equal(arrays["part_boxes"][0, k - 1], parts.boxes)
        np.testing.assert_array_equal(arrays["part_valid"][0, k - 1], parts.valid)


def test_parts_follow_a_translating_and_scaling_object():
    config = PartsConfig(max_parts=4, min_part_area=200.0)
    boxes = {1: [(10, 10, 50, 70), (30, 60, 70, 120), (20, 20, 100, 140)]}
    clip = _clip(height=140, width=180, boxes=boxes)
    part_boxes, valid = clip.part_boxes(config)
    assert valid[0, 0].sum() == 4 and (valid[:, 0] == valid[0, 0]).all()
    # Translation by (20, 50): every part moves with it.
    np.testing.assert_array_equal(part_boxes[1, 0], part_boxes[0, 0] + [20, 50, 20, 50])
    # Scaled by 2 about the box corner: part boxes scale too (to a pixel).
    expected = (part_boxes[0, 0] - [10, 10, 10, 10]) * 2 + [20, 20, 20, 20]
    assert np.abs(part_boxes[2, 0] - expected).max() <= 2


def test_relabel_from_reference_drops_objects_absent_on_frame_0():
    boxes = {
        1: [None, (10, 10, 30, 30), (10, 12, 30, 32)],
        2: [(40, 40, 60, 70), (40, 42, 60, 72), None],
        3: [(5, 100, 25, 130)] * 3,
    }
    clip = _clip(boxes=boxes)
    clip.labels[:, 100:, :10] = VOID
    out = clip.relabel_from_reference()
    assert out.num_objects == 2
    # Old 2 -> 1, old 3 -> 2, old 1 -> background; void untouched.
    np.testing.assert_array_equal(out.labels == 1, clip.labels == 2)
    np.testing.assert_array_equal(out.labels == 2, clip.labels == 3)
    assert not np.any(out.labels[1][clip.labels[1] == 1])
    np.testing.assert_array_equal(out.labels == VOID, clip.labels == VOID)
    # An object that vanishes later is kept, absent on that frame.
    arrays = out.to_arrays(4, 6)
    np.testing.assert_array_equal(
        arrays["object_present"][:, :2], [[True, True], [True, True], [False, True]]
    )
    _assert_consistent(out)


def test_limit_objects_keeps_a_random_subset():
    boxes = {k: [(10 + 30 * (k - 1), 10, 30 + 30 * (k - 1), 40)] * 3 for k in (1, 2, 3)}
    clip = _clip(boxes=boxes)
    seen = set()
    for seed in range(20):
        out = clip.limit_objects(2, np.random.default_rng(seed))
        assert out.num_objects == 2
        kept = tuple(int(clip.labels[0][out.labels[0] == k][0]) for k in (1, 2))
        assert kept[0] < kept[1]
        seen.add(kept)
    assert len(seen) > 1
    assert clip.limit_objects(3, np.random.default_rng(0)) is clip


def test_gap_schedule_grows_linearly():
    schedule = GapSchedule(start=2, end=12, steps=100)
    assert [schedule.at(s) for s in (0, 50, 100, 1000)] == [2, 7, 12, 12]
    assert GapSchedule.of(5).at(10**6) == 5
    with pytest.raises(ValueError):
        GapSchedule(start=0)


# ---- augmentation ------------------------------------------------------------------------------

NO_COLOUR = AugmentConfig(size=(96, 96), colour=None, min_object_pixels=16)


def test_crop_scale_keeps_masks_boxes_and_frames_consistent():
    clip = _clip(seed=1)
    kept = 0
    for seed in range(12):
        out = random_crop_scale(clip, NO_COLOUR, np.random.default_rng(seed))
        assert out.size == (96, 96) and out.num_frames == 3
        kept += out.num_objects
        _assert_consistent(out)
        # Padding outside the source is void and grey.
        void = out.labels == VOID
        if void.any():
            assert np.all(np.abs(out.frames[_eroded(void)].astype(int) - (124, 116, 104)) <= 1)
    assert kept > 0


def test_crop_scale_downscales_large_frames_without_breaking_alignment():
    # 4x larger source: the INTER_AREA pre-shrink must keep frames aligned with labels.
    boxes = {1: [(80, 120, 280, 360), (92, 140, 292, 380), (100, 150, 300, 390)]}
    clip = _clip(height=480, width=640, boxes=boxes, seed=2)
    config = AugmentConfig(
        size=(96, 128), zoom=(1.0, 1.0), aspect=1.0, frame_shift=0.0, frame_scale=0.0, colour=None
    )
    out = random_crop_scale(clip, config, np.random.default_rng(0))
    expected = np.array(boxes[1][0], np.float32) / 5  # fit scale 96 / 480
    np.testing.assert_allclose(mask_box(out.labels[0] == 1), expected, atol=1)
    _assert_consistent(out)


def test_crop_that_loses_an_object_on_frame_0_drops_it():
    # Object 2 is tiny and far from object 1: crops centred on 1 at high zoom lose it.
    boxes = {1: [(50, 60, 80, 100)] * 3, 2: [(2, 2, 6, 6)] * 3}
    clip = _clip(boxes=boxes)
    config = AugmentConfig(
        size=(48, 48), zoom=(2.0, 2.0), object_centred=1.0, colour=None, min_object_pixels=30
    )
    out = random_crop_scale(clip, config, np.random.default_rng(0))
    assert out.num_objects == 1
    _assert_consistent(out)


def test_flip_mirrors_frames_and_labels_together():
    clip = _clip()
    out = random_flip(clip, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out.frames, clip.frames[:, :, ::-1])
    np.testing.assert_array_equal(out.labels, clip.labels[:, :, ::-1])
    arrays, flipped = clip.to_arrays(4, 6), out.to_arrays(4, 6)
    box, fbox = arrays["object_boxes"][0, 0], flipped["object_boxes"][0, 0]
    np.testing.assert_array_equal(fbox, [box[0], 160 - box[3], box[2], 160 - box[1]])
    assert random_flip(clip, 0.0, np.random.default_rng(0)) is clip


def test_colour_jitter_changes_frames_only_and_is_reproducible():
    clip = _clip()
    jitter = ColourJitter(probability=1.0, hue=0.1)
    a = colour_jitter(clip, jitter, np.random.default_rng(3))
    b = colour_jitter(clip, jitter, np.random.default_rng(3))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.labels, clip.labels)
    assert not np.array_equal(a.frames, clip.frames)
    # One draw per clip plus a small per-frame variation: frames are jittered alike.
    means = [a.frames[t][clip.labels[t] == 1].mean(0) for t in range(3)]
    assert np.abs(means[0] - means[1]).max() < 60


def test_augment_clip_is_reproducible_and_consistent():
    clip = _clip(seed=4)
    config = AugmentConfig(
        size=(96, 96), colour=ColourJitter(probability=0.0), min_object_pixels=16
    )
    a = augment_clip(clip, config, np.random.default_rng(11))
    b = augment_clip(clip, config, np.random.default_rng(11))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = augment_clip(clip, config, np.random.default_rng(12))
    assert not np.array_equal(a.frames, c.frames)
    _assert_consistent(a)
    with pytest.raises(ValueError, match="geometric"):
        augment_clip(clip, config, np.random.default_rng(0), geometric=False)
