"""Bad input: one line on stderr, a non-zero exit, no traceback, nothing overwritten."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import fails, squares_clip, write_frame_folder, write_video
from vostrack.cli import cli
from vostrack.io.palette import write_label_png


@pytest.fixture
def clip(tmp_path):
    frames, labels = squares_clip(num_frames=6)
    video = write_video(tmp_path / "v.mp4", frames)
    mask = tmp_path / "mask.png"
    write_label_png(mask, labels[0])
    return video, mask, labels


def test_input_missing(tmp_path, clip):
    fails(
        ["segment", tmp_path / "nope.mp4", "--mask", clip[1], "-o", tmp_path / "o"],
        "input not found",
    )


def test_unreadable_video(tmp_path, clip):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video\x00" * 100)
    fails(["segment", junk, "--mask", clip[1], "-o", tmp_path / "o"], "not a readable video")


def test_truncated_video(tmp_path, clip):
    frames, _ = squares_clip(num_frames=30)
    whole = tmp_path / "whole.mp4"
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(whole),
        (96, 64),
        fps=10,
        codec="libx264",
        macro_block_size=1,
        ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])  # index intact, frames missing
    fails(["segment", cut, "--mask", clip[1], "-o", tmp_path / "o"], "truncated")
    plain = clip[0].read_bytes()  # written without faststart: the index is at the end
    cut.write_bytes(plain[: len(plain) // 2])
    fails(["segment", cut, "--mask", clip[1], "-o", tmp_path / "o"], "not a readable video")
    assert not (tmp_path / "o").exists()


def test_empty_frame_folder(tmp_path, clip):
    (tmp_path / "empty").mkdir()
    fails(["segment", tmp_path / "empty", "--mask", clip[1], "-o", tmp_path / "o"], "no frames")


def test_mask_missing(tmp_path, clip):
    fails(
        ["segment", clip[0], "--mask", tmp_path / "nomask.png", "-o", tmp_path / "o"],
        "mask not found",
    )


def test_mask_not_an_image(tmp_path, clip):
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a png")
    fails(["segment", clip[0], "--mask", bad, "-o", tmp_path / "o"], "not a readable image")


def test_mask_with_no_object(tmp_path, clip):
    empty = tmp_path / "empty.png"
    write_label_png(empty, np.zeros((64, 96), np.uint8))
    fails(["segment", clip[0], "--mask", empty, "-o", tmp_path / "o"], "holds no object")


def test_mask_size_off_by_more_than_two_pixels(tmp_path, clip):
    small = tmp_path / "small.png"
    write_label_png(small, clip[2][0][:, :-3])
    fails(["segment", clip[0], "--mask", small, "-o", tmp_path / "o"], "93x64", "96x64")


def test_mask_frame_out_of_range(tmp_path, clip):
    fails(
        ["segment", clip[0], "--mask", clip[1], "--mask-frame", 6, "-o", tmp_path / "o"],
        "frame 6",
        "6 frames",
    )


def test_two_masks_for_one_frame_that_disagree(tmp_path, clip):
    other = tmp_path / "other.png"
    write_label_png(other, np.where(clip[2][0] == 1, 2, 0).astype(np.uint8))  # object 1 as 2
    fails(
        [
            "segment",
            clip[0],
            "--mask",
            clip[1],
            "--mask",
            other,
            "--mask-frame",
            0,
            "--mask-frame",
            0,
            "-o",
            tmp_path / "o",
        ],
        "disagree",
    )


def test_output_not_writable(tmp_path, clip, double):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    fails(["segment", clip[0], "--mask", clip[1], "-o", blocker / "out"], "is a file, not a folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        fails(["segment", clip[0], "--mask", clip[1], "-o", locked / "out"], "not writable")
    fails(["segment", clip[0], "--mask", clip[1], "-o", blocker], "not a folder")
    assert blocker.read_text() == "a file where a folder should be"


def test_output_exists_without_overwrite(tmp_path, clip, double):
    out = tmp_path / "out"
    out.mkdir()
    write_label_png(out / "00002.png", np.ones((64, 96), np.uint8))
    before = (out / "00002.png").read_bytes()
    fails(["segment", clip[0], "--mask", clip[1], "-o", out], "--overwrite")
    assert (out / "00002.png").read_bytes() == before and sorted(out.iterdir()) == [
        out / "00002.png"
    ]
    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(b"precious")
    fails(
        ["segment", clip[0], "--mask", clip[1], "-o", tmp_path / "new", "--overlay", overlay],
        "already exists",
    )
    assert overlay.read_bytes() == b"precious"


def test_resume_with_nothing_to_resume(tmp_path, clip, double):
    fails(
        ["segment", clip[0], "--mask", clip[1], "-o", tmp_path / "o", "--resume"],
        "nothing to resume",
    )
    assert not (tmp_path / "o").exists()


def test_unknown_model(tmp_path, clip):
    fails(
        ["segment", clip[0], "--mask", clip[1], "-o", tmp_path / "o", "--model", "no-such"],
        "unknown model 'no-such'",
    )


def test_validate_on_a_tree_with_no_sequences(tmp_path):
    (tmp_path / "tree").mkdir()
    fails(["validate", "--data", tmp_path / "tree", "--results", tmp_path], "no DAVIS sequences")


def test_validate_results_with_missing_frames(tmp_path):
    frames, labels = squares_clip(num_frames=6)
    tree = tmp_path / "tree"
    write_frame_folder(tree / "JPEGImages" / "480p" / "sq", frames, ext=".jpg")
    (tree / "Annotations" / "480p" / "sq").mkdir(parents=True)
    for t in range(6):
        write_label_png(
            tree / "Annotations" / "480p" / "sq" / f"{t:05d}.png",
            (labels[t] > 0).astype(np.uint8) * 255,
        )
    results = tmp_path / "results" / "sq"
    results.mkdir(parents=True)
    for t in (0, 1, 2):
        write_label_png(results / f"{t:05d}.png", (labels[t] > 0).astype(np.uint8))
    fails(["validate", "--data", tree, "--results", tmp_path / "results"], "sq", "00003")


def test_installed_command_gives_one_line_and_exit_code(tmp_path):
    """The console script itself (not CliRunner): same one-line contract."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vostrack",
            "segment",
            str(tmp_path / "x.mp4"),
            "--mask",
            "m.png",
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: input not found: {tmp_path / 'x.mp4'}"
    assert "Traceback" not in proc.stderr


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("segment", "validate", "train", "validate-backbone", "export"):
        assert command in result.output


def test_train_with_a_bad_config(tmp_path):
    fails(
        ["train", "--config", tmp_path / "missing.json", "--out", tmp_path / "run"],
        "cannot read config",
    )
    cases = [
        ("bad.json", "{not json", "not valid JSON"),
        ("odd.json", '{"stepz": 3}', "unknown training option(s): stepz"),
        (
            "warm.json",
            '{"steps": 10, "warmup_steps": 50}',
            "warmup_steps (50) must lie in 0..steps (10)",
        ),
        (
            "untracked.json",
            '{"model": {"name": "m", "parts": {"track": false}}}',
            "export with --no-part-tracker",
        ),
        (
            "share.json",
            '{"model": {"name": "m", "matching": {"reference_share": 2}}}',
            "matching.reference_share must lie in 0..1",
        ),
        (
            "topk.json",
            '{"model": {"name": "m", "matching": {"top_k": 0}}}',
            "matching.top_k must be a whole number >= 1, got 0",
        ),
        (
            "parts.json",
            '{"model": {"name": "m", "parts": {"max_parts": 2.5}}}',
            "parts.max_parts must be a whole number >= 1, got 2.5",
        ),
        (
            "pad.json",
            '{"model": {"name": "m", "pad_multiple": 16, "parts": {"max_parts": 2}}}',
            "pad_multiple must be a positive multiple of 32",
        ),
        # YAML configs are read as such: their keys reach the same validation
        ("odd.yaml", "steps: 10\nwarmup_stepz: 5\n", "unknown training option(s): warmup_stepz"),
        ("bad.yaml", "steps: [10\n", "not valid YAML"),
        ("list.yaml", "- steps\n", "must hold a mapping"),
    ]
    for name, text, message in cases:
        (tmp_path / name).write_text(text)
        fails(["train", "--config", tmp_path / name, "--out", tmp_path / "run"], message)
    assert not (tmp_path / "run").exists()


def test_native_logs_are_silenced_while_python_stderr_still_shows():
    """What `vostrack train` runs under: TensorFlow's C++ logs (written straight to file
    descriptor 2) vanish, the progress bar and errors (Python's stderr) do not."""
    script = (
        "import os, sys\n"
        "from vostrack.inference.quiet import native_logs_silenced\n"
        "with native_logs_silenced():\n"
        "    os.write(2, b'I0000 cuda_platform.cc:52] failed call to cuInit\\n')\n"
        "    print('progress 50%', file=sys.stderr)\n"
        "os.write(2, b'after\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "progress 50%\nafter\n"


def test_train_runs_with_native_logs_silenced(tmp_path, monkeypatch):
    import contextlib

    import vostrack.inference.quiet as quiet

    entered = []

    @contextlib.contextmanager
    def record(enabled=True):
        entered.append(enabled)
        yield

    monkeypatch.setattr(quiet, "native_logs_silenced", record)
    fails(["train", "--out", tmp_path / "none", "--resume"], "nothing to resume")
    assert entered == [True]


def test_validate_csv_is_replaced_only_with_overwrite(tmp_path):
    from tests.test_cli_validate import make_tree

    labels = make_tree(tmp_path / "tree", num_frames=3)
    for seq, objects in (("one", (1,)), ("two", (1, 2))):
        (tmp_path / "res" / seq).mkdir(parents=True)
        for t in range(3):  # perfect results
            write_label_png(
                tmp_path / "res" / seq / f"{t:05d}.png",
                np.where(np.isin(labels[t], objects), labels[t], 0).astype(np.uint8),
            )
    csv = tmp_path / "scores.csv"
    csv.write_text("precious")
    args = ["validate", "--data", tmp_path / "tree", "--results", tmp_path / "res", "--csv", csv]
    fails(args, "already exists")
    assert csv.read_text() == "precious"
    result = CliRunner().invoke(cli, [str(a) for a in [*args, "--overwrite"]])
    assert result.exit_code == 0, result.output
    assert "ALL" in csv.read_text()
