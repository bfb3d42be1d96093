"""Frame sources: natural order, names, streaming, probing of damaged videos."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import squares_clip, write_frame_folder, write_video
from vostrack.errors import VostrackError
from vostrack.io.frames import natural_key, open_frames


def test_natural_key_orders_numbers_as_numbers():
    names = ["frame10.jpg", "frame2.jpg", "Frame1.jpg", "frame1b.jpg", "a.jpg"]
    assert sorted(names, key=natural_key) == [
        "a.jpg",
        "Frame1.jpg",
        "frame1b.jpg",
        "frame2.jpg",
        "frame10.jpg",
    ]


def test_folder_frames_come_in_natural_order(tmp_path):
    frames = np.stack([np.full((8, 10, 3), 10 * i, np.uint8) for i in range(12)])
    write_frame_folder(tmp_path, frames, [f"f{i}" for i in range(12)])
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_frames(tmp_path)
    assert source.kind == "frames" and source.num_frames == 12 and source.size == (8, 10)
    assert source.frame_names == tuple(f"f{i}" for i in range(12))
    assert [int(f[0, 0, 0]) for f in source] == [10 * i for i in range(12)]


def test_folder_with_a_frame_of_another_size(tmp_path):
    write_frame_folder(tmp_path, [np.zeros((8, 10, 3), np.uint8), np.zeros((9, 10, 3), np.uint8)])
    with pytest.raises(VostrackError, match="must have one size"):
        list(open_frames(tmp_path))


def test_folder_with_duplicate_names(tmp_path):
    write_frame_folder(tmp_path, [np.zeros((8, 10, 3), np.uint8)], ["a"], ext=".png")
    write_frame_folder(tmp_path, [np.zeros((8, 10, 3), np.uint8)], ["a"], ext=".jpg")
    with pytest.raises(VostrackError, match="two frames are named 'a'"):
        open_frames(tmp_path)


def test_video_frames_names_rate_and_content(tmp_path):
    frames, _ = squares_clip(num_frames=7)
    source = open_frames(write_video(tmp_path / "v.mp4", frames, fps=12.5))
    assert (source.kind, source.num_frames, source.fps, source.size) == ("video", 7, 12.5, (64, 96))
    assert source.frame_names[0] == "00000" and source.frame_names[-1] == "00006"
    decoded = np.stack(list(source))
    assert np.abs(decoded.astype(int) - frames).mean() < 3  # RGB order, right frames


def test_video_stream_can_stop_early_and_restart(tmp_path):
    frames, _ = squares_clip(num_frames=10)
    source = open_frames(write_video(tmp_path / "v.mp4", frames))
    first = next(iter(source))
    assert np.array_equal(first, next(iter(source)))


def test_single_image_is_not_a_video(tmp_path):
    write_frame_folder(tmp_path, [np.zeros((8, 10, 3), np.uint8)], ["only"])
    with pytest.raises(VostrackError, match="single image"):
        open_frames(tmp_path / "only.png")


def test_fps_override_for_folders(tmp_path):
    write_frame_folder(tmp_path, [np.zeros((8, 10, 3), np.uint8)])
    assert open_frames(tmp_path).fps == 24.0 and open_frames(tmp_path, fps=5).fps == 5.0


def test_every_frame_header_is_checked_when_a_folder_is_opened(tmp_path):
    """A frame of another size or an unreadable one is found before any work, not after
    frames were written."""
    frames = [np.zeros((8, 10, 3), np.uint8)] * 4
    write_frame_folder(tmp_path / "a", frames)
    write_frame_folder(tmp_path / "a", [np.zeros((9, 10, 3), np.uint8)], ["00009"])
    with pytest.raises(VostrackError, match="00009.png: frame is 10x9"):
        open_frames(tmp_path / "a")
    write_frame_folder(tmp_path / "b", frames)
    (tmp_path / "b" / "00002.png").write_bytes(b"junk")
    with pytest.raises(VostrackError, match="00002.png: not a readable image"):
        open_frames(tmp_path / "b")


def test_header_size_follows_the_exif_orientation(tmp_path):
    """OpenCV turns a JPEG by its EXIF orientation; the header check must agree with it."""
    from PIL import Image

    from vostrack.io.frames import image_size, read_image_rgb

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    assert image_size(tmp_path / "r.jpg") == read_image_rgb(tmp_path / "r.jpg").shape[:2] == (10, 8)


def _ffmpeg_video(path, *options):
    import subprocess

    import imageio_ffmpeg

    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=96x64:rate=10",
            "-frames:v",
            "12",
            *options,
            "-c:v",
            "libx264",
            str(path),
        ],
        check=True,
    )
    return path


def test_variable_frame_rate_is_detected(tmp_path):
    constant = _ffmpeg_video(tmp_path / "cfr.mp4")
    variable = _ffmpeg_video(
        tmp_path / "vfr.mp4", "-vf", "setpts='if(lt(N,6),N,12+2*N)/10/TB'", "-fps_mode", "vfr"
    )
    assert open_frames(constant).variable_rate is False
    source = open_frames(variable)
    assert source.variable_rate is True and source.num_frames == 12
    assert len(list(source)) == 12


def test_a_rotated_video_opens_upright_and_quietly(tmp_path):
    """imageio-ffmpeg's "frame size differs from the source" note is expected on a rotated
    video and must not reach the user's terminal."""
    import subprocess
    import sys

    import imageio_ffmpeg

    plain = _ffmpeg_video(tmp_path / "plain.mp4")
    video = tmp_path / "rot.mp4"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-display_rotation",
            "90",
            "-i",
            str(plain),
            "-c",
            "copy",
            str(video),
        ],
        check=True,
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from vostrack.io.frames import open_frames; "
            f"s = open_frames({str(video)!r}); print(s.width, s.height, len(list(s)))",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["64", "96", "12"]
    assert probe.stderr == "", probe.stderr
