"""Tests of the training loader (vostrack.data.loader): reproducibility, fixed shapes, mixing,
the procedural source, and running as a Keras PyDataset (threads here, JAX in a subprocess)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_on_jax
from vostrack.data.clips import VOID, AugmentConfig, Clip
from vostrack.data.loader import (
    ClipLoader,
    LoaderConfig,
    MixedSource,
    ProceduralClipConfig,
    ProceduralSource,
    source_from_path,
)
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
            frames[:, y:y + 12, x:x + 12] = rng.integers(0, 255, 3)
            labels[:, y:y + 12, x:x + 12] = k
        frames[:, 0, 0] = self.value
        labels[:, -1, :] = VOID
        return Clip(frames, labels, self.objects, source=self.name)


def _procedural(size=SIZE):
    return ProceduralSource(ProceduralClipConfig(augment=AugmentConfig(size=size),
                                                 object_size=(0.15, 0.3)))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_same_batches_and_fixed_shapes():
    source = MixedSource([(_procedural(), 1.0), (Squares("squares", 7, objects=2), 1.0)])
    config = LoaderConfig(batch_size=3, steps_per_epoch=5, max_objects=4, max_parts=3, seed=7)
    loader = ClipLoader(source, config)
    first = loader[0]
    assert _equal(first, ClipLoader(source, config)[0])
    assert _equal(first, loader[0])
    assert not _equal(first, loader[1])
    assert not _equal(first, ClipLoader(source, LoaderConfig(batch_size=3, seed=8,
                                                             max_parts=3))[0])
    expected = {
        "frames": ((3, 3, *SIZE, 3), np.uint8), "labels": ((3, 3, *SIZE), np.uint8),
        "num_objects": ((3,), np.int32), "object_valid": ((3, 4), bool),
        "object_present": ((3, 3, 4), bool), "object_boxes": ((3, 3, 4, 4), np.float32),
        "part_boxes": ((3, 3, 4, 3, 4), np.float32), "part_valid": ((3, 3, 4, 3), bool),
        "source": ((3,), np.int32),
    }
    for index in range(3):
        batch = loader[index]
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
        assert np.all(batch["num_objects"] >= 1)
        np.testing.assert_array_equal(batch["object_valid"].sum(1), batch["num_objects"])
    with pytest.raises(IndexError):
        loader[5]


def test_batches_depend_on_epoch_and_resume_by_step():
    source = Squares("squares", 1)
    config = LoaderConfig(batch_size=2, steps_per_epoch=4, seed=3)
    loader = ClipLoader(source, config)
    epoch0 = loader[2]
    loader.on_epoch_end()
    assert loader.epoch == 1
    epoch1 = loader[2]
    assert not _equal(epoch0, epoch1)
    fresh = ClipLoader(source, config)
    assert _equal(fresh.batch_at_step(2), epoch0) and _equal(fresh.batch_at_step(6), epoch1)
    assert _equal(ClipLoader(source, config, epoch=1)[2], epoch1)
    # The training step reaches the source (gap schedules depend on it).
    source.steps.clear()
    fresh.batch(2, 3)
    assert source.steps == [11, 11]
    infinite = ClipLoader(source, LoaderConfig(batch_size=2, steps_per_epoch=None, seed=3))
    assert infinite.num_batches is None
    assert _equal(infinite[123], infinite.batch_at_step(123))


def test_mixing_weights_are_respected():
    a, b, c = Squares("a", 1), Squares("b", 2), Squares("c", 3)
    loader = ClipLoader(MixedSource([(a, 3.0), (b, 1.0), (c, 0.0)]),
                        LoaderConfig(batch_size=50, max_parts=1, seed=0))
    sources = np.concatenate([loader[i]["source"] for i in range(8)])
    corner = np.concatenate([loader[i]["frames"][:, 0, 0, 0, 0] for i in range(2)])
    assert set(corner) <= {1, 2}
    fraction = np.mean(sources == 0)
    assert 0.68 < fraction < 0.82, fraction
    assert not np.any(sources == 2)
    with pytest.raises(ValueError):
        MixedSource([(a, 0.0)])
    with pytest.raises(ValueError, match="unique"):
        MixedSource([(a, 1.0), (Squares("a", 5), 1.0)])


def test_one_hot_and_float_frames():
    loader = ClipLoader(Squares("s", 9, objects=2),
                        LoaderConfig(batch_size=2, max_objects=3, max_parts=2,
                                     frames_dtype="float32", one_hot=True))
    batch = loader[0]
    plain = ClipLoader(Squares("s", 9, objects=2),
                       LoaderConfig(batch_size=2, max_objects=3, max_parts=2))[0]
    assert batch["frames"].dtype == np.float32
    np.testing.assert_array_equal(batch["frames"], plain["frames"].astype(np.float32))
    onehot = batch["onehot"]
    assert onehot.shape == (2, 3, *SIZE, 4) and onehot.dtype == np.float32
    void = batch["labels"] == VOID
    np.testing.assert_array_equal(onehot.sum(-1), np.where(void, 0.0, 1.0))
    np.testing.assert_array_equal(onehot.argmax(-1)[~void], batch["labels"][~void])


def test_too_many_objects_are_subsampled():
    loader = ClipLoader(Squares("s", 1, objects=3), LoaderConfig(batch_size=4, max_objects=2,
                                                                 max_parts=2))
    batch = loader[0]
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
        assert arrays["object_present"][0, :clip.num_objects].all()
    assert len(counts) > 1


def test_source_from_path(tmp_path):
    assert isinstance(source_from_path("procedural", size=SIZE), ProceduralSource)
    with pytest.raises(VostrackError):
        source_from_path(tmp_path / "nothing")


def test_pydataset_with_thread_workers_gives_the_same_batches():
    adapters = pytest.importorskip("keras.src.trainers.data_adapters.py_dataset_adapter")
    config = LoaderConfig(batch_size=2, steps_per_epoch=4, max_parts=2, seed=5)
    direct = [ClipLoader(Squares("s", 1), config)[i] for i in range(4)]
    loader = ClipLoader(Squares("s", 1), config, workers=2)
    adapter = adapters.PyDatasetAdapter(loader)
    adapter.on_epoch_begin()
    got = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    assert len(got) == 4
    assert all(_equal(a, b) for a, b in zip(got, direct))


_JAX_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    import jax
    import jax.numpy as jnp
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    from vostrack.data.clips import AugmentConfig
    from vostrack.data.loader import (ClipLoader, LoaderConfig, ProceduralClipConfig,
                                      ProceduralSource)

    assert keras.backend.backend() == "jax"
    source = ProceduralSource(ProceduralClipConfig(augment=AugmentConfig(size=(32, 32))))
    config = LoaderConfig(batch_size=2, steps_per_epoch=2, max_parts=2, one_hot=True,
                          frames_dtype="float32")
    loader = ClipLoader(source, config, workers=2, use_multiprocessing=True)
    adapter = PyDatasetAdapter(loader)
    adapter.on_epoch_begin()
    batches = list(adapter.get_jax_iterator())
    adapter.on_epoch_end()
    assert len(batches) == 2
    step = jax.jit(lambda b: (b["onehot"].sum(), b["part_boxes"].mean()))
    for index, batch in enumerate(batches):
        assert batch["frames"].shape == (2, 3, 32, 32, 3)
        direct = ClipLoader(source, config).batch(0, index)
        np.testing.assert_array_equal(np.asarray(batch["labels"]), direct["labels"])
        total, _ = step({k: jnp.asarray(v) for k, v in batch.items()})
        assert float(total) == float((direct["labels"] != 255).sum())
    assert "tensorflow" not in sys.modules, "the loader imported TensorFlow"
    print("JAX-OK")
""")


def test_pydataset_under_the_jax_backend_in_worker_processes():
    run = run_on_jax(_JAX_SCRIPT, Path.cwd())
    assert "JAX-OK" in run.stdout, run.stderr[-3000:]
