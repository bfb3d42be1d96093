"""The Python API (vostrack/api.py) on the tiny real model: the lazy generator with frames as
a path or as arrays and masks as paths or arrays gives the labels the CLI writes; segment()
writes what `vostrack segment` writes; the README's example runs as printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import squares_clip, write_video
from vostrack.cli import cli
from vostrack.errors import VostrackError
from vostrack.io.frames import open_frames
from vostrack.io.palette import read_label_png, write_label_png

REPO = Path(__file__).resolve().parents[1]
FRAMES = 8


@pytest.fixture(scope="module")
def clip(tmp_path_factory, tiny_model):
    """A video with an object that appears on frame 3, its masks, and the CLI's PNGs of it."""
    root = tmp_path_factory.mktemp("api")
    frames, labels = squares_clip(num_frames=FRAMES, width=96, appear_at={3: 3})
    video = write_video(root / "clip.mp4", frames)
    first = np.where(labels[0] == 3, 0, labels[0]).astype(np.uint8)
    later = np.where(labels[3] == 3, 3, 0).astype(np.uint8)
    write_label_png(root / "00000.png", first)
    write_label_png(root / "00003.png", later)
    masks = [root / "00000.png", root / "00003.png"]
    result = CliRunner().invoke(
        cli,
        ["segment", str(video), *sum((["--mask", str(m)] for m in masks), []), "-o",
         str(root / "cli"), "--model", str(tiny_model), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cli_labels = [read_label_png(root / "cli" / f"{i:05d}.png") for i in range(FRAMES)]
    return root, video, masks, (first, later), cli_labels


@pytest.fixture(scope="module")
def model(tiny_model):
    import vostrack

    return vostrack.load_model(str(tiny_model))


def test_masks_from_a_video_path_and_png_paths_equal_the_clis_pngs(clip, model):
    root, video, masks, _, cli_labels = clip
    results = list(model.masks(video, masks))
    assert [i for i, _ in results] == list(range(FRAMES))
    for (_, labels), expected in zip(results, cli_labels):
        assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
    assert 3 in cli_labels[3] and 3 not in cli_labels[2]  # the later object joins on frame 3


def test_masks_from_arrays_is_lazy_and_equals_the_clis_pngs(clip, model):
    root, video, masks, (first, later), cli_labels = clip
    decoded = list(open_frames(video))
    pulled = []

    def frames():
        for i, frame in enumerate(decoded):
            pulled.append(i)
            yield frame

    given = first.copy()
    results = model.masks(frames(), {0: given, 3: later})
    assert pulled == []  # nothing read before the first result is asked for
    for index, labels in results:
        assert pulled[-1] == index  # one frame in, one result out: memory stays bounded
        assert np.array_equal(labels, cli_labels[index]), index
    assert np.array_equal(given, first)  # the caller's mask array is not touched
    # PNG paths with array frames: placed by the frame number in their names.
    by_name = [labels for _, labels in model.masks(iter(decoded), masks)]
    assert all(np.array_equal(a, b) for a, b in zip(by_name, cli_labels))


def test_segment_writes_what_the_cli_writes(clip, model, tmp_path):
    root, video, masks, _, cli_labels = clip
    summary = model.segment(video, masks, tmp_path / "out", overlay=tmp_path / "o.mp4")
    assert summary["status"] == "complete" and summary["frames_done"] == FRAMES
    for i in range(FRAMES):
        name = f"{i:05d}.png"
        assert (tmp_path / "out" / name).read_bytes() == (root / "cli" / name).read_bytes()
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["areas"] == json.loads((root / "cli" / "summary.json").read_text())["areas"]
    assert (tmp_path / "o.mp4").is_file()
    with pytest.raises(VostrackError, match="already holds results"):
        model.segment(video, masks, tmp_path / "out")


def test_bad_frames_and_masks_are_one_line_errors(clip, model):
    root, video, masks, (first, _), _ = clip
    with pytest.raises(VostrackError, match="uint8 RGB"):
        list(model.masks([np.zeros((4, 4), np.float32)], {0: first}))
    with pytest.raises(VostrackError, match="only 2 frames"):
        decoded = list(open_frames(video))[:2]
        list(model.masks(decoded, {0: first, 5: first}))
    with pytest.raises(VostrackError, match="holds no object"):
        model.masks(video, {0: np.zeros_like(first)})
    with pytest.raises(VostrackError, match="input not found"):
        model.masks(root / "missing.mp4", masks)


def test_the_readmes_example_runs_on_the_tiny_model(clip, tiny_model, tmp_path, capsys):
    root, video, masks, _, _ = clip
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    replaced = (
        code.replace('"default"', repr(str(tiny_model)))
        .replace('"examples/shapes.mp4"', repr(str(video)))
        .replace('"examples/shapes_mask.png"', repr(str(masks[0])))
        .replace('"out/shapes"', repr(str(tmp_path / "shapes")))
    )
    assert replaced.count(str(tiny_model)) == 1 and str(video) in replaced
    exec(compile(replaced, "README.md", "exec"), {})
    assert "complete 8" in capsys.readouterr().out
    assert (tmp_path / "shapes" / "summary.json").is_file()


def test_import_vostrack_stays_light():
    code = (
        "import sys, vostrack; "
        "heavy = [m for m in ('tensorflow', 'keras', 'cv2', 'vostrack.api') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "assert callable(vostrack.load_model) and 'vostrack.api' in sys.modules; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
