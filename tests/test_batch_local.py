"""`vostrack batch` in local mode, as a real process with real spawned workers running the tiny
real model: each good video's PNGs are byte-identical to `vostrack segment` of it alone, a
broken video fails alone (exit 1), a re-run skips what is complete and leaves failures to
--retry-failed, Ctrl-C stops cleanly and a re-run completes the rest, and a worker killed
mid-video is replaced while its video resumes on another."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import squares_clip, write_video
from vostrack.cli import cli
from vostrack.io.palette import write_label_png

REPO = Path(__file__).resolve().parents[1]
# name: (frames, width); 64 px high, as squares_clip makes them.
GOOD = {"a": (8, 96), "b": (10, 128), "c": (6, 64), "d": (12, 96)}
LONG = 200  # frames of the video that is stopped or killed mid-way


@pytest.fixture(scope="module")
def videos(tmp_path_factory, tiny_model):
    """The inputs (under inputs/), and `vostrack segment` of each good video alone (ref/)."""
    root = tmp_path_factory.mktemp("batch")
    inputs = root / "inputs"
    inputs.mkdir()
    for name, (count, width) in {**GOOD, "long": (LONG, 96)}.items():
        frames, labels = squares_clip(num_frames=count, width=width)
        write_video(inputs / f"{name}.mp4", frames)
        write_label_png(inputs / f"{name}.png", labels[0])
    (inputs / "broken.mp4").write_bytes(b"\0\0\0 ftypisom" + os.urandom(2000))
    write_label_png(inputs / "broken.png", squares_clip(num_frames=1)[1][0])
    for name in GOOD:
        result = CliRunner().invoke(
            cli,
            ["segment", str(inputs / f"{name}.mp4"), "--mask", str(inputs / f"{name}.png"),
             "-o", str(root / "ref" / name), "--model", str(tiny_model), "-q"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    return root


def manifest(path: Path, names: list[str]) -> Path:
    """A CSV manifest of the videos ``names`` (paths relative to it, as users write them)."""
    rows = ["input,mask"] + [f"inputs/{n}.mp4,inputs/{n}.png" for n in names]
    path.write_text("\n".join(rows) + "\n")
    return path


def batch_command(*args, debug: bool = False) -> list[str]:
    """The CLI as users run it; ``debug``: with the debug log (it names each worker's pid)."""
    return [sys.executable, "-m", "vostrack", *(["--debug"] if debug else []), "batch"] + [
        str(a) for a in args
    ]


def start_batch(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_batch(*args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        batch_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def report(out: Path) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads((out / "batch.json").read_text())["videos"]}


def pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))


def assert_same_as_segment(out: Path, root: Path, names) -> None:
    for name in names:
        expected = pngs(root / "ref" / name)
        assert [p.name for p in pngs(out / name)] == [p.name for p in expected], name
        for png in expected:
            assert (out / name / png.name).read_bytes() == png.read_bytes(), (name, png.name)


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the batch ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class StderrLines:
    """Collects a process's stderr lines as they come (the debug log names the workers)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def find(self, pattern: str) -> re.Match | None:
        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def test_a_batch_segments_as_segment_does_then_skips_and_retries_on_request(
    videos, tiny_model, tmp_path
):
    jobs = manifest(videos / "jobs.csv", [*GOOD, "broken"])
    out = tmp_path / "out"
    common = [jobs, "-o", out, "--model", tiny_model, "-q"]
    first = run_batch(*common, "--workers", "2")
    assert first.returncode == 1, first.stderr
    rows = report(out)
    assert {n: rows[n]["status"] for n in rows} == {
        **dict.fromkeys(GOOD, "complete"),
        "broken": "failed",
    }
    assert "not a readable video" in rows["broken"]["error"]
    assert "\n" not in rows["broken"]["error"]
    assert all(rows[n]["frames"] == GOOD[n][0] for n in GOOD)
    assert_same_as_segment(out, videos, GOOD)
    table = first.stdout.splitlines()
    assert table[0].split() == ["video", "status", "frames", "frames/s", "error"]
    broken_line = next(line for line in table if line.startswith("broken "))
    assert "failed" in broken_line and "not a readable video" in broken_line
    assert table[-1].startswith("5 videos: 4 complete, 1 failed")

    # Again: the complete videos are skipped (not one file rewritten), the failure is not
    # retried without --retry-failed.
    files = [p for n in GOOD for p in (*pngs(out / n), out / n / "summary.json")]
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    again = run_batch(*common)
    assert again.returncode == 1, again.stderr
    rows = report(out)
    assert {n: rows[n]["status"] for n in GOOD} == dict.fromkeys(GOOD, "skipped")
    assert rows["broken"]["status"] == "failed" and rows["broken"]["attempts"] == 0
    assert "failed (earlier run)" in again.stdout
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == stamps

    # The broken input repaired: --retry-failed runs it, the others stay skipped.
    (videos / "inputs" / "broken.mp4").write_bytes((videos / "inputs" / "a.mp4").read_bytes())
    try:
        retried = run_batch(*common, "--retry-failed")
    finally:
        (videos / "inputs" / "broken.mp4").write_bytes(b"broken again")
    assert retried.returncode == 0, retried.stderr
    rows = report(out)
    assert rows["broken"]["status"] == "complete" and rows["broken"]["frames"] == GOOD["a"][0]
    assert {n: rows[n]["status"] for n in GOOD} == dict.fromkeys(GOOD, "skipped")
    assert json.loads((out / "batch.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_ctrl_c_stops_the_batch_and_the_same_command_completes_it(videos, tiny_model, tmp_path):
    jobs = manifest(tmp_path / "jobs.csv", ["a", "long", "c"])
    (tmp_path / "inputs").symlink_to(videos / "inputs")
    out = tmp_path / "out"
    command = batch_command(jobs, "-o", out, "--model", tiny_model, "-q")
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(
        lambda: (
            (out / "a" / "summary.json").is_file()
            and summary(out / "a")["status"] == "complete"
            and len(pngs(out / "long")) >= 3
        ),
        proc,
    )
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: interrupted after 1 of 3 videos; run the same command again to continue"
    )
    rows = report(out)
    assert [rows[n]["status"] for n in ("a", "long", "c")] == ["complete", "interrupted", "pending"]
    stopped_at = rows["long"]["frames"]
    assert 3 <= stopped_at < LONG
    assert summary(out / "long")["status"] == "interrupted"
    assert json.loads((out / "batch.json").read_text())["status"] == "interrupted"
    assert "interrupted" in stdout  # the table is printed on the way out

    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    rows = report(out)
    assert [rows[n]["status"] for n in ("a", "long", "c")] == ["skipped", "complete", "complete"]
    assert summary(out / "long")["resumed_from"] == stopped_at
    assert len(pngs(out / "long")) == LONG
    assert_same_as_segment(out, videos, ["a", "c"])


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_video_resumes(videos, tiny_model, tmp_path):
    jobs = manifest(tmp_path / "jobs.csv", ["long", "a", "b"])
    (tmp_path / "inputs").symlink_to(videos / "inputs")
    out = tmp_path / "out"
    command = batch_command(
        jobs, "-o", out, "--model", tiny_model, "-q", "--workers", 2, debug=True
    )
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stderr = StderrLines(proc)
    wait_for(lambda: stderr.find(r"worker \d+ \(pid \d+\): video long") is not None, proc)
    pid = int(stderr.find(r"worker \d+ \(pid (\d+)\): video long").group(1))
    wait_for(lambda: len(pngs(out / "long")) >= 5, proc)
    os.kill(pid, signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr.text()[-3000:]
    rows = report(out)
    assert {n: rows[n]["status"] for n in rows} == dict.fromkeys(["long", "a", "b"], "complete")
    assert rows["long"]["attempts"] == 2
    assert rows["long"]["note"].startswith("worker died: killed by SIGKILL")
    assert summary(out / "long")["resumed_from"] >= 5
    assert len(pngs(out / "long")) == LONG
    assert_same_as_segment(out, videos, ["a", "b"])
