"""`vostrack segment` end to end through the real CLI, video codecs and writers; the network is
the colour test double (tests/doubles.py)."""

from __future__ import annotations

import json
import os
import signal

import imageio_ffmpeg
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import squares_clip, write_frame_folder, write_video
from tests.doubles import ColourPropagator
from vostrack.cli import cli
from vostrack.io.palette import DAVIS_PALETTE, read_label_png, write_label_png
from vostrack.io.writers import render_overlay


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read_outputs(folder, names):
    return np.stack([read_label_png(folder / f"{n}.png") for n in names])


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def test_video_in_palette_pngs_overlay_and_summary_out(tmp_path, squares, double):
    video, frames, labels, mask = squares
    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    result = run("segment", video, "--mask", mask, "-o", out, "--overlay", overlay, "--quiet")
    assert result.exit_code == 0, result.output
    names = [f"{i:05d}" for i in range(len(frames))]
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in names]
    with Image.open(out / "00003.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image.getpalette()[:12]).reshape(4, 3), DAVIS_PALETTE[:4])
    masks = read_outputs(out, names)
    assert np.array_equal(masks[0], labels[0])
    for t in range(len(frames)):  # the double tracks flat squares exactly: frames are in order
        for k in (1, 2, 3):
            assert iou(masks[t] == k, labels[t] == k) > 0.9, (t, k)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["input"]["num_frames"] == len(frames) and summary["input"]["fps"] == 10.0
    assert summary["objects"] == [1, 2, 3]
    assert summary["model"]["name"] == "default"
    assert summary["frames_per_second"] > 0 and summary["runtime_s"] > 0
    for k in (1, 2, 3):
        assert summary["areas"][str(k)] == [int((m == k).sum()) for m in masks]

    reader = imageio_ffmpeg.read_frames(str(overlay))
    meta = next(reader)
    shown = [np.frombuffer(f, np.uint8).reshape(64, 96, 3) for f in reader]
    assert meta["fps"] == 10.0 and len(shown) == len(frames)
    for t in (0, 5, 11):  # what was encoded is the frame with its masks drawn in
        expected = render_overlay(frames[t], masks[t]).astype(float)
        assert np.abs(shown[t] - expected).mean() < 4
        assert np.abs(shown[t] - frames[t].astype(float))[masks[t] > 0].mean() > 30
    assert not list(tmp_path.glob(".*tmp*")) and not list(out.glob(".*tmp*"))


def test_frame_folder_natural_order_and_names(tmp_path, double):
    frames, labels = squares_clip(num_frames=11)
    names = [f"frame{i}" for i in range(11)]  # frame10 must come after frame9, not frame1
    write_frame_folder(tmp_path / "frames", frames, names, ext=".jpg")
    write_label_png(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    result = run("segment", tmp_path / "frames", "--mask", tmp_path / "mask.png", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(names)
    masks = read_outputs(out, names)
    for t in range(11):
        assert iou(masks[t] == 1, labels[t] == 1) > 0.8, t


def test_mask_on_later_frame_by_option_and_by_name(tmp_path, squares, double):
    video, frames, labels, _ = squares
    write_label_png(tmp_path / "m.png", labels[4])
    out = tmp_path / "a"
    result = run("segment", video, "--mask", tmp_path / "m.png", "--mask-frame", 4, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    masks = read_outputs(out, [f"{i:05d}" for i in range(12)])
    assert np.array_equal(masks[4], labels[4]) and iou(masks[11] == 2, labels[11] == 2) > 0.9
    for t in range(4):  # before the annotated frame: propagated backward from it
        assert all(iou(masks[t] == k, labels[t] == k) > 0.9 for k in (1, 2, 3)), t
    forward = tmp_path / "forward"
    result = run(
        "segment",
        video,
        "--mask",
        tmp_path / "m.png",
        "--mask-frame",
        4,
        "-o",
        forward,
        "-q",
        "--direction",
        "forward",
    )
    assert result.exit_code == 0, result.output
    ahead = read_outputs(forward, [f"{i:05d}" for i in range(12)])
    assert not ahead[:4].any() and np.array_equal(ahead[4:], masks[4:])  # nothing before it

    named = tmp_path / "masks" / "00004.png"
    named.parent.mkdir()
    write_label_png(named, labels[4])
    result = run("segment", video, "--mask", named, "-o", tmp_path / "b", "-q")
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_outputs(tmp_path / "b", [f"{i:05d}" for i in range(12)]), masks)


def test_objects_that_appear_later_get_their_own_masks(tmp_path, double):
    frames, labels = squares_clip(num_frames=12, appear_at={3: 6})
    video = write_video(tmp_path / "v.mp4", frames)
    first = labels[0].copy()
    later = np.where(labels[6] == 3, 3, 0).astype(np.uint8)  # holds only the new object
    write_label_png(tmp_path / "00000.png", first)
    write_label_png(tmp_path / "00006.png", later)
    out = tmp_path / "out"
    result = run(
        "segment",
        video,
        "--mask",
        tmp_path / "00000.png",
        "--mask",
        tmp_path / "00006.png",
        "-o",
        out,
        "-q",
    )
    assert result.exit_code == 0, result.output
    masks = read_outputs(out, [f"{i:05d}" for i in range(12)])
    assert not (masks[:6] == 3).any()
    for t in range(6, 12):
        for k in (1, 2, 3):
            assert iou(masks[t] == k, labels[t] == k) > 0.9, (t, k)
    summary = json.loads((out / "summary.json").read_text())
    assert [a["frame"] for a in summary["annotations"]] == [0, 6]
    assert (
        summary["areas"]["3"][:6] == [0] * 6 and summary["areas"]["3"][6] == (labels[6] == 3).sum()
    )


def test_mask_folder_places_each_mask_on_its_frame(tmp_path, double):
    frames, labels = squares_clip(num_frames=8, appear_at={2: 3})
    write_frame_folder(tmp_path / "frames", frames)
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    write_label_png(masks_dir / "00000.png", labels[0])
    write_label_png(masks_dir / "00003.png", np.where(labels[3] == 2, 2, 0).astype(np.uint8))
    out = tmp_path / "out"
    result = run("segment", tmp_path / "frames", "--mask", masks_dir, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    masks = read_outputs(out, [f"{i:05d}" for i in range(8)])
    assert (masks[2] != 2).all() and iou(masks[7] == 2, labels[7] == 2) > 0.9


def test_rgb_colour_mask_reports_ids(tmp_path, squares, double):
    video, frames, labels, _ = squares
    colour_mask = np.zeros(labels[0].shape + (3,), np.uint8)
    colour_mask[labels[0] == 1] = (255, 255, 0)
    colour_mask[labels[0] == 2] = (0, 255, 255)
    Image.fromarray(colour_mask).save(tmp_path / "colours.png")
    result = run("segment", video, "--mask", tmp_path / "colours.png", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "object 1 = colour #ffff00" in result.output
    assert "object 2 = colour #00ffff" in result.output
    assert np.array_equal(
        read_label_png(tmp_path / "out" / "00000.png"), np.where(labels[0] == 3, 0, labels[0])
    )


def test_mask_one_pixel_narrower_is_resized_with_a_warning(tmp_path, squares, double):
    video, frames, labels, _ = squares
    write_label_png(tmp_path / "narrow.png", labels[0][:, :-1])  # like judo's 853-px mask
    result = run("segment", video, "--mask", tmp_path / "narrow.png", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "resizing" in result.stderr
    assert read_label_png(tmp_path / "out" / "00000.png").shape == (64, 96)


def test_overwrite_replaces_and_removes_stale_frames(tmp_path, squares, double):
    video, frames, labels, mask = squares
    out = tmp_path / "out"
    assert run("segment", video, "--mask", mask, "-o", out, "-q").exit_code == 0
    before = (out / "00005.png").read_bytes()
    refused = run("segment", video, "--mask", mask, "-o", out, "-q")
    assert refused.exit_code != 0 and "--overwrite" in refused.stderr
    assert (out / "00005.png").read_bytes() == before
    result = run("segment", video, "--mask", mask, "-o", out, "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("how", ["keyboard", "sigint", "sigterm", "sigint-twice"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, how):
    frames, labels = squares_clip(num_frames=12, appear_at={3: 6})
    video = write_video(tmp_path / "v.mp4", frames)
    write_label_png(tmp_path / "00000.png", labels[0])
    write_label_png(tmp_path / "00006.png", np.where(labels[6] == 3, 3, 0).astype(np.uint8))
    args = [
        "segment",
        video,
        "--mask",
        tmp_path / "00000.png",
        "--mask",
        tmp_path / "00006.png",
        "-q",
        "--direction",
        "forward",  # frames in order from 0 (the backward pass has tests of its own)
        "--overlay",
    ]

    def use(propagator):
        monkeypatch.setattr(
            "vostrack.registry.load_propagator", lambda name, *_, **__: (propagator, {"name": name})
        )

    use(ColourPropagator())
    assert run(*args, tmp_path / "full.mp4", "-o", tmp_path / "full").exit_code == 0

    stopper = ColourPropagator(interrupt_at=9 if how == "keyboard" else None)
    if how != "keyboard":  # a real signal, arriving while a frame is being computed
        real_step = stopper.step
        sig = signal.SIGTERM if how == "sigterm" else signal.SIGINT

        def step(frame, reference, state):
            if stopper.steps == 8:
                os.kill(os.getpid(), sig)
                if how == "sigint-twice":  # the impatient user: the second one stops at once
                    os.kill(os.getpid(), sig)
            return real_step(frame, reference, state)

        stopper.step = step
    use(stopper)
    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    stopped = run(*args, overlay, "-o", out)
    assert stopped.exit_code == 130, stopped.output
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # restored
    assert "--resume" in stopped.stderr and len(stopped.stderr.strip().splitlines()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    done = summary["frames_done"]
    # One signal lets the frame in progress finish; a raised KeyboardInterrupt drops it.
    assert done == (10 if how in ("sigint", "sigterm") else 9), done
    assert len(list(out.glob("*.png"))) == done
    assert not overlay.exists() and not list(tmp_path.glob(".overlay*"))

    if how == "sigint":  # stopped again while the resumed run replays what was written
        replayer = ColourPropagator()
        real_encode = replayer.encode_reference

        def encode_reference(frame, labels, previous=None):  # frame 0's, replayed
            os.kill(os.getpid(), signal.SIGINT)
            return real_encode(frame, labels, previous)

        replayer.encode_reference = encode_reference
        use(replayer)
        earlier = summary
        again = run(*args, overlay, "-o", out, "--resume")
        assert again.exit_code == 130 and replayer.steps == 0, again.output
        assert f"after {done} of 12" in again.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["frames_done"] == done
        assert summary["areas"] == earlier["areas"]
        assert len(list(out.glob("*.png"))) == done and not overlay.exists()

    use(ColourPropagator())
    resumed = run(*args, overlay, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    names = [f"{i:05d}" for i in range(12)]
    assert np.array_equal(read_outputs(out, names), read_outputs(tmp_path / "full", names))
    summary = json.loads((out / "summary.json").read_text())
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed_from"] == done
    assert summary["areas"] == full["areas"]
    assert imageio_ffmpeg.count_frames_and_secs(str(overlay))[0] == 12

    again = run(*args, overlay, "-o", out, "--resume")
    assert again.exit_code != 0 and "complete" in again.stderr


def test_resume_refuses_a_different_job(tmp_path, squares, double):
    video, frames, labels, mask = squares
    out = tmp_path / "out"
    (out).mkdir()
    double.interrupt_at = 3
    assert run("segment", video, "--mask", mask, "-o", out, "-q").exit_code == 130
    other = tmp_path / "other.png"
    write_label_png(other, np.where(labels[0] == 1, 1, 0).astype(np.uint8))
    result = run("segment", video, "--mask", other, "-o", out, "-q", "--resume")
    assert result.exit_code != 0 and "another masks" in result.stderr


def test_overwrite_with_a_shorter_input_removes_the_earlier_runs_later_frames(tmp_path, double):
    frames, labels = squares_clip(num_frames=10)
    write_label_png(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    long = write_video(tmp_path / "long.mp4", frames)
    short = write_video(tmp_path / "short.mp4", frames[:6])
    assert run("segment", long, "--mask", tmp_path / "mask.png", "-o", out, "-q").exit_code == 0
    (out / "notes.png").write_bytes(b"the user's own file")  # not a frame of either run
    result = run("segment", short, "--mask", tmp_path / "mask.png", "-o", out, "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{i:05d}.png" for i in range(6)] + ["notes.png", "summary.json"]
    )
    # a later --resume must not take a stale frame as done either
    assert json.loads((out / "summary.json").read_text())["frame_names"] == [
        f"{i:05d}" for i in range(6)
    ]


def test_overwrite_deletes_only_plain_frame_names_of_the_earlier_summary(tmp_path, squares, double):
    """summary.json is a file anyone could edit: names with a path in them are not deleted."""
    video, frames, labels, mask = squares
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (out / "summary.json").write_text(json.dumps({"frame_names": ["../victim", "/etc/x", ".."]}))
    result = run("segment", video, "--mask", mask, "-o", out, "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == b"precious"


def test_a_variable_frame_rate_video_warns_about_the_overlay_timing(tmp_path, double):
    from tests.test_frames import _ffmpeg_video

    video = _ffmpeg_video(
        tmp_path / "vfr.mp4", "-vf", "setpts='if(lt(N,6),N,12+2*N)/10/TB'", "-fps_mode", "vfr"
    )
    labels = np.zeros((64, 96), np.uint8)
    labels[10:30, 10:30] = 1
    write_label_png(tmp_path / "m.png", labels)
    result = run(
        "segment",
        video,
        "--mask",
        tmp_path / "m.png",
        "-o",
        tmp_path / "out",
        "-q",
        "--overlay",
        tmp_path / "o.mp4",
    )
    assert result.exit_code == 0, result.output
    assert "variable frame rate" in result.stderr
    quiet = run("segment", video, "--mask", tmp_path / "m.png", "-o", tmp_path / "out2", "-q")
    assert "variable frame rate" not in quiet.stderr  # no overlay: nothing to say


def test_a_mask_with_void_pixels_is_segmented_with_a_warning(tmp_path, squares, double):
    video, frames, labels, _ = squares
    with_void = labels[0].copy()
    with_void[:2, :] = 255
    write_label_png(tmp_path / "void.png", with_void)
    result = run("segment", video, "--mask", tmp_path / "void.png", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert "void" in result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["objects"] == [1, 2, 3]  # not object 255


def test_the_readmes_command_makes_the_folders_it_names(tmp_path, squares, double):
    """`vostrack segment examples/shapes.mp4 --mask ... -o out/shapes --overlay out/shapes.mp4`
    on a fresh checkout, where out/ does not exist yet."""
    video, frames, labels, mask = squares
    out, overlay = tmp_path / "out" / "shapes", tmp_path / "out" / "shapes.mp4"
    result = run("segment", video, "--mask", mask, "-o", out, "--overlay", overlay, "-q")
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == len(frames)
    assert imageio_ffmpeg.count_frames_and_secs(str(overlay))[0] == len(frames)
    deeper = tmp_path / "videos" / "2026" / "o.mp4"  # the overlay's own folders, too
    result = run("segment", video, "--mask", mask, "-o", tmp_path / "o2", "--overlay", deeper, "-q")
    assert result.exit_code == 0, result.output
    assert deeper.is_file()
