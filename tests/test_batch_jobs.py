"""`vostrack batch` manifests: CSV, JSONL, DAVIS and YouTube-VOS trees, and the one-line
errors of a bad one (exit 2 before any work). No network runs here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import fails
from vostrack.batch.jobs import VideoJob, read_jobs
from vostrack.errors import VostrackError
from vostrack.io.palette import write_label_png


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_rows_with_several_masks_frames_names_and_fps(tmp_path):
    jobs = read_jobs(
        write(
            tmp_path / "sets" / "jobs.csv",
            "input,mask,mask_frame,name,fps\n"
            "videos/a.mp4,masks/a.png,,,\n"
            "\n"
            "/abs/b.mp4,b0.png;b12.png,0;12,bee,30\n"
            "frames/c,c.png,,,\n",
        )
    )
    base = (tmp_path / "sets").absolute()
    assert jobs == [
        VideoJob("a", base / "videos/a.mp4", (base / "masks/a.png",)),
        VideoJob("bee", Path("/abs/b.mp4"), (base / "b0.png", base / "b12.png"), (0, 12), 30.0),
        VideoJob("c", base / "frames/c", (base / "c.png",)),
    ]


def test_jsonl_rows_with_mask_objects(tmp_path):
    lines = [
        {"input": "a.mp4", "mask": "a.png"},
        {
            "input": "b.mp4",
            "masks": [{"path": "b0.png", "frame": 0}, {"path": "b7.png", "frame": 7}],
            "name": "b-clip",
            "fps": 12.5,
        },
        {"input": "c.mp4", "masks": ["c0.png", "c1.png"]},
    ]
    path = write(tmp_path / "jobs.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    jobs = read_jobs(path)
    assert [j.name for j in jobs] == ["a", "b-clip", "c"]
    assert jobs[1].mask_frames == (0, 7) and jobs[1].fps == 12.5
    assert jobs[1].masks == (tmp_path / "b0.png", tmp_path / "b7.png")
    assert jobs[2].mask_frames == () and len(jobs[2].masks) == 2


def _tree(root: Path, frames_dir: Path, masks_dir: Path, sequences: dict[str, list[str]]):
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5] = 1
    for seq, masks in sequences.items():
        (frames_dir / seq).mkdir(parents=True)
        for i in range(3):
            (frames_dir / seq / f"{i * 5:05d}.jpg").write_bytes(b"")
        (masks_dir / seq).mkdir(parents=True)
        for name in masks:
            write_label_png(masks_dir / seq / name, labels)


def test_davis_tree_takes_each_sequences_first_annotation(tmp_path):
    _tree(
        tmp_path,
        tmp_path / "JPEGImages" / "480p",
        tmp_path / "Annotations" / "480p",
        {"bmx-trees": ["00000.png", "00005.png"], "blackswan": ["00000.png"]},
    )
    jobs = read_jobs(tmp_path)
    assert [j.name for j in jobs] == ["blackswan", "bmx-trees"]
    assert jobs[1].input == tmp_path / "JPEGImages" / "480p" / "bmx-trees"
    assert jobs[1].masks == (tmp_path / "Annotations" / "480p" / "bmx-trees" / "00000.png",)


def test_youtube_vos_tree_gives_every_annotation_at_its_frame(tmp_path):
    _tree(
        tmp_path,
        tmp_path / "JPEGImages",
        tmp_path / "Annotations",
        {"0a49f5265b": ["00000.png", "00010.png"], "0b5b5e8e5a": ["00005.png"]},
    )
    jobs = read_jobs(tmp_path)
    assert [j.name for j in jobs] == ["0a49f5265b", "0b5b5e8e5a"]
    masks = tmp_path / "Annotations" / "0a49f5265b"
    # Placed by name, as segment places them: 00010.png goes to the frame 00010.jpg.
    assert jobs[0].masks == (masks / "00000.png", masks / "00010.png")
    assert jobs[0].mask_frames == ()


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("jobs.csv", "", "empty file"),
        ("jobs.csv", "input,masks\na.mp4,a.png\n", "unknown column 'masks'"),
        ("jobs.csv", "input,name\na.mp4,a\n", "no 'mask' column"),
        ("jobs.csv", "input,mask\na.mp4,a.png,extra\n", "line 2: 3 fields"),
        ("jobs.csv", "input,mask\n,a.png\n", "line 2: no input"),
        ("jobs.csv", "input,mask,mask_frame\na.mp4,a.png;b.png,3\n", "1 mask frames for 2 masks"),
        ("jobs.csv", "input,mask,mask_frame\na.mp4,a.png,-1\n", "mask_frame '-1'"),
        ("jobs.csv", "input,mask,fps\na.mp4,a.png,fast\n", "fps 'fast'"),
        ("jobs.csv", "input,mask,name\na.mp4,a.png,up/../../x\n", "holds a slash"),
        ("jobs.csv", "input,mask,name\na.mp4,a.png,..\n", "starts with a dot"),
        ("jobs.csv", "input,mask,name\na.mp4,a.png,batch.json\n", "the batch's own"),
        ("jobs.csv", "input,mask\nx/a.mp4,a.png\ny/a.mp4,b.png\n", "named 'a' (lines 2 and 3)"),
        ("jobs.csv", "input,mask\n\n", "no videos"),
        ("jobs.jsonl", '{"input": "a.mp4", "mask": "a.png"\n', "line 1: not valid JSON"),
        ("jobs.jsonl", '["a.mp4"]\n', "one JSON object per line"),
        ("jobs.jsonl", '{"input": "a.mp4"}\n', "give 'mask'"),
        ("jobs.jsonl", '{"input": "a.mp4", "mask": "a", "colour": 1}\n', "unknown key 'colour'"),
        ("jobs.jsonl", '{"input": "a.mp4", "masks": [{"path": 3}]}\n', "a mask object"),
        ("jobs.jsonl", '{"input": "a.mp4", "masks": [], "name": "a"}\n', "non-empty list"),
        ("jobs.jsonl", '{"input": 5, "mask": "a.png"}\n', "no input"),
        ("jobs.txt", "a.mp4\n", "give a .csv or .jsonl"),
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path, name, text, needle):
    path = write(tmp_path / name, text)
    with pytest.raises(VostrackError) as caught:
        read_jobs(path)
    message = str(caught.value)
    assert needle in message and "\n" not in message, message
    assert str(path) in message


def test_bad_trees_are_one_line_errors(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(VostrackError, match="a DAVIS tree .* or a YouTube-VOS tree"):
        read_jobs(tmp_path / "plain")
    (tmp_path / "davis" / "JPEGImages" / "480p" / "dog").mkdir(parents=True)
    with pytest.raises(VostrackError, match="without Annotations/480p"):
        read_jobs(tmp_path / "davis")
    (tmp_path / "davis" / "Annotations" / "480p" / "dog").mkdir(parents=True)
    with pytest.raises(VostrackError, match="sequence dog has no annotation PNG"):
        read_jobs(tmp_path / "davis")
    with pytest.raises(VostrackError, match="not found"):
        read_jobs(tmp_path / "missing.csv")


def test_the_cli_refuses_a_bad_manifest_with_one_line_and_exit_2(tmp_path):
    jobs = write(tmp_path / "jobs.csv", "input,mask,name\na.mp4,a.png,a/b\n")
    line = fails(["batch", jobs, "-o", tmp_path / "out"], "line 2", "holds a slash")
    assert line.startswith("error: jobs ")
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_ray_mode_without_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    jobs = write(tmp_path / "jobs.csv", "input,mask\na.mp4,a.png\n")
    fails(["batch", jobs, "-o", tmp_path / "out", "--ray", "auto"], "pip install vostrack[ray]")
    assert not (tmp_path / "out").exists()


def test_resources_per_worker_are_for_ray_mode(tmp_path):
    jobs = write(tmp_path / "jobs.csv", "input,mask\na.mp4,a.png\n")
    fails(["batch", jobs, "-o", tmp_path / "out", "--gpus-per-worker", "1"], "are for --ray")
