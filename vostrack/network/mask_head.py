"""The per-part mask head (RGMP on part crops), and the crops it reads.

For every part (a row of the padded part batch, see :mod:`vostrack.network.parts`) the head sees
a *mask window* around the part's current box and predicts the logits of the part's **object**
inside that window (not of the part alone: the training target is the object's mask cropped to
the window), so the windows of an object's parts that overlap predict the same thing, and
:func:`vostrack.network.aggregation.paste_parts` averages them.

Inputs of :class:`PartMaskHead` (``s`` = ``crop_size``, e.g. 8 -> 32 x 32 logits), all crops of
the same window (the current one, or the part's reference window for ``ref_*``), made by
:func:`crop_part_inputs` / :func:`crop_reference`:

==============  ===================  ==========================================================
key             shape                what
==============  ===================  ==========================================================
``cur_p4``      (N, s, s, C)         current frame, P4 (stride 16)
``cur_p3``      (N, 2s, 2s, C)       current frame, P3 (stride 8)
``cur_p2``      (N, 4s, 4s, C)       current frame, P2 (stride 4)
``ref_p4``      (N, s, s, C)         reference frame, P4, cropped to the part's reference window
``ref_mask``    (N, s, s, 1)         reference object mask there (area average of 4x4 samples)
``prev_mask``   (N, 4s, 4s, 1)       previous frame's object probability in the current window
``prior``       (N, 4s, 4s, 1)       the matching branch's object probability there
==============  ===================  ==========================================================

Network (RGMP, Oh et al. CVPR 2018, on FPN crops instead of a two-stream ResNet):

- **Fusion at the coarsest level** (s x s): ``concat[cur_p4, relu(conv1x1([ref_p4, ref_mask])),
  cos(cur_p4, fg prototype), cos(cur_p4, bg prototype), prev_mask, prior]`` (masks average-pooled
  4x4 onto the s-grid) -> 3x3 conv -> RGMP's *global convolution* (a (k,1)(1,k) and a (1,k)(k,1)
  branch, summed; k = ``global_kernel``, 7 in RGMP: with s = 8 it sees the whole window) ->
  ReLU -> a residual block. The prototypes are the ``ref_mask``-weighted (and
  ``1 - ref_mask``-weighted) means of ``ref_p4``: the reference crop is only roughly aligned with
  the current one (the part moved and deformed), the prototypes are alignment-free. (The ReLU
  after the sum is not in RGMP; without it TF's grappler remapper fails on the two chained
  conv + add fusions, "fanout ... exist for missing node", and skips its fusions for the graph.)
- **Decoder**: two of RGMP's refinement modules, at 2s (skip from ``cur_p3``) and 4s (skip from
  ``cur_p2``): ``skip = res(conv3x3([cur_pX, prev_mask, prior]))``, ``out = res(skip +
  up2(upper))``. The masks enter every level, so the finest one sees the prior at full crop
  resolution. ``up2`` is half-pixel bilinear, which is exact here: the roi crops of one window at
  sizes n and 2n put fine bins 2i, 2i+1 at coarse coordinates i -/+ 1/4.
- **Output**: ``logits = logit(clip(prior, eps, 1 - eps)) + conv3x3(relu(out))`` with that last
  conv zero-initialised (kernel and bias): the untrained head returns the matching prior exactly
  (the trick of :class:`vostrack.network.tracker.PartTracker`), and training learns a correction.

No BatchNorm (padding rows of the part batch would enter the statistics). The last conv and the
prior's logit are float32 whatever the layer's policy: under ``mixed_float16``/``bfloat16`` the
body runs in the low precision and the logits come out float32. The layer does not autocast its
inputs (``autocast=False``): it casts the features to its compute dtype itself and keeps the
prior in float32 (float16 would round its tails, 1 - 1e-4 to 1.0 and 0.999 to 0.99902, and the
untrained pass-through would no longer be exact).

Object channels: probability maps are (B, H, W, K), one channel per object. Part ``n`` reads
channel ``object_index[n]`` of image ``box_indices[n]``: the map is transposed to (B*K, H, W, 1)
(one channel-image per object) and sampled at image ``box_indices * K + object_index``. So a
crop costs one channel whatever K is (a 1080p clip with 44 objects and 264 parts would otherwise
sample 44 channels per part), and no one-hot product is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers, ops

from vostrack.network.boxes import bin_centres, expand_boxes, pixel_to_feature
from vostrack.network.cosine import l2_normalize
from vostrack.network.keras_utils import clone_initializer
from vostrack.network.roi import sample_bilinear

INPUT_KEYS = ("cur_p4", "cur_p3", "cur_p2", "ref_p4", "ref_mask", "prev_mask", "prior")
LEVEL_STRIDES = {"P2": 4, "P3": 8, "P4": 16}


# --------------------------------------------------------------------------- crops


def mask_windows(boxes: Any, context: float = 0.25, min_side: float = 32.0) -> Any:
    """Mask windows (N, 4) of part boxes (N, 4): each box grown by ``context * (h + w)`` on both
    axes (not squared: the crops keep the most resolution, and a part's reference and current
    windows are stretched alike), each side at least ``min_side`` pixels. The head's crops and
    :func:`vostrack.network.aggregation.paste_parts` must use the same windows."""
    return expand_boxes(boxes, context, min_side, square=False)


def crop_window(features: Any, boxes: Any, box_indices: Any, size: int, stride: int) -> Any:
    """ROI-Align (one sample per bin centre, as :func:`vostrack.network.roi.roi_align`) of pixel
    windows (N, 4) on a stride-``stride`` map (B, H, W, C) -> (N, size, size, C), except at the
    borders: a sample inside the frame but beyond the first/last cell centre takes the edge
    cell's value (``roi_align`` gives 0 there: a 15-px band at stride 16, where an object
    touching the frame's edge would lose its prior), and a sample outside the frame
    (pixel < 0 or >= H * stride) is 0 (features: nothing there; masks: background). No gradient
    flows into the windows (as in Mask R-CNN, and as the tracker does with its windows)."""
    boxes = ops.stop_gradient(ops.cast(boxes, "float32"))
    shape = ops.shape(features)
    height = ops.cast(shape[1], "float32")
    width = ops.cast(shape[2], "float32")
    py = bin_centres(boxes[:, 0], boxes[:, 2], size)
    px = bin_centres(boxes[:, 1], boxes[:, 3], size)
    ys = ops.clip(pixel_to_feature(py, stride), 0.0, height - 1.0)
    xs = ops.clip(pixel_to_feature(px, stride), 0.0, width - 1.0)
    values = sample_bilinear(features, ys, xs, box_indices)
    in_y = ops.logical_and(py >= 0.0, py < height * float(stride))
    in_x = ops.logical_and(px >= 0.0, px < width * float(stride))
    inside = ops.expand_dims(
        ops.logical_and(ops.expand_dims(in_y, 2), ops.expand_dims(in_x, 1)), -1
    )
    return ops.where(inside, values, ops.zeros_like(values))


def object_channel_images(maps: Any) -> Any:
    """(B, H, W, K) -> (B*K, H, W, 1): image ``b * K + k`` is channel k of image b."""
    shape = ops.shape(maps)
    images = ops.reshape(ops.transpose(maps, (0, 3, 1, 2)), (-1, shape[1], shape[2]))
    return ops.expand_dims(images, -1)


def crop_object_maps(
    maps: Any, boxes: Any, box_indices: Any, object_index: Any, size: int, stride: int
) -> Any:
    """Crop each part's own object channel: ``maps`` (B, H, W, K) at ``stride`` (1 = frame
    resolution), windows (N, 4) px, ``box_indices``/``object_index`` (N,) -> (N, size, size, 1).
    Also the way to crop training targets (the object's ground-truth mask) for the head's loss."""
    num_objects = ops.shape(maps)[-1]
    index = ops.cast(box_indices, "int32") * ops.cast(num_objects, "int32") + ops.cast(
        object_index, "int32"
    )
    return crop_window(object_channel_images(ops.cast(maps, "float32")), boxes, index, size, stride)


def _pyramid_crop(
    pyramid: dict[str, Any], level: str, boxes: Any, box_indices: Any, size: int
) -> Any:
    return crop_window(pyramid[level], boxes, box_indices, size, LEVEL_STRIDES[level])


def crop_reference(
    pyramid: dict[str, Any],
    windows: Any,
    box_indices: Any,
    object_index: Any,
    masks: Any,
    crop_size: int = 8,
    mask_stride: int = 1,
) -> dict[str, Any]:
    """The reference inputs, cropped once per annotation: ``{"ref_p4": (N, s, s, C),
    "ref_mask": (N, s, s, 1)}`` for the parts' reference mask windows (N, 4) px on image
    ``box_indices`` of the reference frame's ``pyramid`` (needs "P4"); ``masks`` (B, H, W, K)
    object probabilities (one-hot annotation) at ``mask_stride``. The mask is sampled at 4s x 4s
    and average-pooled 4x4 (an area average: a binary mask point-sampled at 8 x 8 aliases)."""
    fine = crop_object_maps(masks, windows, box_indices, object_index, 4 * crop_size, mask_stride)
    return {
        "ref_p4": _pyramid_crop(pyramid, "P4", windows, box_indices, crop_size),
        "ref_mask": ops.average_pool(fine, 4, strides=4, padding="valid"),
    }


def crop_part_inputs(
    pyramid: dict[str, Any],
    windows: Any,
    box_indices: Any,
    object_index: Any,
    prev_mask: Any,
    prior: Any,
    reference: dict[str, Any],
    crop_size: int = 8,
    prev_stride: int = 4,
    prior_stride: int = 16,
) -> dict[str, Any]:
    """All inputs of :class:`PartMaskHead` for one frame.

    pyramid: ``{"P2", "P3", "P4"}`` of the current frame(s), (B, H/s, W/s, C) each (strides 4,
        8, 16 of the padded frame).
    windows: (N, 4) pixel mask windows (:func:`mask_windows` of the tracked part boxes).
    box_indices: (N,) int, the image of each part in the batch (zeros for one frame).
    object_index: (N,) int in [0, K), the part's object (the step's ``part_object``).
    prev_mask: (B, H', W', K) previous-frame object probabilities at ``prev_stride`` (1: frame
        resolution; 4: the stride-4 grid that :func:`vostrack.network.aggregation.paste_parts`
        produces, cell i centred on pixel 4i + 3).
    prior: (B, h, w, K) the matching branch's **object** probabilities at ``prior_stride``
        (``propagate_labels(...)[None, ..., 1:]``: drop the background channel).
    reference: :func:`crop_reference`'s dict (rows aligned with ``windows``).
    Returns the dict of :data:`INPUT_KEYS` (shapes in the module docstring).
    """
    s = int(crop_size)
    inputs = {
        "cur_p4": _pyramid_crop(pyramid, "P4", windows, box_indices, s),
        "cur_p3": _pyramid_crop(pyramid, "P3", windows, box_indices, 2 * s),
        "cur_p2": _pyramid_crop(pyramid, "P2", windows, box_indices, 4 * s),
        "prev_mask": crop_object_maps(
            prev_mask, windows, box_indices, object_index, 4 * s, prev_stride
        ),
        "prior": crop_object_maps(prior, windows, box_indices, object_index, 4 * s, prior_stride),
    }
    inputs["ref_p4"] = reference["ref_p4"]
    inputs["ref_mask"] = reference["ref_mask"]
    return inputs


# --------------------------------------------------------------------------- the head


def probability_logit(probs: Any, epsilon: float) -> Any:
    """``log(p / (1 - p))`` of ``p`` clipped to [epsilon, 1 - epsilon], in float32."""
    p = ops.clip(ops.cast(probs, "float32"), epsilon, 1.0 - epsilon)
    return ops.log(p) - ops.log1p(-p)


def _prototype_similarity(features: Any, ref: Any, weights: Any) -> Any:
    """Cosine similarity (N, s, s, 1) of every cell of ``features`` with the
    ``weights``-weighted mean of ``ref`` (0 where the weights are all zero: padding rows).

    In float32 whatever the inputs' dtype (s x s cells: cheap): the 1e-6 guards are subnormal
    in float16, and XLA on CPU flushes subnormals to zero, which made 0 / 0 of a padding row."""
    dtype = features.dtype
    features, ref, weights = (ops.cast(x, "float32") for x in (features, ref, weights))
    total = ops.sum(weights, axis=(1, 2), keepdims=True)
    proto = ops.sum(ref * weights, axis=(1, 2), keepdims=True) / (total + 1e-6)
    proto = l2_normalize(proto, 1e-6, rsqrt=True)
    unit = l2_normalize(features, 1e-6, rsqrt=True)
    return ops.cast(ops.sum(unit * proto, axis=-1, keepdims=True), dtype)


class PartMaskHead(layers.Layer):
    """RGMP-style reference-guided encoder-decoder on part crops (see the module docstring).

    ``call(inputs)`` maps the dict of :data:`INPUT_KEYS` to part logits (N, 4s, 4s, 1) float32.
    N may be a ``None`` dimension (TF graph); s is read from the inputs' static shapes.

    Args:
        channels: width at the coarsest level (fusion, global conv, its residual block).
        refine_channels: widths of the two refinement modules (2s, then 4s).
        global_kernel: k of the global convolution.
        prior_epsilon: the prior is clipped to [eps, 1 - eps] before its logit (+-9.2 at 1e-4).
        kernel_initializer: of every conv except the zero-initialised output conv.
    """

    def __init__(
        self,
        channels: int = 64,
        refine_channels: Sequence[int] = (32, 16),
        global_kernel: int = 7,
        prior_epsilon: float = 1e-4,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        refine_channels = tuple(int(c) for c in refine_channels)
        if len(refine_channels) != 2:
            raise ValueError(f"refine_channels needs two widths (2s, 4s), got {refine_channels}")
        if not 0.0 < prior_epsilon < 0.5:
            raise ValueError(f"prior_epsilon must be in (0, 0.5), got {prior_epsilon}")
        self.channels = int(channels)
        self.refine_channels = refine_channels
        self.global_kernel = int(global_kernel)
        self.prior_epsilon = float(prior_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.convs: dict[str, layers.Conv2D] = {}

    # ---------------------------------------------------------------- build

    def _conv(
        self, name: str, filters: int, kernel: Any, in_channels: int, output: bool = False
    ) -> None:
        if output:
            options = dict(kernel_initializer="zeros", bias_initializer="zeros", dtype="float32")
        else:
            options = dict(
                kernel_initializer=clone_initializer(self.kernel_initializer),
                dtype=self.dtype_policy,
            )
        conv = layers.Conv2D(
            filters, kernel, padding="same", data_format="channels_last", name=name, **options
        )
        conv.build((None, None, None, in_channels))
        self.convs[name] = conv

    def _res_block(self, name: str, channels: int) -> None:
        self._conv(f"{name}_a", channels, 3, channels)
        self._conv(f"{name}_b", channels, 3, channels)

    def _check_shapes(self, input_shape: dict[str, tuple]) -> None:
        missing = [key for key in INPUT_KEYS if key not in input_shape]
        if missing:
            raise ValueError(f"{self.name}: missing inputs {missing}; got {sorted(input_shape)}")
        size = input_shape["cur_p4"][1]
        expected = {
            "cur_p4": size,
            "ref_p4": size,
            "ref_mask": size,
            "cur_p3": 2 * size,
            "cur_p2": 4 * size,
            "prev_mask": 4 * size,
            "prior": 4 * size,
        }
        if size is not None:
            for key, side in expected.items():
                if tuple(input_shape[key][1:3]) != (side, side):
                    raise ValueError(
                        f"{self.name}: {key} must be {side}x{side} for a "
                        f"{size}x{size} cur_p4, got {input_shape[key]}"
                    )
        for key in ("ref_mask", "prev_mask", "prior"):
            if input_shape[key][-1] != 1:
                raise ValueError(f"{self.name}: {key} needs 1 channel, got {input_shape[key]}")

    def build(self, input_shape: dict[str, tuple]) -> None:
        self._check_shapes(input_shape)
        c4 = input_shape["cur_p4"][-1]
        c3 = input_shape["cur_p3"][-1]
        c2 = input_shape["cur_p2"][-1]
        cr = input_shape["ref_p4"][-1]
        if c4 is None or c3 is None or c2 is None or cr is None:
            raise ValueError(f"{self.name}: static channel counts needed, got {input_shape}")
        k = self.global_kernel
        ch = self.channels
        mid, fine = self.refine_channels
        self._conv("ref_encode", ch, 1, cr + 1)
        self._conv("fuse", ch, 3, c4 + ch + 2 + 2)
        self._conv("global_l1", ch, (k, 1), ch)
        self._conv("global_l2", ch, (1, k), ch)
        self._conv("global_r1", ch, (1, k), ch)
        self._conv("global_r2", ch, (k, 1), ch)
        self._res_block("coarse_res", ch)
        for name, skip_channels, width, upper in (
            ("refine3", c3, mid, ch),
            ("refine2", c2, fine, mid),
        ):
            self._conv(f"{name}_skip", width, 3, skip_channels + 2)
            self._res_block(f"{name}_skip_res", width)
            if upper != width:
                self._conv(f"{name}_upper", width, 1, upper)
            self._res_block(f"{name}_res", width)
        self._conv("output", 1, 3, fine, output=True)
        self.upsample = layers.UpSampling2D(
            2,
            interpolation="bilinear",
            data_format="channels_last",
            dtype=self.dtype_policy,
            name="upsample",
        )
        self.built = True

    # ---------------------------------------------------------------- call

    def _apply_res(self, name: str, x: Any) -> Any:
        r = self.convs[f"{name}_a"](ops.relu(x))
        r = self.convs[f"{name}_b"](ops.relu(r))
        return x + r

    def _refine(self, name: str, skip: Any, masks: Any, upper: Any) -> Any:
        """RGMP's refinement module: skip features (+ the masks) and the 2x-upsampled upper
        level, each through a residual block."""
        s = self.convs[f"{name}_skip"](ops.concatenate([skip, masks], axis=-1))
        s = self._apply_res(f"{name}_skip_res", s)
        if f"{name}_upper" in self.convs:
            upper = self.convs[f"{name}_upper"](upper)
        return self._apply_res(f"{name}_res", s + self.upsample(upper))

    def call(self, inputs: dict[str, Any]) -> Any:
        self._check_shapes({key: tuple(value.shape) for key, value in inputs.items()})
        dtype = self.compute_dtype
        feats = {
            key: ops.cast(inputs[key], dtype)
            for key in ("cur_p4", "cur_p3", "cur_p2", "ref_p4", "ref_mask")
        }
        prior = ops.cast(inputs["prior"], "float32")
        masks4 = ops.concatenate(
            [ops.cast(inputs["prev_mask"], dtype), ops.cast(prior, dtype)], axis=-1
        )  # (N, 4s, 4s, 2)
        masks2 = ops.average_pool(masks4, 2, strides=2, padding="valid")
        masks1 = ops.average_pool(masks2, 2, strides=2, padding="valid")

        cur, ref, ref_mask = feats["cur_p4"], feats["ref_p4"], feats["ref_mask"]
        ref_code = ops.relu(self.convs["ref_encode"](ops.concatenate([ref, ref_mask], axis=-1)))
        fg = _prototype_similarity(cur, ref, ref_mask)
        bg = _prototype_similarity(cur, ref, 1.0 - ref_mask)
        x = ops.relu(self.convs["fuse"](ops.concatenate([cur, ref_code, fg, bg, masks1], axis=-1)))
        left = self.convs["global_l2"](self.convs["global_l1"](x))
        right = self.convs["global_r2"](self.convs["global_r1"](x))
        x = self._apply_res("coarse_res", ops.relu(left + right))
        x = self._refine("refine3", feats["cur_p3"], masks2, x)
        x = self._refine("refine2", feats["cur_p2"], masks4, x)
        residual = self.convs["output"](ops.relu(x))  # float32, zero-initialised
        return probability_logit(prior, self.prior_epsilon) + residual

    def compute_output_shape(self, input_shape: dict[str, tuple]) -> tuple:
        shape = tuple(input_shape["prior"])
        return shape[:3] + (1,)

    def compute_output_spec(self, inputs: dict[str, Any]) -> Any:
        shape = self.compute_output_shape({k: v.shape for k, v in inputs.items()})
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            channels=self.channels,
            refine_channels=list(self.refine_channels),
            global_kernel=self.global_kernel,
            prior_epsilon=self.prior_epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
