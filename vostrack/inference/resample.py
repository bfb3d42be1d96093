"""The frame and mask resampling that the exported TF graph does in-graph, in numpy, for the
LiteRT runtime, which has no builtin op for it.

``tf.image.resize(..., antialias=True)`` is TF's ``ScaleAndTranslate`` with a triangle kernel
widened by the downscale factor (no kernel widening when upscaling: then it is the ordinary
half-pixel bilinear). Neither OpenCV (INTER_AREA / INTER_LINEAR sample differently) nor
Pillow (uint8, other rounding) computes that, so the per-axis weights are built here as TF
builds them (float32, spans clipped to the image and normalised) and applied as two sparse
matrix products; tests pin it to TF on a 1080p input.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import sparse


@functools.lru_cache(maxsize=16)
def _axis_weights(in_size: int, out_size: int) -> sparse.csr_matrix:
    """(out_size, in_size) weights of one axis: TF's triangle-kernel spans, antialiased."""
    one = np.float32(1.0)
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = one / scale
    kernel_scale = max(inv_scale, one)  # antialias: widen the kernel when downscaling
    radius = kernel_scale  # the triangle kernel's radius is 1
    rows, cols, values = [], [], []
    for x in range(out_size):
        sample = (np.float32(x) + np.float32(0.5)) * inv_scale
        if sample < 0 or sample > in_size:
            continue
        start = int(np.ceil(sample - radius - np.float32(0.5)))
        end = int(np.floor(sample + radius - np.float32(0.5)))
        start, end = min(max(start, 0), in_size - 1), min(max(end, 0), in_size - 1) + 1
        source = np.arange(start, end, dtype=np.float32)
        weights = np.maximum(
            np.float32(0), one - np.abs((source + np.float32(0.5) - sample) / kernel_scale)
        ).astype(np.float32)
        total = weights.sum(dtype=np.float32)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            weights = weights * (one / total)
        rows.extend([x] * len(weights))
        cols.extend(range(start, end))
        values.extend(weights)
    return sparse.csr_matrix(
        (np.asarray(values, np.float32), (rows, cols)), shape=(out_size, in_size)
    )


def resize_antialiased(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C) float32, as ``tf.image.resize(..., "bilinear",
    antialias=True)`` computes it (to float rounding)."""
    height, width, channels = image.shape
    out_h, out_w = size
    x = np.asarray(image, np.float32)
    if out_w != width:  # columns first, as TF does
        columns = x.transpose(1, 0, 2).reshape(width, height * channels)
        x = (_axis_weights(width, out_w) @ columns).reshape(out_w, height, channels)
        x = x.transpose(1, 0, 2)
    if out_h != height:
        rows = x.reshape(height, out_w * channels)
        x = (_axis_weights(height, out_h) @ rows).reshape(out_h, out_w, channels)
    return np.ascontiguousarray(x, dtype=np.float32)


def prepare_frame(
    frame: np.ndarray, work_hw: tuple[int, int], pad_hw: tuple[int, int]
) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (hp, wp, 3) in [0, 1]: resized to the working size and
    edge-padded at the bottom and right, as ``VosNetwork.prepare_frames`` does in the graph."""
    image = resize_antialiased(frame.astype(np.float32) / np.float32(255.0), work_hw)
    rows, cols = pad_hw[0] - work_hw[0], pad_hw[1] - work_hw[1]
    return np.pad(image, ((0, rows), (0, cols), (0, 0)), mode="edge")
