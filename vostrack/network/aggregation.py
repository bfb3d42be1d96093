"""Part masks back into the frame: paste, merge per object, fall back to the prior, and RGMP's
soft aggregation over objects. ``keras.ops`` only; no Python loop over parts; N (parts) may be a
``None`` dimension under TF (JAX: pad the parts to a fixed count, as everywhere).

Output grids. :func:`paste_parts` writes onto a stride-``stride`` grid of the padded frame whose
cell ``i`` is centred on the continuous pixel coordinate ``stride * i + stride - 0.5`` (pixel
``stride * i + stride - 1``): the feature-grid convention of :mod:`vostrack.network.boxes`, so
that ``stride=1`` is the frame's own pixels, and a stride-4 result is brought to the frame with
:func:`vostrack.network.roi.resize_aligned` (``ratio=4``) and read back as the next frame's
``prev_mask`` by :func:`vostrack.network.mask_head.crop_part_inputs` (``prev_stride=4``). Pasting
at stride 4 costs 1/16 of stride 1 in time and memory (every part is evaluated on the whole grid:
N x H x W values, 60 MB per array for 36 parts at 480x864 at stride 1).

Multi-image batches (training): give each part the global object id ``image * K + object`` and
``num_objects = B * K``; reshape the (B*K, h, w) result to (B, K, h, w).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras import ops

from vostrack.network.boxes import feature_to_pixel


def _paste_weights(start: Any, end: Any, size: int, out_size: Any, stride: int) -> tuple[Any, Any]:
    """Interpolation matrices along one axis.

    For windows [start, end) (N,) sampled by roi_align into ``size`` bins (bin ``i`` at pixel
    ``start + (i + 0.5) * (end - start) / size``), output cell ``y`` (centre ``c``) reads the
    continuous bin coordinate ``t = (c - start) / (end - start) * size - 0.5``, clamped to
    [0, size - 1] (within half a bin of the window's edge the edge bin is repeated): tent
    weights ``max(0, 1 - |t - i|)``, which sum to 1. Cells whose centre is outside [start, end)
    get all-zero rows. Returns the weights (N, out_size, size) and ``inside`` (N, out_size).
    """
    centres = feature_to_pixel(ops.cast(ops.arange(out_size), "float32"), stride)
    extent = end - start
    safe = ops.where(extent > 0.0, extent, 1.0)
    t = (centres - ops.expand_dims(start, 1)) / ops.expand_dims(safe, 1) * float(size) - 0.5
    t = ops.clip(t, 0.0, float(size - 1))
    bins = ops.arange(size, dtype="float32")
    weights = ops.relu(1.0 - ops.abs(ops.expand_dims(t, 2) - bins))
    inside = ops.logical_and(
        centres >= ops.expand_dims(start, 1), centres < ops.expand_dims(end, 1)
    )
    inside = ops.cast(ops.logical_and(inside, ops.expand_dims(extent > 0.0, 1)), "float32")
    return weights * ops.expand_dims(inside, 2), inside


def paste_parts(
    part_logits: Any,
    boxes: Any,
    object_index: Any,
    valid: Any,
    scores: Any,
    num_objects: int,
    out_hw: Sequence[Any],
    stride: int = 1,
    from_logits: bool = True,
    min_score: float = 0.0,
) -> tuple[Any, Any]:
    """Paste part crops into per-object maps: ``(object_probs (K, h, w), coverage (K, h, w))``.

    part_logits: (N, S, S, 1) (or (N, S, S)), crops of the windows ``boxes`` (N, 4) ``[y0, x0,
        y1, x1]`` in pixels of the padded frame, as :func:`vostrack.network.roi.roi_align` /
        :func:`vostrack.network.mask_head.crop_window` sample them (the inverse mapping).
    object_index: (N,) int in [0, num_objects); valid: (N,) bool; scores: (N,) part
        confidences (the tracker's, in [0, 1]).
    out_hw: (h, w) of the output grid (ints or run-time scalars), at ``stride`` (e.g. the padded
        frame's (H / 4, W / 4) with stride 4).
    from_logits: the crops are logits (bilinearly interpolated as logits, then sigmoid: sharper
        than interpolating probabilities when the grid is finer than the crop); False: they are
        probabilities, interpolated as they are.
    min_score: parts with ``score <= min_score`` contribute nothing (lost parts).

    Per pixel, the parts of an object whose window contains the pixel's centre are averaged with
    weights ``score * valid``: ``sum_n w_n p_n / sum_n w_n``. Where no such part (or only ones
    with weight 0) covers a pixel, the object's probability is 0 and its coverage 0; elsewhere
    ``coverage`` is the largest weight among the covering parts (in (0, 1] for scores in
    [0, 1]).
    """
    values = ops.cast(part_logits, "float32")
    if len(values.shape) == 4:
        values = values[..., 0]
    size = values.shape[1]
    if size is None or values.shape[2] != size:
        raise ValueError(f"paste_parts needs static square crops, got {part_logits.shape}")
    boxes = ops.stop_gradient(ops.cast(boxes, "float32"))  # as in the crops: no box gradient
    wy, iy = _paste_weights(boxes[:, 0], boxes[:, 2], size, out_hw[0], stride)
    wx, ix = _paste_weights(boxes[:, 1], boxes[:, 3], size, out_hw[1], stride)

    scores = ops.cast(scores, "float32")
    use = ops.logical_and(ops.cast(valid, "bool"), scores > float(min_score))
    weights = ops.where(use, scores, 0.0)
    # Padding rows may hold anything (even NaN logits): they never reach the arithmetic.
    values = ops.where(ops.reshape(use, (-1, 1, 1)), values, 0.0)
    pasted = ops.matmul(ops.matmul(wy, values), ops.transpose(wx, (0, 2, 1)))  # (N, h, w)
    if from_logits:
        pasted = ops.sigmoid(pasted)
    footprint = ops.reshape(weights, (-1, 1, 1)) * (
        ops.expand_dims(iy, 2) * ops.expand_dims(ix, 1)
    )  # (N, h, w)
    ids = ops.cast(object_index, "int32")
    total = ops.segment_sum(footprint, ids, num_segments=num_objects)
    weighted = ops.segment_sum(footprint * pasted, ids, num_segments=num_objects)
    covered = total > 0.0
    probs = ops.where(covered, weighted / ops.where(covered, total, 1.0), 0.0)
    # Empty segments come out as the lowest float from segment_max: clamp to 0.
    coverage = ops.maximum(ops.segment_max(footprint, ids, num_segments=num_objects), 0.0)
    return probs, coverage


def combine_with_prior(object_probs: Any, coverage: Any, prior_probs: Any) -> Any:
    """Per object and pixel: the parts' probability where the object has part coverage
    (``coverage > 0``), the matching prior elsewhere. All (K, h, w) on the same grid (bring the
    stride-16 prior to it with :func:`vostrack.network.roi.resize_aligned`, ratio 16 / stride).

    A hard switch, not a blend by coverage: the head already starts from the prior inside its
    windows (``logit(prior) + residual``), so the switch is seamless untrained, and a trained
    head's confident correction is not diluted by the prior. Lost parts are dropped before
    (``min_score`` of :func:`paste_parts`), so that their windows fall back to the prior."""
    return ops.where(
        coverage > 0.0, ops.cast(object_probs, "float32"), ops.cast(prior_probs, "float32")
    )


def soft_aggregate_logits(object_probs: Any, axis: int = 0, epsilon: float = 1e-7) -> Any:
    """The logits (K+1 along ``axis``, background first) whose softmax is
    :func:`soft_aggregate`: for a cross-entropy loss on the merged result."""
    p = ops.cast(object_probs, "float32")
    background = ops.prod(1.0 - p, axis=axis, keepdims=True)
    q = ops.clip(ops.concatenate([background, p], axis=axis), epsilon, 1.0 - epsilon)
    return ops.log(q) - ops.log1p(-q)


def soft_aggregate(object_probs: Any, axis: int = 0, epsilon: float = 1e-7) -> Any:
    """RGMP's soft aggregation (Oh et al., CVPR 2018, eq. 1; STM, STCN and XMem use the same):
    independent object probabilities ``p_m`` (K along ``axis``) -> probabilities of
    [background, object 1..K] (K+1 along ``axis``) that sum to 1:

        p_0 = prod_{m=1..K} (1 - p_m)                     (background)
        q_m = clip(p_m, eps, 1 - eps),  l_m = log(q_m / (1 - q_m))   for m = 0..K
        P_m = softmax(l)_m = (q_m / (1 - q_m)) / sum_{j=0..K} q_j / (1 - q_j)

    i.e. a softmax over the objects' odds. Note it is not ``p_0`` itself: one object with
    p = 0.9 has odds 9 against the background's 0.1 / 0.9, so P = (0.0122, 0.9878). For one
    object P_1 > 1/2 exactly when p > 1/2 (P_1 = o^2 / (o^2 + 1) with o = p / (1 - p)), so a
    single object's 0.5 threshold is unchanged.
    """
    return ops.softmax(soft_aggregate_logits(object_probs, axis, epsilon), axis=axis)
