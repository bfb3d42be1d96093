"""The training config: what `vostrack train` reads (``--config`` and its options) and writes
whole into a run's ``config.json`` and every checkpoint's ``state.json``.

Its own module because more than the loop reads it: the CLI checks it before anything is built,
a resumed run and ``vostrack export --checkpoint`` rebuild the network from it
(vostrack/training/runs.py, vostrack/training/checkpoints.py), and the device tools write one.
A config file is checked here once, in one-line errors (:class:`VostrackError`): unknown keys at
any depth, values out of range. Every field has the default a config file without it gets, so a
config written before a field existed still means what it meant (and gives the same batches).

The data sections are the data modules' own settings dataclasses (one home per setting):
``augment`` (:class:`~vostrack.data.clips.AugmentSettings`, the output size being ``size``),
``video`` (:class:`~vostrack.data.video_datasets.VideoSamplingSettings`), ``static``
(:class:`~vostrack.data.static_clips.StaticClipSettings`), ``procedural``
(:class:`~vostrack.data.procedural.ProceduralClipSettings`) and ``paste``
(:class:`~vostrack.data.pasted_objects.PasteSettings`, objects cut from still images pasted
onto video clips); frames per clip (``num_frames``) and the frame gap schedule (``max_gap`` over
``steps``) stay at the top, as every source shares them.

Sequence lists (``exclude``, ``val_sequences``) may name a list file, ``"@path/to/list.txt"``
(one name a line, as DAVIS's ImageSets files, so `vostrack validate --image-set` reads the same
file): its names replace the entry when the config is made, so a run's ``config.json`` records
the sequences themselves and a resumed run keeps them whatever becomes of the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vostrack.data.clips import AugmentSettings
from vostrack.data.pasted_objects import PasteSettings
from vostrack.data.procedural import ProceduralClipSettings
from vostrack.data.static_clips import StaticClipSettings
from vostrack.data.video_datasets import VideoSamplingSettings
from vostrack.errors import VostrackError
from vostrack.network.config import InferenceSettings, ModelConfig, model_from_dict

# bfloat16 keeps float32's exponent range, so it needs no loss scaling (float16 would: a
# LossScaleOptimizer around both optimizers); every GPU this trains on (Ampere, Hopper) has it.
PRECISIONS = ("float32", "mixed_bfloat16")

# Backbones whose weights may come from a file (``backbone_weights``): resnet50_v2 ships none and
# loads what `vostrack import-backbone` writes; efficientnet_lite2 takes its ImageNet weights from
# its weight package and no file.
WEIGHT_FILE_BACKBONES = ("resnet50_v2",)

#: In ``init_only``: every variable of the backbone (its variables have no common path prefix:
#: they are named by the backbone's own layers).
BACKBONE = "backbone"


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Layers built in here take Keras's ``name`` policy (a :data:`PRECISIONS` value); the heads
    pin float32 themselves."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@dataclass(frozen=True)
class DataSpec:
    path: str  # a DAVIS / YouTube-VOS tree, an images+masks folder, or "procedural"
    weight: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="vostrack-parts"))
    #: How validation runs the network, and the settings an export of it starts from (the
    #: part settings also split the training masks into parts).
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    data: tuple[DataSpec, ...] = (DataSpec("procedural"),)
    #: Sequence names never to train on (e.g. DAVIS val); ``"@FILE"`` entries: a list file's.
    exclude: tuple[str, ...] = ()
    size: int = 384
    num_frames: int = 3
    batch_size: int = 4
    max_objects: int = 3
    steps: int = 20000
    checkpoint_every: int = 500
    log_every: int = 10
    peak_lr: float = 2e-4
    warmup_steps: int = 500
    floor_lr: float = 2e-6
    weight_decay: float = 1e-4
    freeze_steps: int = 5000
    backbone_lr: float = 0.1
    clip_norm: float = 1.0
    max_gap: tuple[int, int] = (3, 10)  # largest frame gap, grown linearly over training
    bootstrap: tuple[int, int] = (2000, 10000)  # steps over which XMem's top-p goes 1 -> 0.15
    loss_mask: float = 1.0
    loss_part: float = 0.5
    loss_track: float = 0.5
    seed: int = 0
    workers: int = 0  # processes making batches ahead of the step (0: in the loop)
    devices: int = 0  # data-parallel devices: 0 = every GPU (or one CPU), N = the first N
    precision: str = "float32"  # or "mixed_bfloat16": backbone + FPN in bfloat16 (GPU)
    val: str | None = None  # a DAVIS tree scored every val_every steps (never train on it)
    val_every: int = 1000
    #: The sequences of ``val`` to score (``"@FILE"`` entries: a list file's); () every one.
    val_sequences: tuple[str, ...] = ()
    init: str | None = None  # network weights (.weights.h5 or a checkpoint folder) to start from
    #: With ``init`` a checkpoint folder: take only the variables whose path starts with one of
    #: these (``"fpn"``, ``"mask_head"``, ...; ``"backbone"``: the backbone's); () takes all.
    init_only: tuple[str, ...] = ()
    #: The backbone's weights file (a resnet50_v2 one, from `vostrack import-backbone`), loaded
    #: into the network's encoder instead of ImageNet weights.
    backbone_weights: str | None = None
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    video: VideoSamplingSettings = field(default_factory=VideoSamplingSettings)
    static: StaticClipSettings = field(default_factory=StaticClipSettings)
    procedural: ProceduralClipSettings = field(default_factory=ProceduralClipSettings)
    paste: PasteSettings = field(default_factory=PasteSettings)

    def __post_init__(self) -> None:
        for key in ("exclude", "val_sequences"):
            object.__setattr__(self, key, expand_sequence_lists(getattr(self, key), key))
        backbone = self.model.backbone
        checks = [
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (
                0 <= self.warmup_steps <= self.steps,
                f"warmup_steps ({self.warmup_steps}) must lie in 0..steps ({self.steps})",
            ),
            (self.freeze_steps >= 0, "freeze_steps must be >= 0"),
            (
                self.checkpoint_every >= 1 and self.log_every >= 1 and self.val_every >= 1,
                "checkpoint_every, log_every and val_every must be >= 1",
            ),
            (
                self.batch_size >= 1 and self.max_objects >= 1 and self.num_frames >= 3,
                "batch_size and max_objects must be >= 1, num_frames >= 3",
            ),
            (self.size >= 64, f"size must be at least 64 pixels, got {self.size}"),
            (0 < self.floor_lr <= self.peak_lr, "need 0 < floor_lr <= peak_lr"),
            (self.bootstrap[0] <= self.bootstrap[1], "bootstrap: start must not exceed end"),
            (bool(self.data), "no training data"),
            (self.workers >= 0 and self.devices >= 0, "workers and devices must be >= 0"),
            (
                self.val is None
                or not _trains_on(self.data, self.val)
                or (bool(self.val_sequences) and set(self.val_sequences) <= set(self.exclude)),
                f"val {self.val} is training data too: validate on sequences held out of "
                "training, the same list in val_sequences and exclude (e.g. both "
                "'@configs/splits/davis2016-train-val.txt')",
            ),
            (
                self.precision in PRECISIONS,
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
            ),
            (
                not self.model.parts or self.settings.parts.track,
                "parts.track false is an inference setting (the tracking loss needs the tracker): "
                "train with it and export with --no-part-tracker",
            ),
            (
                not self.init_only or self.init is not None,
                "init_only picks variables of init: give init (a checkpoint folder) too",
            ),
            (
                self.backbone_weights is None or backbone in WEIGHT_FILE_BACKBONES,
                f"backbone_weights: the {backbone} backbone takes no weights file (those that "
                f"do: {', '.join(WEIGHT_FILE_BACKBONES)})",
            ),
            (
                self.backbone_weights is None or self.init is None or bool(self.init_only),
                "backbone_weights and init both give the backbone its weights: give one, or "
                "init_only to take only some variables from init",
            ),
            (
                backbone not in WEIGHT_FILE_BACKBONES
                or self.backbone_weights is not None
                or self.init is not None,
                f"the {backbone} backbone has no ImageNet weights here: give backbone_weights "
                "(--backbone-weights FILE, written by vostrack import-backbone) or init",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise VostrackError(f"training config: {message}")
        try:
            self.settings.check(self.model)
        except VostrackError as exc:
            raise VostrackError(f"training config: {exc}") from None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        _refuse_unknown(cls, data, "")
        if "model" in data:  # a model file's mapping: its settings too (an earlier layout)
            data["model"], settings = model_from_dict(data["model"])
            data.setdefault("settings", settings)
        if isinstance(data.get("settings"), dict):
            data["settings"] = InferenceSettings.from_dict(data["settings"])
        if "data" in data:
            data["data"] = tuple(
                DataSpec(**d) if isinstance(d, dict) else DataSpec(str(d)) for d in data["data"]
            )
        for key in ("init_only", "exclude", "val_sequences"):
            if isinstance(data.get(key), str):  # one entry, not its letters
                data[key] = [data[key]]
        for key in ("exclude", "val_sequences", "max_gap", "bootstrap", "init_only"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        hints = typing.get_type_hints(cls)
        for key in ("augment", "video", "static", "procedural", "paste"):
            if key in data:
                data[key] = _section(hints[key], data[key], key)
        return cls(**data)


def read_sequence_list(path: str | Path, where: str = "sequence list") -> list[str]:
    """The names a sequence list file holds, one a line (blank lines skipped), in order and
    without repeats; a one-line :class:`VostrackError` when it cannot be read or lists none."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VostrackError(f"training config: {where}: no sequence list file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise VostrackError(f"training config: {where}: cannot read {path} ({reason})") from None
    names = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not names:
        raise VostrackError(f"training config: {where}: {path} lists no sequences")
    return names


def expand_sequence_lists(entries: Any, where: str) -> tuple[str, ...]:
    """``entries`` (sequence names) with each ``"@FILE"`` replaced by the names FILE lists."""
    if isinstance(entries, str):
        entries = (entries,)
    names: list[str] = []
    for entry in entries:
        entry = str(entry)
        names.extend(read_sequence_list(entry[1:], where) if entry.startswith("@") else [entry])
    return tuple(dict.fromkeys(names))


def _trains_on(data: tuple[DataSpec, ...], tree: str) -> bool:
    # resolve() needs no existing path: the same folder written two ways still compares equal.
    target = Path(tree).resolve()
    return any(d.path != "procedural" and Path(d.path).resolve() == target for d in data)


def _refuse_unknown(cls: type, data: dict, where: str) -> None:
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise VostrackError(f"unknown training option(s): {', '.join(where + k for k in unknown)}")


def _section(cls: type, data: Any, where: str) -> Any:
    """The dataclass ``cls`` of a config section from its mapping: nested dataclasses too, lists
    as the tuples the fields hold, unknown keys and bad values refused in one line."""
    if not isinstance(data, dict):
        raise VostrackError(
            f"training config: {where} must be a mapping of options, not {type(data).__name__}"
        )
    _refuse_unknown(cls, data, f"{where}.")
    hints = typing.get_type_hints(cls)
    values = {key: _value(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise VostrackError(f"training config: {where}: {exc}") from None


def _value(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if dataclasses.is_dataclass(option):
            return _section(option, value, where)
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
    return value
