"""Model configuration: one dataclass tree, saved as JSON next to the weights."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


#: The memory that ``step`` reads: annotated frames, then recent frames.
MEMORY_INPUTS = ("reference_keys", "reference_probs", "reference_valid",
                 "recent_keys", "recent_probs", "recent_valid")
#: Inputs of the part path (beyond frame, probs and the memory), per function.
PART_REFERENCE_INPUTS = ("part_boxes", "part_object", "part_valid")
PART_STEP_INPUTS = ("templates", "ref_p4", "ref_mask", "part_object", "part_valid", "part_boxes",
                    "prev_probs")


@dataclass(frozen=True)
class MatchingConfig:
    """Label propagation by pixel matching against a bounded memory (STM/XMem-style read with
    top-k softmax, as in label-propagation studies of pretrained features)."""

    level: str = "C4"  # backbone level used as matching key (stride 16)
    top_k: int = 10
    temperature: float = 0.05
    #: Previous frames kept in memory (searched within ``local_radius`` cells of each pixel).
    memory_frames: int = 5
    local_radius: int = 8
    #: Annotated frames kept in memory (searched over the whole frame); the first is never
    #: dropped, later ones replace the oldest non-first.
    max_references: int = 4
    #: None: the ``top_k`` best matches over annotated and recent frames together vote. A
    #: number in [0, 1]: each group votes on its own and the annotated frames' read weighs
    #: this much (see vostrack.network.matching.propagate_labels).
    reference_share: float | None = None

    def __post_init__(self) -> None:
        share = self.reference_share
        if share is not None and not 0.0 <= share <= 1.0:
            from vostrack.errors import VostrackError

            raise VostrackError(f"matching.reference_share must lie in 0..1 (or be null), "
                                f"got {share}")


@dataclass(frozen=True)
class PartsModelConfig:
    """The part path: FPN, Siamese part tracker and per-part mask head (trained by
    ``vostrack train``; an untrained part path reproduces the matching branch)."""

    max_parts: int = 6  # per object, padded
    min_part_area: float = 1024.0  # pixels (working size) per part
    fpn_channels: int = 128
    template_size: int = 6  # tracker, on L2-normalised C4 (stride 16)
    search_size: int = 18
    head_crop: int = 8  # mask head crops: s at P4, 2s at P3, 4s at P2 (part logits 4s x 4s)
    head_channels: int = 64
    #: False (inference only; the shipped model's setting, which measured better on DAVIS):
    #: the tracker does not move the parts; the propagator places them on each frame from the
    #: object's last mask (moved and scaled with its centroid and area, as on a re-seeded
    #: frame), each with weight 1. Training always runs the tracker (its loss needs it).
    track: bool = True


@dataclass(frozen=True)
class ModelConfig:
    name: str = "vostrack-matching"
    backbone: str = "efficientnet_lite2"
    #: Frames are resized so that their short side has this many pixels (None: native size),
    #: then padded (edge values) to a multiple of ``pad_multiple``; masks come back at the
    #: input's own size. Bounds compute and memory whatever the video's resolution.
    working_short_side: int | None = 480
    pad_multiple: int = 32
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    parts: PartsModelConfig | None = None
    #: Run time: also segment each frame's mirror image (its own memory) and take the argmax of
    #: the two probability maps averaged (vostrack.inference.ensemble); twice the time.
    mirror_average: bool = False

    @property
    def stride(self) -> int:
        return 2 ** int(self.matching.level[1:])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        matching = MatchingConfig(**data.pop("matching", {}))
        parts = data.pop("parts", None)
        return cls(matching=matching, parts=PartsModelConfig(**parts) if parts else None, **data)


def working_size(height: int, width: int, config: ModelConfig) -> tuple[int, int, int, int]:
    """(working height, working width, padded height, padded width) for a frame size.

    The exported graph computes the same with TF ops (vostrack/serving/export.py); a test
    checks that both agree.
    """
    if config.working_short_side is None:
        h, w = height, width
    else:
        scale = config.working_short_side / min(height, width)
        h, w = int(math.floor(height * scale + 0.5)), int(math.floor(width * scale + 0.5))
    m = config.pad_multiple
    return h, w, -(-h // m) * m, -(-w // m) * m
