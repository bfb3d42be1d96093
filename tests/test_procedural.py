"""Tests of the procedural scene generator (vostrack.data.procedural).

Small frames and short clips keep the whole file to a few seconds.
"""

from __future__ import annotations

import inspect
import itertools

import cv2
import numpy as np
import pytest

from vostrack.data.procedural import (
    Scene,
    SceneConfig,
    SceneFrame,
    iter_scene,
    make_clip,
    object_boxes,
    stack_frames,
    value_noise,
)

SMALL = dict(height=72, width=112, num_frames=16, num_objects=3)


def _config(**overrides) -> SceneConfig:
    return SceneConfig(**{**SMALL, **overrides})


def _dilate(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


# ---- determinism, shapes, streaming ------------------------------------------------------------


def test_same_seed_same_clip_and_different_seed_different_clip():
    frames_a, labels_a = make_clip(_config(seed=5))
    frames_b, labels_b = make_clip(_config(seed=5))
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    frames_c, labels_c = make_clip(_config(seed=6))
    assert not np.array_equal(frames_a, frames_c)
    assert not np.array_equal(labels_a, labels_c)


def test_shapes_dtypes_and_label_values():
    cfg = _config(num_frames=5, num_objects=4, seed=1)
    frames, labels = make_clip(cfg)
    assert frames.shape == (5, 72, 112, 3) and frames.dtype == np.uint8
    assert labels.shape == (5, 72, 112) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(range(5))
    assert 0 in np.unique(labels)  # some background is visible
    # The frame is neither constant nor trivially two-level: there is texture.
    assert frames.std() > 10 and len(np.unique(frames[0].reshape(-1, 3), axis=0)) > 500


def test_iter_scene_streams_and_equals_make_clip():
    cfg = _config(seed=2, num_frames=8)
    stream = iter_scene(cfg)
    assert inspect.isgenerator(stream)
    streamed = list(stream)
    assert len(streamed) == 8
    frames, labels = make_clip(cfg)
    for t, (frame, label) in enumerate(streamed):
        np.testing.assert_array_equal(frame, frames[t])
        np.testing.assert_array_equal(label, labels[t])
    # Random access renders the same frames as the stream, in any order.
    scene = Scene(cfg)
    for t in (7, 0, 3):
        np.testing.assert_array_equal(scene.render(t).frame, frames[t])


def test_iter_scene_is_lazy_for_very_long_videos():
    # A million-frame config: only works if nothing is rendered or stored up front.
    cfg = _config(num_frames=1_000_000)
    first_two = list(itertools.islice(iter_scene(cfg), 2))
    assert len(first_two) == 2
    late = Scene(cfg).render(999_999)
    assert late.frame.shape == (72, 112, 3)


def test_value_noise_is_periodic_and_normalised():
    noise = value_noise(np.random.default_rng(0), 40, 60, cells=3, octaves=3)
    assert noise.shape == (40, 60) and noise.dtype == np.float32
    assert noise.min() == pytest.approx(0) and noise.max() == pytest.approx(1)
    # Tiling: the jump across the wrap-around seam is like the jump between any two columns.
    inner = np.abs(np.diff(noise, axis=1)).mean()
    seam = np.abs(noise[:, 0] - noise[:, -1]).mean()
    assert seam < 3 * inner


# ---- presence, appearance, frame borders -------------------------------------------------------


def test_objects_absent_before_appear_at_and_after_disappear_at():
    cfg = _config(num_frames=20, appear_at={2: 5, 3: 9}, disappear_at={1: 15})
    scene = Scene(cfg)
    for t in range(cfg.num_frames):
        out = scene.render(t, amodal=True)
        areas = np.bincount(out.labels.ravel(), minlength=4)[1:]
        expected_present = [t < 15, t >= 5, t >= 9]
        assert out.present.tolist() == expected_present
        for k in range(3):
            if not expected_present[k]:
                assert areas[k] == 0 and not out.amodal[k].any(), (t, k + 1)
            else:
                assert out.amodal[k].any(), (t, k + 1)
    # On its first frame an appearing object is placed clear of the others: clearly visible.
    for obj_id, first in ((2, 5), (3, 9)):
        out = scene.render(first, amodal=True)
        visible = (out.labels == obj_id).sum()
        assert visible > 0.8 * out.amodal[obj_id - 1].sum() > 0


def test_visible_area_nonzero_whenever_not_covered():
    cfg = _config(num_frames=24, num_objects=4, seed=3, appear_at={4: 10})
    scene = Scene(cfg)
    for t in range(cfg.num_frames):
        out = scene.render(t, amodal=True)
        for obj_id in range(1, 5):
            full = out.amodal[obj_id - 1]
            front = (
                out.depth_order[out.depth_order.index(obj_id) + 1 :]
                if obj_id in out.depth_order
                else ()
            )
            covered = np.zeros_like(full)
            for j in front:
                covered |= out.amodal[j - 1]
            uncovered = full & ~covered
            # The label map is exactly "full shape minus what is in front of it".
            np.testing.assert_array_equal(out.labels == obj_id, uncovered)
            if out.present[obj_id - 1] and uncovered.any():
                assert (out.labels == obj_id).sum() > 0


def test_objects_stay_inside_unless_allowed_to_leave():
    inside = Scene(
        _config(height=120, width=160, num_frames=60, seed=4, speed=0.03, object_size=(0.1, 0.15))
    )
    for t in range(0, 60, 3):
        full = inside.render(t, amodal=True).amodal.any(axis=0)
        assert not (full[0].any() or full[-1].any() or full[:, 0].any() or full[:, -1].any())

    leaving = Scene(
        _config(
            height=120,
            width=160,
            num_frames=60,
            seed=4,
            speed=0.03,
            object_size=(0.1, 0.15),
            leave_frame=True,
            exit_fraction=0.5,
        )
    )
    touched = 0
    for t in range(0, 60, 3):
        full = leaving.render(t, amodal=True).amodal.any(axis=0)
        touched += bool(full[0].any() or full[-1].any() or full[:, 0].any() or full[:, -1].any())
    assert touched > 0


# ---- occlusion -----------------------------------------------------------------------------------


def test_occlusion_happens_and_only_the_front_object_is_labelled():
    # Big objects in a small frame: they must cross.
    cfg = _config(num_frames=30, seed=0, object_size=(0.3, 0.4), speed=0.03)
    scene = Scene(cfg)
    overlaps = 0
    shrunk_while_full_kept = False
    prev = None
    for t in range(cfg.num_frames):
        out = scene.render(t, amodal=True)
        order = out.depth_order
        for a, b in itertools.combinations(range(1, 4), 2):
            both = out.amodal[a - 1] & out.amodal[b - 1]
            if both.sum() > 20:
                overlaps += 1
                front = a if order.index(a) > order.index(b) else b
                back = b if front == a else a
                labelled = out.labels[both]
                assert not (labelled == back).any()
                # Front object wins unless a third object is in front of both.
                assert ((labelled == front) | (labelled == 6 - a - b)).all()
        full_area = out.amodal.sum(axis=(1, 2))
        visible = np.bincount(out.labels.ravel(), minlength=4)[1:]
        if prev is not None:
            p_full, p_vis = prev
            # Visible area drops by > 20 % while the full shape area stays within 10 %.
            if ((visible < 0.8 * p_vis) & (full_area > 0.9 * p_full)).any():
                shrunk_while_full_kept = True
        prev = (full_area, visible)
    assert overlaps >= 3
    assert shrunk_while_full_kept


def test_depth_order_changes_when_configured():
    fixed = Scene(_config(num_frames=40))
    assert len({fixed.depth_order(t) for t in range(40)}) == 1
    changing = Scene(_config(num_frames=40, depth_change_every=5))
    orders = {changing.depth_order(t) for t in range(40)}
    assert len(orders) > 1
    assert all(sorted(o) == [1, 2, 3] for o in orders)
    assert changing.depth_order(3) == changing.depth_order(4)  # constant within a segment


# ---- labels agree with the pixels ----------------------------------------------------------------


@pytest.mark.parametrize("antialias", [False, True])
def test_labelled_pixels_carry_the_objects_texture(antialias):
    cfg = _config(num_frames=20, seed=8, object_size=(0.25, 0.35), antialias=antialias)
    scene = Scene(cfg)
    checked = 0
    for t in range(0, 20, 4):
        out = scene.render(t, amodal=True)
        for obj_id in range(1, 4):
            mine = out.labels == obj_id
            if mine.sum() < 30:
                continue
            without = scene.render(t, hide={obj_id})
            changed = (out.frame != without.frame).any(axis=2)
            # Removing the object changes (almost) every pixel labelled as it ...
            assert changed[mine].mean() > 0.95
            if antialias:
                # ... and nothing beyond its shape's soft edge; changes away from its visible
                # pixels only show through the soft edges of objects in front of it.
                assert not (changed & ~_dilate(out.amodal[obj_id - 1])).any()
                in_front = out.depth_order[out.depth_order.index(obj_id) + 1 :]
                elsewhere = changed & ~_dilate(mine)
                assert not (elsewhere & ~_dilate(np.isin(out.labels, in_front))).any()
            else:
                # ... and nothing else at all.
                assert not (changed & ~mine).any()
            # Other objects' labels are unaffected by hiding this one.
            keep = ~mine & (without.labels != 0)
            np.testing.assert_array_equal(without.labels[keep], out.labels[keep])
            checked += 1
    assert checked >= 5


def test_objects_differ_from_background_and_each_other_in_colour():
    cfg = _config(height=120, width=200, num_frames=1, seed=9, object_size=(0.2, 0.25))
    out = Scene(cfg).render(0)
    hsv = cv2.cvtColor(out.frame, cv2.COLOR_RGB2HSV).astype(float)
    bg_sat = hsv[..., 1][out.labels == 0].mean()
    means = []
    for obj_id in range(1, 4):
        mine = out.labels == obj_id
        assert mine.any()
        assert hsv[..., 1][mine].mean() > bg_sat + 40  # objects are more saturated
        means.append(out.frame[mine].astype(float).mean(axis=0))
        assert out.frame[mine].std(axis=0).max() > 8  # textured, not a flat colour
    for a, b in itertools.combinations(means, 2):
        assert np.abs(a - b).max() > 25


# ---- boxes ---------------------------------------------------------------------------------


def test_object_boxes_of_a_hand_made_label_map():
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 3:7] = 1
    labels[8, 11] = 3
    boxes = object_boxes(labels, 4)
    assert boxes.dtype == np.int32
    assert boxes.tolist() == [[3, 2, 7, 5], [0, 0, 0, 0], [11, 8, 12, 9], [0, 0, 0, 0]]
    assert object_boxes(labels).shape == (3, 4)
    assert object_boxes(np.zeros((4, 4), np.uint8), 2).tolist() == [[0, 0, 0, 0]] * 2


def test_boxes_match_labels_in_a_scene():
    cfg = _config(num_frames=12, seed=11, appear_at={3: 6})
    scene = Scene(cfg)
    rendered = [scene.render(t) for t in range(cfg.num_frames)]
    for out in rendered:
        boxes = out.boxes
        assert boxes.shape == (3, 4)
        for obj_id in range(1, 4):
            ys, xs = np.nonzero(out.labels == obj_id)
            if ys.size == 0:
                assert boxes[obj_id - 1].tolist() == [0, 0, 0, 0]
            else:
                assert boxes[obj_id - 1].tolist() == [
                    xs.min(),
                    ys.min(),
                    xs.max() + 1,
                    ys.max() + 1,
                ]
    frames, labels, boxes = stack_frames(rendered)
    assert frames.shape == (12, 72, 112, 3) and labels.shape == (12, 72, 112)
    assert boxes.shape == (12, 3, 4)
    assert (boxes[:6, 2] == 0).all() and (boxes[6:, 2, 2] > boxes[6:, 2, 0]).all()
    assert isinstance(rendered[0], SceneFrame)


# ---- config validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_objects=0),
        dict(num_frames=0),
        dict(appear_at={4: 2}),
        dict(appear_at={1: -1}),
        dict(appear_at={1: 5}, disappear_at={1: 5}),
        dict(shapes=("triangle",)),
        dict(textures=()),
        dict(object_size=(0.3, 0.1)),
    ],
)
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        _config(**bad)


def test_render_out_of_range_frame_raises():
    with pytest.raises(IndexError):
        Scene(_config(num_frames=3)).render(3)
