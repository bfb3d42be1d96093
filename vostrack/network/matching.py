"""The matching branch: labels propagated from a memory of encoded frames by pixel affinity.

Every query cell of the current frame is compared (cosine similarity of features L2-normalised
with :data:`KEY_EPSILON`) with cells of the memory frames; the ``top_k`` best matches vote, with
softmax weights at ``temperature``, for their stored object probabilities. Reference
(annotated) frames are searched over the whole frame; previous frames only within a window of
``radius`` cells, which keeps distant look-alikes from stealing an object and, since only the
window's cells are candidates, makes the top-k search several times cheaper. Written with
keras.ops only (TF, JAX, torch).
"""

from __future__ import annotations

from typing import Any

from keras import ops

from vostrack.network.config import UNKNOWN

_DISALLOWED = -1e4  # affinity given to candidates a query may not match (softmax weight 0)
__all__ = [
    "KEY_EPSILON",
    "UNKNOWN",
    "propagate_labels",
    "read_votes",
    "window_affinity",
    "window_indices",
]
#: The epsilon of the keys' L2 normalisation (:func:`vostrack.network.cosine.l2_normalize`, in
#: its division form): the one the shipped models were exported with.
KEY_EPSILON = 1e-12


def window_indices(height: Any, width: Any, radius: int) -> tuple[Any, Any]:
    """For each cell, the flat indices of the cells within ``radius`` (Chebyshev) of it, and
    whether each lies inside the grid: two (h*w, (2r+1)^2) arrays (int32, bool)."""
    offsets = ops.arange(-radius, radius + 1)
    dy = ops.repeat(offsets, 2 * radius + 1)
    dx = ops.tile(offsets, [2 * radius + 1])
    ys = ops.expand_dims(ops.repeat(ops.arange(height), width), 1) + dy
    xs = ops.expand_dims(ops.tile(ops.arange(width), [height]), 1) + dx
    inside = ops.logical_and(
        ops.logical_and(ys >= 0, ys < height), ops.logical_and(xs >= 0, xs < width)
    )
    index = ops.clip(ys, 0, height - 1) * width + ops.clip(xs, 0, width - 1)
    return ops.cast(index, "int32"), inside


#: Query tile of :func:`window_affinity`, in cells: 8 was the fastest of 6, 8 and 12 at 480p on
#: TF and LiteRT alike (benchmarks/RESULTS.md).
WINDOW_TILE = 8


def window_affinity(query: Any, keys: Any, radius: int, tile: int = WINDOW_TILE) -> Any:
    """Affinity of each query cell with the cells within ``radius`` of it in each memory frame:
    query (h, w, C), keys (P, h, w, C) -> (P, h*w, W), W = (2r+1)^2 in
    :func:`window_indices`' order (cells outside the frame: arbitrary, the caller masks them).

    Only the windows are computed: the query is cut into ``tile`` x ``tile`` tiles and each
    tile is multiplied with its region of the keys ((tile + 2r)^2 cells), about 40 % of the
    products of the dense (h*w x h*w) affinity at 480p, and the gather that picks each window
    reads a tensor 2.5x smaller. The values are the dense affinity's (the same dot products);
    on LiteRT, whose matrix products between two activations are slow, it is 4x faster.
    """
    r, t = radius, tile
    span = t + 2 * r
    shape = ops.shape(query)
    height, width, channels = shape[0], shape[1], shape[2]
    num = ops.shape(keys)[0]
    rows, cols = (height + t - 1) // t, (width + t - 1) // t
    hp, wp = rows * t, cols * t
    tiles = ops.reshape(
        ops.pad(query, [[0, hp - height], [0, wp - width], [0, 0]]), (rows, t, cols, t, channels)
    )
    tiles = ops.reshape(ops.transpose(tiles, (0, 2, 1, 3, 4)), (rows * cols, t * t, channels))
    # Each tile's region of the keys, padded by r around the frame (and to whole tiles).
    padded_width = wp + 2 * r
    flat_keys = ops.reshape(
        ops.pad(keys, [[0, 0], [r, hp - height + r], [r, wp - width + r], [0, 0]]),
        (num, (hp + 2 * r) * padded_width, channels),
    )
    steps = ops.arange(span)
    region_rows = ops.reshape(ops.arange(rows) * t, (-1, 1, 1, 1)) + ops.reshape(
        steps, (1, 1, -1, 1)
    )
    region_cols = ops.reshape(ops.arange(cols) * t, (1, -1, 1, 1)) + ops.reshape(
        steps, (1, 1, 1, -1)
    )
    region = ops.reshape(region_rows * padded_width + region_cols, (-1,))
    regions = ops.reshape(
        ops.take(flat_keys, region, axis=1), (num, rows * cols, span * span, channels)
    )
    affinity = ops.einsum("tqc,ptkc->ptqk", tiles, regions)  # (P, tiles, t*t, span*span)
    # Query (i, j) of a tile sees region cells (i + dy, j + dx), dy, dx in 0..2r.
    offsets = ops.arange(2 * r + 1)
    dy, dx = ops.repeat(offsets, 2 * r + 1), ops.tile(offsets, [2 * r + 1])
    i, j = ops.repeat(ops.arange(t), t), ops.tile(ops.arange(t), [t])
    within = (ops.expand_dims(i, 1) + dy) * span + ops.expand_dims(j, 1) + dx  # (t*t, W)
    pick = ops.reshape(ops.reshape(ops.arange(t * t) * span * span, (-1, 1)) + within, (-1,))
    size = (2 * r + 1) ** 2
    windows = ops.take(ops.reshape(affinity, (num, rows * cols, -1)), pick, axis=2)
    windows = ops.reshape(windows, (num, rows, cols, t, t, size))
    windows = ops.reshape(ops.transpose(windows, (0, 1, 3, 2, 4, 5)), (num, hp, wp, size))
    return ops.reshape(windows[:, :height, :width], (num, height * width, size))


def propagate_labels(
    query: Any,
    reference_keys: Any,
    reference_probs: Any,
    reference_valid: Any,
    recent_keys: Any,
    recent_probs: Any,
    recent_valid: Any,
    radius: int,
    top_k: int,
    temperature: float,
    reference_share: float | None = None,
) -> Any:
    """Object probabilities of each query cell.

    query (h, w, C) L2-normalised; reference_* : R annotated frames, searched globally;
    recent_* : P previous frames, searched within the window. keys (N, h, w, C), probs
    (N, h, w, K+1) with the background first, valid (N,) bool (False for padding entries).
    Returns (h, w, K+1), rows summing to 1.

    ``reference_share`` None: one top-k over both groups (the recent frames, closer in look,
    win most of the votes). A number: each group votes on its own and the two reads are mixed
    with that weight on the annotated frames, so that they keep a say however much the recent
    memory (written from the network's own, possibly wrong, masks) resembles the query.
    """
    shape = ops.shape(query)
    height, width, channels = shape[0], shape[1], shape[2]
    cells = height * width
    num_classes = ops.shape(reference_probs)[-1]
    num_ref, num_recent = ops.shape(reference_keys)[0], ops.shape(recent_keys)[0]
    q = ops.reshape(query, (cells, channels))

    # Global candidates: every cell of every reference frame.
    ref_keys = ops.reshape(reference_keys, (num_ref * cells, channels))
    global_aff = ops.matmul(q, ops.transpose(ref_keys))  # (cells, R*cells)
    ref_ok = ops.reshape(ops.repeat(reference_valid, cells), (1, -1))
    global_aff = ops.where(ref_ok, global_aff, _DISALLOWED)
    global_probs = ops.reshape(reference_probs, (num_ref * cells, num_classes))

    # Local candidates: the window around the query's own cell in each recent frame.
    index, inside = window_indices(height, width, radius)  # (cells, W)
    window = ops.shape(index)[1]
    local_aff = window_affinity(query, recent_keys, radius)  # (P, cells, W)
    local_ok = ops.logical_and(ops.reshape(recent_valid, (-1, 1, 1)), ops.expand_dims(inside, 0))
    local_aff = ops.where(local_ok, local_aff, _DISALLOWED)
    local_aff = ops.reshape(ops.transpose(local_aff, (1, 0, 2)), (cells, num_recent * window))
    recent_table = ops.reshape(recent_probs, (num_recent * cells, num_classes))

    def local_rows(chosen: Any) -> Any:
        """Local candidate j (frame j // W, window offset j % W) of each query -> its row of
        ``recent_table``: only the chosen votes are gathered, never a (cells, P*W, K+1)
        table of every candidate's probabilities."""
        cell = ops.take_along_axis(index, chosen % window, axis=1)
        return (chosen // window) * cells + cell

    if reference_share is not None:
        ref_read, ref_any = _vote(global_aff, global_probs, None, top_k, temperature)
        recent_read, recent_any = _vote(local_aff, recent_table, local_rows, top_k, temperature)
        a, b = reference_share * ref_any, (1.0 - reference_share) * recent_any
        mixed = (a * ref_read + b * recent_read) / ops.maximum(a + b, 1e-12)
        return ops.reshape(mixed, (height, width, num_classes))

    values, chosen = ops.top_k(ops.concatenate([global_aff, local_aff], axis=1), top_k)
    weights = _vote_weights(values, temperature)
    num_global = num_ref * cells
    from_global = ops.take(global_probs, ops.clip(chosen, 0, num_global - 1), axis=0)
    local = ops.clip(chosen - num_global, 0, num_recent * window - 1)
    from_local = ops.take(recent_table, local_rows(local), axis=0)
    votes = ops.where(ops.expand_dims(chosen < num_global, -1), from_global, from_local)
    return ops.reshape(read_votes(weights, votes), (height, width, num_classes))


def _vote_weights(values: Any, temperature: float) -> Any:
    weights = ops.softmax(values / temperature, axis=-1)
    # Candidates that are not allowed (fewer than top_k allowed ones) must not vote at all.
    weights = ops.where(values > _DISALLOWED / 2, weights, 0.0)
    return weights / (ops.sum(weights, axis=-1, keepdims=True) + 1e-12)


def _vote(affinity: Any, table: Any, rows: Any, top_k: int, temperature: float) -> tuple[Any, Any]:
    """One group's read: affinity (cells, M) over candidates whose probabilities are rows of
    ``table`` (candidate j of query i: row ``rows(j)[i]``; None: row j) -> ((cells, K+1) read,
    (cells, 1) 1.0 where the query had an allowed candidate in the group, else 0.0)."""
    values, chosen = ops.top_k(affinity, top_k)
    votes = ops.take(table, chosen if rows is None else rows(chosen), axis=0)
    allowed = ops.cast(values[:, :1] > _DISALLOWED / 2, "float32")
    return read_votes(_vote_weights(values, temperature), votes), allowed


def read_votes(weights: Any, votes: Any) -> Any:
    """(cells, k) weights summing to 1 and (cells, k, K+1) voted probabilities -> (cells, K+1).

    A memory frame older than an object's first annotation never saw it: its vote for that
    object is UNKNOWN (negative), not 0 (its "background" covered the object: in the judo
    example the late objects stand in the frame from the start). So each object's probability
    is the weighted mean over the candidates that know it, and the background is what the
    objects leave (all rescaled if they claim more than 1). When every candidate knows every
    object this is exactly ``sum_j w_j p_j``.
    """
    known = ops.cast(votes >= 0.0, "float32")
    probs = ops.maximum(votes, 0.0) * known
    w = ops.expand_dims(weights, -1)
    objects = ops.sum(w * probs, axis=1)[:, 1:] / ops.maximum(
        ops.sum(w * known, axis=1)[:, 1:], 1e-12
    )
    total = ops.sum(objects, axis=-1, keepdims=True)
    objects = objects / ops.maximum(total, 1.0)
    background = ops.maximum(1.0 - total, 0.0)
    return ops.concatenate([background, objects], axis=-1)
