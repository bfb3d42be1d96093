"""Numpy reference of :func:`vostrack.network.matching.propagate_labels`: every candidate of
every memory frame compared in a loop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def naive_propagation(
    query: np.ndarray,
    keys: np.ndarray,
    probs: np.ndarray,
    local: Sequence[bool],
    valid: Sequence[bool],
    radius: int,
    top_k: int,
    temperature: float,
) -> np.ndarray:
    """Object probabilities (h, w, K+1) of each query cell: the ``top_k`` best candidates over
    the valid memory frames (``keys`` (M, h, w, C), ``probs`` (M, h, w, K+1)), searched over the
    whole frame, or within ``radius`` cells (Chebyshev) where ``local[m]``, vote with softmax
    weights at ``temperature``."""
    h, w, _ = query.shape
    out = np.zeros((h, w, probs.shape[-1]))
    for y in range(h):
        for x in range(w):
            candidates = []
            for m in range(keys.shape[0]):
                if not valid[m]:
                    continue
                for yy in range(h):
                    for xx in range(w):
                        if local[m] and (abs(yy - y) > radius or abs(xx - x) > radius):
                            continue
                        candidates.append((float(query[y, x] @ keys[m, yy, xx]), probs[m, yy, xx]))
            candidates.sort(key=lambda c: -c[0])
            best = candidates[:top_k]
            scores = np.array([c[0] for c in best]) / temperature
            weights = np.exp(scores - scores.max())
            weights /= weights.sum()
            out[y, x] = sum(wt * p for wt, (_, p) in zip(weights, best))
    return out
