"""Import the official TF1 ResNet v2 checkpoint (TF model zoo r1.8 "official/resnet") into the
Keras model of :mod:`vostrack.network.backbones.resnet_v2`.

The official model builds every layer with ``tf.layers`` inside ``tf.variable_scope(
"resnet_model")``, so its variables carry no structural name: they are numbered in creation
order, separately per layer type (``conv2d``, ``conv2d_1``, ...; ``batch_normalization``,
``batch_normalization_1``, ...; ``dense``). The creation order follows the official code:

- the initial conv (``conv2d``; no BN after it in v2);
- per block (``_bottleneck_block_v2``): pre-activation BN, then the projection shortcut conv (first
  block of each layer only), conv 1x1, BN, conv 3x3, BN, conv 1x1;
- the final BN, then the dense layer (``kernel``, ``bias``).

For ResNet-50 that is 1 + 3 * 16 + 4 = 53 conv kernels, 3 * 16 + 1 = 49 batch norms (gamma,
beta, moving_mean, moving_variance each) and the dense kernel and bias: 251 variables. The
checkpoint holds more (``global_step``, the optimizer's ``.../Momentum`` slots): they are ignored.

TensorFlow is imported only when a checkpoint is read, so that this module (and ``vostrack``)
imports with any Keras backend.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from vostrack.errors import VostrackError, first_line
from vostrack.network.backbones.resnet_v2 import CONFIGS, ResNetV2Config, build_resnet_v2

OFFICIAL_SCOPE = "resnet_model"
_BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")  # = Keras BN weight order
_TF1_KINDS = ("conv2d", "batch_normalization", "dense")
_CHECKPOINT_SUFFIX = re.compile(r"\.(index|meta|data-\d+-of-\d+)$")


def _official_layers(
    config: ResNetV2Config, include_top: bool
) -> list[tuple[str, str, list[tuple[str, tuple[int, ...]]]]]:
    """``(tf.layers kind, Keras layer name, [(variable, shape), ...])`` in the official creation
    order; the variable names are those of the TF1 layer, in the Keras layer's weight order."""

    def conv(name: str, k: int, cin: int, cout: int):
        return ("conv2d", name, [("kernel", (k, k, cin, cout))])

    def bn(name: str, channels: int):
        return ("batch_normalization", name, [(v, (channels,)) for v in _BN_VARIABLES])

    order = [conv("stem_conv", config.kernel_size, 3, config.num_filters)]
    for block in config.blocks():
        n = block.name
        order.append(bn(f"{n}_preact_bn", block.input_filters))
        if block.projection:
            order.append(conv(f"{n}_shortcut_conv", 1, block.input_filters, block.output_filters))
        order += [
            conv(f"{n}_conv1", 1, block.input_filters, block.filters),
            bn(f"{n}_1_bn", block.filters),
            conv(f"{n}_conv2", 3, block.filters, block.filters),
            bn(f"{n}_2_bn", block.filters),
            conv(f"{n}_conv3", 1, block.filters, block.output_filters),
        ]
    order.append(bn("post_bn", config.final_filters))
    if include_top:
        order.append(
            (
                "dense",
                "logits",
                [
                    ("kernel", (config.final_filters, config.num_classes)),
                    ("bias", (config.num_classes,)),
                ],
            )
        )
    return order


def _numbered(kind: str, index: int) -> str:
    """tf.layers' unique layer names: conv2d, conv2d_1, conv2d_2, ..."""
    return kind if index == 0 else f"{kind}_{index}"


def _official_layout(
    config: ResNetV2Config, include_top: bool, scope: str
) -> list[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
    """``(Keras layer name, [(official variable name, shape), ...])`` in creation order."""
    counts = dict.fromkeys(_TF1_KINDS, 0)
    layout = []
    for kind, keras_name, variables in _official_layers(config, include_top):
        layer = f"{scope}/{_numbered(kind, counts[kind])}"
        counts[kind] += 1
        layout.append((keras_name, [(f"{layer}/{v}", shape) for v, shape in variables]))
    return layout


def official_variable_names(
    config: ResNetV2Config | str = "resnet50_v2",
    include_top: bool = True,
    scope: str = OFFICIAL_SCOPE,
) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every model variable of the official checkpoint, in creation order
    (for ResNet-50 v2 with the top: 251 variables)."""
    config = CONFIGS[config] if isinstance(config, str) else config
    return [
        item for _, variables in _official_layout(config, include_top, scope) for item in variables
    ]


def _checkpoint_prefix(path: str | Path) -> Path:
    """Accept a checkpoint prefix (``model.ckpt-225207``), one of its files (``.index``,
    ``.data-00000-of-00001``, ``.meta``) or the folder that holds its ``checkpoint`` file."""
    path = Path(path)
    if _CHECKPOINT_SUFFIX.search(path.name):
        path = path.with_name(_CHECKPOINT_SUFFIX.sub("", path.name))
    if not path.is_dir() and not path.with_name(path.name + ".index").is_file():
        raise VostrackError(
            f"no TF checkpoint at {path} (give the prefix of its files, such as "
            "model.ckpt-225207, or its folder)"
        )
    return path


def read_checkpoint(path: str | Path) -> Any:
    """A ``tf.train.CheckpointReader`` of ``path`` (see :func:`_checkpoint_prefix`)."""
    prefix = _checkpoint_prefix(path)
    try:
        import tensorflow as tf
    except ImportError:
        raise VostrackError(
            "reading a TF1 checkpoint needs TensorFlow (pip install tensorflow)"
        ) from None
    try:
        return tf.train.load_checkpoint(str(prefix))
    except (ValueError, tf.errors.OpError) as exc:
        raise VostrackError(f"cannot read the TF checkpoint {prefix}: {first_line(exc)}") from exc


def load_resnet_v2_checkpoint(
    model: Any,
    ckpt_path: str | Path,
    config: ResNetV2Config | str = "resnet50_v2",
    scope: str = OFFICIAL_SCOPE,
) -> None:
    """Copy the official TF1 checkpoint at ``ckpt_path`` into ``model`` (built by
    :func:`~vostrack.network.backbones.resnet_v2.build_resnet_v2` from ``config``, with or
    without its top).

    Strict: every official variable must be in the checkpoint with its expected shape, the
    checkpoint must not have more layers of a kind than the config (a deeper ResNet), and every
    weighted layer of ``model`` must be filled with exactly its shapes. Problems raise a one-line
    :class:`VostrackError`.
    """
    config = CONFIGS[config] if isinstance(config, str) else config
    include_top = any(layer.name == "logits" for layer in model.layers)
    layout = _official_layout(config, include_top, scope)
    reader = read_checkpoint(ckpt_path)
    available = reader.get_variable_to_shape_map()
    where = f"checkpoint {ckpt_path}"

    counts = {
        kind: sum(1 for k, _, _ in _official_layers(config, True) if k == kind)
        for kind in _TF1_KINDS
    }
    for kind, count in counts.items():
        extra = f"{scope}/{_numbered(kind, count)}"
        if any(name.startswith(extra + "/") for name in available):
            raise VostrackError(
                f"{where} has more {kind} layers ({extra}) than {config.name}: "
                "not its official checkpoint"
            )

    by_name = {layer.name: layer for layer in model.layers}
    filled: set[str] = set()
    for keras_name, variables in layout:
        layer = by_name.get(keras_name)
        if layer is None:
            raise VostrackError(
                f"the model has no layer {keras_name!r}: it is not "
                f"{config.name} as built by vostrack"
            )
        if len(layer.weights) != len(variables):
            raise VostrackError(
                f"layer {keras_name} has {len(layer.weights)} weights, the "
                f"official layer {len(variables)}"
            )
        arrays = []
        for (name, shape), weight in zip(variables, layer.weights):
            if name not in available:
                raise VostrackError(
                    f"{where} has no variable {name}: not the official {config.name} checkpoint"
                )
            if tuple(available[name]) != shape:
                raise VostrackError(
                    f"{where}: {name} has shape {tuple(available[name])}, "
                    f"{config.name} needs {shape}"
                )
            if tuple(weight.shape) != shape:
                raise VostrackError(
                    f"layer {keras_name}: weight shape {tuple(weight.shape)} != {shape} of {name}"
                )
            arrays.append(np.asarray(reader.get_tensor(name), dtype=np.float32))
        layer.set_weights(arrays)
        filled.add(keras_name)
    missed = sorted(
        layer.name for layer in model.layers if layer.weights and layer.name not in filled
    )
    if missed:
        raise VostrackError(
            f"no official variables for the model's layers "
            f"{', '.join(missed[:4])}{' ...' if len(missed) > 4 else ''}"
        )


def convert_resnet_v2_checkpoint(
    ckpt_path: str | Path,
    output: str | Path,
    config: ResNetV2Config | str = "resnet50_v2",
    overwrite: bool = False,
) -> Any:
    """Import the official checkpoint into the Keras model with its top and save its weights to
    ``output`` (a ``.weights.h5`` file, written atomically); returns the model."""
    from vostrack.io.atomic import atomic_path

    config = CONFIGS[config] if isinstance(config, str) else config
    output = Path(output)
    if not output.name.endswith(".weights.h5"):
        raise VostrackError(f"{output}: the output must be a Keras weights file named *.weights.h5")
    if output.exists() and not overwrite:
        raise VostrackError(f"{output} exists (use --overwrite to replace it)")
    if not output.parent.is_dir():
        raise VostrackError(f"no folder {output.parent} for {output.name}")
    read_checkpoint(ckpt_path)  # fail on a bad path before building the model
    model = build_resnet_v2(config, include_top=True)
    load_resnet_v2_checkpoint(model, ckpt_path, config)
    with atomic_path(output) as tmp:
        # Keras insists on the .weights.h5 suffix, which the temporary name does not end with.
        keras_tmp = tmp.with_name(tmp.stem + ".weights.h5")
        try:
            model.save_weights(str(keras_tmp))
            os.replace(keras_tmp, tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)
    return model
