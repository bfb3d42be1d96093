"""Inference settings: a dataclass apart from the architecture, each field saying its kind, and
one path that changes them (`apply_overrides`, behind `--set` of segment / validate / export and
the benchmarks)."""

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
    InferenceSettings,
    ModelConfig,
    apply_overrides,
    model_from_dict,
    model_to_dict,
    setting_kinds,
)

FULL = ModelConfig(name="m")
SETTINGS = InferenceSettings()


def test_every_field_has_a_kind():
    kinds = setting_kinds()
    assert kinds["backbone"] == ARCHITECTURE and kinds["parts.fpn_channels"] == ARCHITECTURE
    assert kinds["matching.top_k"] == BAKED and kinds["parts.track"] == BAKED
    assert kinds["matching.memory_frames"] == RUN_TIME and kinds["mirror_average"] == RUN_TIME
    assert set(InferenceSettings.kinds()) == set(_leaves(SETTINGS.to_dict()))  # none left out
    architecture = {k for k, v in kinds.items() if v == ARCHITECTURE}
    assert architecture | {"name"} == set(_leaves(FULL.to_dict()))


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_a_model_file_round_trips_and_reads_the_earlier_mixed_layout():
    settings = apply_overrides(SETTINGS, ["parts.max_parts=3", "matching.top_k=7"])
    assert model_from_dict(model_to_dict(FULL, settings)) == (FULL, settings)
    earlier = {  # before the split: the settings inside the architecture's sections
        "name": "m",
        "working_short_side": 320,
        "matching": {"level": "C4", "top_k": 7, "memory_frames": 2},
        "parts": {"max_parts": 3, "fpn_channels": 128, "track": False},
        "mirror_average": True,
    }
    config, read = model_from_dict(earlier)
    assert config == FULL
    assert (read.working_short_side, read.matching.top_k, read.matching.memory_frames) == (
        320,
        7,
        2,
    )
    assert (read.parts.max_parts, read.parts.track, read.mirror_average) == (3, False, True)
    matching_only, _ = model_from_dict({"name": "x", "parts": None, "settings": {"parts": None}})
    assert matching_only.parts is None
    assert model_to_dict(matching_only, SETTINGS)["settings"]["parts"] is None


def test_settings_are_checked_against_the_architecture():
    with pytest.raises(VostrackError, match="pad_multiple must be a positive multiple of 32"):
        model_from_dict({"settings": {"pad_multiple": 16}})
    assert model_from_dict({"parts": None, "settings": {"pad_multiple": 16}})[0].parts is None
    with pytest.raises(VostrackError, match="parts.search_size must be a whole number >= 6"):
        apply_overrides(SETTINGS, ["parts.search_size=4"], FULL)
    with pytest.raises(TypeError):  # an architecture field in the settings: not a setting
        model_from_dict({"settings": {"fpn_channels": 64}})


def test_apply_overrides_changes_settings_and_checks_them():
    settings = apply_overrides(
        SETTINGS,
        [
            "parts.max_parts=3",
            "mirror_average=true",
            "matching.top_k=20",
            "matching.reference_share=null",
        ],
        FULL,
    )
    assert isinstance(settings, InferenceSettings)
    assert (settings.parts.max_parts, settings.mirror_average, settings.matching.top_k) == (
        3,
        True,
        20,
    )
    assert SETTINGS.parts.max_parts == 6  # new settings, the old ones unchanged
    cases = [
        (["backbone=resnet50_v2"], "defines the model"),
        (["parts.fpn_channels=64"], "defines the model"),
        (["matching.topk=3"], "no such setting"),
        (["parts.max_parts=0"], "parts.max_parts must be a whole number >= 1"),
        (["parts.max_parts"], "give KEY=VALUE"),
    ]
    for assignments, message in cases:
        with pytest.raises(VostrackError, match=message):
            apply_overrides(SETTINGS, assignments, FULL)
    with pytest.raises(VostrackError, match="built into the frozen graph"):
        apply_overrides(SETTINGS, ["matching.top_k=20"], FULL, allowed=(RUN_TIME,))
    with pytest.raises(VostrackError, match="no part path"):
        apply_overrides(SETTINGS, ["parts.max_parts=2"], ModelConfig(parts=None))


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
    manifest["format"] = "vostrack-matching/1"  # written by an earlier version,
    settings = manifest["config"].pop("settings")  # with the settings mixed in
    manifest["config"]["matching"].update(settings["matching"])
    for key in ("working_short_side", "pad_multiple", "mirror_average"):
        manifest["config"][key] = settings[key]
    (model / "manifest.json").write_text(json.dumps(manifest))
    propagator, info = load_propagator(str(model), "frozen", overrides=["matching.memory_frames=2"])
    assert propagator.memory.settings.memory_frames == 2
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
