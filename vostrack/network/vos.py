"""The vostrack network: stateless, with each stage a method (encode a frame, encode a mask,
segment a frame against a memory), written with keras.ops only so that it runs on TF (the
product's frozen graph), JAX (GPU) and torch alike.

Geometry. A frame (H, W) is resized to a working size (h, w) and edge-padded to (hp, wp), a
multiple of 32 (see :func:`vostrack.network.config.working_size`); the sizes are arguments so
that they can be Python ints (Keras runtime) or tensors computed inside the exported graph.
With TF "SAME" padding, feature cell j at stride s is centred on pixel s*j + s - 1 of the padded
frame; masks are pooled onto, and probabilities sampled back from, the grid with that alignment
(half a cell matters for boundaries at stride 16).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import keras
from keras import ops

from vostrack.network.backbones import get_backbone_builder
from vostrack.network.config import ModelConfig
from vostrack.network.matching import l2_normalize, propagate_labels


def resize(images: Any, size: tuple, antialias: bool = False) -> Any:
    """Bilinear resize of an NHWC batch to ``size``.

    ``keras.ops.image.resize`` checks the size in Python, so it takes ints only; inside the
    exported graph the working size is computed from the frame at run time, and there (TF
    backend only) the TF op is called directly.
    """
    if all(isinstance(v, int) for v in size):
        return ops.image.resize(images, size, interpolation="bilinear", antialias=antialias)
    import tensorflow as tf

    return tf.image.resize(images, tf.stack(size), method="bilinear", antialias=antialias)


def _edge_pad_bottom_right(x: Any, rows: Any, cols: Any) -> Any:
    """Pad an NHWC tensor at the bottom and right by repeating its last row/column.

    ``ops.pad`` has no 'edge' mode on every backend, and the amounts may be tensors."""
    x = ops.concatenate([x, ops.repeat(x[:, -1:], rows, axis=1)], axis=1)
    return ops.concatenate([x, ops.repeat(x[:, :, -1:], cols, axis=2)], axis=2)


class VosNetwork(keras.Model):
    """Backbone features as matching keys plus label propagation (the matching branch).

    A ``keras.Model`` only to own its layers and their weights (``save_weights`` /
    ``load_weights``); the stages are plain methods, called by the runtimes and the exporter.
    ``weights``: "imagenet" builds the backbone with its pretrained weights (needs the weight
    package, the ``train`` extra); None builds it randomly initialised (to load saved weights).
    """

    def __init__(self, config: ModelConfig, weights: str | None = "imagenet", **kwargs: Any):
        super().__init__(name=kwargs.pop("name", "vos_network"), **kwargs)
        self.config = config
        builder = get_backbone_builder(config.backbone)
        backbone = builder(weights=weights)
        self._normalize = importlib.import_module(builder.__module__).normalize_images
        level = config.matching.level
        # A sub-model up to the matching level: later stages are never computed.
        self.encoder = keras.Model(backbone.input, backbone.output[level], name="encoder")
        self.built = True  # every layer above is built: weights can be saved and loaded

    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def key_channels(self) -> int:
        return int(self.encoder.output.shape[-1])

    # ---------------------------------------------------------------- frames and masks
    def prepare_frame(self, frame: Any, work_hw: tuple, pad_hw: tuple) -> Any:
        """uint8 (H, W, 3) RGB -> normalised (1, hp, wp, 3) at the working size."""
        image = ops.expand_dims(ops.cast(frame, "float32") / 255.0, 0)
        image = resize(image, work_hw, antialias=True)
        image = _edge_pad_bottom_right(image, pad_hw[0] - work_hw[0], pad_hw[1] - work_hw[1])
        return self._normalize(image)

    def encode_frame(self, frame: Any, work_hw: tuple, pad_hw: tuple) -> Any:
        """uint8 frame -> (h, w, C) L2-normalised matching key."""
        features = self.encoder(self.prepare_frame(frame, work_hw, pad_hw))
        return l2_normalize(features[0])

    def encode_mask(self, probs: Any, work_hw: tuple, pad_hw: tuple) -> Any:
        """(H, W, K+1) object probabilities -> (h, w, K+1) on the feature grid (area average
        of each cell's footprint, centred on the cell)."""
        s = self.stride
        x = resize(ops.expand_dims(probs, 0), work_hw, antialias=True)
        x = _edge_pad_bottom_right(x, pad_hw[0] - work_hw[0] + s // 2,
                                   pad_hw[1] - work_hw[1] + s // 2)[:, s // 2:, s // 2:]
        return ops.average_pool(x, pool_size=s, strides=s, padding="valid")[0]

    def grid_to_frame(self, grid: Any, frame_hw: tuple, work_hw: tuple) -> Any:
        """(h, w, K+1) grid probabilities -> (H, W, K+1) at the frame's own size."""
        s = self.stride
        shape = ops.shape(grid)
        x = resize(ops.expand_dims(grid, 0), (shape[0] * s, shape[1] * s))
        # Resampling puts grid row j at pixel s*j + s/2 - 1/2; the cell is centred at s*j + s - 1.
        x = ops.concatenate([ops.repeat(x[:, :1], s // 2, axis=1), x], axis=1)
        x = ops.concatenate([ops.repeat(x[:, :, :1], s // 2, axis=2), x], axis=2)
        x = x[:, : work_hw[0], : work_hw[1]]
        return resize(x, frame_hw)[0]

    # ------------------------------------------------------------- the two graph functions
    def encode_reference(self, frame: Any, probs: Any, work_hw: tuple, pad_hw: tuple
                         ) -> dict[str, Any]:
        """An annotated (or otherwise known) frame and its object probabilities (H, W, K+1) ->
        ``{"key": (h, w, C), "grid": (h, w, K+1)}``: its entry in the memory."""
        return {"key": self.encode_frame(frame, work_hw, pad_hw),
                "grid": self.encode_mask(probs, work_hw, pad_hw)}

    def step(self, frame: Any, memory: dict[str, Any], work_hw: tuple, pad_hw: tuple
             ) -> dict[str, Any]:
        """The next frame against the memory -> ``{"index": (H, W) int32 label index into
        [background, objects...], "grid": (h, w, K+1), "key": (h, w, C)}``; grid and key are
        the frame's entry in the memory.

        ``memory``: the annotated frames (``reference_keys`` (R, h, w, C), ``reference_probs``
        (R, h, w, K+1), ``reference_valid`` (R,)), searched over the whole frame, and the recent
        frames (``recent_*``, P entries), searched within the local window.
        """
        m = self.config.matching
        key = self.encode_frame(frame, work_hw, pad_hw)
        grid = propagate_labels(key, memory["reference_keys"], memory["reference_probs"],
                                memory["reference_valid"], memory["recent_keys"],
                                memory["recent_probs"], memory["recent_valid"],
                                m.local_radius, m.top_k, m.temperature)
        probs = self.grid_to_frame(grid, tuple(ops.shape(frame)[:2]), work_hw)
        return {"index": ops.cast(ops.argmax(probs, axis=-1), "int32"), "grid": grid, "key": key}


def load_network(model_dir: Any, config: ModelConfig, weights_file: str) -> VosNetwork:
    """The network of a model folder, from its Keras weights (no ImageNet package needed)."""
    network = VosNetwork(config, weights=None)
    network.load_weights(str(Path(model_dir) / weights_file))
    return network
