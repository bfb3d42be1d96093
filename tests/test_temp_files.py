"""Temporary files are created exclusively under random names: a symlink planted where a
temporary file will be (a fixed name of an older version, or the very random name that comes
up) never redirects a write, and a killed run's temporaries are cleaned up, nothing else."""

from __future__ import annotations

import json
import os
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from vostrack.cli import cli
from vostrack.io.atomic import create_temp, is_temp_of, remove_stale_temps, write_json
from vostrack.io.palette import read_label_png, write_label_png

PRECIOUS = b"a file of the user's that a planted link points at"


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.bin"
    path.write_bytes(PRECIOUS)
    return path


@pytest.fixture
def planted_names(monkeypatch):
    """The first random name mkstemp draws is "planted": a link is put there by the test."""
    real = tempfile._get_candidate_names

    def names():
        yield "planted"
        yield from real()

    monkeypatch.setattr(tempfile, "_get_candidate_names", names)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_atomic_writes_never_follow_a_link_at_their_temporary_name(tmp_path, victim, planted_names):
    for final, link in [("a.png", ".a.planted.tmp.png"), ("s.json", ".s.planted.tmp.json")]:
        (tmp_path / link).symlink_to(victim)
        if final.endswith(".png"):
            write_label_png(tmp_path / final, np.ones((4, 4), np.uint8))
            assert read_label_png(tmp_path / final).sum() == 16
        else:
            write_json(tmp_path / final, {"ok": 1})
            assert json.loads((tmp_path / final).read_text()) == {"ok": 1}
        assert victim.read_bytes() == PRECIOUS and (tmp_path / link).is_symlink()


def test_segment_outputs_never_follow_planted_links(tmp_path, squares, double, victim, monkeypatch):
    """Links at the overlay's old fixed temporary name, at the old writability probe's name,
    and at the random names that come up for the overlay, a PNG and the summary."""
    video, frames, labels, mask = squares
    out, overlay = tmp_path / "out", tmp_path / "ov.mp4"
    out.mkdir()
    links = [
        tmp_path / ".ov.tmp.mp4",
        out / f".vostrack-write-test-{os.getpid()}",
        tmp_path / ".ov.planted.tmp.mp4",
        out / ".00000.planted.tmp.png",
        out / ".summary.planted.tmp.json",
    ]
    for link in links:
        link.symlink_to(victim)
    real = tempfile._get_candidate_names

    def names():  # every temporary file first draws the planted name
        yield "planted"
        yield from real()

    monkeypatch.setattr(tempfile, "_get_candidate_names", names)
    result = run("segment", video, "--mask", mask, "-o", out, "--overlay", overlay, "-q")
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == PRECIOUS
    assert all(link.is_symlink() for link in links)
    written = [p for p in out.glob("*.png") if not p.name.startswith(".")]
    assert len(written) == len(frames) and overlay.stat().st_size > 1000


def test_a_training_checkpoint_never_follows_planted_links(tmp_path, victim):
    """The checkpoint's folder and its `latest` pointer had fixed temporary names."""
    from vostrack.training.trainer import Trainer

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "latest.tmp").symlink_to(victim)
    (folder / ".step_0000007.tmp").symlink_to(tmp_path)
    trainer = SimpleNamespace(
        run_dir=tmp_path,
        step=7,
        best=-1.0,
        network=SimpleNamespace(variables=[]),
        heads_opt=SimpleNamespace(variables=[]),
        backbone_opt=SimpleNamespace(variables=[]),
        config=SimpleNamespace(to_dict=lambda: {"steps": 9}),
    )
    saved = Trainer.save(trainer)
    assert saved == folder / "step_0000007" and (saved / "state.json").is_file()
    assert (folder / "latest").read_text() == "step_0000007\n"
    assert victim.read_bytes() == PRECIOUS
    assert sorted(p.name for p in folder.iterdir()) == [
        ".step_0000007.tmp",
        "latest",
        "latest.tmp",
        "step_0000007",
    ]


def test_only_our_temporaries_count_as_stale(tmp_path):
    fd, ours = create_temp(tmp_path / "00003.png")
    os.close(fd)
    assert is_temp_of(ours.name, ["00003"]) and not is_temp_of(ours.name, ["00004"])
    keep = [
        ".00003.png",
        ".00003.tmp.png",
        "00003.png",
        ".00003.abc.tmp.png",
        ".notes.txt",
        ".00003.abcdefgh.tmp.png.bak",
    ]
    for name in keep:
        (tmp_path / name).write_bytes(b"user")
    (tmp_path / ".00009.abcdefgh.tmp.png").symlink_to(tmp_path / "00003.png")  # not ours
    assert remove_stale_temps(tmp_path, ["00003", "00009"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, ".00009.abcdefgh.tmp.png"])
    assert (tmp_path / "00003.png").read_bytes() == b"user"


def test_a_resumed_run_removes_what_a_killed_run_left(tmp_path, squares, double):
    video, frames, labels, mask = squares
    out = tmp_path / "out"
    double.interrupt_at = 5
    assert run("segment", video, "--mask", mask, "-o", out, "-q").exit_code == 130
    leftovers = [
        out / ".00005.k2j4h5g6.tmp.png",
        out / ".summary.zzzzzzzz.tmp.json",
        out / ".vostrack-reserve.abcdefgh.tmp.bin",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    (out / "my-notes.txt").write_text("mine")
    double.interrupt_at = None
    resumed = run("segment", video, "--mask", mask, "-o", out, "-q", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert not any(p.exists() for p in leftovers)
    assert (out / "my-notes.txt").read_text() == "mine"
