"""Training losses and schedules: hand-computed values, padding and masking, bootstrapping,
in-graph tracking targets against the numpy reference, gradient descent on each loss, the
two-optimizer backbone recipe, and parity under the JAX backend."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

from tests.conftest import run_on_jax
from tests.reference.parts import (
    encode_offsets,
    pixel_to_response,
    response_labels,
    search_window,
)
from vostrack.training.losses import (
    bootstrapped_mean,
    mask_loss,
    part_mask_loss,
    tracking_loss,
    tracking_targets,
)
from vostrack.training.schedule import (
    BackboneSchedule,
    WarmupCosine,
    bootstrap_ratio,
    clip_by_global_norm,
    frozen_backbone,
    split_variables,
)

T, X = 6, 18
R = X - T + 1


def _np(x):
    return ops.convert_to_numpy(x)


def _f(x) -> float:
    return float(_np(x))


def _value_and_grad(fn, x: np.ndarray) -> tuple[float, np.ndarray]:
    """``fn(x)`` and its gradient in the current Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            loss = fn(variable)
        return float(loss), tape.gradient(loss, variable).numpy()
    if backend == "jax":
        import jax

        loss, grad = jax.value_and_grad(fn)(x)
        return float(loss), np.asarray(grad)
    pytest.skip(f"no gradient helper for the {backend} backend")


def _descend(fn, x0: np.ndarray, lr: float, steps: int = 5) -> list[float]:
    x = np.array(x0, np.float32)
    values = []
    for _ in range(steps):
        loss, grad = _value_and_grad(fn, x)
        assert np.all(np.isfinite(grad))
        values.append(loss)
        x = x - lr * grad
    values.append(_value_and_grad(fn, x)[0])
    return values


# --------------------------------------------------------------------------- mask loss


def _log_softmax(row):
    top = max(row)
    log_sum = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_sum for v in row]


def test_mask_loss_is_the_hand_computed_cross_entropy_on_2x2():
    logits = np.array(
        [[[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [[-1.0, -1.0, 3.0], [0.5, 0.5, 0.5]]]], np.float32
    )  # (1, 2, 2, 3)
    labels = np.array([[[0, 1], [2, 1]]])
    valid = np.array([[True, True]])
    expected = -np.mean(
        [
            _log_softmax(logits[0, 0, 0])[0],
            _log_softmax(logits[0, 0, 1])[1],
            _log_softmax(logits[0, 1, 0])[2],
            _log_softmax(logits[0, 1, 1])[1],
        ]
    )
    loss = mask_loss(logits, labels, valid, bootstrap_ratio=1.0, dice_weight=0.0)
    assert _f(loss) == pytest.approx(expected, rel=1e-6)

    # A void pixel (explicit, and the loader's 255) leaves the mean of the other three.
    void = np.array([[[False, False], [True, False]]])
    three = -np.mean(
        [
            _log_softmax(logits[0, 0, 0])[0],
            _log_softmax(logits[0, 0, 1])[1],
            _log_softmax(logits[0, 1, 1])[1],
        ]
    )
    assert _f(mask_loss(logits, labels, valid, void, 1.0, 0.0)) == pytest.approx(three, rel=1e-6)
    with_255 = np.where(void, 255, labels)
    assert _f(mask_loss(logits, with_255, valid, None, 1.0, 0.0)) == pytest.approx(three, rel=1e-6)

    # Dice by hand: object 1 at pixels (0,1), (1,1); object 2 at (1,0).
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    dice = []
    for k in (1, 2):
        g = (labels[0] == k).astype(np.float64)
        q = p[0, ..., k]
        dice.append(1 - (2 * (q * g).sum() + 1) / (q.sum() + g.sum() + 1))
    total, parts = mask_loss(
        logits, labels, valid, bootstrap_ratio=1.0, dice_weight=0.5, return_parts=True
    )
    assert _f(parts["dice"]) == pytest.approx(np.mean(dice), rel=1e-5)
    assert _f(total) == pytest.approx(expected + 0.5 * np.mean(dice), rel=1e-5)


def test_invalid_objects_are_masked_out():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 6, 5))
    valid = np.array([[True, False], [True, True]])  # image 0 has one object
    # Image 0's pixels labelled 2 belong to no valid object: they count as void.
    void = np.zeros_like(labels, bool)
    void[0] = labels[0] == 2

    loss = _f(mask_loss(logits, labels, valid, None, 1.0, 0.5))
    garbage = logits.copy()
    garbage[0, ..., 2] = np.nan  # the padded channel may hold anything
    assert _f(mask_loss(garbage, labels, valid, None, 1.0, 0.5)) == pytest.approx(loss, rel=1e-6)
    garbage[0, ..., 2] = 1e4
    assert _f(mask_loss(garbage, labels, valid, None, 1.0, 0.5)) == pytest.approx(loss, rel=1e-6)

    # Image 0 alone equals a 2-class problem on its valid pixels.
    alone = _f(mask_loss(logits[:1], labels[:1], valid[:1], None, 1.0, 0.0))
    two_class = _f(
        mask_loss(
            logits[:1, ..., :2],
            np.where(void[:1], 0, labels[:1]),
            valid[:1, :1],
            void[:1],
            1.0,
            0.0,
        )
    )
    assert alone == pytest.approx(two_class, rel=1e-6)
    # Without masking the third channel would take probability: the result would differ.
    unmasked = _f(mask_loss(logits[:1], labels[:1], np.array([[True, True]]), void[:1], 1.0, 0.0))
    assert abs(unmasked - two_class) > 1e-3

    # Gradients: zero on the invalid channel, finite elsewhere, even with NaN there.
    garbage[0, ..., 2] = np.nan
    _, grad = _value_and_grad(lambda x: mask_loss(x, labels, valid, None, 0.5, 0.5), garbage)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[0, ..., 2] == 0)
    assert np.any(grad[1, ..., 2] != 0)


def test_bootstrapping_takes_the_hardest_pixels():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(1, 4, 4, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=(1, 4, 4))
    valid = np.array([[True]])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    pixel = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0].ravel()
    plain = _f(mask_loss(logits, labels, valid, bootstrap_ratio=1.0, dice_weight=0.0))
    assert plain == pytest.approx(pixel.mean(), rel=1e-5)
    top_quarter = np.sort(pixel)[::-1][:4].mean()
    assert top_quarter > pixel.mean() + 0.1
    boot = _f(mask_loss(logits, labels, valid, bootstrap_ratio=0.25, dice_weight=0.0))
    assert boot == pytest.approx(top_quarter, rel=1e-5)
    # A traced ratio (annealed in the step) gives the same; 1.0 as a tensor is the plain mean.
    tensor = ops.convert_to_tensor(0.25)
    assert _f(mask_loss(logits, labels, valid, None, tensor, 0.0)) == pytest.approx(
        top_quarter, rel=1e-5
    )
    assert _f(
        mask_loss(logits, labels, valid, None, ops.convert_to_tensor(1.0), 0.0)
    ) == pytest.approx(pixel.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="void"):
        mask_loss(logits, labels, valid, tensor)  # a ratio passed as the void mask

    # Void pixels are neither selected nor counted: k = floor(0.25 * 8) = 2 of the 8 kept.
    void = np.zeros((1, 4, 4), bool)
    void.ravel()[np.argsort(pixel)[::-1][:8]] = True  # void the 8 hardest
    kept = np.sort(pixel[~void.ravel()])[::-1]
    boot_void = _f(mask_loss(logits, labels, valid, void, 0.25, 0.0))
    assert boot_void == pytest.approx(kept[:2].mean(), rel=1e-5)

    assert _f(bootstrapped_mean(np.ones(4, np.float32), np.zeros(4, bool), 0.3)) == 0.0


def test_dice_of_a_perfect_prediction_is_zero():
    labels = np.zeros((2, 8, 8), np.int64)
    labels[0, 2:5, 1:6] = 1
    labels[0, 5:8, 5:8] = 2
    labels[1, 0:3, 0:3] = 1
    valid = np.array([[True, True], [True, False]])
    perfect = 30.0 * np.eye(3, dtype=np.float32)[labels]
    total, parts = mask_loss(perfect, labels, valid, return_parts=True)
    assert _f(parts["dice"]) < 1e-6
    assert _f(parts["ce"]) < 1e-6
    assert _f(total) < 1e-6
    # Swapping the objects is as wrong as can be: Dice near 1.
    swapped = perfect[..., [0, 2, 1]]
    _, parts = mask_loss(swapped, labels, np.array([[True, True], [True, True]]), return_parts=True)
    assert _f(parts["dice"]) > 0.9


def test_mask_loss_half_precision_inputs_compute_in_float32():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(1, 8, 8))
    valid = np.array([[True, True]])
    full = mask_loss(logits, labels, valid, bootstrap_ratio=0.5)
    half = mask_loss(ops.cast(logits, "float16"), labels, valid, bootstrap_ratio=0.5)
    assert half.dtype == "float32" or str(half.dtype).endswith("float32")
    assert _f(half) == pytest.approx(_f(full), rel=2e-3)


# --------------------------------------------------------------------------- part masks


def test_part_mask_loss_ignores_invalid_parts_and_their_nans():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    targets = (rng.random((4, 8, 8, 1)) > 0.5).astype(np.float32)
    valid = np.array([True, False, True, False])

    def reference(x, z):
        p = 1 / (1 + np.exp(-x))
        bce = np.mean(-(z * np.log(p) + (1 - z) * np.log(1 - p)))
        dice = 1 - (2 * (p * z).sum() + 1) / (p.sum() + z.sum() + 1)
        return bce, dice

    bces, dices = zip(*(reference(logits[i], targets[i]) for i in (0, 2)))
    total, parts = part_mask_loss(logits, targets, valid, dice_weight=0.5, return_parts=True)
    assert _f(parts["bce"]) == pytest.approx(np.mean(bces), rel=1e-5)
    assert _f(parts["dice"]) == pytest.approx(np.mean(dices), rel=1e-5)
    assert _f(total) == pytest.approx(np.mean(bces) + 0.5 * np.mean(dices), rel=1e-5)

    padded = logits.copy()
    padded[1] = np.nan
    padded[3] = np.inf
    bad_targets = targets.copy()
    bad_targets[1] = np.nan
    assert _f(part_mask_loss(padded, bad_targets, valid)) == pytest.approx(_f(total), rel=1e-6)
    _, grad = _value_and_grad(lambda x: part_mask_loss(x, bad_targets, valid), padded)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[[1, 3]] == 0)
    assert _f(part_mask_loss(padded, bad_targets, np.zeros(4, bool))) == 0.0

    # Per-pixel weights: zero weight on half the crop is the loss of the other half's BCE.
    weights = np.zeros_like(targets)
    weights[:, :4] = 1.0
    _, halves = part_mask_loss(logits, targets, valid, weights=weights, return_parts=True)
    half_bce = np.mean([reference(logits[i, :4], targets[i, :4])[0] for i in (0, 2)])
    assert _f(halves["bce"]) == pytest.approx(half_bce, rel=1e-5)


# --------------------------------------------------------------------------- tracking


def _tracking_case(seed: int = 4, n: int = 6):
    rng = np.random.default_rng(seed)
    y0 = rng.uniform(20, 200, n)
    x0 = rng.uniform(20, 200, n)
    h = rng.uniform(10, 60, n)
    w = rng.uniform(10, 60, n)
    previous = np.stack([y0, x0, y0 + h, x0 + w], 1).astype(np.float32)
    motion = rng.normal(scale=8.0, size=(n, 2))
    scale = np.exp(rng.normal(scale=0.1, size=(n, 2)))
    cy = (y0 + h / 2) + motion[:, 0]
    cx = (x0 + w / 2) + motion[:, 1]
    th, tw = h * scale[:, 0], w * scale[:, 1]
    target = np.stack([cy - th / 2, cx - tw / 2, cy + th / 2, cx + tw / 2], 1)
    target[-1] += 500.0  # far outside its window: no positive cell
    windows = search_window(previous, 0.5, X / T, min_side=T * 16 / 2)
    return windows.astype(np.float32), target.astype(np.float32), previous


def test_tracking_targets_agree_with_the_numpy_reference():
    windows, target, previous = _tracking_case()
    out = tracking_targets(windows, target, R, T, X, 2.0, previous_boxes=previous)
    labels, weights, offsets = (_np(out[k]) for k in ("labels", "weights", "offsets"))
    assert labels.shape == (6, R, R) and offsets.shape == (6, R, R, 4)
    tcy = (target[:, 0] + target[:, 2]) / 2
    tcx = (target[:, 1] + target[:, 3]) / 2
    cy = pixel_to_response(tcy, windows[:, 0], windows[:, 2] - windows[:, 0], T, X)
    cx = pixel_to_response(tcx, windows[:, 1], windows[:, 3] - windows[:, 1], T, X)
    for i in range(6):
        ref_labels, ref_weights = response_labels(R, (cy[i], cx[i]), 2.0)
        np.testing.assert_array_equal(labels[i], ref_labels)
        np.testing.assert_allclose(weights[i], ref_weights, rtol=1e-6)
        assert weights[i].sum() == pytest.approx(1.0, rel=1e-5)
    assert labels[:-1].sum(axis=(1, 2)).min() > 0  # the moved parts have positives...
    assert labels[-1].sum() == 0  # ...the one that left has none
    np.testing.assert_allclose(
        offsets, encode_offsets(target, previous, windows, T, X), rtol=1e-5, atol=1e-4
    )

    # A radius covering the map: one class only, which carries the whole weight.
    everything = tracking_targets(windows, target, R, T, X, 100.0, previous_boxes=previous)
    ref_labels, ref_weights = response_labels(R, (cy[0], cx[0]), 100.0)
    np.testing.assert_allclose(_np(everything["weights"])[0], ref_weights, rtol=1e-6)

    with pytest.raises(ValueError):
        tracking_targets(windows, target, R + 1, T, X, previous_boxes=previous)


def test_tracking_targets_zero_invalid_rows_even_with_degenerate_windows():
    windows, target, previous = _tracking_case()
    windows[2] = 0.0  # zero-side window: a division by zero without the validity mask
    windows[3] = np.nan
    valid = np.array([True, True, False, False, True, True])
    out = tracking_targets(windows, target, R, T, X, previous_boxes=previous, valid=valid)
    for key in ("labels", "weights", "offsets"):
        values = _np(out[key])
        assert np.all(np.isfinite(values))
        assert np.all(values[[2, 3]] == 0)
        assert np.any(values[0] != 0)


def _peaked_response(centre, size: int = R, height: float = 8.0):
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    d2 = (i - centre[0]) ** 2 + (j - centre[1]) ** 2
    return (height * np.exp(-d2 / 4.0) - height / 2).astype(np.float32)[..., None]


def test_tracking_loss_prefers_the_peak_on_the_target():
    windows, target, previous = _tracking_case()
    valid = np.array([True, True, True, True, True, False])
    out = tracking_targets(windows, target, R, T, X, previous_boxes=previous, valid=valid)
    labels, weights, offsets = (_np(out[k]) for k in ("labels", "weights", "offsets"))
    centres = [np.argwhere(labels[i] > 0).mean(0) for i in range(5)]
    on_target = np.stack([_peaked_response(c) for c in centres] + [_peaked_response((6, 6))])
    away = np.stack(
        [_peaked_response((c[0] + 5, c[1] - 5)) for c in centres] + [_peaked_response((6, 6))]
    )
    zeros = np.zeros((6, R, R, 4), np.float32)
    good = _f(tracking_loss(on_target, zeros, labels, weights, offsets, valid))
    bad = _f(tracking_loss(away, zeros, labels, weights, offsets, valid))
    assert good < bad - 0.5

    # Exact offsets: no regression loss; the padded row's garbage does not matter.
    predicted = offsets.copy()
    predicted[5] = np.nan
    on_target[5] = np.nan
    _, parts = tracking_loss(
        on_target, predicted, labels, weights, offsets, valid, return_parts=True
    )
    assert _f(parts["offsets"]) == pytest.approx(0.0, abs=1e-7)
    _, parts = tracking_loss(on_target, zeros, labels, weights, offsets, valid, return_parts=True)
    assert _f(parts["offsets"]) > 0.01
    # Only the positive cells regress (SiamRPN): garbage elsewhere costs nothing, and an error of
    # 0.5 on each coordinate costs 4 * smooth_l1(0.5) = 4 * (0.5 - 1/18) per part.
    positive = labels[..., None] > 0
    _, parts = tracking_loss(
        on_target,
        np.where(positive, offsets, 100.0),
        labels,
        weights,
        offsets,
        valid,
        return_parts=True,
    )
    assert _f(parts["offsets"]) == pytest.approx(0.0, abs=1e-7)
    _, parts = tracking_loss(
        on_target,
        np.where(positive, offsets + 0.5, 100.0),
        labels,
        weights,
        offsets,
        valid,
        return_parts=True,
    )
    assert _f(parts["offsets"]) == pytest.approx(4 * (0.5 - 1 / 18), rel=1e-5)


# --------------------------------------------------------------------------- gradients


def test_gradient_descent_lowers_each_loss():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=(2, 8, 8))
    object_valid = np.array([[True, True], [True, False]])
    logits = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    values = _descend(
        lambda x: mask_loss(x, labels, object_valid, bootstrap_ratio=0.25), logits, lr=20.0
    )
    assert all(b < a for a, b in zip(values, values[1:])), values

    targets = (rng.random((3, 8, 8, 1)) > 0.5).astype(np.float32)
    part_valid = np.array([True, True, False])
    values = _descend(
        lambda x: part_mask_loss(x, targets, part_valid),
        rng.normal(size=(3, 8, 8, 1)).astype(np.float32),
        lr=20.0,
    )
    assert all(b < a for a, b in zip(values, values[1:])), values

    windows, target, previous = _tracking_case()
    valid = np.ones(6, bool)
    out = tracking_targets(windows, target, R, T, X, previous_boxes=previous, valid=valid)
    labels_t, weights_t, offsets_t = (_np(out[k]) for k in ("labels", "weights", "offsets"))
    response = rng.normal(size=(6, R, R, 1)).astype(np.float32)
    values = _descend(
        lambda x: tracking_loss(
            x, np.zeros((6, R, R, 4), np.float32), labels_t, weights_t, offsets_t, valid
        ),
        response,
        lr=2.0,
    )
    assert all(b < a for a, b in zip(values, values[1:])), values
    values = _descend(
        lambda x: tracking_loss(response, x, labels_t, weights_t, offsets_t, valid),
        np.zeros((6, R, R, 4), np.float32),
        lr=2.0,
    )
    assert all(b < a for a, b in zip(values, values[1:])), values


# --------------------------------------------------------------------------- schedules


def test_warmup_cosine_values_and_serialisation():
    schedule = WarmupCosine(
        peak_lr=1e-3, total_steps=1000, warmup_steps=100, floor_lr=1e-5, warmup_start_lr=1e-6
    )
    assert _f(schedule(0)) == pytest.approx(1e-6)
    assert _f(schedule(50)) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6), rel=1e-5)
    assert _f(schedule(100)) == pytest.approx(1e-3, rel=1e-6)  # end of warm-up: the peak
    assert _f(schedule(550)) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5), rel=1e-5)
    assert _f(schedule(1000)) == pytest.approx(1e-5, rel=1e-5)  # end of training: the floor
    assert _f(schedule(5000)) == pytest.approx(1e-5, rel=1e-5)
    assert _f(schedule(ops.convert_to_tensor(100, "int32"))) == pytest.approx(1e-3, rel=1e-6)
    lrs = [_f(schedule(s)) for s in range(100, 1001, 50)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))

    config = keras.optimizers.schedules.serialize(schedule)
    again = keras.optimizers.schedules.deserialize(config)
    assert isinstance(again, WarmupCosine) and again.get_config() == schedule.get_config()
    optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    rebuilt = keras.optimizers.AdamW.from_config(optimizer.get_config())
    assert _f(rebuilt.learning_rate) == pytest.approx(1e-6)  # iterations 0

    no_warmup = WarmupCosine(peak_lr=0.1, total_steps=10)
    assert _f(no_warmup(0)) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        WarmupCosine(peak_lr=0.1, total_steps=10, warmup_steps=20)


def test_backbone_schedule_freeze_and_bootstrap_ratio():
    heads = WarmupCosine(peak_lr=1e-3, total_steps=1000, warmup_steps=100)
    backbone = BackboneSchedule(heads, multiplier=0.1, freeze_steps=300, rewarmup_steps=10)
    # Its iterations count the steps since unfreezing: iteration i is global step 300 + i.
    assert _f(backbone(0)) == pytest.approx(0.1 * _f(heads(300)) * 0.1, rel=1e-5)
    assert _f(backbone(50)) == pytest.approx(0.1 * _f(heads(350)), rel=1e-5)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(backbone))
    assert isinstance(again, BackboneSchedule) and isinstance(again.base, WarmupCosine)
    assert _f(again(50)) == pytest.approx(_f(backbone(50)), rel=1e-6)

    assert frozen_backbone(0, 300) and frozen_backbone(299, 300)
    assert not frozen_backbone(300, 300) and not frozen_backbone(0, 0)

    assert bootstrap_ratio(0, 100, 200) == 1.0
    assert bootstrap_ratio(150, 100, 200) == pytest.approx(0.575)
    assert bootstrap_ratio(10_000, 100, 200) == pytest.approx(0.15)
    assert _f(bootstrap_ratio(ops.convert_to_tensor(150), 100, 200)) == pytest.approx(0.575)


def test_two_optimizer_recipe_gives_the_backbone_a_smaller_step():
    """Why two optimizers and not gradient scaling: Adam's step ignores a gradient scale."""
    freeze = 3
    heads_lr = WarmupCosine(peak_lr=1e-2, total_steps=20, warmup_steps=0)
    head = keras.Variable(np.ones(4, np.float32), name="head")
    body = keras.Variable(np.ones(4, np.float32), name="backbone_kernel")
    heads_vars, backbone_vars = split_variables([head, body], lambda v: "backbone" in v.name)
    assert heads_vars == [head] and backbone_vars == [body]
    heads_opt = keras.optimizers.Adam(heads_lr)
    backbone_opt = keras.optimizers.Adam(BackboneSchedule(heads_lr, 0.1, freeze))
    heads_opt.build(heads_vars)
    backbone_opt.build(backbone_vars)
    grad = np.full(4, 0.5, np.float32)
    for step in range(freeze + 1):
        before_head, before_body = _np(head).copy(), _np(body).copy()
        heads_opt.apply([grad], heads_vars)
        if not frozen_backbone(step, freeze):
            backbone_opt.apply([grad], backbone_vars)
    # Frozen steps left the backbone alone; on the first unfrozen step (Adam's first update is
    # lr * sign(g)) it moved by 0.1 x the heads' learning rate at that global step.
    head_step = before_head - _np(head)
    body_step = before_body - _np(body)
    np.testing.assert_allclose(head_step, _f(heads_lr(freeze)), rtol=1e-3)
    np.testing.assert_allclose(body_step, 0.1 * _f(heads_lr(freeze)), rtol=1e-3)
    assert int(_np(backbone_opt.iterations)) == 1

    # Gradient scaling would not have done it: Adam's update is scale-invariant.
    a = keras.Variable(np.ones(4, np.float32))
    b = keras.Variable(np.ones(4, np.float32))
    opt_a, opt_b = keras.optimizers.Adam(1e-2), keras.optimizers.Adam(1e-2)
    opt_a.apply([grad], [a])
    opt_b.apply([0.1 * grad], [b])
    np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5)


def test_clip_by_global_norm():
    grads = [np.array([3.0, 0.0], np.float32), None, np.array([[4.0]], np.float32)]
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert _f(norm) == pytest.approx(5.0)
    assert clipped[1] is None
    np.testing.assert_allclose(_np(clipped[0]), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(_np(clipped[2]), [[0.8]], rtol=1e-6)
    unchanged, _ = clip_by_global_norm(grads, 10.0)
    np.testing.assert_allclose(_np(unchanged[0]), grads[0])
    _, measured = clip_by_global_norm(grads, None)
    assert _f(measured) == pytest.approx(5.0)


# --------------------------------------------------------------------------- JAX parity


_JAX_SCRIPT = """
import jax
import keras
import numpy as np
from vostrack.training.losses import mask_loss, part_mask_loss, tracking_loss, tracking_targets
from vostrack.training.schedule import WarmupCosine
assert keras.backend.backend() == "jax"
c = dict(np.load("inputs.npz"))
R = int(c["R"])

@jax.jit
def run(c, ratio):
    out = {}
    out["mask"], parts = mask_loss(c["logits"], c["labels"], c["object_valid"], c["void"],
                                   ratio, 0.5, return_parts=True)
    out["mask_ce"], out["mask_dice"] = parts["ce"], parts["dice"]
    out["part"] = part_mask_loss(c["part_logits"], c["part_targets"], c["part_valid"])
    t = tracking_targets(c["windows"], c["target"], R, 6, 18, 2.0,
                         previous_boxes=c["previous"], valid=c["track_valid"])
    out.update({"t_" + k: v for k, v in t.items()})
    out["track"] = tracking_loss(c["response"], c["offsets"], t["labels"], t["weights"],
                                 t["offsets"], c["track_valid"])
    out["grad"] = jax.grad(lambda x: mask_loss(x, c["labels"], c["object_valid"], c["void"],
                                               ratio))(c["logits"])
    return out

out = run(c, np.float32(0.25))
schedule = WarmupCosine(1e-3, 1000, 100, 1e-5)
out["lr"] = np.array([schedule(s) for s in (0, 50, 100, 550, 1000)])
np.savez("outputs.npz", **{k: np.asarray(v) for k, v in out.items()})
"""


def test_losses_agree_under_the_jax_backend(tmp_path):
    rng = np.random.default_rng(6)
    windows, target, previous = _tracking_case()
    case = {
        "R": np.array(R),
        "logits": rng.normal(size=(2, 12, 10, 3)).astype(np.float32),
        "labels": rng.integers(0, 3, size=(2, 12, 10)).astype(np.int32),
        "object_valid": np.array([[True, False], [True, True]]),
        "void": rng.random((2, 12, 10)) < 0.1,
        "part_logits": rng.normal(size=(3, 8, 8, 1)).astype(np.float32),
        "part_targets": rng.random((3, 8, 8, 1)).astype(np.float32),
        "part_valid": np.array([True, False, True]),
        "windows": windows,
        "target": target,
        "previous": previous,
        "track_valid": np.array([True, True, True, False, True, True]),
        "response": rng.normal(size=(6, R, R, 1)).astype(np.float32),
        "offsets": rng.normal(size=(6, R, R, 4)).astype(np.float32),
    }
    case["part_logits"][1] = np.nan
    np.savez(tmp_path / "inputs.npz", **case)
    run_on_jax(_JAX_SCRIPT, tmp_path)
    jax_out = np.load(tmp_path / "outputs.npz")

    ratio = ops.convert_to_tensor(np.float32(0.25))
    mask, parts = mask_loss(
        case["logits"],
        case["labels"],
        case["object_valid"],
        case["void"],
        ratio,
        0.5,
        return_parts=True,
    )
    assert float(jax_out["mask"]) == pytest.approx(_f(mask), rel=1e-5)
    assert float(jax_out["mask_ce"]) == pytest.approx(_f(parts["ce"]), rel=1e-5)
    assert float(jax_out["mask_dice"]) == pytest.approx(_f(parts["dice"]), rel=1e-5)
    part = part_mask_loss(case["part_logits"], case["part_targets"], case["part_valid"])
    assert float(jax_out["part"]) == pytest.approx(_f(part), rel=1e-5)
    t = tracking_targets(
        windows, target, R, T, X, 2.0, previous_boxes=previous, valid=case["track_valid"]
    )
    for key in ("labels", "weights", "offsets"):
        np.testing.assert_allclose(jax_out["t_" + key], _np(t[key]), rtol=1e-5, atol=1e-5)
    track = tracking_loss(
        case["response"],
        case["offsets"],
        t["labels"],
        t["weights"],
        t["offsets"],
        case["track_valid"],
    )
    assert float(jax_out["track"]) == pytest.approx(_f(track), rel=1e-5)
    _, grad = _value_and_grad(
        lambda x: mask_loss(x, case["labels"], case["object_valid"], case["void"], ratio),
        case["logits"],
    )
    np.testing.assert_allclose(jax_out["grad"], grad, rtol=1e-4, atol=1e-7)
    schedule = WarmupCosine(1e-3, 1000, 100, 1e-5)
    np.testing.assert_allclose(
        jax_out["lr"], [_f(schedule(s)) for s in (0, 50, 100, 550, 1000)], rtol=1e-6
    )
