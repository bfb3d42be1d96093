"""Data-parallel training over several devices, with each backend's own machinery.

TensorFlow: ``tf.distribute.MirroredStrategy`` (variables mirrored, the batch split by replica,
gradients all-reduced). JAX: ``keras.distribution.DataParallel`` (variables replicated on a 1-D
mesh, the batch sharded along its first axis; XLA inserts the all-reduces). One device: neither.

``devices=0`` takes every GPU there is (one CPU where there is none); ``devices=N`` the first N
devices of the default kind, which lets tests split a step over N virtual CPUs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from vostrack.errors import VostrackError

log = logging.getLogger(__name__)


class Replicas:
    """Where the trainer builds its variables and how it runs a step on a batch."""

    def __init__(self, devices: int = 0, batch_size: int = 1) -> None:
        import keras

        self.backend = keras.backend.backend()
        names = self._devices(devices)
        self.count = len(names)
        if batch_size % self.count:
            raise VostrackError(
                f"batch_size {batch_size} does not split over {self.count} "
                "devices: make it a multiple"
            )
        self.strategy: Any = None
        self.distribution: Any = None
        if self.count > 1:
            if self.backend == "tensorflow":
                import tensorflow as tf

                self.strategy = tf.distribute.MirroredStrategy(names)
            else:
                self.distribution = keras.distribution.DataParallel(devices=names)
            log.info("training on %d devices: %s", self.count, ", ".join(names))
        if self.backend == "jax":
            # global in Keras: the trainer owns it (and clears one a previous trainer set)
            keras.distribution.set_distribution(self.distribution)

    def _devices(self, wanted: int) -> list[str]:
        if wanted < 0:
            raise VostrackError(f"devices must be >= 0, got {wanted}")
        if self.backend == "tensorflow":
            import tensorflow as tf

            gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
            found = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
        elif self.backend == "jax":
            import keras

            found = keras.distribution.list_devices()
        else:
            found = ["cpu:0"]
        if wanted == 0:
            return found if found and ("GPU" in found[0].upper()) else found[:1]
        if wanted > len(found):
            raise VostrackError(
                f"devices: {wanted} asked for, {len(found)} found ({', '.join(found)})"
            )
        return found[:wanted]

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Create the network and the optimizers in here."""
        if self.strategy is not None:
            with self.strategy.scope():
                yield
        else:
            yield

    def place(self, batch: dict[str, np.ndarray]) -> Any:
        """The batch as the step takes it: split by replica (TF) or sharded (JAX)."""
        if self.strategy is not None:
            per = next(iter(batch.values())).shape[0] // self.count

            def local(context: Any) -> dict[str, np.ndarray]:
                i = context.replica_id_in_sync_group
                return {k: v[i * per : (i + 1) * per] for k, v in batch.items()}

            return self.strategy.experimental_distribute_values_from_function(local)
        if self.distribution is not None:
            import keras

            return {
                k: keras.distribution.distribute_tensor(
                    v, self.distribution.get_data_layout(v.shape)
                )
                for k, v in batch.items()
            }
        return batch

    def run_tf(self, replica_step: Callable[..., Any], batch: Any, *args: Any) -> Any:
        """Run ``replica_step`` on each replica (inside a tf.function); the first one's results
        (identical everywhere: the step all-reduces them)."""
        if self.strategy is None:
            return replica_step(batch, *args)
        results = self.strategy.run(replica_step, args=(batch, *args))
        import tensorflow as tf

        return tf.nest.map_structure(
            lambda r: self.strategy.experimental_local_results(r)[0], results
        )
