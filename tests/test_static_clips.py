"""Tests of the synthetic clips made from still images + masks (vostrack.data.static_clips).

The images are grey noise with one flat shape of a unique colour, so "pixels labelled as an
object carry that object's colour" can be checked after every warp and paste.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from vostrack.data.clips import VOID, AugmentConfig
from vostrack.data.static_clips import (
    StaticClipConfig,
    StaticClipSource,
    elastic_displacement,
    find_image_mask_pairs,
    read_image_mask,
    tps_displacement,
)
from vostrack.errors import VostrackError
from vostrack.network.parts import PartsConfig, mask_box, split_mask

# stem -> (colour, shape)
OBJECTS = {
    "rect": ((255, 0, 255), "rect"),
    "disc": ((0, 230, 230), "disc"),
    "tri": ((250, 250, 0), "tri"),
}
SIZE = (96, 96)


def _write(folder, stem, colour, shape, rng, height=120, width=160, jpeg_mask=True):
    grey = rng.integers(70, 160, (height, width, 1), dtype=np.uint8)
    image = np.repeat(grey, 3, axis=2)
    mask = np.zeros((height, width), np.uint8)
    if shape == "rect":
        mask[30:90, 40:110] = 255
    elif shape == "disc":
        cv2.circle(mask, (80, 60), 35, 255, -1)
    else:
        cv2.fillPoly(mask, [np.array([[30, 100], [130, 100], [80, 15]], np.int32)], 255)
    image[mask > 0] = colour
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "images" / f"{stem}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if jpeg_mask:
        # As the Weizmann horses: a grayscale JPEG 2.5x smaller than the photo.
        small = cv2.resize(mask, (width * 2 // 5, height * 2 // 5), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / "masks" / f"{stem}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 90])
    else:
        cv2.imwrite(str(folder / "masks" / f"{stem}.png"), mask)
    return mask > 0


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    # Exact PNG masks: a small JPEG mask is off by a pixel or two at its edges, which a zoom
    # makes several output pixels (that reading is tested on its own below).
    for stem, (colour, shape) in OBJECTS.items():
        _write(tmp_path, stem, colour, shape, rng, jpeg_mask=False)
    return tmp_path


def _config(**overrides):
    augment = AugmentConfig(size=SIZE, colour=None)
    return StaticClipConfig(**{"augment": augment, "min_object_pixels": 30, **overrides})


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


def _colour_of(frame, mask):
    colours = frame[_eroded(mask)].astype(int)
    return colours


def _check_clip(clip):
    """Every labelled object shows one object colour; the main object's colour is not in the
    background; boxes are mask boxes; parts lie in their object."""
    main = np.array(OBJECTS[clip.name.split("+")[0]][0])
    arrays = clip.to_arrays(4, 6)
    for t in range(clip.num_frames):
        frame = clip.frames[t]
        for k in range(1, clip.num_objects + 1):
            mask = clip.labels[t] == k
            colours = _colour_of(frame, mask)
            if len(colours):
                expected = main if k == 1 else colours[0]
                assert np.abs(colours - expected).max() <= 2, (clip.name, t, k)
                assert min(np.abs(expected - c).max() for c, _ in OBJECTS.values()) <= 2
            box = mask_box(mask)
            if box is None:
                assert not arrays["object_present"][t, k - 1]
                continue
            np.testing.assert_array_equal(arrays["object_boxes"][t, k - 1], box)
            parts = arrays["part_boxes"][t, k - 1][arrays["part_valid"][t, k - 1]]
            assert np.all(parts[:, :2] >= box[:2]) and np.all(parts[:, 2:] <= box[2:])
        background = _eroded(clip.labels[t] == 0)
        close = np.abs(frame.astype(int) - main).max(-1) <= 2
        assert not np.any(close & background), (clip.name, t)
    for k in range(1, clip.num_objects + 1):
        parts = split_mask(clip.labels[0] == k, PartsConfig(max_parts=6))
        np.testing.assert_array_equal(arrays["part_boxes"][0, k - 1], parts.boxes)


def test_pairs_are_matched_by_stem_png_preferred(folder, caplog):
    cv2.imwrite(str(folder / "masks" / "disc.jpg"), np.zeros((10, 10), np.uint8))
    cv2.imwrite(str(folder / "masks" / "rect.png"), np.zeros((10, 10), np.uint8))
    (folder / "masks" / "rect.png").rename(folder / "masks" / "rect.jpeg")
    cv2.imwrite(str(folder / "images" / "lonely.png"), np.zeros((10, 10, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        pairs = find_image_mask_pairs(folder)
    assert [(i.name, m.name) for i, m in pairs] == [
        ("disc.png", "disc.png"),
        ("rect.png", "rect.jpeg"),
        ("tri.png", "tri.png"),
    ]
    assert "1 image(s) without a mask" in caplog.text


def test_small_jpeg_mask_is_scaled_up_and_thresholded(tmp_path):
    truth = _write(tmp_path, "rect", (255, 0, 255), "rect", np.random.default_rng(1))
    image, labels, count = read_image_mask(
        tmp_path / "images" / "rect.png", tmp_path / "masks" / "rect.jpg"
    )
    assert count == 1 and labels.shape == truth.shape == image.shape[:2]
    assert set(np.unique(labels)) == {0, 1}
    assert np.abs(mask_box(labels == 1) - mask_box(truth)).max() <= 2
    assert (labels.astype(bool) != truth).mean() < 0.02


def test_palette_png_mask_keeps_object_ids(tmp_path):
    from vostrack.io.palette import write_label_png

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((40, 50, 3), np.uint8))
    labels = np.zeros((40, 50), np.uint8)
    labels[5:15, 5:15] = 3
    labels[20:30, 20:40] = 7
    labels[0, :] = VOID
    write_label_png(tmp_path / "masks" / "a.png", labels)
    _, read, count = read_image_mask(tmp_path / "images" / "a.png", tmp_path / "masks" / "a.png")
    assert count == 2
    np.testing.assert_array_equal(read == 1, labels == 3)
    np.testing.assert_array_equal(read == 2, labels == 7)
    np.testing.assert_array_equal(read == VOID, labels == VOID)


@pytest.mark.parametrize("deform", ["tps", "elastic"])
def test_warped_clips_keep_masks_boxes_and_frames_consistent(folder, deform):
    source = StaticClipSource(folder, _config(deform=deform, deform_sigma=0.04))
    for seed in range(6):
        clip = source.sample(np.random.default_rng(seed))
        assert clip.frames.shape == (3, *SIZE, 3) and clip.num_objects >= 1
        assert clip.source == source.name
        _check_clip(clip)
        # The clip moves: frames differ.
        assert not np.array_equal(clip.labels[0], clip.labels[2])


def test_pasted_second_object_is_labelled(folder):
    source = StaticClipSource(
        folder, _config(paste_object=1.0, paste_distractor=0.0, background_swap=0.0)
    )
    multi = 0
    for seed in range(6):
        clip = source.sample(np.random.default_rng(seed))
        _check_clip(clip)
        multi += clip.num_objects == 2
        if clip.num_objects == 2:
            # The second object comes from another image: another colour than the main one.
            main = np.array(OBJECTS[clip.name.split("+")[0]][0])
            second = _colour_of(clip.frames[0], clip.labels[0] == 2)
            if len(second):
                assert np.abs(second[0] - main).max() > 50
    assert multi >= 4


def test_pasted_distractor_is_unlabelled_and_occludes(folder):
    source = StaticClipSource(
        folder, _config(paste_object=0.0, paste_distractor=1.0, background_swap=0.0)
    )
    occluding = 0
    for seed in range(8):
        clip = source.sample(np.random.default_rng(seed))
        assert clip.num_objects == 1 and "+distractor" in clip.name
        _check_clip(clip)
        # Somewhere an object colour other than the main one lies on background pixels.
        main = np.array(OBJECTS[clip.name.split("+")[0]][0])
        others = [np.array(c) for c, _ in OBJECTS.values() if np.abs(np.array(c) - main).max()]
        for t in range(3):
            bg = _eroded(clip.labels[t] == 0)
            for colour in others:
                occluding += np.any(bg & (np.abs(clip.frames[t].astype(int) - colour).max(-1) <= 2))
    assert occluding > 0


def test_background_swap_moves_the_object_onto_another_image(folder):
    source = StaticClipSource(
        folder, _config(background_swap=1.0, paste_object=0.0, paste_distractor=0.0)
    )
    for seed in range(4):
        clip = source.sample(np.random.default_rng(seed))
        _check_clip(clip)


def test_same_generator_same_clip(folder):
    source = StaticClipSource(folder, StaticClipConfig(augment=AugmentConfig(size=SIZE)))
    a = source.sample(np.random.default_rng(42))
    b = source.sample(np.random.default_rng(42))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = source.sample(np.random.default_rng(43))
    assert not np.array_equal(a.frames, c.frames)


def test_deformation_fields_are_smooth_and_scale_with_strength():
    for make in (
        lambda s, r: tps_displacement((64, 80), r, sigma=s),
        lambda s, r: elastic_displacement((64, 80), r, alpha=s),
    ):
        assert np.abs(make(0.0, np.random.default_rng(0))).max() < 1e-6
        field = make(0.05, np.random.default_rng(0))
        assert field.shape == (64, 80, 2) and field.dtype == np.float32
        assert 0.3 < np.abs(field).max() < 0.05 * 64 * 8
        # Smooth: neighbouring pixels move alike.
        assert np.abs(np.diff(field, axis=0)).max() < 1.0
        assert np.abs(np.diff(field, axis=1)).max() < 1.0


def test_no_pairs_is_a_one_line_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(VostrackError) as info:
        StaticClipSource(tmp_path)
    assert "\n" not in str(info.value)


def test_an_ecssd_layout_tree_makes_clips(tmp_path):
    """ECSSD's layout: ``images/NNNN.jpg`` photos and ``masks/NNNN.png`` grayscale 0/255 masks
    of the same size; a 0/255 mask saved with a palette (as some tools write them) is the same
    one object, not void."""
    from PIL import Image

    rng = np.random.default_rng(3)
    truths = {}
    for index, (stem, (colour, shape)) in enumerate(OBJECTS.items(), start=1):
        truth = _write(tmp_path, stem, colour, shape, rng, jpeg_mask=False)
        name = f"{index:04d}"
        image = cv2.imread(str(tmp_path / "images" / f"{stem}.png"))
        cv2.imwrite(str(tmp_path / "images" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        (tmp_path / "images" / f"{stem}.png").unlink()
        (tmp_path / "masks" / f"{stem}.png").rename(tmp_path / "masks" / f"{name}.png")
        truths[name] = truth
    palette = Image.fromarray(np.where(truths["0003"], 255, 0).astype(np.uint8)).convert("P")
    palette.save(tmp_path / "masks" / "0003.png")
    assert Image.open(tmp_path / "masks" / "0003.png").mode == "P"
    pairs = find_image_mask_pairs(tmp_path)
    assert [(i.name, m.name) for i, m in pairs] == [
        (f"000{k}.jpg", f"000{k}.png") for k in (1, 2, 3)
    ]
    for image_path, mask_path in pairs:
        image, labels, count = read_image_mask(image_path, mask_path)
        assert count == 1 and image.shape[:2] == labels.shape
        np.testing.assert_array_equal(labels == 1, truths[image_path.stem])
    source = StaticClipSource(tmp_path, _config(num_frames=4))
    for seed in range(3):
        clip = source.sample(np.random.default_rng(seed))
        assert clip.frames.shape == (4, *SIZE, 3) and clip.num_objects >= 1
