"""Hostile and careless inputs, one row each: the command, the exit code, a fragment of its one
line on stderr, the files that must be untouched (by md5) and the paths that must not appear.

Every row is refused before any work; none may destroy or change an input, whatever
``--overwrite`` says. The network is the colour test double, except in the rows about damaged
model folders, which load the real thing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import squares_clip, write_frame_folder, write_video
from vostrack.cli import cli
from vostrack.io.palette import write_label_png

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list]  # -> the command's arguments (after `vostrack`)
    message: str
    exit: int = 2
    absent: tuple[str, ...] = ()  # paths (relative to the case folder) that must not appear
    real_model: bool = False
    hold: Callable[[Path], object] | None = None  # something held while the command runs
    extra: dict = field(default_factory=dict)


def _clip(root: Path, frames_folder: bool = False):
    frames, labels = squares_clip(num_frames=6)
    inputs = root / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    if frames_folder:
        write_frame_folder(inputs / "frames", frames)
        source = inputs / "frames"
    else:
        source = write_video(inputs / "v.mp4", frames)
    write_label_png(inputs / "m.png", labels[0])
    return source, inputs / "m.png"


def seg(root: Path, *extra, frames_folder: bool = False) -> list:
    source, mask = _clip(root, frames_folder)
    return ["segment", source, "--mask", mask, *extra]


def _symlink(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def _damaged_model(root: Path, edit: Callable[[dict, Path], None]) -> Path:
    """A copy of the shipped model's manifest (and, where the edit needs it, its graph)."""
    model = root / "model"
    model.mkdir()
    manifest = json.loads((REPO / "models" / "default" / "manifest.json").read_text())
    edit(manifest, model)
    (model / "manifest.json").write_text(json.dumps(manifest))
    return model


def _truncated_graph(manifest: dict, model: Path) -> None:
    data = (REPO / "models" / "default" / "frozen.pb").read_bytes()
    (model / "frozen.pb").write_bytes(data[: len(data) // 3])


def _finished_run(root: Path) -> Path:
    from vostrack.training.config import TrainConfig

    run = root / "run"
    checkpoint = run / "checkpoints" / "step_0000003"
    checkpoint.mkdir(parents=True)
    config = TrainConfig.from_dict({"steps": 3, "warmup_steps": 1}).to_dict()
    (run / "config.json").write_text(json.dumps(config))
    (checkpoint / "state.json").write_text(json.dumps({"step": 3, "best": -1, "config": config}))
    (run / "checkpoints" / "latest").write_text("step_0000003\n")
    return run


def _two_sizes(root: Path) -> list:
    write_frame_folder(root / "in" / "f", [np.zeros((64, 96, 3), np.uint8)] * 3)
    write_frame_folder(root / "in" / "f", [np.zeros((48, 96, 3), np.uint8)], ["00003"])
    write_label_png(root / "in" / "m.png", np.pad(np.ones((8, 8), np.uint8), ((0, 56), (0, 88))))
    return ["segment", root / "in" / "f", "--mask", root / "in" / "m.png", "-o", root / "out"]


def _bad_frame(root: Path) -> list:
    args = seg(root, "-o", root / "out", frames_folder=True)
    (root / "in" / "frames" / "00004.png").write_bytes(b"\x89PNG not really")
    return args


def _sixteen_bit_ids(root: Path) -> list:
    args = seg(root, "-o", root / "out")
    ids = np.zeros((64, 96), np.uint16)
    ids[8:20, 4:16] = 300
    ids[30:40, 30:40] = 2
    Image.fromarray(ids).save(root / "in" / "m.png")
    return args


def _mask_in_output(root: Path) -> list:
    video, mask = _clip(root)
    (root / "masks").mkdir()
    shutil.copy(mask, root / "masks" / "00000.png")  # named after its frame, as DAVIS trees do
    return [
        "segment",
        video,
        "--mask",
        root / "masks" / "00000.png",
        "-o",
        root / "masks",
        "--overwrite",
    ]


def _interrupted_at_fps(root: Path, double) -> list:
    args = seg(root, "-o", root / "out", "-q")
    double.interrupt_at = 3
    assert CliRunner().invoke(cli, [str(a) for a in [*args, "--fps", "10"]]).exit_code == 130
    double.interrupt_at, double.steps = None, 0
    return [*args, "--fps", "12", "--resume"]


def _validate_tree(root: Path) -> Path:
    from tests.test_cli_validate import make_tree

    make_tree(root / "tree", num_frames=3)
    return root / "tree"


def _locked(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running segment holds it
    return fd


CASES = [
    # --- outputs that alias inputs (issue 14, items 1-2): refused whatever --overwrite says
    Case(
        "out-is-the-input-frame-folder",
        lambda r: seg(r, "-o", r / "in" / "frames", "--overwrite", frames_folder=True),
        "is the input frame folder",
    ),
    Case(
        "out-inside-the-input-frame-folder",
        lambda r: seg(r, "-o", r / "in" / "frames" / "out", frames_folder=True),
        "lies inside the input frame folder",
        absent=("in/frames/out",),
    ),
    Case(
        "out-contains-the-input-video",
        lambda r: seg(r, "-o", r / "in", "--overwrite"),
        "contains the input video",
    ),
    Case(
        "out-is-a-link-to-the-input-frame-folder",
        lambda r: seg(
            r, "-o", _symlink(r / "link", r / "in" / "frames"), "--overwrite", frames_folder=True
        ),
        "is the input frame folder",
    ),
    Case("out-holds-the-mask", lambda r: _mask_in_output(r), "contains the mask"),
    Case(
        "an-output-file-is-a-link-to-the-mask",
        lambda r: seg(
            r, "-o", _symlink(r / "out" / "00000.png", r / "in" / "m.png").parent, "--overwrite"
        ),
        "is the mask",
    ),
    Case(
        "overlay-is-the-input-video",
        lambda r: seg(r, "-o", r / "out", "--overlay", r / "in" / "v.mp4", "--overwrite"),
        "the overlay",
        absent=("out",),
    ),
    Case(
        "overlay-is-a-link-to-the-input-video",
        lambda r: seg(
            r,
            "-o",
            r / "out",
            "--overlay",
            _symlink(r / "ov.mp4", r / "in" / "v.mp4"),
            "--overwrite",
        ),
        "is the input video",
        absent=("out",),
    ),
    Case(
        "overlay-is-a-hard-link-to-the-input-video",
        lambda r: [
            *seg(r, "-o", r / "out", "--overwrite"),
            "--overlay",
            os.link(r / "in" / "v.mp4", r / "hard.mp4") or r / "hard.mp4",
        ],
        "is the input video",
        absent=("out",),
    ),
    # --- overlay paths that cannot be written: refused before the output folder is made
    Case(
        "overlay-is-an-existing-folder",
        lambda r: seg(
            r, "-o", r / "out", "--overlay", (r / "dir.mp4").mkdir() or r / "dir.mp4", "--overwrite"
        ),
        "is a folder",
        absent=("out",),
    ),
    Case(
        "overlay-under-a-file",
        lambda r: seg(r, "-o", r / "out", "--overlay", r / "in" / "m.png" / "o.mp4"),
        "is a file, not a folder",
        absent=("out",),
    ),
    Case(
        "overlay-not-a-video-name",
        lambda r: seg(r, "-o", r / "out", "--overlay", r / "o.gif"),
        "give a video file name",
        absent=("out", "o.gif"),
    ),
    Case("output-is-a-file", lambda r: seg(r, "-o", r / "in" / "m.png"), "not a folder"),
    Case(
        "output-under-a-file",
        lambda r: seg(r, "-o", r / "in" / "m.png" / "out"),
        "is a file, not a folder",
    ),
    Case(
        "output-folder-busy",
        lambda r: seg(r, "-o", r / "busy"),
        "another vostrack run is writing",
        hold=lambda r: _locked(r / "busy"),
    ),
    # --- inputs found bad before any frame is written (item 9)
    Case(
        "frames-of-two-sizes",
        _two_sizes,
        "all frames of a folder must have one size",
        absent=("out",),
    ),
    Case("an-unreadable-frame", _bad_frame, "00004.png: not a readable image", absent=("out",)),
    Case(
        "mask-with-16-bit-ids-above-254", _sixteen_bit_ids, "object ids above 254", absent=("out",)
    ),
    Case("resume-with-another-fps", None, "frame rate was 10.0 fps, this one's 12"),
    # --- damaged models: one line, exit 2, not "unexpected" (item 8)
    Case(
        "model-with-a-truncated-graph",
        lambda r: seg(r, "-o", r / "out", "--model", _damaged_model(r, _truncated_graph)),
        "is incomplete or damaged",
        real_model=True,
        absent=("out",),
    ),
    Case(
        "model-config-of-a-wrong-type",
        lambda r: seg(
            r,
            "-o",
            r / "out",
            "--model",
            _damaged_model(
                r, lambda m, _: m["config"]["settings"].update(working_short_side="big")
            ),
        ),
        "manifest.json",
        real_model=True,
        absent=("out",),
    ),
    Case(
        "model-config-a-list",
        lambda r: seg(
            r, "-o", r / "out", "--model", _damaged_model(r, lambda m, _: m.update(config=[1, 2]))
        ),
        "config in manifest.json must be a mapping",
        real_model=True,
        absent=("out",),
    ),
    Case(
        "model-manifest-a-list",
        lambda r: seg(
            r,
            "-o",
            r / "out",
            "--model",
            (r / "model").mkdir()
            or (r / "model" / "manifest.json").write_text("[]")
            and r / "model",
        ),
        "manifest.json must hold a mapping",
        real_model=True,
        absent=("out",),
    ),
    # --- validate and train
    Case(
        "validate-csv-is-a-folder",
        lambda r: [
            "validate",
            "--data",
            _validate_tree(r),
            "--results",
            r / "tree",
            "--csv",
            (r / "c").mkdir() or r / "c",
            "--overwrite",
        ],
        "is a folder",
    ),
    Case(
        "validate-csv-exists",
        lambda r: [
            "validate",
            "--data",
            _validate_tree(r),
            "--results",
            r / "tree",
            "--csv",
            (r / "c.csv").write_text("precious") and r / "c.csv",
        ],
        "already exists; use --overwrite",
    ),
    Case(
        "validate-data-is-a-file",
        lambda r: ["validate", "--data", _clip(r)[0], "--results", r],
        "is a file, not a folder",
    ),
    Case(
        "validate-data-missing",
        lambda r: ["validate", "--data", r / "nowhere", "--results", r],
        "does not exist",
    ),
    Case(
        "export-onto-a-file",
        lambda r: ["export", "--model", "default", "-o", _clip(r)[1], "--overwrite"],
        "exists and is not a folder",
    ),
    Case(
        "train-resume-of-a-finished-run",
        lambda r: ["train", "--out", _finished_run(r), "--resume"],
        "the run is complete",
    ),
]


def _md5s(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(tmp_path, case, monkeypatch):
    from tests.doubles import ColourPropagator

    double = ColourPropagator()
    if not case.real_model:
        monkeypatch.setattr(
            "vostrack.registry.load_propagator", lambda name, *_, **__: (double, {"name": name})
        )
    args = _interrupted_at_fps(tmp_path, double) if case.setup is None else case.setup(tmp_path)
    held = case.hold(tmp_path) if case.hold else None
    before = _md5s(tmp_path)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if held is not None:
        os.close(held)
    assert result.exit_code == case.exit, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case.message in lines[0], lines[0]
    assert "unexpected" not in lines[0]
    after = _md5s(tmp_path)
    changed = [k for k in before if after.get(k) != before[k]]
    assert changed == [], changed  # nothing of the user's was touched or removed
    if case.id != "resume-with-another-fps":
        assert set(after) == set(before), set(after) ^ set(before)  # nor anything added
    for path in case.absent:
        assert not os.path.lexists(tmp_path / path), path
    assert double.steps == 0  # refused before any frame was computed
