"""Batches made ahead by worker processes: the same batches, in step order, from workers that
import neither Keras, TensorFlow nor JAX."""

from __future__ import annotations

import numpy as np
import pytest

from tests.probes import heavy_modules
from tests.test_batches import _procedural
from vostrack.data.batches import ClipBatches, LoaderConfig
from vostrack.data.prefetch import Prefetcher
from vostrack.training.trainer import StepBatches


def test_workers_give_the_batches_of_the_loop_in_step_order():
    loader = ClipBatches(_procedural(), LoaderConfig(batch_size=2, steps_per_epoch=None, seed=3))
    make = StepBatches(loader)
    inline = list(Prefetcher(make, 5, 11, workers=0))
    with Prefetcher(make, 5, 11, workers=2, depth=3) as ahead:
        fetched = list(ahead)
    assert [s for s, _ in fetched] == [s for s, _ in inline] == list(range(5, 11))
    for (_, a), (_, b) in zip(inline, fetched):
        assert a.keys() == b.keys() and "source" not in a
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_workers_import_no_framework():
    import tensorflow  # noqa: F401  (the parent has it, as the trainer does)

    with Prefetcher(heavy_modules, 0, 2, workers=1) as ahead:
        assert list(ahead) == [(0, (0, [])), (1, (1, []))]


def test_negative_workers_are_refused():
    with pytest.raises(ValueError, match="workers"):
        Prefetcher(heavy_modules, 0, 1, workers=-1)
