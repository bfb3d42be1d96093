"""Training losses of the vostrack network, in ``keras.ops`` only (TF and JAX alike).

Three losses, one per output of the network:

- :func:`mask_loss`: the merged frame mask (background + K objects, the logits of
  :func:`vostrack.network.aggregation.soft_aggregate_logits`): cross-entropy with XMem's hard-pixel
  bootstrapping plus a soft Dice term.
- :func:`part_mask_loss`: the part masks of :class:`vostrack.network.mask_head.PartMaskHead`
  (N, 4s, 4s, 1) logits on the parts' mask windows: binary cross-entropy plus Dice.
- :func:`tracking_loss`: the part tracker's response (SiamFC's balanced logistic loss) and box
  offsets (smooth-L1 on the positive cells, as SiamRPN / SiamRPN++ regress boxes), with its
  targets built in-graph by :func:`tracking_targets` (they depend on the search windows that the
  training step itself computes from the tracked boxes).

Conventions shared by every function here:

- **Padding.** Objects, parts and frames are padded to fixed counts (JAX compiles once per
  shape), with boolean validity masks. Padding rows may hold anything, even NaN or inf (an
  invalid part's crop of a zero box, a division by a zero window side): they are removed with
  ``ops.where`` *before* any arithmetic, never by multiplying with a 0/1 mask (``0 * NaN`` is NaN,
  and so is the gradient of a product that saw a NaN). Every mean is over valid entries only, and
  is 0 (not NaN) when there are none.
- **Precision.** Inputs may be float16 / bfloat16 (mixed precision); everything is computed in
  float32 and the losses are float32 scalars (issue 5: mixed precision with the heads in
  float32; a float16 sum of 10^5 to 10^6 pixel losses loses precision or overflows).
- **Logging.** ``return_parts=True`` also returns a dict of the float32 scalar terms.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from vostrack.network.boxes import box_centres_sizes, pixel_to_response

__all__ = [
    "NEG_LOGIT",
    "mask_loss",
    "part_mask_loss",
    "tracking_loss",
    "tracking_targets",
    "bootstrapped_mean",
    "sigmoid_cross_entropy",
    "smooth_l1",
]

#: The logit given to invalid (padded) object channels before the softmax. Finite rather than
#: ``-inf``, with the same effect: ``exp(NEG_LOGIT - max)`` is exactly 0 in float32, so the softmax
#: and log-softmax of the valid channels are those of the valid channels alone, while no ``inf``
#: ever enters the arithmetic (``0 * -inf`` is NaN, e.g. in a one-hot product or a gradient).
NEG_LOGIT = -1e9

_DICE_SMOOTH = 1.0  # XMem's dice_loss: 1 - (2 |P G| + 1) / (|P| + |G| + 1)


# --------------------------------------------------------------------------- elementwise


def sigmoid_cross_entropy(logits: Any, targets: Any) -> Any:
    """Binary cross-entropy of ``sigmoid(logits)`` against ``targets`` in [0, 1], elementwise,
    in the overflow-free form ``max(x, 0) - x z + log(1 + exp(-|x|))`` (TF's
    ``sigmoid_cross_entropy_with_logits``): a large logit neither overflows ``exp`` nor rounds
    ``sigmoid`` to exactly 0 or 1 before the log."""
    x = ops.cast(logits, "float32")
    z = ops.cast(targets, "float32")
    return ops.relu(x) - x * z + ops.log1p(ops.exp(-ops.abs(x)))


def smooth_l1(x: Any, beta: float = 1.0 / 9.0) -> Any:
    """Smooth-L1 (Huber divided by ``beta``) of residuals ``x``, elementwise: ``0.5 x^2 / beta``
    for ``|x| < beta``, ``|x| - beta / 2`` beyond. ``beta = 1/9`` is Faster R-CNN's RPN setting
    (``sigma = 3``), which SiamRPN inherits for its box regression."""
    a = ops.abs(ops.cast(x, "float32"))
    if beta <= 0.0:
        return a
    return ops.where(a < beta, 0.5 * ops.square(a) / beta, a - 0.5 * beta)


def _safe_mean(total: Any, count: Any) -> Any:
    """``total / count``, 0 when ``count`` is 0."""
    count = ops.cast(count, "float32")
    return ops.where(count > 0.0, total / ops.maximum(count, 1.0), 0.0)


def _as_bool(x: Any) -> Any:
    return ops.cast(x, "bool")


# --------------------------------------------------------------------------- bootstrapping


def bootstrapped_mean(losses: Any, valid: Any, ratio: Any = 1.0) -> Any:
    """XMem's hard-pixel bootstrapping (Cheng & Schwing, ECCV 2022, ``BootstrappedCE``): the mean
    of the largest ``ratio`` fraction of the valid entries of ``losses`` (any shape, >= 0), over
    all of them at once (XMem takes the top-k over the whole batch of one frame).

    ``ratio`` may be a Python float or a scalar tensor (so that it can anneal inside a compiled
    step without recompiling): the count ``k = max(1, floor(ratio * n_valid))`` is computed at
    run time, and the top-k is taken by a full sort with a rank mask rather than ``top_k`` (whose
    ``k`` must be static). A Python ``ratio >= 1`` is the plain mean, without the sort.
    Gradients flow to the selected entries only. 0 when no entry is valid.
    """
    losses = ops.reshape(ops.cast(losses, "float32"), (-1,))
    valid = ops.reshape(_as_bool(valid), (-1,))
    count = ops.sum(ops.cast(valid, "float32"))
    if isinstance(ratio, (int, float)) and ratio >= 1.0:
        return _safe_mean(ops.sum(ops.where(valid, losses, 0.0)), count)
    # Invalid entries sort last (losses are >= 0), and the rank mask never reaches them.
    ordered = ops.flip(ops.sort(ops.where(valid, losses, -1.0)), axis=0)
    k = ops.maximum(ops.floor(ops.cast(ratio, "float32") * count), 1.0)
    k = ops.minimum(k, count)
    rank = ops.cast(ops.arange(ops.shape(ordered)[0]), "float32")
    chosen = ops.where(rank < k, ordered, 0.0)
    return _safe_mean(ops.sum(chosen), k)


# --------------------------------------------------------------------------- frame masks


def mask_loss(
    logits: Any,
    labels: Any,
    object_valid: Any,
    void: Any = None,
    bootstrap_ratio: Any = 0.15,
    dice_weight: float = 0.5,
    frame_valid: Any = None,
    return_parts: bool = False,
) -> Any:
    """Loss of the merged frame mask: bootstrapped cross-entropy + ``dice_weight`` * Dice.

    logits: (B, H, W, K + 1) over [background, object 1..K] (e.g.
        ``soft_aggregate_logits(object_probs, axis=-1)``: RGMP's soft aggregation trains through
        its logits, as RGMP, STM and XMem do).
    labels: (B, H, W) int ids, 0 background, k object k. Any other id (the loader's void 255), and
        the id of an invalid object, is ignored like ``void``.
    object_valid: (B, K) bool, the objects of each clip (the rest is padding). Invalid objects'
        logits are replaced by :data:`NEG_LOGIT` (i.e. -inf) before the softmax: the valid
        classes' probabilities are then exactly those of a (1 + K_valid)-way softmax, whatever
        the invalid channel holds (NaN included).
    void: (B, H, W) bool or None, pixels to ignore (DAVIS-2017 void, augmentation padding).
    bootstrap_ratio: XMem's top-p: the cross-entropy is the mean of the hardest ``ratio``
        fraction of the valid pixels (:func:`bootstrapped_mean`); 1.0 is the plain mean. XMem
        anneals it from 1.0 to 0.15 (:func:`vostrack.training.schedule.bootstrap_ratio`); a
        Python float or a scalar tensor.
    dice_weight: weight of the soft Dice term: per valid object and image, ``1 - (2 sum(p g) + 1)
        / (sum(p) + sum(g) + 1)`` over the non-void pixels (XMem's ``dice_loss``, smoothed by
        1, so that an object absent from a frame is penalised by its predicted area only), then
        averaged over the valid (object, image) pairs. Dice counters the area imbalance of CE:
        a small object weighs as much as a large one.
    frame_valid: (B,) bool or None: padded frames (every pixel void, no Dice term).
    return_parts: also return ``{"ce", "dice"}`` (float32 scalars) for logging.

    Returns the float32 scalar ``ce + dice_weight * dice`` (and the dict).
    """
    logits = ops.cast(logits, "float32")
    num_classes = logits.shape[-1]
    if num_classes is None or num_classes < 2:
        raise ValueError(f"mask_loss needs a static class axis K + 1 >= 2, got {logits.shape}")
    object_valid = _as_bool(object_valid)
    batch = ops.shape(logits)[0]
    class_valid = ops.concatenate([ops.ones((batch, 1), "bool"), object_valid], axis=-1)
    masked = ops.where(class_valid[:, None, None, :], logits, NEG_LOGIT)
    log_probs = ops.log_softmax(masked, axis=-1)

    labels = ops.cast(labels, "int32")
    if void is not None and len(ops.shape(void)) != len(labels.shape):
        raise ValueError(
            f"void must be a (B, H, W) mask like labels {labels.shape}, got shape "
            f"{ops.shape(void)} (a ratio passed positionally as void?)"
        )
    in_range = ops.logical_and(labels >= 0, labels < num_classes)
    safe_labels = ops.where(in_range, labels, 0)
    onehot = ops.one_hot(safe_labels, num_classes, dtype="float32")  # (B, H, W, K + 1)
    label_class_valid = (
        ops.sum(onehot * ops.cast(class_valid, "float32")[:, None, None, :], axis=-1) > 0.5
    )
    keep = ops.logical_and(in_range, label_class_valid)
    if void is not None:
        keep = ops.logical_and(keep, ops.logical_not(_as_bool(void)))
    if frame_valid is not None:
        frame_valid = _as_bool(frame_valid)
        keep = ops.logical_and(keep, frame_valid[:, None, None])

    # Cross-entropy of the label's class: a gather, not a one-hot product (the masked classes'
    # log-probabilities are about -1e9 and must not be multiplied into anything).
    picked = ops.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    pixel_ce = ops.where(keep, -picked, 0.0)
    ce = bootstrapped_mean(pixel_ce, keep, bootstrap_ratio)

    # Soft Dice per (image, object) over the kept pixels (XMem's dice_loss).
    probs = ops.softmax(masked, axis=-1)[..., 1:]  # (B, H, W, K)
    truth = onehot[..., 1:]
    keep_f = keep[..., None]
    probs = ops.where(keep_f, probs, 0.0)
    truth = ops.where(keep_f, truth, 0.0)
    intersection = ops.sum(probs * truth, axis=(1, 2))  # (B, K)
    denominator = ops.sum(probs, axis=(1, 2)) + ops.sum(truth, axis=(1, 2))
    dice_per = 1.0 - (2.0 * intersection + _DICE_SMOOTH) / (denominator + _DICE_SMOOTH)
    counted = object_valid
    if frame_valid is not None:
        counted = ops.logical_and(counted, frame_valid[:, None])
    dice = _safe_mean(
        ops.sum(ops.where(counted, dice_per, 0.0)), ops.sum(ops.cast(counted, "float32"))
    )

    total = ce + float(dice_weight) * dice
    if return_parts:
        return total, {"ce": ce, "dice": dice}
    return total


# --------------------------------------------------------------------------- part masks


def part_mask_loss(
    part_logits: Any,
    part_targets: Any,
    valid: Any,
    dice_weight: float = 0.5,
    weights: Any = None,
    return_parts: bool = False,
) -> Any:
    """Loss of the part masks: per valid part, the mean binary cross-entropy over its crop plus
    ``dice_weight`` * its soft Dice loss; averaged over the valid parts (0 if none).

    The same two terms as :func:`mask_loss`, per part: RGMP trains its decoder with a
    cross-entropy on the mask, and the Dice term keeps a part whose window is mostly background
    from learning to predict nothing.

    part_logits: (N, S, S, 1) or (N, S, S) logits (``PartMaskHead``'s output).
    part_targets: same shape, in [0, 1]: the ground-truth object mask of the part's object cropped
        to the part's mask window (soft at the window's resampled edges).
    valid: (N,) bool. Use ``part_valid & object_present`` of the frame, or the part's validity
        alone to also teach a part to predict an empty crop when its object is hidden.
    weights: optional per-pixel weights of the targets' shape in [0, 1] (0 on void or outside
        the frame); they weight the BCE mean and mask the Dice sums.
    return_parts: also return ``{"bce", "dice"}``.
    """
    x = ops.cast(part_logits, "float32")
    z = ops.cast(part_targets, "float32")
    if len(x.shape) == 4:
        x = x[..., 0]
    if len(z.shape) == 4:
        z = z[..., 0]
    valid = _as_bool(valid)
    rows = valid[:, None, None]
    # Padding rows (even NaN) are replaced before any arithmetic.
    x = ops.where(rows, x, 0.0)
    z = ops.where(rows, z, 0.0)
    if weights is None:
        w = ops.where(rows, ops.ones_like(x), 0.0)
    else:
        w = ops.cast(weights, "float32")
        if len(w.shape) == 4:
            w = w[..., 0]
        w = ops.where(rows, w, 0.0)
    bce = ops.sum(w * sigmoid_cross_entropy(x, z), axis=(1, 2))
    bce = ops.where(valid, bce / ops.maximum(ops.sum(w, axis=(1, 2)), 1e-6), 0.0)
    p = ops.sigmoid(x) * w
    zw = z * w
    dice = 1.0 - (
        (2.0 * ops.sum(p * zw, axis=(1, 2)) + _DICE_SMOOTH)
        / (ops.sum(p, axis=(1, 2)) + ops.sum(zw, axis=(1, 2)) + _DICE_SMOOTH)
    )
    dice = ops.where(valid, dice, 0.0)
    count = ops.sum(ops.cast(valid, "float32"))
    bce_mean = _safe_mean(ops.sum(bce), count)
    dice_mean = _safe_mean(ops.sum(dice), count)
    total = bce_mean + float(dice_weight) * dice_mean
    if return_parts:
        return total, {"bce": bce_mean, "dice": dice_mean}
    return total


# --------------------------------------------------------------------------- tracking


def tracking_targets(
    windows: Any,
    target_boxes: Any,
    response_size: int,
    template_size: int,
    search_size: int,
    radius: float = 2.0,
    *,
    previous_boxes: Any,
    valid: Any = None,
) -> dict[str, Any]:
    """In-graph SiamFC / SiamRPN targets for the tracker's outputs, row by row.

    In ``keras.ops``, because the search windows are computed inside the training step from the
    tracked (or jittered) boxes; the box geometry is :mod:`vostrack.network.boxes`' (the
    graph's). ``tests/reference/parts.py`` holds the numpy references it is tested against:
    ``response_labels`` (applied at ``pixel_to_response`` of the target's centre) and
    ``encode_offsets``.

    windows: (N, 4) search windows ``[y0, x0, y1, x1]`` px (``PartTracker.search_windows``).
    target_boxes: (N, 4) the parts' ground-truth boxes on the search frame.
    response_size: R, must be ``search_size - template_size + 1`` (checked).
    radius: positives are the cells within ``radius`` cells of the target centre (SiamFC: 16 px
        at total stride 8, i.e. 2 cells; our default template is SiamFC's 6 cells too).
    previous_boxes: (N, 4) the boxes the windows were built from: the size targets are
        ``log(target / previous)``, which is what the decoder multiplies the previous size by.
    valid: (N,) bool or None: invalid rows get all-zero targets (and are finite even if their
        windows are degenerate).

    Returns ``{"labels": (N, R, R) float32 in {0, 1}, "weights": (N, R, R) float32 (balanced:
    positives and negatives each half of a row's weight, one class alone all of it),
    "offsets": (N, R, R, 4) float32 [dy, dx, dlog_h, dlog_w]}``, gradient-free.
    """
    if response_size != search_size - template_size + 1:
        raise ValueError(
            f"response_size {response_size} != search_size {search_size} - "
            f"template_size {template_size} + 1"
        )
    r = int(response_size)
    windows = ops.cast(windows, "float32")
    target_boxes = ops.cast(target_boxes, "float32")
    previous_boxes = ops.cast(previous_boxes, "float32")
    tcy, tcx, th, tw = box_centres_sizes(target_boxes)
    _, _, ph, pw = box_centres_sizes(previous_boxes)
    side_y = windows[:, 2] - windows[:, 0]
    side_x = windows[:, 3] - windows[:, 1]
    if valid is not None:
        valid = _as_bool(valid)
        # Degenerate padding windows would divide by zero: give them the side of a unit sample
        # spacing (search_size / search_size is exactly 1).
        side_y = ops.where(valid, side_y, float(search_size))
        side_x = ops.where(valid, side_x, float(search_size))
    ty = pixel_to_response(tcy, windows[:, 0], side_y, template_size, search_size)
    tx = pixel_to_response(tcx, windows[:, 1], side_x, template_size, search_size)

    cells = ops.arange(r, dtype="float32")
    dy = ty[:, None, None] - cells[None, :, None]  # (N, R, 1)
    dx = tx[:, None, None] - cells[None, None, :]  # (N, 1, R)
    distance = ops.sqrt(ops.square(dy) + ops.square(dx))  # (N, R, R)
    labels = ops.cast(distance <= float(radius), "float32")
    num_pos = ops.sum(labels, axis=(1, 2), keepdims=True)
    num_neg = float(r * r) - num_pos
    weights = labels * ops.where(num_pos > 0.0, 0.5 / ops.maximum(num_pos, 1.0), 0.0) + (
        1.0 - labels
    ) * ops.where(num_neg > 0.0, 0.5 / ops.maximum(num_neg, 1.0), 0.0)
    one_class = ops.logical_or(num_pos == 0.0, num_neg == 0.0)
    weights = ops.where(one_class, 2.0 * weights, weights)

    dh = ops.log(ops.maximum(th, 1e-6) / ops.maximum(ph, 1e-6))
    dw = ops.log(ops.maximum(tw, 1e-6) / ops.maximum(pw, 1e-6))
    shape = (ops.shape(dy)[0], r, r)
    offsets = ops.stack(
        [
            ops.broadcast_to(dy, shape),
            ops.broadcast_to(dx, shape),
            ops.broadcast_to(dh[:, None, None], shape),
            ops.broadcast_to(dw[:, None, None], shape),
        ],
        axis=-1,
    )
    if valid is not None:
        labels = ops.where(valid[:, None, None], labels, 0.0)
        weights = ops.where(valid[:, None, None], weights, 0.0)
        offsets = ops.where(valid[:, None, None, None], offsets, 0.0)
    return {
        "labels": ops.stop_gradient(labels),
        "weights": ops.stop_gradient(weights),
        "offsets": ops.stop_gradient(offsets),
    }


def tracking_loss(
    response: Any,
    offsets: Any,
    labels: Any,
    label_weights: Any,
    offset_targets: Any,
    valid: Any,
    offset_weight: float = 1.0,
    beta: float = 1.0 / 9.0,
    return_parts: bool = False,
) -> Any:
    """Part-tracking loss: SiamFC's balanced logistic loss on the response plus SiamRPN's
    smooth-L1 box regression on the positive cells.

    response: (N, R, R, 1) or (N, R, R) logits (``PartTracker``'s ``"response"``).
    offsets: (N, R, R, 4) predicted ``[dy, dx, dlog_h, dlog_w]`` (``"offsets"``).
    labels, label_weights, offset_targets: :func:`tracking_targets`' ``labels`` (N, R, R) in
        {0, 1}, ``weights`` (N, R, R) and ``offsets`` (N, R, R, 4).
    valid: (N,) bool: the parts to train (``part_valid`` of the reference frame and the part's
        object present on the search frame; padding rows may hold anything).
    offset_weight: weight of the regression term (SiamRPN++ weights cls and loc 1 : 1.2; 1 here).
    beta: smooth-L1 transition (:func:`smooth_l1`).

    Response term (SiamFC, Bertinetto et al., ECCV-W 2016): per part ``sum_cells w * log(1 +
    exp(-y v))`` with y = +-1, i.e. the weighted sigmoid cross-entropy, with weights that sum to
    1 per part (balanced), then the mean over valid parts. Regression term (SiamRPN, Li et al.
    CVPR 2018 / SiamRPN++ 2019; pysot's ``weight_l1_loss``): per part the sum over the 4
    coordinates of ``smooth_l1(pred - target)`` averaged over the part's positive cells, then
    the mean over valid parts that have positives (a target outside the search window has
    none, and only the response learns from it).
    Returns the float32 scalar ``response_loss + offset_weight * offset_loss`` (and, with
    ``return_parts``, ``{"response", "offsets"}``).
    """
    valid = _as_bool(valid)
    v = ops.cast(response, "float32")
    if len(v.shape) == 4:
        v = v[..., 0]
    rows = valid[:, None, None]
    v = ops.where(rows, v, 0.0)
    y = ops.where(rows, ops.cast(labels, "float32"), 0.0)
    w = ops.where(rows, ops.cast(label_weights, "float32"), 0.0)
    per_part = ops.sum(w * sigmoid_cross_entropy(v, y), axis=(1, 2))
    count = ops.sum(ops.cast(valid, "float32"))
    response_loss = _safe_mean(ops.sum(ops.where(valid, per_part, 0.0)), count)

    rows4 = valid[:, None, None, None]
    pred = ops.where(rows4, ops.cast(offsets, "float32"), 0.0)
    target = ops.where(rows4, ops.cast(offset_targets, "float32"), 0.0)
    positive = y > 0.5
    reg = ops.sum(smooth_l1(pred - target, beta), axis=-1)  # (N, R, R)
    reg = ops.where(positive, reg, 0.0)
    num_pos = ops.sum(ops.cast(positive, "float32"), axis=(1, 2))
    has_pos = ops.logical_and(valid, num_pos > 0.0)
    per_part_reg = ops.where(has_pos, ops.sum(reg, axis=(1, 2)) / ops.maximum(num_pos, 1.0), 0.0)
    offset_loss = _safe_mean(ops.sum(per_part_reg), ops.sum(ops.cast(has_pos, "float32")))

    total = response_loss + float(offset_weight) * offset_loss
    if return_parts:
        return total, {"response": response_loss, "offsets": offset_loss}
    return total
