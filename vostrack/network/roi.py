"""ROI crop-and-resize with ``keras.ops`` only (TensorFlow, JAX and torch alike).

Two entry points share one gather-based bilinear sampler:

- :func:`crop_and_resize` is a drop-in for ``tf.image.crop_and_resize`` (bilinear), same box
  convention and the same sample positions, so a TF reference can check it and code ported from
  the seed keeps its meaning. Boxes are **normalised** ``[y0, x0, y1, x1]`` where 0 is the centre
  of the first row/column and 1 the centre of the last one (coordinate ``v`` maps to index
  ``v * (size - 1)``); the crop samples the box corners *inclusive*, and a sample that falls
  outside ``[0, size - 1]`` gets ``extrapolation_value`` (not the border value).
- :func:`roi_align` takes boxes in **pixel** coordinates of the frame the features come from, the
  convention of :mod:`vostrack.network.boxes` (pixel ``r`` covers ``[r, r + 1)``, a mask's box is
  ``[rmin, cmin, rmax + 1, cmax + 1]``), and samples the *centre of each output bin* (ROI-Align
  with one sample per bin): an ``h x w`` crop of a box is then the same grid at any stride, and a
  crop of a crop lines up with the original. A stride-``s`` cell ``j`` is centred on the continuous
  pixel coordinate ``s * j + s - 0.5`` (pixel ``s * j + s - 1``; TF "SAME" padding with sizes that
  divide by ``s``, see :func:`vostrack.network.boxes.pixel_to_feature`).

Why gathers and not ``ops.image.map_coordinates``: that op samples one channel at a time (a
coordinate array per output element), whereas a gather on ``(B*H*W, C)`` fetches all channels of a
cell at once: four gathers per crop regardless of the channel count. The number of boxes may be a
``None`` dimension under TF; JAX recompiles for every new count, so callers pad to a fixed maximum
(``max_parts`` per object, see :mod:`vostrack.network.parts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras import ops

from vostrack.network.boxes import bin_centres, pixel_to_feature


def _grid(start: Any, end: Any, size: int, extent: Any) -> Any:
    """tf.image.crop_and_resize's sample positions, in index units, for normalised ``start`` /
    ``end`` of shape (N,): (N, size). Same expression as the TF kernel, so that float32 rounding
    (which decides what lands exactly on the last row) agrees with it."""
    scale_extent = extent - 1.0
    if size > 1:
        spacing = (end - start) * scale_extent / float(size - 1)
        indices = ops.arange(size, dtype="float32")
        return ops.expand_dims(start, 1) * scale_extent + indices * ops.expand_dims(spacing, 1)
    return ops.expand_dims(0.5 * (start + end) * scale_extent, 1)


def sample_bilinear(
    features: Any, ys: Any, xs: Any, box_indices: Any, extrapolation_value: float = 0.0
) -> Any:
    """Sample ``features`` (B, H, W, C) on the separable grids ``ys`` (N, h) x ``xs`` (N, w) given
    in index coordinates (cell ``j`` at ``j``), of image ``box_indices[n]``: (N, h, w, C).

    Bilinear between the four neighbours, as TF does (``top + (bottom - top) * lerp``); a sample
    outside ``[0, H - 1] x [0, W - 1]`` gets ``extrapolation_value``.
    """
    shape = ops.shape(features)
    height, width, channels = shape[1], shape[2], features.shape[-1]
    if channels is None:
        raise ValueError("sample_bilinear needs a static channel count")
    dtype = features.dtype
    ys = ops.cast(ys, "float32")
    xs = ops.cast(xs, "float32")
    h_f = ops.cast(height, "float32")
    w_f = ops.cast(width, "float32")
    y_inside = ops.logical_and(ys >= 0.0, ys <= h_f - 1.0)
    x_inside = ops.logical_and(xs >= 0.0, xs <= w_f - 1.0)

    y_top = ops.floor(ys)
    x_left = ops.floor(xs)
    y_lerp = ops.expand_dims(ops.expand_dims(ops.cast(ys - y_top, dtype), 2), 3)
    x_lerp = ops.expand_dims(ops.expand_dims(ops.cast(xs - x_left, dtype), 1), 3)
    # Clipping keeps the gathers in range for samples that are then replaced anyway, and makes
    # the bottom/right neighbour of a sample on the last row/column the sample itself (lerp 0).
    max_y = ops.cast(height, "int32") - 1
    max_x = ops.cast(width, "int32") - 1
    y0 = ops.clip(ops.cast(y_top, "int32"), 0, max_y)
    y1 = ops.clip(y0 + 1, 0, max_y)
    x0 = ops.clip(ops.cast(x_left, "int32"), 0, max_x)
    x1 = ops.clip(x0 + 1, 0, max_x)

    flat = ops.reshape(features, (-1, channels))
    width_i = ops.cast(width, "int32")
    base = ops.cast(box_indices, "int32") * ops.cast(height, "int32") * width_i
    rows0 = ops.expand_dims(ops.expand_dims(base, 1) + y0 * width_i, 2)
    rows1 = ops.expand_dims(ops.expand_dims(base, 1) + y1 * width_i, 2)
    cols0 = x0[:, None, :]
    cols1 = x1[:, None, :]
    top_left = ops.take(flat, rows0 + cols0, axis=0)
    top_right = ops.take(flat, rows0 + cols1, axis=0)
    bottom_left = ops.take(flat, rows1 + cols0, axis=0)
    bottom_right = ops.take(flat, rows1 + cols1, axis=0)
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    values = top + (bottom - top) * y_lerp

    inside = ops.expand_dims(
        ops.logical_and(ops.expand_dims(y_inside, 2), ops.expand_dims(x_inside, 1)), -1
    )
    fill = ops.cast(extrapolation_value, dtype)
    return ops.where(inside, values, fill)


def crop_and_resize(
    features: Any,
    boxes: Any,
    box_indices: Any,
    crop_size: Sequence[int],
    extrapolation_value: float = 0.0,
) -> Any:
    """``tf.image.crop_and_resize(features, boxes, box_indices, crop_size)`` (bilinear) in
    ``keras.ops``.

    features: (B, H, W, C); boxes: (N, 4) normalised ``[y0, x0, y1, x1]`` (0 = first cell centre,
    1 = last cell centre; y1 < y0 flips the crop, as in TF); box_indices: (N,) int, the image of
    each box; crop_size: static (h, w). Returns (N, h, w, C).
    """
    crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
    shape = ops.shape(features)
    boxes = ops.cast(boxes, "float32")
    ys = _grid(boxes[:, 0], boxes[:, 2], crop_h, ops.cast(shape[1], "float32"))
    xs = _grid(boxes[:, 1], boxes[:, 3], crop_w, ops.cast(shape[2], "float32"))
    return sample_bilinear(features, ys, xs, box_indices, extrapolation_value)


def roi_align(
    features: Any,
    boxes: Any,
    box_indices: Any,
    crop_size: Sequence[int],
    stride: int,
    extrapolation_value: float = 0.0,
) -> Any:
    """Crop pixel boxes out of a stride-``stride`` feature map: (N, h, w, C).

    boxes: (N, 4) ``[y0, x0, y1, x1]`` in pixel coordinates of the (padded) frame the features were
    computed on, corners continuous (pixel r covers [r, r+1)); each output cell is the bilinear
    sample at the centre of its bin. Samples beyond the first/last cell centre get
    ``extrapolation_value``, as in :func:`crop_and_resize`.
    """
    crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
    boxes = ops.cast(boxes, "float32")
    ys = pixel_to_feature(bin_centres(boxes[:, 0], boxes[:, 2], crop_h), stride)
    xs = pixel_to_feature(bin_centres(boxes[:, 1], boxes[:, 3], crop_w), stride)
    return sample_bilinear(features, ys, xs, box_indices, extrapolation_value)


def _interpolate_axis(images: Any, size: Any, ratio: float, axis: int) -> Any:
    in_size = ops.shape(images)[axis]
    positions = (ops.cast(ops.arange(size), "float32") + 1.0 - ratio) / ratio
    positions = ops.clip(positions, 0.0, ops.cast(in_size, "float32") - 1.0)
    low = ops.floor(positions)
    lerp = ops.cast(positions - low, images.dtype)
    low = ops.cast(low, "int32")
    high = ops.minimum(low + 1, ops.cast(in_size, "int32") - 1)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    lerp = ops.reshape(lerp, shape)
    first = ops.take(images, low, axis=axis)
    second = ops.take(images, high, axis=axis)
    return first + (second - first) * lerp


def resize_aligned(images: Any, size: Sequence[Any], ratio: float) -> Any:
    """Bilinear resize of a stride-``s * ratio`` map (B, h, w, C) to the stride-``s`` grid of
    ``size`` = (H, W) (ints or run-time scalars), keeping the cells where they are on the frame.

    With TF "SAME" padding a stride-``s`` cell ``i`` is centred on pixel ``s*i + s - 1``, so it
    reads the coarse coordinate ``(i + 1 - ratio) / ratio`` (for ratio 2: ``(i - 1) / 2``, coarse
    cell j lands exactly on fine cell 2j + 1). ``ops.image.resize`` (half-pixel centres) would put
    every map half a fine cell off, and rejects run-time sizes in a TF graph. Beyond the border
    the edge value is repeated. Use ratio = stride to bring stride-``s`` logits to the frame.
    Separable: two gathers per axis with ``ops.take``.
    """
    images = _interpolate_axis(images, size[0], float(ratio), axis=1)
    return _interpolate_axis(images, size[1], float(ratio), axis=2)
