"""The matching branch: labels propagated from a memory of encoded frames by pixel affinity.

Every query cell of the current frame is compared (cosine similarity of L2-normalised features)
with the cells of the memory frames; the ``top_k`` best matches vote, with softmax weights at
``temperature``, for their stored object probabilities. Reference (annotated) frames are searched
over the whole frame; previous frames only within a window of ``radius`` cells, which keeps
distant look-alikes from stealing an object. Written with keras.ops only (TF, JAX, torch).
"""

from __future__ import annotations

from typing import Any

from keras import ops

_DISALLOWED = -1e4  # affinity given to memory cells a query may not match (softmax weight 0)


def l2_normalize(features: Any, axis: int = -1) -> Any:
    return features / ops.sqrt(ops.sum(ops.square(features), axis=axis, keepdims=True) + 1e-12)


def local_window(height: Any, width: Any, radius: int) -> Any:
    """(h*w, h*w) bool: cell j lies within ``radius`` cells (Chebyshev) of cell i."""
    ys = ops.repeat(ops.arange(height), width)
    xs = ops.tile(ops.arange(width), [height])
    near_y = ops.abs(ops.expand_dims(ys, 1) - ops.expand_dims(ys, 0)) <= radius
    near_x = ops.abs(ops.expand_dims(xs, 1) - ops.expand_dims(xs, 0)) <= radius
    return ops.logical_and(near_y, near_x)


def propagate_labels(query: Any, memory_keys: Any, memory_probs: Any, memory_local: Any,
                     memory_valid: Any, radius: int, top_k: int, temperature: float) -> Any:
    """Object probabilities of each query cell.

    query (h, w, C) L2-normalised; memory_keys (M, h, w, C); memory_probs (M, h, w, K+1)
    (background first); memory_local (M,) bool, True for frames searched only locally;
    memory_valid (M,) bool, False for padding entries. Returns (h, w, K+1), rows summing to 1.
    """
    shape = ops.shape(query)
    height, width, channels = shape[0], shape[1], shape[2]
    cells = height * width
    num_memory = ops.shape(memory_keys)[0]
    q = ops.reshape(query, (cells, channels))
    keys = ops.reshape(memory_keys, (num_memory * cells, channels))
    probs = ops.reshape(memory_probs, (num_memory * cells, ops.shape(memory_probs)[-1]))
    affinity = ops.reshape(ops.matmul(q, ops.transpose(keys)), (cells, num_memory, cells))

    window = ops.expand_dims(local_window(height, width, radius), 1)  # (cells, 1, cells)
    local = ops.reshape(memory_local, (1, -1, 1))
    valid = ops.reshape(memory_valid, (1, -1, 1))
    allowed = ops.logical_and(valid, ops.logical_or(ops.logical_not(local), window))
    affinity = ops.where(allowed, affinity, _DISALLOWED)
    affinity = ops.reshape(affinity, (cells, num_memory * cells))

    values, indices = ops.top_k(affinity, top_k)
    weights = ops.softmax(values / temperature, axis=-1)
    # Matches that are not allowed (fewer than top_k allowed cells) must not vote at all.
    weights = ops.where(values > _DISALLOWED / 2, weights, 0.0)
    weights = weights / (ops.sum(weights, axis=-1, keepdims=True) + 1e-12)
    votes = ops.take(probs, indices, axis=0)  # (cells, top_k, K+1)
    out = ops.sum(ops.expand_dims(weights, -1) * votes, axis=1)
    return ops.reshape(out, (height, width, -1))
