"""`vostrack batch --ray ADDRESS` against a real one-machine Ray cluster (started once for this
module, in the test process), as a real process: the same PNGs as `vostrack segment`, a broken
video failing alone, and an actor killed mid-video replaced while its video resumes."""

from __future__ import annotations

import os
import signal

import pytest

from tests.test_batch_local import (
    GOOD,
    LONG,
    StderrLines,
    assert_same_as_segment,
    batch_command,
    manifest,
    pngs,
    report,
    run_batch,
    start_batch,
    summary,
    videos,  # noqa: F401 (the module's inputs and reference outputs)
    wait_for,
)

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """The address of a one-machine Ray (2 CPUs), for the module's tests."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_a_ray_batch_segments_as_segment_does(cluster, videos, tiny_model, tmp_path):  # noqa: F811
    jobs = manifest(videos / "ray-jobs.csv", [*GOOD, "broken"])
    out = tmp_path / "out"
    done = run_batch(jobs, "-o", out, "--model", tiny_model, "-q", "--ray", cluster, "--workers", 2)
    assert done.returncode == 1, done.stderr[-3000:] + done.stdout
    rows = report(out)
    statuses = {n: rows[n]["status"] for n in rows}
    assert statuses == {**dict.fromkeys(GOOD, "complete"), "broken": "failed"}
    assert "not a readable video" in rows["broken"]["error"]
    assert_same_as_segment(out, videos, GOOD)
    assert "broken  failed" in done.stdout.replace("   ", "  ")


def test_a_killed_actor_is_replaced_and_its_video_resumes(cluster, videos, tiny_model, tmp_path):  # noqa: F811
    jobs = manifest(tmp_path / "jobs.csv", ["long", "a"])
    (tmp_path / "inputs").symlink_to(videos / "inputs")
    out = tmp_path / "out"
    command = batch_command(
        jobs, "-o", out, "--model", tiny_model, "-q", "--ray", cluster, "--workers", 2, debug=True
    )
    proc = start_batch(command)
    stderr = StderrLines(proc)
    pattern = r"Ray actor \d+ \(pid (\d+)\): video long"
    wait_for(lambda: stderr.find(pattern) is not None, proc, timeout=180)
    wait_for(lambda: len(pngs(out / "long")) >= 5, proc)
    os.kill(int(stderr.find(pattern).group(1)), signal.SIGKILL)
    proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr.text()[-3000:]
    rows = report(out)
    assert rows["long"]["status"] == "complete" and rows["a"]["status"] == "complete"
    assert rows["long"]["attempts"] == 2 and "died" in rows["long"]["note"]
    assert summary(out / "long")["resumed_from"] >= 5
    assert len(pngs(out / "long")) == LONG
    assert_same_as_segment(out, videos, ["a"])
