"""The training batches as a ``keras.utils.PyDataset``, for ``model.fit``-style loops.

Backend-neutral: the batches are dicts of numpy arrays (vostrack/data/batches.py), which Keras
feeds to TF and JAX alike; ``workers`` / ``use_multiprocessing`` are PyDataset's. vostrack's own
trainer uses :class:`~vostrack.data.batches.ClipBatches` directly, with its own worker pool.
"""

from __future__ import annotations

import keras
import numpy as np

from vostrack.data.batches import (
    ClipBatches,
    LoaderConfig,
    MixedSource,
    ProceduralClipConfig,
    ProceduralSource,
    collate,
    source_from_path,
)
from vostrack.data.clips import ClipSource

__all__ = [
    "ClipLoader",
    "ClipBatches",
    "LoaderConfig",
    "MixedSource",
    "ProceduralClipConfig",
    "ProceduralSource",
    "collate",
    "source_from_path",
]


class ClipLoader(keras.utils.PyDataset):
    """Batches of clips from ``source`` as dicts of fixed-shape numpy arrays.

    ``loader[index]`` is batch ``index`` of the current ``epoch`` (counted by
    :meth:`on_epoch_end`; set ``epoch`` to resume); :meth:`batch` gives any (epoch, index)
    directly, and :meth:`batch_at_step` any training step.
    """

    def __init__(self, source: ClipSource, config: LoaderConfig = LoaderConfig(), *,
                 epoch: int = 0, workers: int = 1, use_multiprocessing: bool = False,
                 max_queue_size: int = 10) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.batches = ClipBatches(source, config)
        self.epoch = int(epoch)

    source = property(lambda self: self.batches.source)
    config = property(lambda self: self.batches.config)
    source_names = property(lambda self: self.batches.source_names)

    def __repr__(self) -> str:
        return f"ClipLoader({self.source!r}, batch_size={self.config.batch_size})"

    def __len__(self) -> int:
        if self.config.steps_per_epoch is None:
            raise TypeError("an infinite ClipLoader has no length")
        return self.config.steps_per_epoch

    @property
    def num_batches(self) -> int | None:
        return self.config.steps_per_epoch

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if self.config.steps_per_epoch is not None and not 0 <= index < self.config.steps_per_epoch:
            raise IndexError(f"batch {index} out of range 0..{self.config.steps_per_epoch - 1}")
        return self.batches.batch(self.epoch, int(index))

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def step(self, epoch: int, index: int) -> int:
        return self.batches.step(epoch, index)

    def batch_at_step(self, step: int) -> dict[str, np.ndarray]:
        return self.batches.batch_at_step(step)

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        return self.batches.batch(epoch, index)

    def sample(self, epoch: int, index: int, i: int) -> dict[str, np.ndarray]:
        return self.batches.sample(epoch, index, i)
