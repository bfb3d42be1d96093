"""Feature Pyramid Network (Lin et al. 2017) as a KerasHub-style layer: C2..C5 -> P2..P5.

Each level: a 1x1 lateral conv to ``channels``; top-down, the coarser output is resized to the
lateral's size and added; a 3x3 conv smooths the sum (removes the upsampling's aliasing).

The coarser map is resized to the *actual* shape of the finer lateral, never by a fixed factor 2:
an 854-px-wide frame gives C3..C5 widths 107, 54, 27, where 2x upsampling would be off by one. On
TF the shape is read at run time (``ops.shape``), so one graph serves any frame size; on JAX it is
static. The resize is :func:`vostrack.network.roi.resize_aligned`, not ``ops.image.resize``, for
two reasons: ``ops.image.resize`` rejects a run-time size inside a TF graph (Keras 3.15 checks
the size in Python: "Using a symbolic tf.Tensor as a Python bool"), and with TF "SAME" padding a
coarse cell j is centred on fine cell 2j + 1, which half-pixel resizing (nearest or bilinear)
misses by half a fine cell. (With frames not padded to a multiple of 32 the grids themselves drift
apart inside the backbone; pad the frame, as the pipeline does.)

Convs are linear (no BN, no activation), as in the paper and in KerasHub's FPN: the heads that
read P* add their own nonlinearity, and a BN here would mix statistics of frames of different
videos during training with tiny batches.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from vostrack.network.keras_utils import clone_initializer
from vostrack.network.roi import resize_aligned


class FeaturePyramid(layers.Layer):
    """``{"C2": ..., "C5": ...}`` (NHWC, strides 4..32) -> ``{"P2": ..., "P5": ...}``, every level
    with ``channels`` channels and the spatial size of its C level.

    Args:
        channels: width of every output level.
        min_level, max_level: the levels read and produced (inputs ``C{min}..C{max}``; extra
            input keys are ignored).
        kernel_initializer: of every conv.
    """

    def __init__(
        self,
        channels: int = 128,
        min_level: int = 2,
        max_level: int = 5,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 1 <= min_level <= max_level:
            raise ValueError(f"need 1 <= min_level <= max_level, got {min_level}, {max_level}")
        self.channels = int(channels)
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.levels = tuple(range(self.min_level, self.max_level + 1))
        # Keyed "P2".."P5" (string keys: Keras tracks the sublayers of dict attributes).
        self.lateral_convs: dict[str, layers.Conv2D] = {}
        self.output_convs: dict[str, layers.Conv2D] = {}

    def build(self, inputs_shape: dict[str, tuple]) -> None:
        missing = [f"C{level}" for level in self.levels if f"C{level}" not in inputs_shape]
        if missing:
            raise ValueError(f"{self.name}: missing inputs {missing}; got {sorted(inputs_shape)}")
        for level in self.levels:
            shape = tuple(inputs_shape[f"C{level}"])
            lateral = layers.Conv2D(
                self.channels,
                1,
                padding="same",
                kernel_initializer=clone_initializer(self.kernel_initializer),
                data_format="channels_last",
                dtype=self.dtype_policy,
                name=f"lateral_P{level}",
            )
            lateral.build(shape)
            smooth = layers.Conv2D(
                self.channels,
                3,
                padding="same",
                kernel_initializer=clone_initializer(self.kernel_initializer),
                data_format="channels_last",
                dtype=self.dtype_policy,
                name=f"output_P{level}",
            )
            smooth.build(shape[:-1] + (self.channels,))
            self.lateral_convs[f"P{level}"] = lateral
            self.output_convs[f"P{level}"] = smooth
        self.built = True

    def call(self, inputs: dict[str, Any]) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        top_down = None
        for level in reversed(self.levels):
            lateral = self.lateral_convs[f"P{level}"](inputs[f"C{level}"])
            if top_down is not None:
                shape = ops.shape(lateral)
                top_down = resize_aligned(top_down, (shape[1], shape[2]), ratio=2)
                lateral = lateral + ops.cast(top_down, lateral.dtype)
            top_down = lateral
            outputs[f"P{level}"] = self.output_convs[f"P{level}"](lateral)
        return {f"P{level}": outputs[f"P{level}"] for level in self.levels}

    def compute_output_shape(self, inputs_shape: dict[str, tuple]) -> dict[str, tuple]:
        return {
            f"P{level}": tuple(inputs_shape[f"C{level}"])[:-1] + (self.channels,)
            for level in self.levels
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            channels=self.channels,
            min_level=self.min_level,
            max_level=self.max_level,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
