"""`vostrack validate` through the real CLI: scoring a results folder, and segment-then-score."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import SHARED_DATA, squares_clip, write_frame_folder
from vostrack.cli import cli
from vostrack.io.palette import read_label_png, write_label_png


def make_tree(root, num_frames=8):
    frames, labels = squares_clip(num_frames=num_frames)
    for seq, objects in (("one", (1,)), ("two", (1, 2))):
        write_frame_folder(root / "JPEGImages" / "480p" / seq, frames, ext=".jpg")
        (root / "Annotations" / "480p" / seq).mkdir(parents=True)
        for t in range(num_frames):
            gt = np.where(np.isin(labels[t], objects), labels[t], 0).astype(np.uint8)
            if seq == "one":
                gt = (gt > 0).astype(np.uint8) * 255  # DAVIS-2016 style
            write_label_png(root / "Annotations" / "480p" / seq / f"{t:05d}.png", gt)
    return labels


def test_segment_then_score_with_the_double(tmp_path, double):
    make_tree(tmp_path / "tree")
    out, table = tmp_path / "segs", tmp_path / "scores.csv"
    result = CliRunner().invoke(
        cli,
        [
            "validate",
            "--data",
            str(tmp_path / "tree"),
            "--output",
            str(out),
            "--csv",
            str(table),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["one", "two"]
    assert read_label_png(out / "two" / "00007.png").max() == 2
    rows = list(csv.reader(table.open()))
    assert rows[0] == "sequence,object,J_mean,J_recall,J_decay,F_mean,F_recall,F_decay".split(",")
    assert [r[:2] for r in rows[1:]] == [["one", "1"], ["two", "1"], ["two", "2"], ["ALL", ""]]
    assert float(rows[-1][2]) > 0.9  # the double tracks flat squares
    assert "one" in result.output and "two" in result.output


def test_the_middle_frame_protocol_propagates_both_ways(tmp_path, double):
    labels = make_tree(tmp_path / "tree", num_frames=9)
    out = tmp_path / "segs"
    args = ["validate", "--data", str(tmp_path / "tree"), "--output", str(out), "-q"]
    result = CliRunner().invoke(cli, [*args, "--annotated-frame", "middle"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "two" / "summary.json").read_text())
    assert [a["frame"] for a in summary["annotations"]] == [4]  # the middle of 9 frames
    first = read_label_png(out / "two" / "00000.png")  # propagated backward from frame 4
    for k in (1, 2):
        overlap = ((first == k) & (labels[0] == k)).sum() / ((first == k) | (labels[0] == k)).sum()
        assert overlap > 0.8, k
    table = result.output.splitlines()
    assert float(next(r for r in table if r.startswith("ALL")).split()[2]) > 0.9


def test_sequences_option_and_default_temp_output(tmp_path, double):
    make_tree(tmp_path / "tree")
    result = CliRunner().invoke(
        cli, ["validate", "--data", str(tmp_path / "tree"), "--sequences", "two", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "segmentations go to" in result.stderr
    assert "two" in result.stdout and "one" not in result.stdout.split("two")[0].splitlines()[-1]


@pytest.mark.parametrize(
    "shift,expected",
    [
        (
            "right5",
            {
                "blackswan": (0.898344, 1.0),
                "car-shadow": (0.927193, 1.0),
                "bmx-trees": (0.520255, 1.0),
            },
        ),
        ("down10", {"blackswan": (0.779169, 0.555840), "car-shadow": (0.808297, 0.592053)}),
    ],
)
def test_reproduces_the_official_scorer_on_davis(tmp_path, shift, expected):
    data = SHARED_DATA / "davis2016-dev"
    if not data.is_dir():
        pytest.skip(f"{data} not found: the official-value check needs ../shared/data")
    for seq in expected:
        gt_dir = data / "Annotations" / "480p" / seq
        for png in sorted(gt_dir.glob("*.png")):
            gt = read_label_png(png) > 0
            pred = np.zeros_like(gt)
            if shift == "right5":
                pred[:, 5:] = gt[:, :-5]
            else:
                pred[10:, :] = gt[:-10, :]
            write_label_png(_mkdir(tmp_path / "res" / seq) / png.name, pred.astype(np.uint8))
    table = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        cli,
        [
            "validate",
            "--data",
            str(data),
            "--results",
            str(tmp_path / "res"),
            "--sequences",
            ",".join(expected),
            "--csv",
            str(table),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {r["sequence"]: r for r in csv.DictReader(table.open())}
    for seq, (j, f) in expected.items():
        assert float(rows[seq]["J_mean"]) == pytest.approx(j, abs=1e-4)
        assert float(rows[seq]["F_mean"]) == pytest.approx(f, abs=1e-4)
    assert float(rows["ALL"]["J_mean"]) == pytest.approx(
        np.mean([v[0] for v in expected.values()]), abs=1e-4
    )


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
