"""Inference settings: each config field says its kind, and one path changes them
(`apply_overrides`, behind `--set` of segment / validate / export and the benchmarks)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import fails, squares_clip, write_video
from vostrack.errors import VostrackError
from vostrack.io.palette import write_label_png
from vostrack.network.config import (
    ARCHITECTURE,
    BAKED,
    RUN_TIME,
    ModelConfig,
    PartsModelConfig,
    apply_overrides,
    setting_kinds,
)

FULL = ModelConfig(name="m", parts=PartsModelConfig())


def test_every_field_has_a_kind():
    kinds = setting_kinds()
    assert kinds["backbone"] == ARCHITECTURE and kinds["parts.fpn_channels"] == ARCHITECTURE
    assert kinds["matching.top_k"] == BAKED and kinds["parts.track"] == BAKED
    assert kinds["matching.memory_frames"] == RUN_TIME and kinds["mirror_average"] == RUN_TIME
    assert set(kinds) == set(_leaves(FULL.to_dict()))  # no field left out


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_apply_overrides_changes_settings_and_checks_them():
    config = apply_overrides(
        FULL,
        [
            "parts.max_parts=3",
            "mirror_average=true",
            "matching.top_k=20",
            "matching.reference_share=null",
        ],
    )
    assert (config.parts.max_parts, config.mirror_average, config.matching.top_k) == (3, True, 20)
    assert FULL.parts.max_parts == 6  # a new config, the old one unchanged
    cases = [
        (["backbone=resnet50_v2"], "defines the model"),
        (["parts.fpn_channels=64"], "defines the model"),
        (["matching.topk=3"], "no such setting"),
        (["parts.max_parts=0"], "parts.max_parts must be a whole number >= 1"),
        (["parts.max_parts"], "give KEY=VALUE"),
    ]
    for assignments, message in cases:
        with pytest.raises(VostrackError, match=message):
            apply_overrides(FULL, assignments)
    with pytest.raises(VostrackError, match="built into the frozen graph"):
        apply_overrides(FULL, ["matching.top_k=20"], allowed=(RUN_TIME,))
    with pytest.raises(VostrackError, match="no part path"):
        apply_overrides(ModelConfig(parts=None), ["parts.max_parts=2"])


def test_segment_set_is_checked_against_the_frozen_graph_before_any_work(tmp_path):
    frames, labels = squares_clip(num_frames=4)
    video = write_video(tmp_path / "v.mp4", frames)
    write_label_png(tmp_path / "m.png", labels[0])
    args = ["segment", video, "--mask", tmp_path / "m.png", "-o", tmp_path / "out"]
    fails([*args, "--set", "matching.top_k=20"], "built into the frozen graph", "--runtime keras")
    fails([*args, "--set", "backbone=resnet50_v2"], "defines the model")
    fails([*args, "--set", "parts.max_parts=zero"], "parts.max_parts must be a whole number")
    assert not (tmp_path / "out").exists()


def test_load_propagator_applies_run_time_settings_and_reads_the_former_format(
    tiny_model, tmp_path
):
    from vostrack.inference.ensemble import MirroredPropagator
    from vostrack.registry import load_propagator

    model = tmp_path / "old"
    shutil.copytree(tiny_model, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["format"] = "vostrack-matching/1"  # written by an earlier version
    (model / "manifest.json").write_text(json.dumps(manifest))
    propagator, info = load_propagator(str(model), "frozen", overrides=["matching.memory_frames=2"])
    assert propagator.memory.config.memory_frames == 2
    assert info["overrides"] == ["matching.memory_frames=2"]
    mirrored, info = load_propagator(str(model), "frozen", mirror=True)
    assert isinstance(mirrored, MirroredPropagator) and info["mirror_average"] is True
    frames, labels = squares_clip(num_frames=3)
    reference = propagator.encode_reference(frames[0], labels[0])
    state = propagator.initial_state(frames[0], labels[0], reference, encoded=True)
    for frame in frames[1:]:
        predicted, state = propagator.step(frame, reference, state)
        assert predicted.shape == labels[0].shape and predicted.dtype == np.uint8
    assert len(state.recent) == 2  # the memory follows the override


def test_validate_set_is_a_setting_and_image_set_the_sequence_file(tmp_path, double):
    from click.testing import CliRunner

    from tests.test_cli_validate import make_tree
    from vostrack.cli import cli

    make_tree(tmp_path / "tree", num_frames=3)
    listing = tmp_path / "val.txt"
    listing.write_text("two\n")
    fails(["validate", "--data", tmp_path / "tree", "--set", listing], "--image-set")
    fails(
        [
            "validate",
            "--data",
            tmp_path / "tree",
            "--results",
            tmp_path,
            "--set",
            "parts.max_parts=2",
        ],
        "with --results there is nothing to run",
    )
    result = CliRunner().invoke(
        cli,
        [
            str(a)
            for a in [
                "validate",
                "--data",
                tmp_path / "tree",
                "--image-set",
                listing,
                "--output",
                tmp_path / "segs",
                "-q",
                "--set",
                "parts.max_parts=2",
            ]
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == ["two"]
