"""The vostrack network (the matching branch, and the part path when the config has one):
stateless, with each stage a method (encode a frame, encode a mask, segment a frame against a
memory), written with keras.ops only so that it runs on TF (the product's frozen graph), JAX
(GPU) and torch alike.

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

from vostrack.network.aggregation import (
    combine_with_prior,
    paste_parts,
    soft_aggregate,
    soft_aggregate_logits,
)
from vostrack.network.backbones import get_backbone_builder
from vostrack.network.config import InferenceSettings, ModelConfig
from vostrack.network.cosine import l2_normalize
from vostrack.network.fpn import FeaturePyramid
from vostrack.network.mask_head import PartMaskHead, crop_part_inputs, crop_reference, mask_windows
from vostrack.network.matching import KEY_EPSILON, propagate_labels
from vostrack.network.roi import resize_aligned
from vostrack.network.tracker import PartTracker


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


def argmax(x: Any) -> Any:
    """int32 index of the largest value along the last axis.

    On TF, keras' argmax adds a sign-bit test (for -0.0 under flush-to-zero) that LiteRT has no
    builtin for; probabilities are never -0.0, so the TF op serves directly there."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.argmax(x, axis=-1, output_type=tf.int32)
    return ops.cast(ops.argmax(x, axis=-1), "int32")


def _edge_pad_bottom_right(x: Any, rows: Any, cols: Any) -> Any:
    """Pad an NHWC tensor at the bottom and right by repeating its last row/column.

    ``ops.pad`` has no 'edge' mode on every backend, and the amounts may be tensors."""
    x = ops.concatenate([x, ops.repeat(x[:, -1:], rows, axis=1)], axis=1)
    return ops.concatenate([x, ops.repeat(x[:, :, -1:], cols, axis=2)], axis=2)


class VosNetwork(keras.Model):
    """The whole vostrack network, as ``config`` describes it and run with ``settings`` (their
    baked fields; None: the defaults): the matching branch (backbone
    features as matching keys, label propagation from the memory) and, when ``config.parts`` is
    set, the part path on top of it (FPN, part tracker, per-part mask head, paste-back and soft
    aggregation); with ``config.parts`` None it is the matching branch alone.

    A ``keras.Model`` only to own its layers and their weights (``save_weights`` /
    ``load_weights``); the stages are plain methods, called by the runtimes and the exporter,
    and :meth:`encode_reference` and :meth:`step` are the two per-frame functions of the
    exported graph.
    ``weights``: "imagenet" builds the backbone with its pretrained weights (needs the weight
    package, the ``train`` extra); None builds it randomly initialised (to load saved weights).
    """

    def __init__(
        self,
        config: ModelConfig,
        settings: InferenceSettings | None = None,
        weights: str | None = "imagenet",
        **kwargs: Any,
    ):
        super().__init__(name=kwargs.pop("name", "vos_network"), **kwargs)
        self.config = config
        self.settings = (settings or InferenceSettings()).check(config)
        builder = get_backbone_builder(config.backbone)
        backbone = builder(weights=weights)
        self._normalize = importlib.import_module(builder.__module__).normalize_images
        level = config.matching.level
        # A sub-model up to the levels in use: later stages are never computed.
        levels = ("C2", "C3", "C4", "C5") if config.parts else (level,)
        self.encoder = keras.Model(
            backbone.input, {k: backbone.output[k] for k in levels}, name="encoder"
        )
        if config.parts:
            p = config.parts
            self.fpn = FeaturePyramid(channels=p.fpn_channels, name="fpn")
            self.tracker = PartTracker(
                stride=self.stride,
                template_size=p.template_size,
                search_size=self.settings.parts.search_size,
                use_offsets=False,
                name="tracker",
                dtype="float32",
            )
            self.mask_head = PartMaskHead(
                channels=p.head_channels, name="mask_head", dtype="float32"
            )
            self._build_part_path()
        self.built = True  # every layer above is built: weights can be saved and loaded

    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def key_channels(self) -> int:
        return int(self.encoder.output[self.config.matching.level].shape[-1])

    def _build_part_path(self) -> None:
        """Create the part path's variables by running it once on a small blank frame."""
        import numpy as np

        frame = np.zeros((64, 64, 3), np.uint8)
        probs = np.zeros((64, 64, 2), np.float32)
        probs[..., 0], probs[16:48, 16:48] = 1.0, (0.0, 1.0)
        part = {
            "part_boxes": np.array([[16, 16, 48, 48]], np.float32),
            "part_object": np.zeros(1, np.int32),
            "part_valid": np.ones(1, bool),
        }
        ref = self.encode_reference(frame, probs, (64, 64), (64, 64), part)
        memory = {}
        for group in ("reference", "recent"):
            memory.update(
                {
                    f"{group}_keys": ref["key"][None],
                    f"{group}_probs": ref["grid"][None],
                    f"{group}_valid": np.ones(1, bool),
                }
            )
        self.step(
            frame,
            memory,
            (64, 64),
            (64, 64),
            {
                **part,
                **{k: ref[k] for k in ("templates", "ref_p4", "ref_mask")},
                "prev_probs": ref["prev_probs"],
            },
        )
        if not self.settings.parts.track:  # unused, but the weights file keeps it: one file
            self.tracker.track(
                ref["key"][None],
                ref["templates"],
                part["part_boxes"],
                np.zeros(1, np.int32),
                part["part_valid"],
            )

    # ---------------------------------------------------------------- frames and masks
    @staticmethod
    def prepare_frames(frames: Any, work_hw: tuple, pad_hw: tuple) -> Any:
        """uint8 (N, H, W, 3) RGB -> (N, hp, wp, 3) in [0, 1] at the working size, padded: the
        input of :meth:`image_features` (the LiteRT runtime does this step in numpy)."""
        image = resize(ops.cast(frames, "float32") / 255.0, work_hw, antialias=True)
        return _edge_pad_bottom_right(image, pad_hw[0] - work_hw[0], pad_hw[1] - work_hw[1])

    def batch_features(self, frames: Any, work_hw: tuple, pad_hw: tuple) -> dict[str, Any]:
        """uint8 frames (N, H, W, 3) -> ``{"key": (N, h, w, C) L2-normalised matching keys}``,
        plus the FPN's ``P2..P5`` (N, H/s, W/s, C) when the part path is on. Training encodes
        a batch of clips in one call (one backbone in the graph, not one per frame: the
        training step compiles ~40 % faster on TF); :meth:`frame_features` picks one frame out."""
        return self.image_features(self.prepare_frames(frames, work_hw, pad_hw))

    def image_features(self, images: Any) -> dict[str, Any]:
        """:meth:`batch_features` of frames already prepared (:meth:`prepare_frames`)."""
        levels = self.encoder(self._normalize(images))
        # Under a mixed policy the backbone and FPN compute in bfloat16; matching, the heads
        # and the losses take float32 (a no-op cast otherwise).
        out = {
            "key": l2_normalize(
                ops.cast(levels[self.config.matching.level], "float32"), KEY_EPSILON
            )
        }
        if self.config.parts:
            pyramid = self.fpn({k: levels[k] for k in ("C2", "C3", "C4", "C5")})
            out.update({k: ops.cast(v, "float32") for k, v in pyramid.items()})
        return out

    @staticmethod
    def frame_features(features: dict[str, Any], index: int) -> dict[str, Any]:
        """Frame ``index`` of :meth:`batch_features`, as :meth:`features` gives it."""
        return {k: v[index] if k == "key" else v[index : index + 1] for k, v in features.items()}

    def features(self, frame: Any, work_hw: tuple, pad_hw: tuple) -> dict[str, Any]:
        """uint8 frame (H, W, 3) -> ``{"key": (h, w, C) L2-normalised matching key}``, plus the
        FPN's ``P2..P5`` (1, H/s, W/s, C) when the part path is on."""
        return self.frame_features(self.batch_features(frame[None], work_hw, pad_hw), 0)

    def encode_frame(self, frame: Any, work_hw: tuple, pad_hw: tuple) -> Any:
        """uint8 frame -> (h, w, C) L2-normalised matching key."""
        return self.features(frame, work_hw, pad_hw)["key"]

    def encode_mask(
        self,
        probs: Any,
        work_hw: tuple,
        pad_hw: tuple,
        stride: int | None = None,
        resized: bool = False,
    ) -> Any:
        """(H, W, K+1) object probabilities -> (H/s, W/s, K+1) on the stride-``s`` grid of the
        padded frame (area average of each cell's footprint, centred on the cell).
        ``resized``: the probabilities are already at the working size (h, w)."""
        s = stride or self.stride
        x = ops.expand_dims(probs, 0)
        if not resized:
            x = resize(x, work_hw, antialias=True)
        x = _edge_pad_bottom_right(
            x, pad_hw[0] - work_hw[0] + s // 2, pad_hw[1] - work_hw[1] + s // 2
        )[:, s // 2 :, s // 2 :]
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
    def encode_reference(
        self,
        frame: Any,
        probs: Any,
        work_hw: tuple,
        pad_hw: tuple,
        parts: dict[str, Any] | None = None,
        features: dict[str, Any] | None = None,
        resized: bool = False,
    ) -> dict[str, Any]:
        """An annotated (or otherwise known) frame and its object probabilities (H, W, K+1) ->
        ``{"key": (h, w, C), "grid": (h, w, K+1)}``: its entry in the memory.

        With the part path, ``parts`` = ``{"part_boxes": (N, 4) pixel boxes of the padded
        working frame, "part_object": (N,) object channel 0..K-1, "part_valid": (N,)}`` of the
        parts to encode, and the outputs add their ``templates`` (N, T, T, C), ``ref_p4``,
        ``ref_mask`` (the mask head's reference crops) and ``prev_probs`` (H/4, W/4, K): the
        objects on the stride-4 grid, the state the next :meth:`step` starts from.

        ``features``: the frame's :meth:`features`, when already computed (training, the
        LiteRT export); ``resized``: ``probs`` are already at the working size (h, w).
        """
        out = features if features is not None else self.features(frame, work_hw, pad_hw)
        result = {
            "key": out["key"],
            "grid": self.encode_mask(probs, work_hw, pad_hw, None, resized),
        }
        if not self.config.parts:
            return result
        boxes, objects = parts["part_boxes"], ops.cast(parts["part_object"], "int32")
        zeros = ops.zeros_like(objects)
        fine = self.encode_mask(probs, work_hw, pad_hw, 4, resized)[..., 1:]
        result["templates"] = self.tracker.crop_templates(
            ops.expand_dims(out["key"], 0), boxes, zeros
        )
        result.update(
            crop_reference(
                out,
                mask_windows(boxes),
                zeros,
                objects,
                ops.expand_dims(fine, 0),
                crop_size=self.config.parts.head_crop,
                mask_stride=4,
            )
        )
        result["prev_probs"] = fine
        return result

    def step(
        self,
        frame: Any,
        memory: dict[str, Any],
        work_hw: tuple,
        pad_hw: tuple,
        parts: dict[str, Any] | None = None,
        internals: bool = False,
        features: dict[str, Any] | None = None,
        frame_hw: tuple | None = None,
    ) -> dict[str, Any]:
        """The next frame against the memory -> ``{"index": (H, W) int32 label index into
        [background, objects...], "probs": (H, W, K+1) the probabilities it is the argmax of,
        "grid": (h, w, K+1), "key": (h, w, C)}``; grid and key are the frame's entry in the
        memory.

        ``memory``: the annotated frames (``reference_keys`` (R, h, w, C), ``reference_probs``
        (R, h, w, K+1), ``reference_valid`` (R,)), searched over the whole frame, and the recent
        frames (``recent_*``, P entries), searched within the local window.

        With the part path, ``parts`` holds the reference crops (``templates``, ``ref_p4``,
        ``ref_mask``), ``part_object``, ``part_valid``, the parts' last ``part_boxes`` and
        ``prev_probs`` (H/4, W/4, K): the tracker moves the boxes, the mask head predicts each
        part's mask from the matching prior, the previous mask and the reference, the parts are
        pasted back (weighted by the tracker's confidence) and the objects merged by soft
        aggregation. The outputs add ``part_boxes``, ``part_scores`` and ``prev_probs``.

        ``internals`` (training) adds what the losses need: ``logits`` whose softmax is the
        final [background, objects] probability, on the stride-4 grid (stride 16 without the
        part path); with the part path also ``part_logits``, the mask ``windows`` and the
        tracker's ``response``, ``offsets`` and ``search_windows``. ``features`` as in
        :meth:`encode_reference`; ``frame_hw``: the frame's size, when ``frame`` is not given
        (the LiteRT export, whose frames come prepared).
        """
        m = self.settings.matching
        out = features if features is not None else self.features(frame, work_hw, pad_hw)
        grid = propagate_labels(
            out["key"],
            memory["reference_keys"],
            memory["reference_probs"],
            memory["reference_valid"],
            memory["recent_keys"],
            memory["recent_probs"],
            memory["recent_valid"],
            m.local_radius,
            m.top_k,
            m.temperature,
            m.reference_share,
        )
        if frame_hw is None:
            frame_hw = tuple(ops.shape(frame)[:2])
        if not self.config.parts:
            probs = self.grid_to_frame(grid, frame_hw, work_hw)
            result = {
                "index": argmax(probs),
                "grid": grid,
                "key": out["key"],
                "probs": probs,
            }
            if internals:
                result["logits"] = ops.log(ops.maximum(grid, 1e-7))
            return result

        fine_hw = (pad_hw[0] // 4, pad_hw[1] // 4)
        objects = ops.cast(parts["part_object"], "int32")
        zeros = ops.zeros_like(objects)
        if self.settings.parts.track:
            tracked = self.tracker.track(
                ops.expand_dims(out["key"], 0),
                parts["templates"],
                parts["part_boxes"],
                zeros,
                parts["part_valid"],
            )
        elif internals:
            raise ValueError(
                "parts.track=False is an inference setting: the tracking loss needs the tracker"
            )
        else:
            tracked = {
                "boxes": ops.cast(parts["part_boxes"], "float32"),
                "scores": ops.cast(parts["part_valid"], "float32"),
            }
        windows = mask_windows(tracked["boxes"])
        head_inputs = crop_part_inputs(
            out,
            windows,
            zeros,
            objects,
            ops.expand_dims(parts["prev_probs"], 0),
            ops.expand_dims(grid[..., 1:], 0),
            {"ref_p4": parts["ref_p4"], "ref_mask": parts["ref_mask"]},
            crop_size=self.config.parts.head_crop,
            prev_stride=4,
            prior_stride=self.stride,
        )
        logits = self.mask_head(head_inputs)
        num_objects = ops.shape(parts["prev_probs"])[-1]
        pasted, coverage = paste_parts(
            logits,
            windows,
            objects,
            parts["part_valid"],
            tracked["scores"],
            num_objects,
            fine_hw,
            stride=4,
        )
        prior = resize_aligned(ops.expand_dims(grid, 0), fine_hw, self.stride / 4)[0]
        objects_probs = combine_with_prior(
            ops.transpose(pasted, (1, 2, 0)), ops.transpose(coverage, (1, 2, 0)), prior[..., 1:]
        )
        probs = soft_aggregate(objects_probs, axis=-1)  # (H/4, W/4, K+1)
        full = resize_aligned(ops.expand_dims(probs, 0), pad_hw, 4)[:, : work_hw[0], : work_hw[1]]
        frame_probs = resize(full, frame_hw)[0]
        result = {
            "index": argmax(frame_probs),
            "probs": frame_probs,
            "grid": self._pool_to_grid(probs),
            "key": out["key"],
            "part_boxes": tracked["boxes"],
            "part_scores": tracked["scores"],
            "prev_probs": objects_probs,
        }
        if internals:
            result.update(
                logits=soft_aggregate_logits(objects_probs, axis=-1),
                part_logits=logits,
                windows=windows,
                response=tracked["response"],
                offsets=tracked["offsets"],
                search_windows=tracked["windows"],
            )
        return result

    def _pool_to_grid(self, probs: Any) -> Any:
        """(H/4, W/4, K+1) -> (h, w, K+1) on the stride-16 grid, each cell the area average of
        its footprint: stride-4 cells 4j+1 .. 4j+5 (centred on 16j + 15), the outer ones half."""
        ratio = self.stride // 4
        taps = [0.5] + [1.0] * (ratio - 1) + [0.5]
        kernel = ops.convert_to_tensor(
            [[a * b / ratio**2 for b in taps] for a in taps], dtype="float32"
        )
        channels_first = ops.expand_dims(ops.transpose(probs, (2, 0, 1)), -1)  # (K+1, H, W, 1)
        padded = ops.pad(channels_first, [[0, 0], [0, 2], [0, 2], [0, 0]], mode="constant")
        pooled = ops.conv(
            padded[:, 1:, 1:],
            ops.reshape(kernel, (ratio + 1, ratio + 1, 1, 1)),
            strides=ratio,
            padding="valid",
        )
        return ops.transpose(pooled[..., 0], (1, 2, 0))


def load_network(
    model_dir: Any, config: ModelConfig, settings: InferenceSettings, weights_file: str
) -> VosNetwork:
    """The network of a model folder, from its Keras weights (no ImageNet package needed)."""
    network = VosNetwork(config, settings, weights=None)
    network.load_weights(str(Path(model_dir) / weights_file))
    return network
