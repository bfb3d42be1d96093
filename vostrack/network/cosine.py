"""L2 normalisation along the channels, the one step of every cosine similarity in the network:
the matching keys (:mod:`.matching`, through :meth:`.vos.VosNetwork.batch_features`), the
tracker's similarity (:mod:`.tracker`) and the mask head's prototypes (:mod:`.mask_head`).
``keras.ops`` only.
"""

from __future__ import annotations

from typing import Any

from keras import ops


def l2_normalize(x: Any, epsilon: float, axis: int = -1, rsqrt: bool = False) -> Any:
    """``x / sqrt(sum(x^2, axis) + epsilon)``: unit vectors along ``axis``; an all-zero vector (a
    cell outside the frame, a padding row) stays zero, the ``epsilon`` keeping it from 0 / 0.

    epsilon: no default on purpose: each caller states the one its weights were trained and its
        graphs exported with (matching keys 1e-12; tracker and mask head 1e-6).
    rsqrt: compute ``x * rsqrt(s)`` instead of ``x / sqrt(s)``. The same value mathematically,
        but not to the last bit (one rounding instead of two: they differ in the last place on
        about 40 % of the elements on TF's CPU kernels), so every caller keeps the form it has
        always used: plain division for the matching keys, rsqrt for the tracker and the mask
        head.
    """
    squares = ops.sum(ops.square(x), axis=axis, keepdims=True) + epsilon
    if rsqrt:
        return x * ops.rsqrt(squares)
    return x / ops.sqrt(squares)
