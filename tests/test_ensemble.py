"""Test-time mirroring (vostrack.inference.ensemble): each frame's labels are the argmax of the
two members' probabilities averaged, and both members move on from those labels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import write_frame_folder
from tests.test_parts_model import CONFIG as PARTS_CONFIG
from tests.test_parts_model import SETTINGS as PARTS_SETTINGS
from tests.test_parts_model import eager
from vostrack.cli import cli
from vostrack.data.procedural import SceneConfig, make_clip
from vostrack.inference.ensemble import MirroredPropagator, mirror
from vostrack.inference.propagator import MatchingPropagator, PartsPropagator, label_map
from vostrack.inference.runtimes import KerasRuntime
from vostrack.io.palette import read_label_png, write_label_png
from vostrack.network.vos import VosNetwork
from vostrack.registry import load_propagator


@pytest.fixture(scope="module")
def clip():
    # 100 px wide: the mirror image's padding (to 128) puts the objects on another grid phase
    return make_clip(
        SceneConfig(
            height=96, width=100, num_frames=6, num_objects=2, seed=5, object_size=(0.25, 0.35)
        )
    )


class Recorder:
    """A runtime that keeps every ``step`` output."""

    def __init__(self, runtime):
        self.runtime, self.config, self.steps = runtime, runtime.config, []
        self.settings = runtime.settings

    def run(self, function, inputs, skip=()):
        out = self.runtime.run(function, inputs)  # everything: the test compares both
        if function == "step":
            self.steps.append(out)
        return out


def run_video(propagator, frames, labels):
    reference = propagator.encode_reference(frames[0], labels[0])
    state = propagator.initial_state(frames[0], labels[0], reference, encoded=True)
    masks, states = [labels[0]], [state]
    for frame in frames[1:]:
        predicted, state = propagator.step(frame, reference, state)
        masks.append(predicted)
        states.append(state)
    return np.stack(masks), states, reference


def test_the_labels_are_the_argmax_of_both_members_averaged(tiny_network, clip):
    """Matching-only members keep their own memories, so the ensemble equals two separate runs,
    one on the video and one on its mirror image, averaged frame by frame."""
    frames, labels = clip
    runtime = KerasRuntime(tiny_network)
    plain, mirrored = Recorder(runtime), Recorder(runtime)
    run_video(MatchingPropagator(plain), frames, labels)
    run_video(
        MatchingPropagator(mirrored),
        np.ascontiguousarray(frames[:, :, ::-1]),
        np.ascontiguousarray(labels[:, :, ::-1]),
    )
    with eager():
        masks, _, _ = run_video(MirroredPropagator(MatchingPropagator(runtime)), frames, labels)
    disagree = 0
    for t, (a, b) in enumerate(zip(plain.steps, mirrored.steps), start=1):
        assert np.array_equal(np.argmax(a["probs"], -1), a["index"])  # probs: what index is of
        expected = label_map(np.argmax(a["probs"] + b["probs"][:, ::-1], -1), (1, 2))
        np.testing.assert_array_equal(masks[t], expected)
        disagree += int((a["index"] != b["index"][:, ::-1]).sum())
    assert disagree > 0  # the mirror image is another view, not the same computation
    for k in (1, 2):
        a, b = masks[1:] == k, labels[1:] == k
        iou = (a & b).sum(axis=(1, 2)) / (a | b).sum(axis=(1, 2))
        assert np.mean(iou) > 0.5, (k, iou)  # real masks (the tiny, untrained model)


def test_both_members_place_their_parts_from_the_averaged_labels(clip):
    frames, labels = clip
    settings = dataclasses.replace(
        PARTS_SETTINGS, parts=dataclasses.replace(PARTS_SETTINGS.parts, track=False)
    )
    base = PartsPropagator(KerasRuntime(VosNetwork(PARTS_CONFIG, settings)))
    with eager():
        masks, states, reference = run_video(MirroredPropagator(base), frames, labels)
    for t in range(1, len(frames)):
        before, after = states[t - 1], states[t]
        np.testing.assert_array_equal(
            after.plain.part_boxes,
            base._reseed(reference.plain.parts, masks[t], before.plain.part_boxes),
        )
        np.testing.assert_array_equal(
            after.mirrored.part_boxes,
            base._reseed(reference.mirrored.parts, mirror(masks[t]), before.mirrored.part_boxes),
        )
    assert reference.mirrored.parts.valid.sum() == reference.plain.parts.valid.sum()


def test_a_model_with_mirror_average_segments_through_the_cli(tiny_model, clip, tmp_path):
    frames, labels = clip
    model = tmp_path / "mirrored"  # the tiny model's files, its manifest set to mirror
    model.mkdir()
    for item in tiny_model.iterdir():
        if item.name != "manifest.json":
            (model / item.name).symlink_to(item)
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    manifest["config"]["settings"]["mirror_average"] = True
    (model / "manifest.json").write_text(json.dumps(manifest))
    propagator, info = load_propagator(str(model))
    assert isinstance(propagator, MirroredPropagator) and info["mirror_average"] is True
    plain, info = load_propagator(str(model), mirror=False)  # segment --no-mirror
    assert isinstance(plain, MatchingPropagator) and info["mirror_average"] is False
    # the frozen graph computes only what is fetched: a plain step leaves the probabilities out
    reference = plain.encode_reference(frames[0], labels[0])
    state = plain.initial_state(frames[0], labels[0], reference, encoded=True)
    lean = plain.run_step(frames[1], reference, state)
    full = plain.run_step(frames[1], reference, state, skip=())
    assert "probs" not in lean and set(full) == set(lean) | {"probs"}
    np.testing.assert_array_equal(lean["index"], np.argmax(full["probs"], -1))

    video = tmp_path / "frames"
    write_frame_folder(video, frames)  # PNG: the frames the CLI reads are these very pixels
    first = tmp_path / "first.png"
    write_label_png(first, labels[0])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["segment", str(video), "--mask", str(first), "--model", str(model), "-o", str(out), "-q"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["model"]["mirror_average"] is True
    masks = [read_label_png(out / f"{t:05d}.png") for t in range(len(frames))]
    direct, _, _ = run_video(propagator, frames, labels)
    for t in range(1, len(frames)):
        np.testing.assert_array_equal(masks[t], direct[t])
    # --no-mirror overrides the model; resuming the mirrored run without it is another job
    result = CliRunner().invoke(
        cli,
        [
            "segment",
            str(video),
            "--mask",
            str(first),
            "--model",
            str(model),
            "-o",
            str(out),
            "-q",
            "--resume",
            "--no-mirror",
        ],
    )
    assert result.exit_code == 2 and "model" in result.stderr, result.output
