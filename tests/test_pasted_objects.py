"""Tests of the multi-object clips (vostrack.data.pasted_objects): objects of a small images+masks
tree pasted onto the clips of a small DAVIS tree, both written here.

The video's object is a flat red square, each pasted object a flat shape of its own colour on
grey noise, so that "the pixels of id k show one colour on every frame" checks that ids follow
the objects; the same generator state gives the same video clip with and without pasting, so
what pasting did to the video's object is seen exactly.
"""

from __future__ import annotations

import json
import pickle

import cv2
import numpy as np
import pytest

from tests.conftest import fails
from tests.test_static_clips import OBJECTS, _write
from tests.test_video_datasets import COLOURS, IDENTITY, write_davis
from vostrack.data.batches import ClipBatches, LoaderConfig
from vostrack.data.clips import VOID
from vostrack.data.pasted_objects import PastedObjectsSource, PasteSettings
from vostrack.data.static_clips import find_image_mask_pairs
from vostrack.data.video_datasets import DavisDataset, VideoClipSource, VideoSamplingConfig
from vostrack.errors import VostrackError

FRAMES = 5
PALETTE = [np.array(COLOURS[1])] + [np.array(c) for c, _ in OBJECTS.values()]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("paste")
    write_davis(root / "davis", ["a", "b"], num_frames=12)
    rng = np.random.default_rng(0)
    for stem, (colour, shape) in OBJECTS.items():
        _write(root / "objects", stem, colour, shape, rng, jpeg_mask=False)
    return root


def _source(trees, **settings):
    video = VideoClipSource(
        DavisDataset(trees / "davis", split=None),
        VideoSamplingConfig(num_frames=FRAMES, max_gap=2, augment=IDENTITY),
    )
    values = {
        "probability": 1.0,
        "count": (2, 2),
        "size": (0.35, 0.45),
        "speed": (0.08, 0.12),
        "colour": 0.0,
        "min_object_pixels": 20,
        "attempts": 20,
        **settings,
    }
    return PastedObjectsSource(
        video, find_image_mask_pairs(trees / "objects"), PasteSettings(**values)
    )


def _colour_of(clip, k, t):
    """Mean colour of object k's pixels 2 px inside its outline on frame t (None if none)."""
    mask = (clip.labels[t] == k).astype(np.uint8)
    inner = cv2.erode(mask, np.ones((5, 5), np.uint8), borderValue=0) > 0
    return clip.frames[t][inner].mean(0) if inner.any() else None


def test_clips_get_the_pasted_objects_with_ids_that_follow_them(trees):
    source = _source(trees, count=(2, 3))
    counts = []
    for seed in range(12):
        clip = source.sample(np.random.default_rng(seed))
        counts.append(clip.num_objects)
        assert clip.labels.shape == (FRAMES, 64, 96) and clip.num_objects <= 4
        present = [(clip.labels[0] == k).sum() >= 20 for k in range(1, clip.num_objects + 1)]
        assert all(present), "every object is visible on the reference"
        for k in range(1, clip.num_objects + 1):
            colours = [c for t in range(FRAMES) if (c := _colour_of(clip, k, t)) is not None]
            # One colour on every frame, an object's own: id k follows one object.
            assert np.abs(np.array(colours) - colours[0]).max() < 10, (seed, k)
            assert min(np.abs(colours[0] - p).max() for p in PALETTE) < 10, (seed, k)
        arrays = clip.to_arrays(4, 3)
        assert arrays["object_present"][0, : clip.num_objects].all()
    # The video's one object and two or three pasted ones.
    assert set(counts) <= {3, 4} and counts.count(4) >= 3 and counts.count(3) >= 3


def test_an_object_crossed_in_front_loses_the_pixels_of_its_occluder(trees):
    source = _source(trees, cross=1.0, behind=0.0)
    shrunk = 0
    for seed in range(10):
        alone = source.base.sample(np.random.default_rng(seed))
        clip = source.sample(np.random.default_rng(seed))
        assert alone.num_objects == 1 and clip.num_objects >= 2
        for t in range(FRAMES):
            before, after = alone.labels[t] == 1, clip.labels[t] == 1
            assert not (after & ~before).any()  # the video's object never grows
            hidden = before & ~after
            # Its hidden pixels belong to the pasted objects that cross it, not to the background.
            assert np.all(clip.labels[t][hidden] >= 2)
            shrunk += int(hidden.sum() > 0 and t > 0)
    assert shrunk >= 5  # the paths cross it


def test_an_object_pasted_behind_shows_only_on_the_background(trees):
    source = _source(trees, cross=1.0, behind=1.0, count=(1, 1))
    hidden_behind = 0
    for seed in range(8):
        alone = source.base.sample(np.random.default_rng(seed))
        clip = source.sample(np.random.default_rng(seed))
        assert clip.num_objects == 2
        np.testing.assert_array_equal(clip.labels == 1, alone.labels == 1)
        np.testing.assert_array_equal(
            clip.frames[alone.labels == 1], alone.frames[alone.labels == 1]
        )
        # Behind the video's object where they cross: fewer pixels than on a free frame.
        areas = (clip.labels == 2).sum(axis=(1, 2))
        hidden_behind += int(areas.min() < 0.9 * areas.max())
    assert hidden_behind >= 3


def test_batches_depend_only_on_the_step_and_the_source_pickles(trees):
    config = LoaderConfig(batch_size=2, steps_per_epoch=None, max_objects=4, max_parts=2, seed=5)
    batches = ClipBatches(_source(trees, count=(1, 3)), config)
    again = ClipBatches(pickle.loads(pickle.dumps(_source(trees, count=(1, 3)))), config)
    first = batches.batch_at_step(3)
    for key, value in again.batch_at_step(3).items():
        np.testing.assert_array_equal(first[key], value, err_msg=key)
    other = batches.batch_at_step(4)
    assert not np.array_equal(first["frames"], other["frames"])
    assert first["num_objects"].min() >= 2
    # Boxes and parts from the labels: consistent with the clip contract.
    boxes, present = first["object_boxes"], first["object_present"]
    for b in range(2):
        for t in range(FRAMES):
            for k in range(4):
                rows, cols = np.nonzero(first["labels"][b, t] == k + 1)
                assert present[b, t, k] == (rows.size > 0)
                if rows.size:
                    assert boxes[b, t, k].tolist() == [
                        rows.min(),
                        cols.min(),
                        rows.max() + 1,
                        cols.max() + 1,
                    ]
    assert not (first["labels"] == VOID).any()  # identity geometry: nothing unknown


def test_the_paste_section_of_a_config_reaches_the_source_end_to_end(trees, tmp_path):
    from vostrack.training.config import TrainConfig
    from vostrack.training.trainer import training_batches

    values = {
        "data": [{"path": str(trees / "davis")}, {"path": str(trees / "objects"), "weight": 0.0}],
        "size": 64,
        "num_frames": FRAMES,
        "max_objects": 4,
        "batch_size": 3,
        "steps": 10,
        "warmup_steps": 1,
        "video": {"davis_split": None},
        "paste": {"probability": 1.0, "count": [2, 3], "speed": [0.05, 0.1], "behind": 0.5},
    }
    config = TrainConfig.from_dict(values)
    loader = training_batches(config)
    source = loader.source.sources[0]
    assert isinstance(source, PastedObjectsSource) and len(source.pairs) == 3
    assert (source.settings.count, source.settings.speed, source.settings.behind) == (
        (2, 3),
        (0.05, 0.1),
        0.5,
    )
    batch = loader.batch_at_step(0)
    assert batch["frames"].shape == (3, FRAMES, 64, 64, 3)
    assert batch["num_objects"].min() >= 2
    written = config.to_dict()
    assert written["paste"]["count"] == [2, 3] and written["paste"]["turn"] == 10.0
    assert TrainConfig.from_dict(json.loads(json.dumps(written))) == config
    # paste.objects names the trees itself; without any images+masks tree there is none.
    named = TrainConfig.from_dict(
        {
            **values,
            "data": [values["data"][0]],
            "paste": {"probability": 0.5, "objects": [str(trees / "objects")]},
        }
    )
    assert isinstance(training_batches(named).source, PastedObjectsSource)
    off = TrainConfig.from_dict({**values, "paste": {}})
    assert isinstance(training_batches(off).source.sources[0], VideoClipSource)
    cases = [
        ({"probability": 1.0, "cuont": 2}, "unknown training option(s): paste.cuont"),
        ({"count": [0, 2]}, "training config: paste: count must be a range 1 <= min <= max"),
        ({"probability": 2}, "paste: probability must be in 0..1"),
    ]
    for index, (paste, message) in enumerate(cases):
        path = tmp_path / f"{index}.json"
        path.write_text(json.dumps({**values, "paste": paste}))
        fails(["train", "--config", path, "--out", tmp_path / "run"], message)
    assert not (tmp_path / "run").exists()
    lonely = TrainConfig.from_dict({**values, "data": [values["data"][0]]})
    with pytest.raises(VostrackError, match="^paste: no images[+]masks folder to cut"):
        training_batches(lonely)
