"""Numpy reference of :mod:`vostrack.network.xcorr`: per-sample cross-correlation as a loop."""

from __future__ import annotations

import numpy as np


def depthwise_xcorr(search: np.ndarray, template: np.ndarray) -> np.ndarray:
    """search (N, Hs, Ws, C), template (N, Ht, Wt, C) -> (N, Hs-Ht+1, Ws-Wt+1, C) float64:
    ``out[n, i, j, c] = sum_{u,v} search[n, i+u, j+v, c] * template[n, u, v, c]``."""
    n, hs, ws, c = search.shape
    _, ht, wt, _ = template.shape
    out = np.zeros((n, hs - ht + 1, ws - wt + 1, c), np.float64)
    for b in range(n):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[b, i, j] = (search[b, i : i + ht, j : j + wt] * template[b]).sum(axis=(0, 1))
    return out
