"""The Siamese part tracker (SiamFC / SiamRPN++ on parts, as in FAVOS), in ``keras.ops``.

Per part: a template (``template_size``^2 samples of a feature map around the part on the
reference frame, cropped once) is correlated with a search crop (``search_size``^2 samples around
the part's last box on the current frame); the response's peak gives the part's new box.

Geometry and box conventions are those of :mod:`vostrack.network.boxes` (pixel boxes
``[y0, x0, y1, x1]``, continuous corners, stride-s cell j centred on pixel s*j + s - 1, the
template and search windows, response cells). The windows and the decoding run inside the
per-frame graph (:meth:`vostrack.network.vos.VosNetwork.step`: the mask heads need the new boxes
in the same call); ``tests/reference/parts.py`` holds their numpy references.

The response is ``scale * similarity + bias + head(depthwise_xcorr(adjust(search),
adjust(template)))`` where ``similarity`` is the mean cosine similarity of the template's cells
with the search window's (the channel-summed correlation of L2-normalised features divided by the
template's cell count, in [-1, 1]) and the head's last convs are zero-initialised. So:
- untrained, the tracker is SiamFC with pretrained features (what DESIGN.md measured to work for
  matching), and training starts from a tracker that works rather than from noise;
- the learned path (SiamRPN++'s depthwise xcorr + head) only has to learn a correction.
No BatchNorm: parts are padded to a fixed count, and the padding rows would enter the batch
statistics. The layer and its sublayers are float32 by default, whatever the global policy (the
correlation sums template_size^2 * channels products; DESIGN.md: heads stay float32).

Which level: untrained, stride 16 (C4 of EfficientNet-Lite2, L2-normalised) tracks far better
than stride 8 (C3). Measured on the four davis2016-dev sequences, 6 k-means parts of the frame-0
mask tracked through the whole sequence, share of part centres on the (9-px dilated) ground-truth
mask, C4 (T 6, X 18) / C3 (T 8, X 24) / parts left where they were: blackswan 0.96 / 0.85 / 0.90,
car-shadow 0.99 / 0.58 / 0.53, bmx-trees 0.78 / 0.49 / 0.23, breakdance 0.35 / 0.36 / 0.37 (large
deformation: the case the trained heads and the mask propagation must handle). A trained tracker
on P3 (FPN adds the semantics C3 lacks) is the natural next thing to try; compare it against this
baseline.

Parts are rows of one batch (objects x max_parts, padded): every op is per row, so padding rows
cannot change valid rows, and :func:`decode_response` returns the previous box and score 0 for
them.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from vostrack.network.boxes import (
    box_centres_sizes,
    boxes_from_centres_sizes,
    expand_boxes,
    response_to_pixel,
    scale_boxes,
)
from vostrack.network.cosine import l2_normalize
from vostrack.network.parts import cosine_window, response_size
from vostrack.network.roi import roi_align
from vostrack.network.xcorr import depthwise_xcorr, xcorr

# The epsilon of the similarity's L2 normalisation (the one its graphs were exported with).
_L2_EPSILON = 1e-6


def template_windows(boxes: Any, context: float = 0.5, min_side: float = 0.0) -> Any:
    """SiamFC's template windows (N, 4) of part boxes (N, 4): the square
    :func:`vostrack.network.boxes.expand_boxes`."""
    return expand_boxes(boxes, context, min_side, square=True)


def search_windows(
    boxes: Any, context: float = 0.5, factor: float = 3.0, min_side: float = 0.0
) -> Any:
    """The search windows (N, 4) of part boxes (N, 4): their template windows scaled by
    ``factor`` (= search_size / template_size for the tracker)."""
    return scale_boxes(template_windows(boxes, context, min_side), factor)


def _parabola_offset(left: Any, centre: Any, right: Any) -> Any:
    # Vertex of the parabola through three neighbours; only where the peak is a strict maximum
    # (curvature < 0), and never more than half a cell: beyond that another cell is the peak.
    curvature = left - 2.0 * centre + right
    concave = curvature < 0.0
    offset = 0.5 * (left - right) / ops.where(concave, curvature, -1.0)
    return ops.clip(ops.where(concave, offset, 0.0), -0.5, 0.5)


def decode_response(
    response: Any,
    windows: Any,
    previous_boxes: Any,
    template_size: int,
    search_size: int,
    offsets: Any = None,
    window_influence: float = 0.25,
    size_lr: float = 1.0,
    valid: Any = None,
) -> tuple[Any, Any]:
    """New part boxes (N, 4) and scores (N,) in [0, 1] from response logits (N, R, R, 1), for
    search ``windows`` (N, 4) made from ``previous_boxes`` (N, 4).

    The peak is the argmax of ``(1 - window_influence) * normalised response + window_influence *
    cosine window`` (SiamFC's motion prior: the response is min-max normalised per part so that
    the prior weighs the same for sharp and flat maps). The centre is refined below a cell by the
    box offsets (N, R, R, 4) at the peak when given, else by a parabola through the peak's
    neighbours in the raw response. The size is the previous size times ``exp(size_lr * dlog)``
    with offsets (the SiamFC-style damping of scale changes for ``size_lr`` < 1), unchanged
    without. The score is ``sigmoid`` of the raw response at the peak cell. Invalid parts
    (``valid`` (N,) False) keep their box and score 0.
    """
    size = response.shape[1]
    if size is None or size != response_size(template_size, search_size):
        raise ValueError(
            f"response of shape {response.shape} does not fit template_size "
            f"{template_size} and search_size {search_size}"
        )
    flat = ops.reshape(ops.cast(response, "float32"), (-1, size * size))
    low = ops.min(flat, axis=1, keepdims=True)
    high = ops.max(flat, axis=1, keepdims=True)
    normalised = (flat - low) / ops.maximum(high - low, 1e-12)
    window = ops.convert_to_tensor(cosine_window(size).reshape(1, -1))
    penalised = (1.0 - window_influence) * normalised + window_influence * window
    peak = ops.cast(ops.argmax(penalised, axis=1), "int32")
    pi = peak // size
    pj = peak - pi * size

    def at(values: Any, i: Any, j: Any) -> Any:
        return ops.take_along_axis(values, ops.expand_dims(i * size + j, 1), axis=1)[:, 0]

    centre = at(flat, pi, pj)
    if offsets is not None:
        offsets = ops.cast(offsets, "float32")
        fy, fx, dh, dw = (
            at(ops.reshape(offsets[..., k], (-1, size * size)), pi, pj) for k in range(4)
        )
        scale_h = ops.exp(size_lr * dh)
        scale_w = ops.exp(size_lr * dw)
    else:
        last = size - 1
        up = at(flat, ops.maximum(pi - 1, 0), pj)
        down = at(flat, ops.minimum(pi + 1, last), pj)
        left = at(flat, pi, ops.maximum(pj - 1, 0))
        right = at(flat, pi, ops.minimum(pj + 1, last))
        fy = ops.where(ops.logical_and(pi > 0, pi < last), _parabola_offset(up, centre, down), 0.0)
        fx = ops.where(
            ops.logical_and(pj > 0, pj < last), _parabola_offset(left, centre, right), 0.0
        )
        scale_h = scale_w = 1.0
    windows = ops.cast(windows, "float32")
    previous_boxes = ops.cast(previous_boxes, "float32")
    cy = response_to_pixel(
        ops.cast(pi, "float32") + fy,
        windows[:, 0],
        windows[:, 2] - windows[:, 0],
        template_size,
        search_size,
    )
    cx = response_to_pixel(
        ops.cast(pj, "float32") + fx,
        windows[:, 1],
        windows[:, 3] - windows[:, 1],
        template_size,
        search_size,
    )
    _, _, ph, pw = box_centres_sizes(previous_boxes)
    boxes = boxes_from_centres_sizes(cy, cx, ph * scale_h, pw * scale_w)
    scores = ops.sigmoid(centre)
    if valid is not None:
        valid = ops.cast(valid, "bool")
        boxes = ops.where(ops.expand_dims(valid, 1), boxes, previous_boxes)
        scores = ops.where(valid, scores, 0.0)
    return boxes, scores


class PartTracker(layers.Layer):
    """Siamese part tracker on one feature level (KerasHub style: sublayers built in ``build``,
    every ``__init__`` argument in ``get_config``).

    ``call(templates, search)`` maps template crops (N, T, T, C) and search crops (N, X, X, C) to
    ``{"response": (N, R, R, 1) logits, "offsets": (N, R, R, 4), "similarity": (N, R, R, 1)}``
    with ``R = X - T + 1``. The crops come from :meth:`crop_templates` / :meth:`crop_search`;
    :meth:`track` chains crop, call and decode for one frame.

    Args:
        stride: of the feature map the crops are taken from (8 for P3/C3, 16 for C4/P4). The
            defaults (16, T 6, X 18) are the configuration measured above.
        template_size: T, samples per side of a template (``template_size * stride`` pixels of
            template window are sampled at the feature map's own resolution).
        search_size: X, samples per side of a search crop; X - T must be even and positive (so
            that "no motion" is the response's centre cell). The part may move by
            ``(X - T) / 2`` samples, i.e. ``(X - T) / (2 T)`` template windows, per frame.
        context: SiamFC's context around the part in its template window.
        min_template_side: smallest template window side in pixels (None: ``T * stride / 2``), so
            that a tiny part still gets a template with some surroundings.
        adjust_channels: width of the trainable 1x1 convs applied to both crops before the
            depthwise correlation (SiamRPN++'s adjust layer); None correlates the raw features.
        head_channels: width of the 3x3 conv on the correlation.
        window_influence, size_lr: decoding (see :func:`decode_response`).
        use_offsets: decode with the regression offsets (trained head) rather than a parabola
            refinement of the peak (untrained: the offsets are zero).
        similarity_scale, similarity_bias: initial values of the trainable affine map of the
            cosine similarity into logits (cos 1 -> sigmoid 0.92, cos 0 -> 0.08).
    """

    def __init__(
        self,
        stride: int = 16,
        template_size: int = 6,
        search_size: int = 18,
        context: float = 0.5,
        min_template_side: float | None = None,
        adjust_channels: int | None = 64,
        head_channels: int = 64,
        window_influence: float = 0.25,
        size_lr: float = 1.0,
        use_offsets: bool = True,
        similarity_scale: float = 5.0,
        similarity_bias: float = -2.5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if search_size <= template_size or (search_size - template_size) % 2:
            raise ValueError(
                f"search_size - template_size must be positive and even, got "
                f"{search_size} - {template_size}"
            )
        self.stride = int(stride)
        self.template_size = int(template_size)
        self.search_size = int(search_size)
        self.context = float(context)
        self.min_template_side = None if min_template_side is None else float(min_template_side)
        self.adjust_channels = None if adjust_channels is None else int(adjust_channels)
        self.head_channels = int(head_channels)
        self.window_influence = float(window_influence)
        self.size_lr = float(size_lr)
        self.use_offsets = bool(use_offsets)
        self.similarity_scale = float(similarity_scale)
        self.similarity_bias = float(similarity_bias)

    # ---------------------------------------------------------------- geometry and crops

    @property
    def response_size(self) -> int:
        return response_size(self.template_size, self.search_size)

    @property
    def min_side(self) -> float:
        if self.min_template_side is not None:
            return self.min_template_side
        return self.template_size * self.stride / 2.0

    def template_windows(self, boxes: Any) -> Any:
        """Template windows (N, 4) of part boxes (N, 4)."""
        return template_windows(
            ops.stop_gradient(ops.cast(boxes, "float32")), self.context, self.min_side
        )

    def search_windows(self, boxes: Any) -> Any:
        """Search windows (N, 4) around part boxes (N, 4)."""
        return search_windows(
            ops.stop_gradient(ops.cast(boxes, "float32")),
            self.context,
            self.search_size / self.template_size,
            self.min_side,
        )

    def crop_templates(self, features: Any, boxes: Any, box_indices: Any) -> Any:
        """Template crops (N, T, T, C) of part boxes on image ``box_indices`` of ``features``
        (B, H, W, C) at ``self.stride``. Crop once, on the reference frame."""
        size = (self.template_size, self.template_size)
        return roi_align(features, self.template_windows(boxes), box_indices, size, self.stride)

    def crop_search(self, features: Any, boxes: Any, box_indices: Any) -> tuple[Any, Any]:
        """Search crops (N, X, X, C) around the parts' last boxes, and their windows (N, 4)."""
        windows = self.search_windows(boxes)
        size = (self.search_size, self.search_size)
        return roi_align(features, windows, box_indices, size, self.stride), windows

    # ---------------------------------------------------------------- layers

    def build(self, templates_shape: tuple, search_shape: tuple) -> None:
        channels = templates_shape[-1]
        if channels is None or search_shape[-1] != channels:
            raise ValueError(
                f"templates {templates_shape} and search {search_shape} need the "
                f"same static channel count"
            )
        common = dict(data_format="channels_last", dtype=self.dtype_policy)
        corr_channels = channels
        self.adjust_template = self.adjust_search = None
        if self.adjust_channels is not None:
            self.adjust_template = layers.Conv2D(
                self.adjust_channels, 1, use_bias=False, name="adjust_template", **common
            )
            self.adjust_search = layers.Conv2D(
                self.adjust_channels, 1, use_bias=False, name="adjust_search", **common
            )
            self.adjust_template.build(tuple(templates_shape))
            self.adjust_search.build(tuple(search_shape))
            corr_channels = self.adjust_channels
        r = self.response_size
        self.head_conv = layers.Conv2D(
            self.head_channels, 3, padding="same", activation="relu", name="head_conv", **common
        )
        self.head_conv.build((None, r, r, corr_channels))
        # Zero-initialised outputs: untrained, the response is the cosine similarity's.
        self.response_conv = layers.Conv2D(
            1, 1, kernel_initializer="zeros", name="response_conv", **common
        )
        self.response_conv.build((None, r, r, self.head_channels))
        self.offsets_conv = layers.Conv2D(
            4, 1, kernel_initializer="zeros", name="offsets_conv", **common
        )
        self.offsets_conv.build((None, r, r, self.head_channels))
        self.scale = self.add_weight(
            shape=(),
            name="similarity_scale",
            initializer=keras.initializers.Constant(self.similarity_scale),
        )
        self.bias = self.add_weight(
            shape=(),
            name="similarity_bias",
            initializer=keras.initializers.Constant(self.similarity_bias),
        )
        self.built = True

    def call(self, templates: Any, search: Any) -> dict[str, Any]:
        templates = ops.cast(templates, self.compute_dtype)
        search = ops.cast(search, self.compute_dtype)
        cells = float(self.template_size * self.template_size)
        similarity = (
            xcorr(
                l2_normalize(search, _L2_EPSILON, rsqrt=True),
                l2_normalize(templates, _L2_EPSILON, rsqrt=True),
            )
            / cells
        )
        if self.adjust_template is not None:
            templates = self.adjust_template(templates)
            search = self.adjust_search(search)
        # Divided by the cell count so that the head sees the same scale for any template size.
        correlation = depthwise_xcorr(search, templates) / cells
        hidden = self.head_conv(correlation)
        response = self.scale * similarity + self.bias + self.response_conv(hidden)
        return {
            "response": response,
            "offsets": self.offsets_conv(hidden),
            "similarity": similarity,
        }

    def compute_output_shape(self, templates_shape: tuple, search_shape: tuple) -> dict[str, tuple]:
        r = self.response_size
        n = templates_shape[0]
        return {"response": (n, r, r, 1), "offsets": (n, r, r, 4), "similarity": (n, r, r, 1)}

    # ---------------------------------------------------------------- per frame

    def decode(
        self,
        outputs: dict[str, Any],
        windows: Any,
        previous_boxes: Any,
        valid: Any = None,
        use_offsets: bool | None = None,
    ) -> tuple[Any, Any]:
        """New boxes (N, 4) and scores (N,) from :meth:`call`'s outputs."""
        use_offsets = self.use_offsets if use_offsets is None else use_offsets
        return decode_response(
            outputs["response"],
            windows,
            previous_boxes,
            self.template_size,
            self.search_size,
            offsets=outputs["offsets"] if use_offsets else None,
            window_influence=self.window_influence,
            size_lr=self.size_lr,
            valid=valid,
        )

    def track(
        self,
        features: Any,
        templates: Any,
        boxes: Any,
        box_indices: Any,
        valid: Any = None,
        use_offsets: bool | None = None,
    ) -> dict[str, Any]:
        """One frame: search around ``boxes`` (N, 4) on image ``box_indices`` of ``features``,
        correlate with ``templates`` (N, T, T, C) and decode. Returns ``{"boxes", "scores",
        "response", "offsets", "similarity", "windows"}``."""
        search, windows = self.crop_search(features, boxes, box_indices)
        outputs = dict(self(templates, search))
        outputs["boxes"], outputs["scores"] = self.decode(
            outputs, windows, boxes, valid, use_offsets
        )
        outputs["windows"] = windows
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            stride=self.stride,
            template_size=self.template_size,
            search_size=self.search_size,
            context=self.context,
            min_template_side=self.min_template_side,
            adjust_channels=self.adjust_channels,
            head_channels=self.head_channels,
            window_influence=self.window_influence,
            size_lr=self.size_lr,
            use_offsets=self.use_offsets,
            similarity_scale=self.similarity_scale,
            similarity_bias=self.similarity_bias,
        )
        return config
