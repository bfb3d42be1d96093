"""Boxes and coordinates of the part path, in ``keras.ops`` (TF and JAX alike): the conventions,
and the one home of every operation on them, used by the per-frame graph (:mod:`.tracker`,
:mod:`.mask_head`, :mod:`.roi`, :mod:`.aggregation`) and by the training losses
(:mod:`vostrack.training.losses`) alike. ``tests/reference/parts.py`` holds numpy twins of these
functions, the references the tests compare them against.

Conventions (shared by :mod:`.roi`, :mod:`.tracker`, :mod:`.mask_head`, :mod:`.aggregation`):

- A box is ``[y0, x0, y1, x1]`` float32 in **pixel coordinates** of the frame the network sees
  (after padding to a multiple of 32), corners continuous: pixel ``(r, c)`` covers
  ``[r, r + 1) x [c, c + 1)`` and its centre is ``(r + 0.5, c + 0.5)``. A mask's tight box is
  ``[rmin, cmin, rmax + 1, cmax + 1]`` (:func:`vostrack.network.parts.mask_box`), so a box's
  height is the number of rows it covers.
- A stride-``s`` feature cell ``j`` is centred on pixel ``s * j + s - 1`` (continuous coordinate
  ``s * j + s - 0.5``, :func:`feature_to_pixel`). That is what TF "SAME" padding gives when every
  stride-2 layer sees an even size (DESIGN.md's claim, checked on the EfficientNet-Lite2 backbone
  by back-propagating from one cell of C2/C3 and taking the centre of its receptive field;
  ``tests/test_parts.py`` keeps that check). It holds for frames whose sides divide by 32 (the
  pipeline pads 854 to 864); on a 480x854 frame the centres drift (C2 cell j of a 250-px side is
  centred on 4j + 1, not 4j + 3).
- A part's tracker geometry (SiamFC): the *template window* is a square around the part, of side
  ``sqrt((h + p) * (w + p))`` with context ``p = context * (h + w)`` (:func:`expand_boxes`); the
  *search window* has the same centre and ``search_size / template_size`` times that side
  (:func:`scale_boxes`), so that the template crop (``template_size`` samples) and the search
  crop (``search_size`` samples) share one sample spacing ``d``. Response cell ``(i, j)`` (size
  ``R = search_size - template_size + 1``) places the part's centre at
  ``window_y0 + (i + template_size / 2) * d`` (:func:`response_to_pixel`); the centre cell
  ``(R - 1) / 2`` is "no motion" (R is odd when search_size - template_size is even, which the
  tracker requires).

Each function keeps the exact order of operations of the code it replaced (the frozen graph and
the trained weights were made with it), so moving maths here changed no number.
"""

from __future__ import annotations

from typing import Any

from keras import ops


def box_centres_sizes(boxes: Any) -> tuple[Any, Any, Any, Any]:
    """(cy, cx, h, w) of boxes (..., 4)."""
    return (
        (boxes[..., 0] + boxes[..., 2]) * 0.5,
        (boxes[..., 1] + boxes[..., 3]) * 0.5,
        boxes[..., 2] - boxes[..., 0],
        boxes[..., 3] - boxes[..., 1],
    )


def boxes_from_centres_sizes(cy: Any, cx: Any, h: Any, w: Any) -> Any:
    """Boxes (..., 4) from centres and sizes."""
    return ops.stack([cy - h * 0.5, cx - w * 0.5, cy + h * 0.5, cx + w * 0.5], axis=-1)


def expand_boxes(boxes: Any, context: float, min_side: float = 0.0, square: bool = True) -> Any:
    """Boxes (..., 4) grown by the context ``p = context * (h + w)``: SiamFC's template window,
    the square of side ``max(sqrt((h + p)(w + p)), min_side)`` around each box's centre, or with
    ``square=False`` the box ``max(h + p, min_side) x max(w + p, min_side)`` (the mask head's
    window).

    Square for the tracker, because its crops are square: a thin part then keeps its aspect ratio
    in the template instead of being stretched, and the context (background around the part) is
    what lets the correlation tell the part from look-alikes.
    """
    boxes = ops.cast(boxes, "float32")
    cy, cx, h, w = box_centres_sizes(boxes)
    pad = context * (h + w)
    if not square:
        return boxes_from_centres_sizes(
            cy, cx, ops.maximum(h + pad, float(min_side)), ops.maximum(w + pad, float(min_side))
        )
    side = ops.sqrt(ops.maximum(h + pad, 0.0) * ops.maximum(w + pad, 0.0))
    side = ops.maximum(side, float(min_side))
    return boxes_from_centres_sizes(cy, cx, side, side)


def scale_boxes(boxes: Any, factor: float) -> Any:
    """Boxes (..., 4) scaled by ``factor`` about their centres."""
    cy, cx, h, w = box_centres_sizes(boxes)
    return boxes_from_centres_sizes(cy, cx, h * factor, w * factor)


def pixel_to_feature(coords: Any, stride: int) -> Any:
    """Continuous pixel coordinates -> feature-index coordinates at ``stride`` (cell j at j):
    continuous pixel p lies on cell ``(p - s + 0.5) / s``."""
    return (coords - (stride - 0.5)) / float(stride)


def feature_to_pixel(coords: Any, stride: int) -> Any:
    """Feature-index coordinates -> continuous pixel coordinates (cell j -> s*j + s - 0.5)."""
    return coords * float(stride) + (stride - 0.5)


def bin_centres(start: Any, end: Any, size: int) -> Any:
    """Continuous pixel coordinates (N, size) of the centres of ``size`` equal bins of the
    intervals ``[start, end)`` (N,): where ROI-Align with one sample per bin samples."""
    fractions = (ops.arange(size, dtype="float32") + 0.5) / float(size)
    return ops.expand_dims(start, 1) + fractions * ops.expand_dims(end - start, 1)


def response_to_pixel(
    cells: Any, window_start: Any, window_side: Any, template_size: int, search_size: int
) -> Any:
    """Response coordinates (cell i, continuous) -> the part-centre pixel coordinate they stand
    for, along one axis, for search windows starting at ``window_start`` of side
    ``window_side``."""
    spacing = window_side / float(search_size)
    return window_start + (cells + template_size / 2.0) * spacing


def pixel_to_response(
    coords: Any, window_start: Any, window_side: Any, template_size: int, search_size: int
) -> Any:
    """Inverse of :func:`response_to_pixel`."""
    spacing = window_side / float(search_size)
    return (coords - window_start) / spacing - template_size / 2.0
