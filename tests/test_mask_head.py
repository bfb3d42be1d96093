"""The per-part mask head: its crops (object channels, borders), shapes with an unknown number of
parts in a TF graph, config round-trip, the untrained pass-through of the prior, a training step,
mixed precision, and parity with JAX (the layer checks: tests/layer_harness.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from tests.layer_harness import (
    check_jax_parity,
    check_traced,
    randomize_weights,
    run_layer_test,
)
from vostrack.network.mask_head import (
    INPUT_KEYS,
    PartMaskHead,
    crop_object_maps,
    crop_part_inputs,
    crop_reference,
    crop_window,
    mask_windows,
)
from vostrack.network.roi import roi_align

CHANNELS, HEIGHT, WIDTH = 8, 128, 192  # a tiny pyramid of a 128x192 padded frame


def _np(x):
    return ops.convert_to_numpy(x)


HEAD_OPTIONS = dict(channels=8, refine_channels=(8, 4), global_kernel=3)


def _head(**kwargs) -> PartMaskHead:
    return PartMaskHead(**dict(HEAD_OPTIONS, **kwargs))


def _scene(seed: int = 0, num_objects: int = 2):
    """Pyramids of a reference and a current frame, object masks, a prior, part windows."""
    rng = np.random.RandomState(seed)

    def pyramid():
        return {
            f"P{level}": rng.randn(1, HEIGHT >> level, WIDTH >> level, CHANNELS).astype(np.float32)
            for level in (2, 3, 4)
        }

    masks = np.zeros((1, HEIGHT, WIDTH, num_objects), np.float32)
    masks[0, 20:70, 30:100, 0] = 1
    masks[0, 60:120, 110:180, 1] = 1
    prior = rng.uniform(0, 1, (1, HEIGHT // 16, WIDTH // 16, num_objects)).astype(np.float32)
    boxes = np.array(
        [[20, 30, 45, 65], [45, 65, 70, 100], [60, 110, 120, 180], [0, 0, 0, 0]], np.float32
    )  # the last row: padding
    return dict(
        ref=pyramid(),
        cur=pyramid(),
        masks=masks,
        prior=prior,
        windows=_np(mask_windows(boxes)),
        box_indices=np.zeros(4, np.int32),
        object_index=np.array([0, 0, 1, 0], np.int32),
    )


def _inputs(scene, crop_size: int = 4):
    reference = crop_reference(
        scene["ref"],
        scene["windows"],
        scene["box_indices"],
        scene["object_index"],
        scene["masks"],
        crop_size,
    )
    prev = scene["masks"][:, 3::4, 3::4]  # stride-4 grid: cell i at pixel 4i + 3
    inputs = crop_part_inputs(
        scene["cur"],
        scene["windows"],
        scene["box_indices"],
        scene["object_index"],
        prev,
        scene["prior"],
        reference,
        crop_size,
    )
    return {key: _np(value) for key, value in inputs.items()}


def _logit(p, eps=1e-4):
    p = np.clip(p.astype(np.float64), np.float32(eps), np.float32(1 - eps))
    return np.log(p / (1 - p))


def test_crops_pick_each_parts_object_channel():
    maps = np.zeros((2, 16, 24, 3), np.float32)
    for b in range(2):
        for k in range(3):
            maps[b, :, :, k] = 10 * b + k + 1
    windows = np.array(
        [[8, 8, 40, 40], [20, 30, 50, 90], [0, 0, 64, 96], [8, 8, 40, 40]], np.float32
    )
    crops = _np(
        crop_object_maps(maps, windows, np.array([0, 1, 1, 0]), np.array([2, 0, 1, 1]), 8, stride=4)
    )
    assert crops.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(crops[:, :, :, 0].reshape(4, -1).max(1), [3, 11, 12, 2])
    np.testing.assert_array_equal(crops[:, :, :, 0].reshape(4, -1).min(1), [3, 11, 12, 2])


def test_crop_window_keeps_edge_values_inside_the_frame_and_zeros_outside():
    rng = np.random.RandomState(0)
    features = rng.randn(1, 8, 12, 3).astype(np.float32) + 5.0  # stride 16: a 128x192 frame
    inner = np.array([[40, 50, 100, 150]], np.float32)  # every sample between cell centres
    np.testing.assert_allclose(
        _np(crop_window(features, inner, [0], 6, 16)),
        _np(roi_align(features, inner, [0], (6, 6), 16)),
        atol=1e-5,
    )
    # Samples at pixels -12 .. 20: outside the frame 0, then the edge cell (cell 0's centre is
    # at 15.5: roi_align would give 0 up to there), then interpolation.
    border = np.array([[-16, -16, 24, 24]], np.float32)
    crop = _np(crop_window(features, border, [0], 5, 16))[0]
    pixels = -16 + (np.arange(5) + 0.5) * 8
    outside = pixels < 0
    assert outside.any() and (pixels[~outside] < 15.5).any()
    np.testing.assert_array_equal(crop[outside], 0)
    np.testing.assert_array_equal(crop[:, outside], 0)
    edge = (pixels >= 0) & (pixels < 15.5)
    np.testing.assert_allclose(
        crop[np.ix_(edge, edge)],
        np.broadcast_to(features[0, 0, 0], crop[np.ix_(edge, edge)].shape),
        atol=1e-6,
    )


def test_output_shapes_config_round_trip_and_pass_through_of_the_prior():
    scene = _scene()
    inputs = _inputs(scene)
    assert {key: inputs[key].shape for key in INPUT_KEYS} == {
        "cur_p4": (4, 4, 4, CHANNELS),
        "cur_p3": (4, 8, 8, CHANNELS),
        "cur_p2": (4, 16, 16, CHANNELS),
        "ref_p4": (4, 4, 4, CHANNELS),
        "ref_mask": (4, 4, 4, 1),
        "prev_mask": (4, 16, 16, 1),
        "prior": (4, 16, 16, 1),
    }
    # The reference mask is the object's: part 2 (object 1) sits on object 1's mask.
    np.testing.assert_array_equal(inputs["ref_mask"][2, 1:3, 1:3], 1)
    assert inputs["ref_mask"][2, 0, 0] < 0.1 and inputs["ref_mask"][3].max() == 0
    # The round trip runs with random weights (the clone computes the same logits to 1e-5);
    # the unknown number of parts is traced in test_tf_graph_with_unknown_number_of_parts, with
    # the crops.
    result = run_layer_test(
        PartMaskHead, dict(HEAD_OPTIONS, name="mask_head"), (inputs,), unknown_axes=None
    )
    logits = result.outputs
    assert logits.shape == (4, 16, 16, 1) and logits.dtype == np.float32
    # Untrained: exactly the prior's logit (the output conv is zero), even where it saturates.
    np.testing.assert_allclose(logits, _logit(inputs["prior"]), rtol=0, atol=2e-6)
    head = _head()
    saturated = dict(inputs, prior=np.where(inputs["prior"] > 0.5, 1.0, 0.0).astype(np.float32))
    np.testing.assert_allclose(_np(head(saturated)), _logit(saturated["prior"]), atol=2e-6)
    # A head whose output conv is not zero does change the prior.
    trained = _np(result.layer(inputs))
    assert np.abs(trained - logits).max() > 1e-2
    with pytest.raises(ValueError, match="must be 16x16"):
        head(dict(inputs, prior=inputs["prior"][:, :8, :8]))
    with pytest.raises(ValueError, match="missing inputs"):
        _head()({key: value for key, value in inputs.items() if key != "ref_mask"})


def test_one_training_step_lowers_the_loss():
    keras.utils.set_random_seed(0)
    scene = _scene(seed=1)
    inputs = _inputs(scene)
    # Target: the object's true mask in each window (what the head is trained on).
    target = _np(
        crop_object_maps(
            scene["masks"],
            scene["windows"],
            scene["box_indices"],
            scene["object_index"],
            16,
            stride=1,
        )
    )
    symbolic = {key: keras.Input(value.shape[1:], name=key) for key, value in inputs.items()}
    model = keras.Model(symbolic, _head()(symbolic))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    first = float(model.train_on_batch(inputs, target))
    # The loss the second call reports is computed before its update: after the first step.
    second = float(model.train_on_batch(inputs, target))
    assert second < first - 1e-3, (first, second)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_outputs_float32(policy):
    inputs = _inputs(_scene())
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        head = _head()
        logits = head(inputs)
    finally:
        keras.config.set_dtype_policy(previous)
    assert head.convs["fuse"].compute_dtype == policy.split("_")[1]
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    # The prior is not autocast: the pass-through is still exact (1 - 1e-4 is 1.0 in float16).
    np.testing.assert_allclose(_np(logits), _logit(inputs["prior"]), atol=2e-6)


def test_tf_graph_with_unknown_number_of_parts():
    pytest.importorskip("tensorflow")
    scene = _scene()
    reference = {
        key: _np(value)
        for key, value in crop_reference(
            scene["ref"],
            scene["windows"],
            scene["box_indices"],
            scene["object_index"],
            scene["masks"],
            4,
        ).items()
    }
    head = _head()
    head(_inputs(scene))
    randomize_weights(head, 0.1, seed=5)

    def crop_and_predict(pyramid, windows, box_indices, object_index, prev, prior, reference):
        inputs = crop_part_inputs(
            pyramid, windows, box_indices, object_index, prev, prior, reference, crop_size=4
        )
        return head(inputs)

    prev = scene["masks"][:, 3::4, 3::4]
    every = (
        scene["cur"],
        scene["windows"],
        scene["box_indices"],
        scene["object_index"],
        prev,
        scene["prior"],
        reference,
    )
    # Another number of parts through the same graph (one trace for both).
    fewer = (
        scene["cur"],
        scene["windows"][:2],
        scene["box_indices"][:2],
        scene["object_index"][:2],
        prev,
        scene["prior"],
        {key: value[:2] for key, value in reference.items()},
    )
    # Unknown: the frame's size (pyramid, masks), the number of parts and of objects.
    graph, graph_fewer = check_traced(
        crop_and_predict,
        [every, fewer],
        [(1, 2), (0,), (0,), (0,), (1, 2, 3), (1, 2, 3), (0,)],
        atol=1e-4,
    )
    assert graph.shape == (4, 16, 16, 1)
    np.testing.assert_allclose(graph, _np(head(_inputs(scene))), atol=1e-4)
    np.testing.assert_allclose(graph_fewer, graph[:2], atol=1e-4)


def test_jax_parity(tmp_path):
    scene = _scene(seed=2)
    inputs = _inputs(scene)
    head = _head()
    head(inputs)
    randomize_weights(head, 0.1, seed=7)
    np.savez(
        tmp_path / "scene.npz",
        windows=scene["windows"],
        masks=scene["masks"],
        prior=scene["prior"],
        object_index=scene["object_index"],
        **{f"ref_{k}": v for k, v in scene["ref"].items()},
        **{f"cur_{k}": v for k, v in scene["cur"].items()},
    )
    # The head's logits to 1e-4 (the harness), and in the same JAX process the crops to 1e-5.
    # Zeros: JAX compiles a random initialiser per weight shape (seconds); all are set anyway.
    jax_out = check_jax_parity(
        head,
        (inputs,),
        tmp_path,
        atol=1e-4,
        config_overrides=dict(kernel_initializer="zeros"),
        extra_script="""
        import jax
        from vostrack.network.mask_head import crop_part_inputs, crop_reference

        @jax.jit  # as in training; one compilation instead of one per op
        def crops(s):
            index = np.zeros(4, np.int32)
            ref = crop_reference({k: s[f"ref_{k}"] for k in ("P2", "P3", "P4")}, s["windows"],
                                 index, s["object_index"], s["masks"], 4)
            return crop_part_inputs({k: s[f"cur_{k}"] for k in ("P2", "P3", "P4")},
                                    s["windows"], index, s["object_index"],
                                    s["masks"][:, 3::4, 3::4], s["prior"], ref, 4)

        outputs.update({f"crop/{k}": np.asarray(v)
                        for k, v in crops(dict(np.load("scene.npz"))).items()})
    """,
    )
    for key, value in inputs.items():
        np.testing.assert_allclose(jax_out[f"crop/{key}"], value, atol=1e-5, err_msg=key)
