"""The training config (vostrack.training.config): its data sections reach every source, a
config file is checked to any depth in one line, and init_only takes part of a checkpoint."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from tests.conftest import fails
from tests.test_training import TINY
from vostrack.data.clips import AugmentSettings, ColourJitter, GapSchedule
from vostrack.data.procedural import ProceduralClipSettings, ProceduralSource
from vostrack.data.static_clips import StaticClipSettings, StaticClipSource
from vostrack.data.video_datasets import VideoClipSource, VideoSamplingSettings
from vostrack.training.config import TrainConfig
from vostrack.training.trainer import training_batches


def _data(root):
    from tests.test_cli_validate import make_tree
    from tests.test_static_clips import OBJECTS, _write

    make_tree(root / "tree", num_frames=5)
    rng = np.random.default_rng(0)
    for stem, (colour, shape) in OBJECTS.items():
        _write(root / "images", stem, colour, shape, rng)
    return [str(root / "tree"), str(root / "images"), "procedural"]


def test_every_data_setting_reaches_its_source(tmp_path):
    paths = _data(tmp_path)
    config = TrainConfig.from_dict(
        {
            "data": [{"path": p} for p in paths],
            "size": 64,
            "num_frames": 4,
            "steps": 50,
            "warmup_steps": 5,
            "max_gap": [2, 7],
            "augment": {"flip": 0.0, "zoom": [1.0, 1.2], "colour": {"hue": 0.0}},
            "video": {"reverse": 0.0, "max_objects": 2, "reference_gap_scale": 1.0},
            "static": {"deform": "tps", "object_size": [0.4, 0.5], "paste_distractor": 0.0},
            "procedural": {"reverse": 0.0, "objects": [2, 2], "depth_change_every": [3, 4]},
        }
    )
    assert config.augment.colour == ColourJitter(hue=0.0) and config.static.object_size == (
        0.4,
        0.5,
    )
    sources = {type(s): s for s in training_batches(config).source.sources}
    video, static = sources[VideoClipSource].config, sources[StaticClipSource].config
    procedural = sources[ProceduralSource].config
    for source in (video, static, procedural):
        assert source.num_frames == 4 and source.augment.size == (64, 64)
        assert source.augment.flip == 0.0 and source.augment.zoom == (1.0, 1.2)
        assert source.augment.colour.hue == 0.0
    assert video.max_gap == procedural.max_gap == GapSchedule(2, 7, 50)
    assert (video.reverse, video.max_objects, video.reference_gap_scale) == (0.0, 2, 1.0)
    assert (static.deform, static.object_size, static.paste_distractor) == ("tps", (0.4, 0.5), 0.0)
    assert (procedural.reverse, procedural.objects, procedural.depth_change_every) == (
        0.0,
        (2, 2),
        (3, 4),
    )
    batch = training_batches(config).batch_at_step(0)
    assert batch["frames"].shape == (4, 4, 64, 64, 3)


def test_a_config_without_the_sections_means_their_defaults():
    config = TrainConfig.from_dict({"steps": 10, "warmup_steps": 1})
    assert config.augment == AugmentSettings() and config.video == VideoSamplingSettings()
    assert config.static == StaticClipSettings()
    assert config.procedural == ProceduralClipSettings()
    written = config.to_dict()
    assert written["augment"]["colour"]["probability"] == 0.8
    assert TrainConfig.from_dict(json.loads(json.dumps(written))) == config
    off = TrainConfig.from_dict({**written, "augment": {**written["augment"], "colour": None}})
    assert off.augment.colour is None


def test_bad_section_options_are_refused_in_one_line(tmp_path):
    cases = [
        ('{"static": {"rotashun": 3}}', "unknown training option(s): static.rotashun"),
        (
            '{"augment": {"colour": {"hue": 0.1, "tint": 1}}}',
            "unknown training option(s): augment.colour.tint",
        ),
        ('{"augment": {"zoom": [2.0, 1.0]}}', "training config: augment: zoom must satisfy"),
        ('{"procedural": {"objects": [0, 2]}}', "objects must be a range 1 <= min <= max"),
        ('{"static": {"deform": "twirl"}}', "deform must be tps, elastic, random or none"),
        ('{"video": 3}', "video must be a mapping of options, not int"),
        ('{"init_only": ["fpn"]}', "init_only picks variables of init"),
    ]
    for index, (text, message) in enumerate(cases):
        path = tmp_path / f"{index}.json"
        path.write_text(text)
        fails(["train", "--config", path, "--out", tmp_path / "run"], message)
    assert not (tmp_path / "run").exists()


def test_init_only_takes_the_backbone_of_a_checkpoint(tmp_path):
    from vostrack.network.vos import VosNetwork
    from vostrack.training.checkpoints import NETWORK, network_arrays, save_arrays
    from vostrack.training.trainer import Trainer

    # Every value moved off what a build gives (constants included), so that a variable
    # equals the checkpoint's only if it was restored from it.
    saved = {
        k: a + np.asarray(1, a.dtype)
        for k, a in network_arrays(VosNetwork(TINY.model, weights=None)).items()
    }
    folder = tmp_path / "init"
    folder.mkdir()
    save_arrays(folder, NETWORK, saved)
    config = dataclasses.replace(TINY, init=str(folder), init_only=("backbone",))
    trainer = Trainer(config, tmp_path / "run")
    encoder = {v.path for v in trainer.network.encoder.variables}
    for variable in trainer.network.variables:
        same = np.array_equal(np.asarray(variable.numpy()), saved[variable.path])
        assert same == (variable.path in encoder), variable.path


def test_the_video_section_chooses_the_davis_image_set_and_youtube_meta(tmp_path):
    from tests.test_video_datasets import write_davis, write_youtube

    davis = write_davis(
        tmp_path / "davis",
        ["a", "b", "c"],
        sets={(2016, "train"): ["a", "b"], (2016, "val"): ["c"]},
    )
    youtube = write_youtube(tmp_path / "ytvos", ["v1"], meta=True)

    def dataset(path, **video):
        config = TrainConfig.from_dict(
            {
                "data": [{"path": str(path)}],
                "size": 64,
                "video": video,
                "steps": 10,
                "warmup_steps": 1,
            }
        )
        return training_batches(config).source.dataset

    assert dataset(davis).names == ["a", "b"]  # the train image set by default
    assert dataset(davis, davis_split="val").names == ["c"]
    assert dataset(davis, davis_split=None).names == ["a", "b", "c"]
    assert dataset(youtube).sequences[0].objects is not None  # from meta.json
    assert dataset(youtube, youtube_meta=False).sequences[0].objects is None
    fails(
        [
            "train",
            "--data",
            davis,
            "--out",
            tmp_path / "run",
            "--config",
            _written(tmp_path / "bad.json", {"video": {"davis_resolution": "1080p"}}),
        ],
        "no JPEGImages/1080p and Annotations/1080p",
    )


def _written(path, data):
    path.write_text(json.dumps(data))
    return path


def test_sequence_lists_come_from_files_and_are_recorded_as_names(tmp_path):
    from tests.test_video_datasets import write_davis

    davis = write_davis(tmp_path / "davis", ["a", "b", "c", "d"], num_frames=4)
    held_out = tmp_path / "held-out.txt"
    held_out.write_text("c\n\n  d \nc\n")
    values = {
        "data": [{"path": str(davis)}],
        "size": 64,
        "steps": 10,
        "warmup_steps": 1,
        "video": {"davis_split": None},
        "exclude": ["a", f"@{held_out}"],
        "val": str(davis),
        "val_sequences": f"@{held_out}",
    }
    config = TrainConfig.from_dict(values)
    assert config.exclude == ("a", "c", "d") and config.val_sequences == ("c", "d")
    assert training_batches(config).source.dataset.names == ["b"]
    # The run records the names: a resumed run trains on them whatever becomes of the file.
    written = json.loads(json.dumps(config.to_dict()))
    assert written["exclude"] == ["a", "c", "d"] and written["val_sequences"] == ["c", "d"]
    held_out.unlink()
    assert TrainConfig.from_dict(written) == config
    # --exclude @FILE on the command line is an override of the same field.
    other = tmp_path / "other.txt"
    other.write_text("b\n")
    plain = TrainConfig.from_dict({"steps": 10, "warmup_steps": 1})
    changed = dataclasses.replace(plain, exclude=(f"@{other}",))
    assert changed.exclude == ("b",)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    run = tmp_path / "run"
    fails(
        ["train", "--data", davis, "--exclude", f"@{tmp_path / 'nope.txt'}", "--out", run],
        "training config: exclude: no sequence list file",
        "nope.txt",
    )
    path = _written(tmp_path / "c.json", {"val_sequences": [f"@{empty}"]})
    fails(["train", "--config", path, "--out", run], "val_sequences:", "lists no sequences")
    assert not run.exists()


def test_validating_on_training_data_needs_the_sequences_held_out(tmp_path):
    from tests.test_video_datasets import write_davis

    davis = write_davis(tmp_path / "davis", ["a", "b"], num_frames=4)
    base = {"data": [str(davis), "procedural"], "steps": 10, "warmup_steps": 1}
    for refused in (
        {"val": str(davis)},
        {"val": str(davis / ".." / "davis"), "val_sequences": ["b"]},
        {"val": str(davis), "val_sequences": ["a", "b"], "exclude": ["b"]},
    ):
        path = _written(tmp_path / "bad.json", {**base, **refused})
        fails(["train", "--config", path, "--out", tmp_path / "run"], "is training data too")
    held_out = TrainConfig.from_dict(
        {**base, "val": str(davis), "val_sequences": ["b"], "exclude": ["b"]}
    )
    assert held_out.val_sequences == ("b",)
    other_tree = TrainConfig.from_dict({**base, "val": str(tmp_path / "elsewhere")})
    assert other_tree.val_sequences == ()


def test_long_clips_and_large_gaps_from_the_config(tmp_path):
    from tests.test_video_datasets import write_davis

    davis = write_davis(tmp_path / "davis", ["a"], num_frames=40)
    config = TrainConfig.from_dict(
        {
            "data": [str(davis)],
            "size": 64,
            "batch_size": 2,
            "num_frames": 6,
            "max_gap": [12, 14],
            "steps": 10,
            "warmup_steps": 1,
            "video": {"davis_split": None, "reference_gap_scale": 1.5},
        }
    )
    source = training_batches(config).source
    assert source.config.num_frames == 6 and source.config.max_gap == GapSchedule(12, 14, 10)
    assert source.config.reference_gap_scale == 1.5
    batch = training_batches(config).batch_at_step(9)
    assert batch["frames"].shape == (2, 6, 64, 64, 3) and batch["part_boxes"].shape[1] == 6


def test_the_davis2016_train_validation_part_and_its_config(monkeypatch):
    from pathlib import Path

    import pytest

    from tests.conftest import SHARED_DATA
    from vostrack.data.pasted_objects import PastedObjectsSource
    from vostrack.evaluation.davis import DavisTree

    train, dev = SHARED_DATA / "davis2016-train", SHARED_DATA / "davis2016-dev"
    if not (train.is_dir() and dev.is_dir()):
        pytest.skip(f"needs the shared data ({SHARED_DATA}), absent here")
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # config paths are relative to the repository root
    split = repo / "configs" / "splits" / "davis2016-train-val.txt"
    names = split.read_text().split()
    listed = (train / "ImageSets" / "2016" / "train.txt").read_text().split()
    assert 5 <= len(names) <= 8 and set(names) < set(listed)
    assert not set(names) & set(DavisTree(dev).sequences())
    # `vostrack validate --image-set` reads the same file.
    assert DavisTree(train).sequences(set_file=split) == names
    config = TrainConfig.from_dict(json.loads((repo / "configs/train-cpu-split.json").read_text()))
    assert config.val_sequences == tuple(names) and set(names) <= set(config.exclude)
    assert config.num_frames >= 5 and config.max_gap[1] > 10
    video = training_batches(config).source.sources[0]
    assert isinstance(video, PastedObjectsSource)
    assert sorted(video.base.dataset.names) == sorted(set(listed) - set(names))
