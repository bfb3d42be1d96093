"""The network run over training clips, and the loss of that run.

A clip is frame 0 (the reference, with its ground-truth mask and parts) and frames 1..T-1,
segmented in turn by the very per-frame functions that inference uses
(:meth:`VosNetwork.encode_reference` and :meth:`VosNetwork.step`), so training optimises what
runs (only the backbone and FPN run once, on all the batch's frames together). Frame t reads
the reference and the frames before it (their predicted memory entries, as at inference). The
tracker searches around the parts' ground-truth boxes of frame t-1 (teacher forcing, as SiamFC
trains on pairs); the mask head then works on the windows it tracked.

keras.ops only: the same code is differentiated by TF (GradientTape) and JAX (jax.grad).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras import ops

from vostrack.network.mask_head import crop_object_maps
from vostrack.training.losses import mask_loss, part_mask_loss, tracking_loss, tracking_targets

VOID = 255


@dataclass(frozen=True)
class LossWeights:
    mask: float = 1.0
    part: float = 0.5
    track: float = 0.5


def _one_hot(labels: Any, num_objects: int) -> Any:
    """(H, W) ids -> (H, W, K+1) float32; void pixels (255) get all zeros."""
    ids = ops.arange(num_objects + 1, dtype="int32")
    return ops.cast(ops.expand_dims(ops.cast(labels, "int32"), -1) == ids, "float32")


def clip_loss(
    network: Any,
    batch: dict[str, Any],
    weights: LossWeights = LossWeights(),
    bootstrap_ratio: Any = 1.0,
) -> tuple[Any, dict[str, Any]]:
    """Total loss of a batch of clips and its parts (for logging).

    batch: a training batch (vostrack/data/batches.py): frames (B, T, H, W, 3), labels
    (B, T, H, W), object_valid (B, K), object_present (B, T, K), part_boxes (B, T, K, P, 4),
    part_valid (B, T, K, P). Frames are used at their own size (no working-size resize).
    """
    frames, labels = batch["frames"], batch["labels"]
    num_clips, num_frames = int(frames.shape[0]), int(frames.shape[1])
    size = (int(frames.shape[2]), int(frames.shape[3]))
    num_objects = int(batch["object_valid"].shape[1])
    parts_on = bool(network.config.parts)
    stride = 4 if parts_on else network.stride
    totals: dict[str, list] = {"mask": [], "part": [], "track": []}
    every = network.batch_features(
        ops.reshape(frames, (num_clips * num_frames,) + size + (3,)), size, size
    )

    def features(b: int, t: int) -> dict[str, Any]:
        return network.frame_features(every, b * num_frames + t)

    for b in range(num_clips):
        object_valid = batch["object_valid"][b]
        max_parts = int(batch["part_boxes"].shape[3])
        rows = num_objects * max_parts
        part_object = ops.repeat(ops.arange(num_objects, dtype="int32"), max_parts)
        ref_valid = ops.logical_and(
            ops.reshape(batch["part_valid"][b, 0], (rows,)), ops.repeat(object_valid, max_parts)
        )
        ref_boxes = ops.reshape(batch["part_boxes"][b, 0], (rows, 4))
        parts = (
            {"part_boxes": ref_boxes, "part_object": part_object, "part_valid": ref_valid}
            if parts_on
            else None
        )
        ref = network.encode_reference(
            frames[b, 0],
            _one_hot(labels[b, 0], num_objects),
            size,
            size,
            parts,
            features=features(b, 0),
        )
        keys, grids = [ref["key"]], [ref["grid"]]
        prev_probs = ref.get("prev_probs")
        for t in range(1, num_frames):
            memory = {
                "reference_keys": ref["key"][None],
                "reference_probs": ref["grid"][None],
                "reference_valid": ops.ones((1,), "bool"),
                "recent_keys": ops.stack(keys),
                "recent_probs": ops.stack(grids),
                "recent_valid": ops.ones((len(keys),), "bool"),
            }
            step_parts = None
            prev_boxes = ops.reshape(batch["part_boxes"][b, t - 1], (rows, 4))
            if parts_on:
                prev_valid = ops.reshape(batch["part_valid"][b, t - 1], (rows,))
                step_parts = {
                    "templates": ref["templates"],
                    "ref_p4": ref["ref_p4"],
                    "ref_mask": ref["ref_mask"],
                    "part_object": part_object,
                    "part_valid": ref_valid,
                    "prev_probs": prev_probs,
                    # where a part was not seen on t-1, search around its reference box
                    "part_boxes": ops.where(prev_valid[:, None], prev_boxes, ref_boxes),
                }
            out = network.step(
                frames[b, t],
                memory,
                size,
                size,
                step_parts,
                internals=True,
                features=features(b, t),
            )
            keys.append(out["key"])
            grids.append(out["grid"])
            offset = stride - 1  # cell i of a stride-s grid is centred on pixel s*i + s - 1
            target = labels[b, t][offset::stride, offset::stride]
            totals["mask"].append(
                mask_loss(
                    out["logits"][None],
                    target[None],
                    object_valid[None],
                    bootstrap_ratio=bootstrap_ratio,
                )
            )
            if not parts_on:
                continue
            prev_probs = out["prev_probs"]
            present = ops.repeat(batch["object_present"][b, t], max_parts)
            now_valid = ops.reshape(batch["part_valid"][b, t], (rows,))
            train_rows = ops.logical_and(ops.logical_and(ref_valid, present), now_valid)
            crop = int(out["part_logits"].shape[1])
            masks = _one_hot(labels[b, t], num_objects)[None, ..., 1:]
            targets = crop_object_maps(
                masks, out["windows"], ops.zeros_like(part_object), part_object, crop, 1
            )
            totals["part"].append(
                part_mask_loss(out["part_logits"], targets, ops.logical_and(ref_valid, present))
            )
            tracker = network.tracker
            goal = tracking_targets(
                out["search_windows"],
                ops.reshape(batch["part_boxes"][b, t], (rows, 4)),
                tracker.response_size,
                tracker.template_size,
                tracker.search_size,
                previous_boxes=step_parts["part_boxes"],
                valid=train_rows,
            )
            totals["track"].append(
                tracking_loss(
                    out["response"],
                    out["offsets"],
                    goal["labels"],
                    goal["weights"],
                    goal["offsets"],
                    train_rows,
                )
            )
    parts = {k: ops.mean(ops.stack(v)) for k, v in totals.items() if v}
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    return total, parts
