"""Result writers: palette PNGs, overlay video, areas, the background thread."""

from __future__ import annotations

import os
import stat

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from vostrack.errors import VostrackError
from vostrack.io.palette import DAVIS_PALETTE, read_label_png, write_label_png
from vostrack.io.writers import FrameResult, OverlayVideo, ResultWriter, render_overlay


def test_davis_palette_first_colours():
    assert DAVIS_PALETTE[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in DAVIS_PALETTE}) == 256


def test_palette_png_round_trip_and_plain_permissions(tmp_path):
    labels = np.arange(48, dtype=np.uint8).reshape(6, 8)
    write_label_png(tmp_path / "x.png", labels)
    assert np.array_equal(read_label_png(tmp_path / "x.png"), labels)
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == "P"
    mode = stat.S_IMODE(os.stat(tmp_path / "x.png").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary left behind


def test_overlay_blends_inside_and_draws_contours():
    frame = np.full((20, 20, 3), 100, np.uint8)
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 2
    out = render_overlay(frame, labels)
    assert out[10, 10].tolist() == [50, 114, 50]  # half grey 100, half palette green (0,128,0)
    assert out[5, 10].tolist() == [0, 128, 0]  # contour in the object's colour
    assert out[0, 0].tolist() == [100, 100, 100]
    assert np.array_equal(render_overlay(frame, np.zeros_like(labels)), frame)


def test_overlay_video_with_odd_size_and_atomic_rename(tmp_path):
    video = OverlayVideo(tmp_path / "o.mp4", width=853, height=479, fps=7)
    for i in range(5):
        video.append(np.full((479, 853, 3), 40 * i, np.uint8))
    assert not (tmp_path / "o.mp4").exists()  # only the temporary exists until finish()
    video.finish()
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "o.mp4"))[0] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["o.mp4"]


def test_result_writer_areas_with_objects_appearing_later(tmp_path):
    writer = ResultWriter(tmp_path, ["a", "b", "c"], overlay=None)
    first = np.zeros((4, 4), np.uint8)
    first[0, :2] = 1
    later = first.copy()
    later[3, :] = 5
    for i, labels in enumerate([first, later, later]):
        writer.put(FrameResult(i, labels))
    writer.close()
    assert writer.areas == {1: [2, 2, 2], 5: [0, 4, 4]} and writer.frames_written == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]


def test_writer_errors_reach_the_caller_as_one_line(tmp_path):
    writer = ResultWriter(tmp_path / "missing", ["a", "b"], overlay=None)
    writer.put(FrameResult(0, np.zeros((4, 4), np.uint8)))
    with pytest.raises(VostrackError, match=r"cannot write .*missing/a\.png: No such file"):
        for _ in range(50):  # the failure surfaces on a later put or on close
            writer.put(FrameResult(1, np.zeros((4, 4), np.uint8)))
        writer.close()


def test_label_png_reader_takes_grayscale_with_alpha(tmp_path):
    gray = np.zeros((4, 6), np.uint8)
    gray[1:3, 2:5] = 255
    Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), mode="LA").save(
        tmp_path / "a.png"
    )
    assert np.array_equal(read_label_png(tmp_path / "a.png"), gray)
    Image.fromarray(gray > 0).save(tmp_path / "b.png")  # 1-bit
    assert np.array_equal(read_label_png(tmp_path / "b.png"), gray)
