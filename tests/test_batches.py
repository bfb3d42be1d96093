"""Training batches (vostrack.data.batches): reproducibility, fixed shapes, mixing, the
procedural source and the construction of a source from a --data path."""

from __future__ import annotations

import numpy as np
import pytest

from vostrack.data.batches import ClipBatches, LoaderConfig, MixedSource, source_from_path
from vostrack.data.clips import VOID, AugmentConfig, Clip
from vostrack.data.procedural import ProceduralClipConfig, ProceduralSource
from vostrack.errors import VostrackError

SIZE = (48, 64)


class Squares:
    """A cheap stub source: a square of a random colour at a random place, ``value`` in the
    corner (which source made it), recording the steps it was asked for."""

    def __init__(self, name: str, value: int, objects: int = 1) -> None:
        self.name = name
        self.value = value
        self.objects = objects
        self.steps: list[int] = []

    def sample(self, rng: np.random.Generator, step: int = 0) -> Clip:
        self.steps.append(step)
        frames = np.zeros((3, *SIZE, 3), np.uint8)
        labels = np.zeros((3, *SIZE), np.uint8)
        for k in range(1, self.objects + 1):
            y, x = rng.integers(0, 30), rng.integers(0, 40)
            frames[:, y : y + 12, x : x + 12] = rng.integers(0, 255, 3)
            labels[:, y : y + 12, x : x + 12] = k
        frames[:, 0, 0] = self.value
        labels[:, -1, :] = VOID
        return Clip(frames, labels, self.objects, source=self.name)


def _procedural(size=SIZE):
    return ProceduralSource(
        ProceduralClipConfig(augment=AugmentConfig(size=size), object_size=(0.15, 0.3))
    )


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_same_batches_and_fixed_shapes():
    source = MixedSource([(_procedural(), 1.0), (Squares("squares", 7, objects=2), 1.0)])
    config = LoaderConfig(batch_size=3, steps_per_epoch=5, max_objects=4, max_parts=3, seed=7)
    batches = ClipBatches(source, config)
    first = batches.batch(0, 0)
    assert _equal(first, ClipBatches(source, config).batch(0, 0))
    assert _equal(first, batches.batch(0, 0))
    assert not _equal(first, batches.batch(0, 1))
    assert not _equal(
        first, ClipBatches(source, LoaderConfig(batch_size=3, seed=8, max_parts=3)).batch(0, 0)
    )
    expected = {
        "frames": ((3, 3, *SIZE, 3), np.uint8),
        "labels": ((3, 3, *SIZE), np.uint8),
        "num_objects": ((3,), np.int32),
        "object_valid": ((3, 4), bool),
        "object_present": ((3, 3, 4), bool),
        "object_boxes": ((3, 3, 4, 4), np.float32),
        "part_boxes": ((3, 3, 4, 3, 4), np.float32),
        "part_valid": ((3, 3, 4, 3), bool),
        "source": ((3,), np.int32),
    }
    for index in range(3):
        batch = batches.batch(0, index)
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
        assert np.all(batch["num_objects"] >= 1)
        np.testing.assert_array_equal(batch["object_valid"].sum(1), batch["num_objects"])


def test_batches_depend_on_epoch_and_resume_by_step():
    source = Squares("squares", 1)
    config = LoaderConfig(batch_size=2, steps_per_epoch=4, seed=3)
    batches = ClipBatches(source, config)
    epoch0 = batches.batch(0, 2)
    epoch1 = batches.batch(1, 2)
    assert not _equal(epoch0, epoch1)
    fresh = ClipBatches(source, config)
    assert _equal(fresh.batch_at_step(2), epoch0) and _equal(fresh.batch_at_step(6), epoch1)
    # The training step reaches the source (gap schedules depend on it).
    source.steps.clear()
    fresh.batch(2, 3)
    assert source.steps == [11, 11]
    infinite = ClipBatches(source, LoaderConfig(batch_size=2, steps_per_epoch=None, seed=3))
    assert _equal(infinite.batch(0, 123), infinite.batch_at_step(123))


def test_mixing_weights_are_respected():
    a, b, c = Squares("a", 1), Squares("b", 2), Squares("c", 3)
    batches = ClipBatches(
        MixedSource([(a, 3.0), (b, 1.0), (c, 0.0)]),
        LoaderConfig(batch_size=50, max_parts=1, seed=0),
    )
    sources = np.concatenate([batches.batch(0, i)["source"] for i in range(8)])
    corner = np.concatenate([batches.batch(0, i)["frames"][:, 0, 0, 0, 0] for i in range(2)])
    assert set(corner) <= {1, 2}
    fraction = np.mean(sources == 0)
    assert 0.68 < fraction < 0.82, fraction
    assert not np.any(sources == 2)
    with pytest.raises(ValueError):
        MixedSource([(a, 0.0)])
    with pytest.raises(ValueError, match="unique"):
        MixedSource([(a, 1.0), (Squares("a", 5), 1.0)])


def test_one_hot_and_float_frames():
    batch = ClipBatches(
        Squares("s", 9, objects=2),
        LoaderConfig(
            batch_size=2, max_objects=3, max_parts=2, frames_dtype="float32", one_hot=True
        ),
    ).batch(0, 0)
    plain = ClipBatches(
        Squares("s", 9, objects=2), LoaderConfig(batch_size=2, max_objects=3, max_parts=2)
    ).batch(0, 0)
    assert batch["frames"].dtype == np.float32
    np.testing.assert_array_equal(batch["frames"], plain["frames"].astype(np.float32))
    onehot = batch["onehot"]
    assert onehot.shape == (2, 3, *SIZE, 4) and onehot.dtype == np.float32
    void = batch["labels"] == VOID
    np.testing.assert_array_equal(onehot.sum(-1), np.where(void, 0.0, 1.0))
    np.testing.assert_array_equal(onehot.argmax(-1)[~void], batch["labels"][~void])


def test_too_many_objects_are_subsampled():
    batch = ClipBatches(
        Squares("s", 1, objects=3), LoaderConfig(batch_size=4, max_objects=2, max_parts=2)
    ).batch(0, 0)
    assert np.all(batch["num_objects"] == 2) and batch["labels"][batch["labels"] != VOID].max() <= 2


def test_procedural_source_makes_consistent_multi_object_clips():
    source = _procedural((64, 64))
    counts = set()
    for seed in range(8):
        clip = source.sample(np.random.default_rng(seed))
        assert clip.frames.shape == (3, 64, 64, 3) and clip.num_objects >= 1
        assert clip.source == "procedural"
        counts.add(clip.num_objects)
        arrays = clip.to_arrays(4, 6)
        assert arrays["object_present"][0, : clip.num_objects].all()
    assert len(counts) > 1


def test_source_from_path(tmp_path):
    assert isinstance(source_from_path("procedural", size=SIZE), ProceduralSource)
    with pytest.raises(VostrackError):
        source_from_path(tmp_path / "nothing")
