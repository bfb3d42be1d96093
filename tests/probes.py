"""Functions run in worker processes by tests; this module imports nothing heavy on purpose
(unpickling a function imports its module in the worker)."""

from __future__ import annotations

import sys


def heavy_modules(step: int) -> tuple[int, list[str]]:
    """The step and which of Keras / TensorFlow / JAX the calling process has imported."""
    return step, sorted(m for m in ("keras", "tensorflow", "jax") if m in sys.modules)
