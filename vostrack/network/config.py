"""Model configuration: one dataclass tree, saved as JSON next to the weights.

Every field says what kind of value it is (its ``kind`` metadata; :func:`setting_kinds`):
- ``architecture``: defines the weights; another value needs another (trained) model;
- ``baked``: an inference setting built into a frozen graph at export (the Keras runtime builds
  the network from it, so it follows an override; the frozen graph keeps its exported value);
- ``run time``: an inference setting read by the propagator as it runs (any runtime follows it).
Inference settings of a model are changed in one way: :func:`apply_overrides` (``--set``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vostrack.network.parts import PartsConfig


#: The memory that ``step`` reads: annotated frames, then recent frames.
MEMORY_INPUTS = (
    "reference_keys",
    "reference_probs",
    "reference_valid",
    "recent_keys",
    "recent_probs",
    "recent_valid",
)
#: Inputs of the part path (beyond frame, probs and the memory), per function.
PART_REFERENCE_INPUTS = ("part_boxes", "part_object", "part_valid")
PART_STEP_INPUTS = (
    "templates",
    "ref_p4",
    "ref_mask",
    "part_object",
    "part_valid",
    "part_boxes",
    "prev_probs",
)


ARCHITECTURE, BAKED, RUN_TIME = "architecture", "baked", "run time"


def _kind(kind: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    return field(default=default, metadata={"kind": kind}, **kwargs)


@dataclass(frozen=True)
class MatchingConfig:
    """Label propagation by pixel matching against a bounded memory (STM/XMem-style read with
    top-k softmax, as in label-propagation studies of pretrained features)."""

    level: str = _kind(ARCHITECTURE, "C4")  # backbone level used as matching key (stride 16)
    top_k: int = _kind(BAKED, 10)
    temperature: float = _kind(BAKED, 0.05)
    #: Previous frames kept in memory (searched within ``local_radius`` cells of each pixel).
    memory_frames: int = _kind(RUN_TIME, 5)
    local_radius: int = _kind(BAKED, 8)
    #: Annotated frames kept in memory (searched over the whole frame); the first is never
    #: dropped, later ones replace the oldest non-first.
    max_references: int = _kind(RUN_TIME, 4)
    #: None: the ``top_k`` best matches over annotated and recent frames together vote. A
    #: number in [0, 1]: each group votes on its own and the annotated frames' read weighs
    #: this much (see vostrack.network.matching.propagate_labels).
    reference_share: float | None = _kind(BAKED, None)

    def __post_init__(self) -> None:
        _check(
            "matching.level",
            self.level,
            self.level in ("C2", "C3", "C4", "C5"),
            "be one of C2, C3, C4, C5",
        )
        _check_int("matching.top_k", self.top_k, 1)
        _check(
            "matching.temperature",
            self.temperature,
            _is_number(self.temperature) and self.temperature > 0,
            "be a number above 0",
        )
        _check_int("matching.memory_frames", self.memory_frames, 1)
        _check_int("matching.local_radius", self.local_radius, 0)
        _check_int("matching.max_references", self.max_references, 1)
        share = self.reference_share
        _check(
            "matching.reference_share",
            share,
            share is None or (_is_number(share) and 0.0 <= share <= 1.0),
            "lie in 0..1 (or be null)",
        )


@dataclass(frozen=True)
class PartsModelConfig:
    """The part path: FPN, Siamese part tracker and per-part mask head (trained by
    ``vostrack train``; an untrained part path reproduces the matching branch)."""

    max_parts: int = _kind(RUN_TIME, 6)  # per object, padded
    min_part_area: float = _kind(RUN_TIME, 1024.0)  # pixels (working size) per part
    fpn_channels: int = _kind(ARCHITECTURE, 128)
    template_size: int = _kind(ARCHITECTURE, 6)  # tracker, on L2-normalised C4 (stride 16)
    search_size: int = _kind(BAKED, 18)
    #: mask head crops: s at P4, 2s at P3, 4s at P2 (part logits 4s x 4s)
    head_crop: int = _kind(ARCHITECTURE, 8)
    head_channels: int = _kind(ARCHITECTURE, 64)
    #: False (inference only; the shipped model's setting, which measured better on DAVIS):
    #: the tracker does not move the parts; the propagator places them on each frame from the
    #: object's last mask (moved and scaled with its centroid and area, as on a re-seeded
    #: frame), each with weight 1. Training always runs the tracker (its loss needs it).
    track: bool = _kind(BAKED, True)

    def splitting(self) -> PartsConfig:
        """How a mask is split into this network's parts (the one bridge between the two)."""
        from vostrack.network.parts import PartsConfig

        return PartsConfig(max_parts=self.max_parts, min_part_area=self.min_part_area)

    def __post_init__(self) -> None:
        for name in ("max_parts", "fpn_channels", "template_size", "head_crop", "head_channels"):
            _check_int(f"parts.{name}", getattr(self, name), 1)
        _check_int("parts.search_size", self.search_size, self.template_size)
        _check(
            "parts.min_part_area",
            self.min_part_area,
            _is_number(self.min_part_area) and self.min_part_area >= 0,
            "be a number >= 0",
        )
        _check("parts.track", self.track, isinstance(self.track, bool), "be true or false")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _kind("identity", "vostrack")  # a label, not a setting
    backbone: str = _kind(ARCHITECTURE, "efficientnet_lite2")
    #: Frames are resized so that their short side has this many pixels (None: native size),
    #: then padded (edge values) to a multiple of ``pad_multiple``; masks come back at the
    #: input's own size. Bounds compute and memory whatever the video's resolution.
    working_short_side: int | None = _kind(BAKED, 480)
    pad_multiple: int = _kind(BAKED, 32)
    matching: MatchingConfig = _kind(ARCHITECTURE, default_factory=MatchingConfig)
    #: The part path (the default, as shipped); None: the matching branch alone, a smaller and
    #: faster network (configs/matching.json)
    parts: PartsModelConfig | None = _kind(ARCHITECTURE, default_factory=PartsModelConfig)
    #: Run time: also segment each frame's mirror image (its own memory) and take the argmax of
    #: the two probability maps averaged (vostrack.inference.ensemble); twice the time.
    mirror_average: bool = _kind(RUN_TIME, False)

    def __post_init__(self) -> None:
        side = self.working_short_side
        _check(
            "working_short_side",
            side,
            side is None or (_is_whole(side) and side >= 32),
            "be a whole number >= 32 (or null: the frame's own size)",
        )
        # The deepest level in use must tile the padded frame (the FPN doubles C5 onto C4).
        deepest = 32 if self.parts else self.stride
        _check(
            "pad_multiple",
            self.pad_multiple,
            _is_whole(self.pad_multiple)
            and self.pad_multiple > 0
            and self.pad_multiple % deepest == 0,
            f"be a positive multiple of {deepest}",
        )
        _check(
            "mirror_average",
            self.mirror_average,
            isinstance(self.mirror_average, bool),
            "be true or false",
        )

    @property
    def stride(self) -> int:
        return 2 ** int(self.matching.level[1:])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        matching = MatchingConfig(**data.pop("matching", {}))
        # absent: the default part path; null: none (the matching branch alone)
        parts = data.pop("parts", {})
        return cls(
            matching=matching,
            parts=None if parts is None else PartsModelConfig(**parts),
            **data,
        )


def setting_kinds(cls: type = None) -> dict[str, str]:
    """Every leaf field of the config tree by its dotted path, with its kind."""
    cls = ModelConfig if cls is None else cls
    kinds: dict[str, str] = {}
    nested = {"matching": MatchingConfig, "parts": PartsModelConfig}
    for f in dataclasses.fields(cls):
        if f.name in nested and cls is ModelConfig:
            kinds.update({f"{f.name}.{k}": v for k, v in setting_kinds(nested[f.name]).items()})
        else:
            kinds[f.name] = f.metadata.get("kind", ARCHITECTURE)
    return kinds


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """``"a.b=v"`` -> ``("a.b", v)``; ``v`` is read as JSON (``true``, ``0.5``, ``null``,
    ``"text"``), or taken as plain text when it is not JSON."""
    import json

    from vostrack.errors import VostrackError

    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise VostrackError(f"--set {assignment}: give KEY=VALUE (e.g. parts.max_parts=4)")
    try:
        return key, json.loads(text)
    except ValueError:
        return key, text


def apply_overrides(
    config: ModelConfig, assignments: Sequence[str], allowed: Collection[str] = (BAKED, RUN_TIME)
) -> ModelConfig:
    """``config`` with each ``"a.b=value"`` of ``assignments`` applied, checked as a config
    file is (one-line errors). Only fields of a kind in ``allowed`` may change: the weights'
    architecture never can (that is another model), and a frozen graph's baked settings only
    at export."""
    from vostrack.errors import VostrackError

    kinds = setting_kinds()
    values = config.to_dict()
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        if key not in kinds:
            settings = ", ".join(k for k, v in kinds.items() if v in (BAKED, RUN_TIME))
            raise VostrackError(f"--set {key}: no such setting (inference settings: {settings})")
        if kinds[key] not in allowed:
            why = {
                BAKED: "it is built into the frozen graph at export: use --runtime keras, "
                "or export the model with it (vostrack export --set)"
            }.get(kinds[key], "it defines the model, not how it runs")
            raise VostrackError(f"--set {key}: cannot be changed here; {why}")
        *parents, last = key.split(".")
        node = values
        for name in parents:
            if node.get(name) is None:
                what = "part" if name == "parts" else name
                raise VostrackError(f"--set {key}: this model has no {what} path")
            node = node[name]
        node[last] = value
    try:
        return ModelConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise VostrackError(f"--set: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    _check(name, value, _is_whole(value) and value >= minimum, f"be a whole number >= {minimum}")


def _check(name: str, value: Any, ok: bool, must: str) -> None:
    """A config value out of range is the user's error (a config file, ``--set``), and must be
    a one-line message, not a graph error deep inside the first frame."""
    if not ok:
        from vostrack.errors import VostrackError

        raise VostrackError(f"{name} must {must}, got {value!r}")


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
