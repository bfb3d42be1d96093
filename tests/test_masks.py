"""Mask formats, placement on frames and merging."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_frame_folder
from vostrack.errors import VostrackError
from vostrack.io.frames import open_frames
from vostrack.io.masks import MaskReader, load_annotations

LABELS = np.zeros((6, 8), np.uint8)
LABELS[1:3, 1:4] = 1
LABELS[3:5, 4:7] = 2


def save_palette(path, labels, palette):
    image = Image.fromarray(labels, mode="P")
    image.putpalette(palette)
    image.save(path)


def test_palette_png_uses_indices_whatever_the_colours(tmp_path):
    red_first = [255, 0, 0] + [7, 7, 7] * 255  # like the AOT demo: index 0 is red
    save_palette(tmp_path / "m.png", LABELS * 3, red_first)
    assert np.array_equal(MaskReader().read(tmp_path / "m.png"), LABELS * 3)


def test_grayscale_255_is_one_object_and_small_values_are_ids(tmp_path):
    Image.fromarray((LABELS > 0).astype(np.uint8) * 255, mode="L").save(tmp_path / "a.png")
    Image.fromarray(LABELS, mode="L").save(tmp_path / "b.png")
    reader = MaskReader()
    assert np.array_equal(reader.read(tmp_path / "a.png"), (LABELS > 0).astype(np.uint8))
    assert np.array_equal(reader.read(tmp_path / "b.png"), LABELS)


def test_lossy_grayscale_is_thresholded_with_a_warning(tmp_path, caplog):
    gray = np.clip(np.arange(6 * 8).reshape(6, 8) * 6, 0, 255).astype(np.uint8)
    gray = cv2.resize(gray, (80, 60), interpolation=cv2.INTER_LINEAR)
    Image.fromarray(gray, mode="L").save(tmp_path / "soft.png")
    with caplog.at_level(logging.WARNING):
        labels = MaskReader().read(tmp_path / "soft.png")
    assert set(np.unique(labels)) == {0, 1} and np.array_equal(
        labels, (gray >= 128).astype(np.uint8)
    )
    assert "one object" in caplog.text


def test_rgb_colours_get_ids_in_order_and_keep_them_across_files(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[LABELS == 1] = (0, 0, 255)
    rgb[LABELS == 2] = (255, 128, 0)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    later = np.zeros_like(rgb)
    later[0, 0] = (10, 200, 10)
    later[5, 7] = (255, 128, 0)
    Image.fromarray(later).save(tmp_path / "b.png")
    reader = MaskReader()
    assert np.array_equal(reader.read(tmp_path / "a.png"), LABELS)
    second = reader.read(tmp_path / "b.png")
    assert second[5, 7] == 2 and second[0, 0] == 3
    assert reader.colour_ids == {(0, 0, 255): 1, (255, 128, 0): 2, (10, 200, 10): 3}


def test_gray_looking_rgb_and_transparent_pixels(tmp_path):
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[LABELS > 0] = (255, 255, 255, 255)
    rgba[0, 0] = (255, 0, 0, 0)  # transparent: background whatever its colour
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert np.array_equal(MaskReader().read(tmp_path / "a.png"), (LABELS > 0).astype(np.uint8))


def test_anti_aliased_colour_mask_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    with pytest.raises(VostrackError, match="one flat colour per object"):
        MaskReader().read(tmp_path / "n.png")


@pytest.fixture
def folder(tmp_path):
    write_frame_folder(tmp_path / "frames", [np.zeros((6, 8, 3), np.uint8)] * 5)
    return open_frames(tmp_path / "frames")


def write_mask(path, labels):
    save_palette(path, labels, [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    return path


def test_placement_by_option_by_name_and_default(tmp_path, folder):
    a = write_mask(tmp_path / "first.png", LABELS)
    b = write_mask(tmp_path / "00003.png", np.where(LABELS == 2, 3, 0).astype(np.uint8))
    c = write_mask(tmp_path / "4.png", np.where(LABELS == 1, 4, 0).astype(np.uint8))
    assert [x.frame for x in load_annotations([a, b, c], [], folder)] == [0, 3, 4]
    assert [x.frame for x in load_annotations([b], [1], folder)] == [1]
    with pytest.raises(VostrackError, match="one per mask"):
        load_annotations([a, b], [1], folder)


def test_masks_of_one_frame_merge_when_consistent(tmp_path, folder):
    a = write_mask(tmp_path / "a.png", np.where(LABELS == 1, 1, 0).astype(np.uint8))
    b = write_mask(tmp_path / "b.png", np.where(LABELS == 2, 2, 0).astype(np.uint8))
    (merged,) = load_annotations([a, b], [0, 0], folder)
    assert np.array_equal(merged.labels, LABELS) and merged.object_ids == [1, 2]
    same = write_mask(tmp_path / "c.png", LABELS)
    assert np.array_equal(load_annotations([same, a], [0, 0], folder)[0].labels, LABELS)


def test_masks_of_one_frame_that_disagree(tmp_path, folder):
    a = write_mask(tmp_path / "a.png", LABELS)
    moved = np.roll(np.where(LABELS == 1, 1, 0), 1, axis=0).astype(np.uint8)
    b = write_mask(tmp_path / "b.png", moved)  # object 1 elsewhere, no pixel clash with 2
    with pytest.raises(VostrackError, match="disagree .object 1 differs"):
        load_annotations([a, b], [0, 0], folder)


def test_size_tolerance(tmp_path, folder, caplog):
    near = write_mask(
        tmp_path / "near.png", cv2.resize(LABELS, (7, 5), interpolation=cv2.INTER_NEAREST)
    )
    with caplog.at_level(logging.WARNING):
        (ann,) = load_annotations([near], [], folder)
    assert ann.labels.shape == (6, 8) and "resizing" in caplog.text
    far = write_mask(tmp_path / "far.png", np.ones((6, 11), np.uint8))
    with pytest.raises(VostrackError, match="11x6 but the frames are 8x6"):
        load_annotations([far], [], folder)


def test_255_is_void_in_an_id_mask_and_a_binary_mask_stays_one_object(tmp_path, caplog):
    """One rule with `validate` (DAVIS): 255 is void, read as background with a warning, unless
    it is the mask's only label (a 0/255 mask: one object)."""
    from vostrack.io.palette import DAVIS_PALETTE

    with_void = LABELS.copy()
    with_void[0, :] = 255
    save_palette(tmp_path / "p.png", with_void, DAVIS_PALETTE.reshape(-1).tolist())
    Image.fromarray(with_void, mode="L").save(tmp_path / "g.png")
    colours = DAVIS_PALETTE[with_void]
    Image.fromarray(colours).save(tmp_path / "rgb.png")
    reader = MaskReader()
    with caplog.at_level(logging.WARNING, logger="vostrack"):
        for name in ("p.png", "g.png"):
            assert np.array_equal(reader.read(tmp_path / name), LABELS), name
        rgb = reader.read(tmp_path / "rgb.png")
    assert np.array_equal(rgb > 0, LABELS > 0) and 255 not in rgb
    assert sum("void" in r.getMessage() for r in caplog.records) == 3
    binary = (LABELS > 0).astype(np.uint8) * 255
    save_palette(tmp_path / "b.png", binary, DAVIS_PALETTE.reshape(-1).tolist())
    Image.fromarray(binary, mode="L").save(tmp_path / "bl.png")
    for name in ("b.png", "bl.png"):
        assert np.array_equal(MaskReader().read(tmp_path / name), (LABELS > 0).astype(np.uint8))


def test_sixteen_bit_masks(tmp_path):
    binary = (LABELS > 0).astype(np.uint16) * 65535
    Image.fromarray(binary).save(tmp_path / "b16.png")
    assert np.array_equal(MaskReader().read(tmp_path / "b16.png"), (LABELS > 0).astype(np.uint8))
    Image.fromarray(LABELS.astype(np.uint16)).save(tmp_path / "ids16.png")
    assert np.array_equal(MaskReader().read(tmp_path / "ids16.png"), LABELS)
    big = LABELS.astype(np.uint16) * 300
    Image.fromarray(big).save(tmp_path / "big16.png")
    with pytest.raises(VostrackError, match="above 254"):
        MaskReader().read(tmp_path / "big16.png")
