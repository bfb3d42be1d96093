"""A full disk, wherever it strikes (a frame's PNG, the overlay video, the summary), stops
`segment` with exit 2 and one line naming the full file system; no file under a final name is
incomplete; summary.json says `failed` and how many frames are done; `--resume` finishes the job
once space is freed.

The disk really fills: each scenario runs in a private mount namespace on small tmpfs file
systems (no root needed where user namespaces are allowed), and the process that fills it is a
separate writer, as in life. The same paths are also driven by injected ENOSPC errors, which
need no namespace.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import squares_clip, write_video
from vostrack.cli import cli
from vostrack.io.palette import read_label_png, write_label_png

REPO = Path(__file__).resolve().parents[1]
FRAMES = 12
NAMES = [f"{i:05d}.png" for i in range(FRAMES)]


def _namespace_command() -> list[str] | None:
    """How to enter a private mount namespace here, or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return None
    for cmd in (["unshare", "--mount", "--propagation", "private"], ["unshare", "-r", "-m"]):
        if subprocess.run([*cmd, "true"], capture_output=True).returncode == 0:
            return cmd
    return None


def _driver(*args, fill: Path | None = None, fill_at: int = 1) -> subprocess.CompletedProcess:
    extra = ["--fill", str(fill), "--fill-at", str(fill_at)] if fill else []
    return subprocess.run(
        [sys.executable, "-m", "tests.cli_driver", *extra, "--", "segment", *map(str, args), "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _no_temporaries(*folders: Path) -> None:
    for folder in folders:
        hidden = [p.name for p in folder.iterdir() if p.name.startswith(".")]
        assert hidden == [], hidden


def _complete_pngs(out: Path) -> list[str]:
    names = sorted(p.name for p in out.glob("*.png"))
    for name in names:
        read_label_png(out / name)  # each is a whole, valid PNG
    return names


def scenarios(root: str) -> None:
    """Run inside the mount namespace: mount small file systems and fill them."""
    root = Path(root)
    frames, labels = squares_clip(num_frames=FRAMES)
    video = write_video(root / "v.mp4", frames)
    write_label_png(root / "mask.png", labels[0])
    common = [video, "--mask", root / "mask.png"]
    assert _driver(*common, "-o", root / "ref").returncode == 0
    reference = {n: read_label_png(root / "ref" / n) for n in NAMES}
    disks = {}
    for name in ("png", "overlay", "start"):
        disks[name] = root / name
        disks[name].mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disks[name])], check=True
        )

    # 1. the disk fills while frames are written: a PNG cannot be written
    out, filler = disks["png"] / "out", disks["png"] / "filler"
    failed = _driver(*common, "-o", out, fill=filler, fill_at=5)
    _one_line(failed, "cannot write", f"no space left on the file system at {disks['png']}")
    summary = json.loads((out / "summary.json").read_text())
    done = _complete_pngs(out)
    assert summary["status"] == "failed" and "no space left" in summary["error"]
    assert summary["frames_done"] == len(done) and len(done) < FRAMES
    assert done == NAMES[: len(done)]
    _no_temporaries(out)
    filler.unlink()
    resumed = _driver(*common, "-o", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _complete_pngs(out) == NAMES
    assert all(np.array_equal(read_label_png(out / n), reference[n]) for n in NAMES)
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"

    # 2. the overlay's disk fills: ffmpeg fails, and no truncated video takes the final name
    out, overlay, filler = root / "out2", disks["overlay"] / "ov.mp4", disks["overlay"] / "filler"
    failed = _driver(*common, "-o", out, "--overlay", overlay, fill=filler, fill_at=3)
    _one_line(
        failed,
        f"cannot write the overlay video {overlay}",
        f"no space left on the file system at {disks['overlay']}",
    )
    assert not overlay.exists()
    _no_temporaries(disks["overlay"], out)
    summary = json.loads((out / "summary.json").read_text())
    done = _complete_pngs(out)
    assert summary["status"] == "failed" and summary["frames_done"] == len(done)
    assert done == NAMES[: len(done)]
    filler.unlink()
    resumed = _driver(*common, "-o", out, "--overlay", overlay, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert imageio_ffmpeg.count_frames_and_secs(str(overlay))[0] == FRAMES
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"

    # 3. the disk is full before the run starts: refused before any work, nothing left behind
    from tests.cli_driver import fill_disk

    out, filler = disks["start"] / "out", disks["start"] / "filler"
    fill_disk(str(filler))
    failed = _driver(*common, "-o", out)
    _one_line(failed, f"no space left on the file system at {disks['start']}")
    assert not out.exists()
    filler.unlink()
    again = _driver(*common, "-o", out)
    assert again.returncode == 0, again.stderr
    assert _complete_pngs(out) == NAMES
    print("all disk-full scenarios passed")


def test_a_really_full_disk_at_each_write(tmp_path):
    namespace = _namespace_command()
    if namespace is None:
        pytest.skip(
            "no private mount namespace here (unshare): the injected-error tests "
            "below cover the same paths"
        )
    script = f"from tests.test_disk_full import scenarios; scenarios({str(tmp_path)!r})"
    proc = subprocess.run(
        [*namespace, sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert "all disk-full scenarios passed" in proc.stdout


# ------------------------------------------------------------- injected errors (anywhere)
def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fail_when(monkeypatch, module, name: str, when):
    """Make ``module.name(path, data)`` fail with ENOSPC when ``when(calls so far, data)``;
    returns the real function."""
    real = getattr(module, name)
    calls = []

    def failing(path, data):
        calls.append(path)
        if when(len(calls), data):
            raise _enospc(path)
        real(path, data)

    monkeypatch.setattr(module, name, failing)
    return real


@pytest.fixture
def clip(tmp_path):
    frames, labels = squares_clip(num_frames=FRAMES)
    video = write_video(tmp_path / "v.mp4", frames)
    write_label_png(tmp_path / "mask.png", labels[0])
    return video, tmp_path / "mask.png"


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _fails_one_line(result, *needles):
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_injected_enospc_on_a_png(tmp_path, clip, double, monkeypatch):
    import vostrack.io.writers as writers

    real = _fail_when(monkeypatch, writers, "write_label_png", lambda calls, data: calls == 6)
    out = tmp_path / "out"
    _fails_one_line(
        _run("segment", clip[0], "--mask", clip[1], "-o", out, "-q"),
        "00005.png",
        "no space left on the file system at",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["frames_done"] == 5
    assert _complete_pngs(out) == NAMES[:5]
    _no_temporaries(out)
    monkeypatch.setattr(writers, "write_label_png", real)
    assert _run("segment", clip[0], "--mask", clip[1], "-o", out, "-q", "--resume").exit_code == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("which", ["first", "last"])
def test_injected_enospc_on_the_summary(tmp_path, clip, double, monkeypatch, which):
    import vostrack.inference.pipeline as pipeline

    real = _fail_when(
        monkeypatch,
        pipeline,
        "write_json",
        lambda calls, data: calls == 1 if which == "first" else data.get("status") == "complete",
    )
    out = tmp_path / "out"
    _fails_one_line(
        _run("segment", clip[0], "--mask", clip[1], "-o", out, "-q"),
        "summary.json",
        "no space left on the file system at",
    )
    monkeypatch.setattr(pipeline, "write_json", real)
    if which == "first":  # refused before any work: no frame, no summary, no folder
        assert not out.exists()
        return
    _no_temporaries(out)
    # every frame is written; the summary still says running, and --resume completes it
    assert _complete_pngs(out) == NAMES
    assert json.loads((out / "summary.json").read_text())["status"] == "running"
    resumed = _run("segment", clip[0], "--mask", clip[1], "-o", out, "-q", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_ffmpeg_failure_is_detected_and_no_overlay_is_left(tmp_path, clip, double, monkeypatch):
    """ffmpeg writing to a device that is always full (/dev/full) fails at its first write:
    the run must say so, not rename a broken video into place."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    import vostrack.io.writers as writers

    real_popen = writers.subprocess.Popen

    def popen(cmd, **kwargs):
        if "libx264" in cmd:  # the overlay's encoder: its output becomes a full device
            cmd = [*cmd[:-1], "/dev/full"]
        return real_popen(cmd, **kwargs)

    monkeypatch.setattr(writers.subprocess, "Popen", popen)
    out, overlay = tmp_path / "out", tmp_path / "ov.mp4"
    _fails_one_line(
        _run("segment", clip[0], "--mask", clip[1], "-o", out, "--overlay", overlay, "-q"),
        f"cannot write the overlay video {overlay}",
        "no space left",
    )
    assert not overlay.exists()
    _no_temporaries(tmp_path, out)
    summary = json.loads((out / "summary.json").read_text())
    done = _complete_pngs(out)
    assert summary["status"] == "failed" and summary["frames_done"] == len(done) < FRAMES
    assert done == NAMES[: len(done)]
    monkeypatch.setattr(writers.subprocess, "Popen", real_popen)
    resumed = _run(
        "segment", clip[0], "--mask", clip[1], "-o", out, "--overlay", overlay, "-q", "--resume"
    )
    assert resumed.exit_code == 0, resumed.output
    assert imageio_ffmpeg.count_frames_and_secs(str(overlay))[0] == FRAMES
