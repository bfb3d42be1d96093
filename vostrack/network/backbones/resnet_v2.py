"""ResNet v2 (He et al. 2016, "Identity Mappings in Deep Residual Networks": pre-activation
bottlenecks) as a Keras 3 pyramid backbone, exactly as the TF model zoo r1.8 "official/resnet"
builds it, so that its TF1 ImageNet checkpoint can be imported (see
:mod:`vostrack.network.tf1_checkpoint` and ``vostrack import-backbone``). This is the seed's
backbone.

What the official code does, and this module reproduces (``official/resnet/resnet_model.py``):

- ``conv2d_fixed_padding``: a strided conv pads its input explicitly, ``k - 1`` pixels split
  ``(k - 1) // 2`` before and the rest after, whatever the input size, then convolves "VALID";
  a stride-1 conv uses "SAME". This is *not* TF's "SAME" for stride 2 on an even size (which pads
  only after), so the padding is a separate ``ZeroPadding2D`` layer. No conv has a bias.
- Initial 7x7/2 conv with 64 filters and *no* BN/ReLU after it in v2 (the first block's
  pre-activation normalises it for both the shortcut and the residual path; the official code
  adds BN+ReLU there only for v1), then a 3x3/2 max-pool with "SAME" padding.
- Four block layers of [3, 4, 6, 3] bottleneck v2 blocks with 64, 128, 256, 512 filters (output
  4x that) and strides 1, 2, 2, 2. Only the first block of a layer strides and has a projection
  shortcut. In a block: ``shortcut = x; x = relu(bn(x))``; the projection (a 1x1 conv with the
  block's stride) is applied to that pre-activated ``x``; then 1x1 -> BN+ReLU -> 3x3 (the stride is
  on the 3x3) -> BN+ReLU -> 1x1, plus the shortcut. Nothing normalises the sum.
- After the last block layer, a final BN+ReLU, the spatial mean and a 1001-way dense layer
  (class 0 is "background", 1..1000 the ImageNet classes in the usual order).
- BatchNorm: decay 0.997 (Keras' ``momentum`` has the same meaning), epsilon 1e-5, centre and
  scale.

Pyramid outputs are the *activated* features at each stride: C2, C3, C4 are the ReLU(BN(.)) that
the first block of the next layer applies to the previous layer's output (its pre-activation), and
C5 is the final BN+ReLU. In a pre-activation network the raw block output is the residual stream:
its scale grows with depth (nothing normalises the sums) and no conv of the network ever reads it
directly; every consumer first applies its own BN+ReLU. An FPN lateral 1x1 conv is one more
consumer, so it gets what the network's own convs get: normalised, rectified features with a
trained scale, at no extra cost (the next layer computes them anyway), and C5 is then the same
kind of tensor as C2..C4. The price is that C_k depends on the first BN of layer k + 1.

With explicit padding every stride-2 layer outputs ceil(size / 2) (for the 7x7 conv:
floor((size - 1) / 2) + 1), as does the "SAME" max-pool, so any input size works; 224x224 gives
C2..C5 of 56, 28, 14, 7.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from vostrack.errors import VostrackError, first_line
from vostrack.network.backbones import register_backbone

logger = logging.getLogger(__name__)

# r1.8 imagenet_preprocessing: _CHANNEL_MEANS = [_R_MEAN, _G_MEAN, _B_MEAN] subtracted from the
# decoded RGB image in [0, 255]; there is no division by a standard deviation. (Its eval crop:
# aspect-preserving resize of the short side to 256, central 224x224 crop.)
CHANNEL_MEANS = (123.68, 116.78, 103.94)

PYRAMID_LEVELS = ("C2", "C3", "C4", "C5")


def normalize_images(images: Any) -> Any:
    """Backbone input from RGB images with values in [0, 1] (any float tensor, NHWC): the model
    zoo's ``255 * rgb - mean`` per channel.

    Written with ``keras.ops`` so that it can live inside the exported graph.
    """
    images = ops.convert_to_tensor(images, "float32")
    return images * 255.0 - ops.convert_to_tensor(CHANNEL_MEANS, "float32")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One bottleneck v2 block: ``filters`` is the bottleneck width, the output has 4x that."""

    layer: int  # 1-based block layer (the official block_layer{layer})
    unit: int  # 1-based position in the layer
    input_filters: int
    filters: int
    strides: int
    projection: bool

    @property
    def name(self) -> str:
        return f"layer{self.layer}_block{self.unit}"

    @property
    def output_filters(self) -> int:
        return 4 * self.filters


@dataclasses.dataclass(frozen=True)
class ResNetV2Config:
    """The arguments of the official ``resnet_model.Model`` for a bottleneck ResNet v2."""

    name: str
    block_sizes: tuple[int, ...] = (3, 4, 6, 3)
    block_strides: tuple[int, ...] = (1, 2, 2, 2)
    num_filters: int = 64
    kernel_size: int = 7
    conv_stride: int = 2
    first_pool_size: int = 3
    first_pool_stride: int = 2
    num_classes: int = 1001
    batch_norm_momentum: float = 0.997
    batch_norm_epsilon: float = 1e-5

    def blocks(self) -> list[BlockConfig]:
        """The flat list of blocks, in order."""
        blocks: list[BlockConfig] = []
        in_filters = self.num_filters
        for i, (size, strides) in enumerate(zip(self.block_sizes, self.block_strides)):
            filters = self.num_filters * 2**i
            for unit in range(size):
                blocks.append(
                    BlockConfig(
                        i + 1,
                        unit + 1,
                        in_filters,
                        filters,
                        strides if unit == 0 else 1,
                        projection=unit == 0,
                    )
                )
                in_filters = 4 * filters
        return blocks

    @property
    def final_filters(self) -> int:
        return 4 * self.num_filters * 2 ** (len(self.block_sizes) - 1)


CONFIGS: dict[str, ResNetV2Config] = {
    "resnet50_v2": ResNetV2Config("resnet50_v2"),
}


def _batch_norm(x: Any, name: str, config: ResNetV2Config) -> Any:
    return layers.BatchNormalization(
        axis=-1,
        momentum=config.batch_norm_momentum,
        epsilon=config.batch_norm_epsilon,
        center=True,
        scale=True,
        name=name,
    )(x)


def _bn_relu(x: Any, name: str, config: ResNetV2Config) -> Any:
    x = _batch_norm(x, f"{name}_bn", config)
    return layers.ReLU(name=f"{name}_relu")(x)


def conv2d_fixed_padding(x: Any, filters: int, kernel_size: int, strides: int, name: str) -> Any:
    """The official conv: explicit ``(k-1)//2, k-1-(k-1)//2`` zero padding and "VALID" when
    strided, "SAME" otherwise; no bias. The conv layer is ``name``, its padding ``name_pad``."""
    padding = "same"
    if strides > 1:
        pad_total = kernel_size - 1
        pad_beg = pad_total // 2
        pad_end = pad_total - pad_beg
        x = layers.ZeroPadding2D(
            ((pad_beg, pad_end), (pad_beg, pad_end)),
            data_format="channels_last",
            name=f"{name}_pad",
        )(x)
        padding = "valid"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides,
        padding=padding,
        use_bias=False,
        data_format="channels_last",
        name=name,
    )(x)


def bottleneck_block_v2(x: Any, block: BlockConfig, config: ResNetV2Config) -> tuple[Any, Any]:
    """The official ``_bottleneck_block_v2``; returns ``(output, preact)``, where ``preact`` is
    ReLU(BN(input)), the activated version of the previous block's output."""
    name = block.name
    shortcut = x
    preact = _bn_relu(x, f"{name}_preact", config)
    if block.projection:
        shortcut = conv2d_fixed_padding(
            preact, block.output_filters, 1, block.strides, f"{name}_shortcut_conv"
        )
    x = conv2d_fixed_padding(preact, block.filters, 1, 1, f"{name}_conv1")
    x = _bn_relu(x, f"{name}_1", config)
    x = conv2d_fixed_padding(x, block.filters, 3, block.strides, f"{name}_conv2")
    x = _bn_relu(x, f"{name}_2", config)
    x = conv2d_fixed_padding(x, block.output_filters, 1, 1, f"{name}_conv3")
    return layers.Add(name=f"{name}_add")([x, shortcut]), preact


def build_resnet_v2(
    config: ResNetV2Config,
    include_top: bool = False,
    input_shape: Sequence[int | None] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """The network of ``config`` with random weights.

    Maps a normalised NHWC image batch (see :func:`normalize_images`) to
    ``{"C2", "C3", "C4", "C5"}`` (strides 4, 8, 16, 32) and, with ``include_top``, ``"logits"``
    (1001 classes, class 0 = background).
    """
    images = keras.Input(shape=tuple(input_shape), name="images")
    x = conv2d_fixed_padding(
        images, config.num_filters, config.kernel_size, config.conv_stride, "stem_conv"
    )
    x = layers.MaxPooling2D(
        config.first_pool_size,
        config.first_pool_stride,
        padding="same",
        data_format="channels_last",
        name="stem_pool",
    )(x)
    outputs: dict[str, Any] = {}
    for block in config.blocks():
        x, preact = bottleneck_block_v2(x, block, config)
        if block.unit == 1 and block.layer > 1:
            # Layer k + 1 starts by activating layer k's output: that is C_{k+1} (layer 1 ends at
            # stride 4 = C2).
            outputs[f"C{block.layer}"] = preact
    x = _bn_relu(x, "post", config)
    outputs[f"C{len(config.block_sizes) + 1}"] = x
    if include_top:
        x = layers.GlobalAveragePooling2D(data_format="channels_last", name="avg_pool")(x)
        # Logits, not probabilities: the classifier is only a check of the weights.
        outputs["logits"] = layers.Dense(config.num_classes, name="logits")(x)
    return keras.Model(images, outputs, name=name or config.name)


def _load_weights_file(
    model: keras.Model,
    path: Path,
    config: ResNetV2Config,
    include_top: bool,
    input_shape: Sequence[int | None],
) -> None:
    """Load a ``.weights.h5`` of the model *with* its top (what ``vostrack import-backbone``
    writes) into ``model``, which may have no top."""
    if not path.is_file():
        raise VostrackError(f"no weights file {path}")
    full = (
        model if include_top else build_resnet_v2(config, include_top=True, input_shape=input_shape)
    )
    try:
        full.load_weights(str(path))
    except (ValueError, OSError, KeyError) as exc:
        raise VostrackError(f"cannot load {path} into {config.name}: {first_line(exc)}") from exc
    if full is not model:
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(full.get_layer(layer.name).get_weights())


def resnet_v2(
    variant: str = "resnet50_v2",
    weights: str | os.PathLike | None = None,
    include_top: bool = False,
    input_shape: Sequence[int | None] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """ResNet v2 ``variant`` (a key of :data:`CONFIGS`), randomly initialised (``weights=None``)
    or with the weights of a file: a ``.weights.h5`` written by ``vostrack import-backbone``, or
    the official TF1 checkpoint itself (a prefix such as ``model.ckpt-225207``, or its folder;
    reading it needs TensorFlow)."""
    config = CONFIGS[variant]
    if weights == "imagenet":
        raise VostrackError(
            f"no ImageNet weights ship with vostrack for {variant}: convert the "
            "official TF1 checkpoint with `vostrack import-backbone CKPT -o "
            "FILE.weights.h5` and pass that file as the weights"
        )
    model = build_resnet_v2(config, include_top=include_top, input_shape=input_shape, name=name)
    if weights is None:
        return model
    path = Path(weights)
    if path.name.endswith(".weights.h5"):
        logger.info("loading %s weights from %s", variant, path)
        _load_weights_file(model, path, config, include_top, input_shape)
    else:
        from vostrack.network.tf1_checkpoint import load_resnet_v2_checkpoint

        logger.info("importing %s weights from the TF1 checkpoint %s", variant, path)
        load_resnet_v2_checkpoint(model, path, config)
    return model


@register_backbone("resnet50_v2")
def resnet50_v2(
    weights: str | os.PathLike | None = None,
    include_top: bool = False,
    input_shape: Sequence[int | None] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """ResNet-50 v2 of the TF model zoo r1.8 (the seed's backbone): C2..C5 with 256, 512, 1024,
    2048 channels. ``weights``: None (random), or a file (see :func:`resnet_v2`)."""
    return resnet_v2("resnet50_v2", weights, include_top, input_shape, name)
