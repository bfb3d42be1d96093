"""Per-sample cross-correlation of search windows with templates (SiamFC / SiamRPN++), NHWC.

Each sample has its own kernel (its template), which no conv layer expresses directly. pysot's
trick: fold the batch into the channels, so that one depthwise conv with ``N * C`` channels
correlates every (sample, channel) pair with its own kernel, then unfold. No Python loop, one op,
any number of samples (a ``None`` batch under TF), and the same numbers on TF and JAX (DESIGN.md,
checked facts). As everywhere in deep learning, "conv" here is correlation: the template is not
flipped.
"""

from __future__ import annotations

from typing import Any

from keras import ops


def depthwise_xcorr(search: Any, template: Any) -> Any:
    """search (N, Hs, Ws, C), template (N, Ht, Wt, C) -> (N, Hs-Ht+1, Ws-Wt+1, C):
    ``out[n, i, j, c] = sum_{u,v} search[n, i+u, j+v, c] * template[n, u, v, c]`` ("valid")."""
    channels = search.shape[-1]
    if channels is None or template.shape[-1] != channels:
        raise ValueError(
            f"depthwise_xcorr needs equal static channel counts, got "
            f"{search.shape} and {template.shape}"
        )
    search_shape = ops.shape(search)
    template_shape = ops.shape(template)
    # (N, H, W, C) -> (1, H, W, N*C): sample n's channel c becomes channel n*C + c.
    x = ops.reshape(ops.transpose(search, (1, 2, 0, 3)), (1, search_shape[1], search_shape[2], -1))
    # Depthwise kernels are (kh, kw, in_channels, multiplier).
    kernel = ops.reshape(
        ops.transpose(template, (1, 2, 0, 3)), (template_shape[1], template_shape[2], -1, 1)
    )
    out = ops.depthwise_conv(x, kernel, strides=1, padding="valid")
    out_shape = ops.shape(out)
    out = ops.reshape(out, (out_shape[1], out_shape[2], -1, channels))
    return ops.transpose(out, (2, 0, 1, 3))


def xcorr(search: Any, template: Any) -> Any:
    """The channel-summed correlation (SiamFC's response): (N, Hs-Ht+1, Ws-Wt+1, 1)."""
    return ops.sum(depthwise_xcorr(search, template), axis=-1, keepdims=True)
