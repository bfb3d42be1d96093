"""A `segment` process killed (SIGKILL: no handler runs) at random frames, resumed each time,
ends with every frame a valid PNG equal to an uninterrupted run's, a complete summary and no
temporary file left: what makes `--resume` trustworthy is that a kill at any point is safe."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from tests.conftest import squares_clip, write_video
from vostrack.io.palette import read_label_png, write_label_png

REPO = Path(__file__).resolve().parents[1]
FRAMES = 40


def segment(args, delay: float = 0.0) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "tests.cli_driver",
        "--delay",
        str(delay),
        "--",
        "segment",
        *map(str, args),
        "-q",
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def pngs(folder: Path) -> list[str]:
    """The PNGs under final names: a killed run may leave a hidden temp file (``.NAME.*.tmp.png``,
    which pathlib's glob matches), cleared by the resume; it is not a frame."""
    return sorted(p.name for p in folder.glob("*.png") if not p.name.startswith("."))


def kill_after(proc: subprocess.Popen, folder: Path, frames: int, timeout: float = 60) -> None:
    """SIGKILL ``proc`` once ``folder`` holds ``frames`` PNGs (or when it has finished)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if folder.is_dir() and len(pngs(folder)) >= frames:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def test_sigkill_at_random_frames_then_resume(tmp_path):
    frames, labels = squares_clip(num_frames=FRAMES, width=128)
    video = write_video(tmp_path / "v.mp4", frames)
    write_label_png(tmp_path / "mask.png", labels[0])
    common = [video, "--mask", tmp_path / "mask.png"]
    reference = segment([*common, "-o", tmp_path / "ref"])
    assert reference.wait(timeout=120) == 0, reference.communicate()[1]

    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    rng = random.Random(20261204)
    kills = sorted(rng.sample(range(2, FRAMES - 2), 4))
    first = True
    for at in kills:
        proc = segment(
            [*common, "-o", out, "--overlay", overlay, *([] if first else ["--resume"])], delay=0.02
        )
        kill_after(proc, out, at)
        first = False
        assert proc.returncode == -signal.SIGKILL
        assert not overlay.exists()  # a killed run never leaves a partial overlay in place
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "running"
        for name in pngs(out):  # whatever is under a final name is complete
            read_label_png(out / name)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.cli_driver",
            "--",
            "segment",
            *map(str, common),
            "-o",
            str(out),
            "--overlay",
            str(overlay),
            "-q",
            "--resume",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names = [f"{i:05d}.png" for i in range(FRAMES)]
    assert pngs(out) == names
    for name in names:
        assert np.array_equal(read_label_png(out / name), read_label_png(tmp_path / "ref" / name))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["frames_done"] == FRAMES
    reference_summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["areas"] == reference_summary["areas"]
    assert imageio_ffmpeg.count_frames_and_secs(str(overlay))[0] == FRAMES
    time.sleep(0.5)  # an orphaned ffmpeg of a killed run may still be closing its file
    leftovers = [p.name for p in (*out.iterdir(), *tmp_path.iterdir()) if p.name.startswith(".")]
    assert leftovers == [], leftovers
    assert sorted(os.listdir(out)) == sorted([*names, "summary.json"])
