"""A model's configuration, in two dataclass trees saved together as JSON next to the weights.

- :class:`ModelConfig`, the architecture: defines the weights; another value needs another
  (trained) model.
- :class:`InferenceSettings`, how the model runs. Each field says its kind (its ``kind``
  metadata; :meth:`InferenceSettings.kinds`): ``baked``, built into a frozen graph at export
  (the Keras runtime builds the network from it, so it follows an override; the frozen graph
  keeps its exported value), or ``run time``, read by the propagator as it runs (any runtime
  follows it). Settings are changed in one way: :func:`apply_overrides` (``--set``).

A model file (configs/*.json, a manifest's ``config``, a training config's ``model``) holds the
architecture with the settings under ``settings``: :func:`model_to_dict`, :func:`model_from_dict`.
"""

from __future__ import annotations

import copy
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
#: Memory probability of an object a memory frame never saw (older than the object's first
#: annotation): the graph's matching reads it as "no vote" (vostrack.network.matching.read_votes).
#: Defined here, not in the matching module, so that the propagators need no keras.
UNKNOWN = -1.0
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


# ------------------------------------------------------------------------------ architecture
@dataclass(frozen=True)
class MatchingConfig:
    """Label propagation by pixel matching against a bounded memory (STM/XMem-style read with
    top-k softmax, as in label-propagation studies of pretrained features): which features."""

    level: str = "C4"  # backbone level used as matching key (stride 16)

    def __post_init__(self) -> None:
        _check(
            "matching.level",
            self.level,
            self.level in ("C2", "C3", "C4", "C5"),
            "be one of C2, C3, C4, C5",
        )


@dataclass(frozen=True)
class PartsModelConfig:
    """The part path: FPN, Siamese part tracker and per-part mask head (trained by
    ``vostrack train``; an untrained part path reproduces the matching branch)."""

    fpn_channels: int = 128
    template_size: int = 6  # tracker, on L2-normalised C4 (stride 16)
    #: mask head crops: s at P4, 2s at P3, 4s at P2 (part logits 4s x 4s)
    head_crop: int = 8
    head_channels: int = 64

    def __post_init__(self) -> None:
        for name in ("fpn_channels", "template_size", "head_crop", "head_channels"):
            _check_int(f"parts.{name}", getattr(self, name), 1)


@dataclass(frozen=True)
class ModelConfig:
    """What defines the weights: another value needs another (trained) model. How the
    network runs is :class:`InferenceSettings`, kept beside it."""

    name: str = "vostrack"  # a label, not a setting
    backbone: str = "efficientnet_lite2"
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    #: The part path (the default, as shipped); None: the matching branch alone, a smaller and
    #: faster network (configs/matching.json)
    parts: PartsModelConfig | None = field(default_factory=PartsModelConfig)

    @property
    def stride(self) -> int:
        return 2 ** int(self.matching.level[1:])

    @property
    def deepest_stride(self) -> int:
        """The stride of the deepest level the network computes (the FPN doubles C5 onto C4)."""
        return 32 if self.parts else self.stride

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


# -------------------------------------------------------------------------- inference settings
@dataclass(frozen=True)
class MatchingSettings:
    top_k: int = _kind(BAKED, 10)
    temperature: float = _kind(BAKED, 0.05)
    #: Previous frames kept in memory (searched within ``local_radius`` cells of each pixel).
    memory_frames: int = _kind(RUN_TIME, 5)
    local_radius: int = _kind(BAKED, 8)
    #: Annotated frames kept in memory (searched over the whole frame); the first is never
    #: dropped, later ones replace the oldest non-first.
    max_references: int = _kind(RUN_TIME, 4)
    #: Long-term memory: every ``long_term_every``-th frame (0: none) joins a store of the
    #: last ``long_term_frames`` such frames, searched over the whole frame as the annotated
    #: ones are, with the labels predicted on it; so an object whose look has changed since
    #: its annotation is still found. Bounded: at most that many more frames to search.
    long_term_every: int = _kind(RUN_TIME, 0)
    long_term_frames: int = _kind(RUN_TIME, 4)
    #: None: the ``top_k`` best matches over annotated and recent frames together vote. A
    #: number in [0, 1]: each group votes on its own and the annotated frames' read weighs
    #: this much (see vostrack.network.matching.propagate_labels).
    reference_share: float | None = _kind(BAKED, None)

    def __post_init__(self) -> None:
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
        _check_int("matching.long_term_every", self.long_term_every, 0)
        _check_int("matching.long_term_frames", self.long_term_frames, 1)
        share = self.reference_share
        _check(
            "matching.reference_share",
            share,
            share is None or (_is_number(share) and 0.0 <= share <= 1.0),
            "lie in 0..1 (or be null)",
        )


@dataclass(frozen=True)
class PartSettings:
    max_parts: int = _kind(RUN_TIME, 6)  # per object, padded
    min_part_area: float = _kind(RUN_TIME, 1024.0)  # pixels (working size) per part
    search_size: int = _kind(BAKED, 18)  # tracker search window, in stride-16 cells
    #: False (inference only; the shipped model's setting, which measured better on DAVIS):
    #: the tracker does not move the parts; the propagator places them on each frame from the
    #: object's last mask (moved and scaled with its centroid and area, as on a re-seeded
    #: frame), each with weight 1. Training always runs the tracker (its loss needs it).
    track: bool = _kind(BAKED, True)

    def splitting(self) -> PartsConfig:
        """How a mask is split into parts (the one bridge to vostrack.network.parts)."""
        from vostrack.network.parts import PartsConfig

        return PartsConfig(max_parts=self.max_parts, min_part_area=self.min_part_area)

    def __post_init__(self) -> None:
        _check_int("parts.max_parts", self.max_parts, 1)
        _check_int("parts.search_size", self.search_size, 1)
        _check(
            "parts.min_part_area",
            self.min_part_area,
            _is_number(self.min_part_area) and self.min_part_area >= 0,
            "be a number >= 0",
        )
        _check("parts.track", self.track, isinstance(self.track, bool), "be true or false")


@dataclass(frozen=True)
class InferenceSettings:
    """How a model runs; its weights do not depend on any of it. Each field says its kind:
    ``baked`` ones are built into the frozen graph at export (the Keras runtime builds the
    network from them, so it follows a change; the frozen graph keeps its exported value),
    ``run time`` ones are read by the propagator as it runs (any runtime follows them).
    Changed in one way: :func:`apply_overrides` (``--set``)."""

    #: Frames are resized so that their short side has this many pixels (None: native size),
    #: then padded (edge values) to a multiple of ``pad_multiple``; masks come back at the
    #: input's own size. Bounds compute and memory whatever the video's resolution.
    working_short_side: int | None = _kind(BAKED, 480)
    pad_multiple: int = _kind(BAKED, 32)
    matching: MatchingSettings = field(default_factory=MatchingSettings)
    #: Read only by a network with a part path.
    parts: PartSettings = field(default_factory=PartSettings)
    #: Also segment each frame's mirror image (its own memory) and take the argmax of the two
    #: probability maps averaged (vostrack.inference.ensemble); twice the time.
    mirror_average: bool = _kind(RUN_TIME, False)

    def __post_init__(self) -> None:
        side = self.working_short_side
        _check(
            "working_short_side",
            side,
            side is None or (_is_whole(side) and side >= 32),
            "be a whole number >= 32 (or null: the frame's own size)",
        )
        _check(
            "pad_multiple",
            self.pad_multiple,
            _is_whole(self.pad_multiple) and self.pad_multiple > 0,
            "be a positive whole number",
        )
        _check(
            "mirror_average",
            self.mirror_average,
            isinstance(self.mirror_average, bool),
            "be true or false",
        )

    def check(self, config: ModelConfig) -> InferenceSettings:
        """These settings for a network of ``config`` (one-line errors), returned."""
        # The deepest level in use must tile the padded frame.
        deepest = config.deepest_stride
        _check(
            "pad_multiple",
            self.pad_multiple,
            self.pad_multiple % deepest == 0,
            f"be a positive multiple of {deepest}",
        )
        if config.parts:
            template = config.parts.template_size
            _check_int("parts.search_size", self.parts.search_size, template)
        return self

    @classmethod
    def kinds(cls) -> dict[str, str]:
        """Every setting by its dotted path, with its kind (``baked`` or ``run time``)."""
        return _leaf_kinds(cls)

    def to_dict(self, parts: bool = True) -> dict[str, Any]:
        """``parts`` False (a network without a part path): its part settings recorded null."""
        data = dataclasses.asdict(self)
        if not parts:
            data["parts"] = None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceSettings:
        data = dict(data)
        matching = MatchingSettings(**data.pop("matching", {}))
        parts = data.pop("parts", None)
        return cls(matching=matching, parts=PartSettings(**(parts or {})), **data)


def _leaf_kinds(cls: type, prefix: str = "") -> dict[str, str]:
    kinds: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if "kind" in f.metadata:
            kinds[prefix + f.name] = f.metadata["kind"]
        else:  # a section
            kinds.update(_leaf_kinds(f.default_factory, f"{prefix}{f.name}."))
    return kinds


def _architecture_leaves(cls: type = ModelConfig, prefix: str = "") -> list[str]:
    leaves: list[str] = []
    for f in dataclasses.fields(cls):
        section = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(section):
            leaves += _architecture_leaves(section, f"{prefix}{f.name}.")
        elif f.name != "name":
            leaves.append(prefix + f.name)
    return leaves


def setting_kinds() -> dict[str, str]:
    """Every value a model file records, by its dotted path, with its kind: ``architecture``
    (:class:`ModelConfig`), ``baked`` or ``run time`` (:class:`InferenceSettings`)."""
    return {
        **dict.fromkeys(_architecture_leaves(), ARCHITECTURE),
        **InferenceSettings.kinds(),
    }


# ------------------------------------------------------------------------------- model files
SETTINGS_KEY = "settings"


def model_to_dict(config: ModelConfig, settings: InferenceSettings) -> dict[str, Any]:
    """A model file's mapping (configs/*.json, a manifest's ``config``, a training config's
    ``model``): the architecture, with the settings it runs with under ``settings``."""
    return {**config.to_dict(), SETTINGS_KEY: settings.to_dict(parts=bool(config.parts))}


def model_from_dict(data: dict[str, Any]) -> tuple[ModelConfig, InferenceSettings]:
    """The architecture and settings of a model file's mapping, checked together. Files of
    earlier versions, with the settings mixed into the architecture's sections, read the same."""
    data = copy.deepcopy(data)  # the caller's mapping is not changed
    settings = data.pop(SETTINGS_KEY, None)
    if settings is None:  # the earlier layout: lift the settings out of their sections
        settings = {}
        for path in InferenceSettings.kinds():
            *parents, last = path.split(".")
            node, target = data, settings
            for name in parents:
                node = node.get(name) if isinstance(node, dict) else None
                target = target.setdefault(name, {})
            if isinstance(node, dict) and last in node:
                target[last] = node.pop(last)
    if not isinstance(settings, dict):
        raise TypeError(f"{SETTINGS_KEY} must be a mapping, not {type(settings).__name__}")
    config = ModelConfig.from_dict(data)
    return config, InferenceSettings.from_dict(settings).check(config)


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
    settings: InferenceSettings,
    assignments: Sequence[str],
    config: ModelConfig | None = None,
    allowed: Collection[str] = (BAKED, RUN_TIME),
) -> InferenceSettings:
    """``settings`` with each ``"a.b=value"`` of ``assignments`` applied, checked as a model
    file is (one-line errors; against ``config``, the network they are for, when given). Only
    settings of a kind in ``allowed`` may change: the architecture never can (that is another
    model), and a frozen graph's baked settings only at export."""
    from vostrack.errors import VostrackError

    kinds = setting_kinds()
    values = settings.to_dict()
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        if key not in kinds:
            names = ", ".join(k for k, v in kinds.items() if v in (BAKED, RUN_TIME))
            raise VostrackError(f"--set {key}: no such setting (inference settings: {names})")
        if kinds[key] not in allowed:
            why = {
                BAKED: "it is built into the frozen graph at export: use --runtime keras, "
                "or export the model with it (vostrack export --set)"
            }.get(kinds[key], "it defines the model, not how it runs")
            raise VostrackError(f"--set {key}: cannot be changed here; {why}")
        if key.startswith("parts.") and config is not None and not config.parts:
            raise VostrackError(f"--set {key}: this model has no part path")
        *parents, last = key.split(".")
        node = values
        for name in parents:
            node = node[name]
        node[last] = value
    try:
        changed = InferenceSettings.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise VostrackError(f"--set: {exc}") from None
    return changed if config is None else changed.check(config)


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


def working_size(height: int, width: int, settings: InferenceSettings) -> tuple[int, int, int, int]:
    """(working height, working width, padded height, padded width) for a frame size.

    The exported graph computes the same with TF ops (vostrack/serving/export.py); a test
    checks that both agree.
    """
    if settings.working_short_side is None:
        h, w = height, width
    else:
        scale = settings.working_short_side / min(height, width)
        h, w = int(math.floor(height * scale + 0.5)), int(math.floor(width * scale + 0.5))
    m = settings.pad_multiple
    return h, w, -(-h // m) * m, -(-w // m) * m
