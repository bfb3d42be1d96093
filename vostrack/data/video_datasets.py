"""Video datasets (DAVIS and YouTube-VOS layouts) and the clip sampler that trains on them.

Layouts::

    DAVIS        ROOT/JPEGImages/480p/<seq>/*.jpg     ROOT/Annotations/480p/<seq>/*.png
                 ROOT/ImageSets/<year>/<split>.txt    (optional)
    YouTube-VOS  ROOT/train/JPEGImages/<vid>/*.jpg    ROOT/train/Annotations/<vid>/*.png
                 ROOT/train/meta.json                 (optional)
                 (ROOT may also be the ``train`` folder itself, or one video's folder
                 ROOT/JPEGImages/*.jpg + ROOT/Annotations/*.png)

Annotation PNGs are read as in :class:`vostrack.evaluation.davis.DavisTree`: a sequence whose
masks hold only 0 and 255 is DAVIS-2016 style (one object, 255 = the object); otherwise the PNG
index is the object id and 255 is void. Here the style is decided from the first annotation of a
sequence that is read (the scorer scans every frame; reading them all would defeat lazy reading).
Annotations may be sparse (YouTube-VOS annotates every 5th frame): clips are sampled among the
annotated frames only, since every frame of a clip needs its mask.

Reading is lazy: a dataset lists file names when it is made and reads only the frames a clip
uses; nothing but the per-sequence annotation style is cached. Excluding sequences (e.g. the
DAVIS validation ones) is the caller's decision, through ``exclude``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vostrack.data.clips import VOID, Clip, ClipSourceConfig, GapSchedule, augment_clip
from vostrack.errors import VostrackError
from vostrack.io.frames import IMAGE_SUFFIXES, natural_key, read_image_rgb
from vostrack.io.palette import read_label_png

__all__ = [
    "SOURCE_KINDS",
    "detect_source",
    "VideoSequence",
    "VideoDataset",
    "DavisDataset",
    "YouTubeVOSDataset",
    "VideoSamplingSettings",
    "VideoSamplingConfig",
    "VideoClipSource",
    "pick_frames",
]

log = logging.getLogger(__name__)

SOURCE_KINDS = ("davis", "youtube-vos", "images-masks", "procedural")
DAVIS_RESOLUTIONS = ("480p", "Full-Resolution", "1080p")


# --------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------


def _davis_resolution(root: Path) -> str | None:
    for resolution in DAVIS_RESOLUTIONS:
        if (root / "JPEGImages" / resolution).is_dir() and (
            root / "Annotations" / resolution
        ).is_dir():
            return resolution
    return None


def _youtube_split_dir(root: Path) -> Path | None:
    """The folder holding ``JPEGImages/<vid>`` and ``Annotations/<vid>``: ``ROOT/train`` or ROOT
    itself (when it has video folders, not DAVIS resolution folders)."""
    for folder in (root / "train", root):
        images, annotations = folder / "JPEGImages", folder / "Annotations"
        if images.is_dir() and annotations.is_dir() and _davis_resolution(folder) is None:
            return folder
    return None


def detect_source(path: str | Path) -> str:
    """The kind of training data at ``path``: ``"davis"``, ``"youtube-vos"``, ``"images-masks"``
    (``images/`` + ``masks/`` folders), or ``"procedural"`` for the literal string
    ``procedural``; a one-line :class:`VostrackError` for anything else."""
    if str(path) == "procedural":
        return "procedural"
    root = Path(path)
    if not root.exists():
        raise VostrackError(f"training data {root} does not exist (give a folder, or 'procedural')")
    if not root.is_dir():
        raise VostrackError(f"training data {root} is not a folder")
    if _davis_resolution(root) is not None:
        return "davis"
    if _youtube_split_dir(root) is not None:
        return "youtube-vos"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "images-masks"
    raise VostrackError(
        f"{root}: unknown training data layout; expected a DAVIS tree (JPEGImages/480p, "
        f"Annotations/480p), a YouTube-VOS tree (train/JPEGImages, train/Annotations), a folder "
        f"with images/ and masks/, or 'procedural'"
    )


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSequence:
    """File names of one video: every frame (natural order) and the annotated ones.

    ``annotated`` holds the positions (indices into ``frames``) that have a mask, ascending;
    ``annotation_files`` their PNG names. Names, not paths, keep a big dataset small to pickle
    into loader worker processes.
    """

    name: str
    image_dir: Path
    annotation_dir: Path
    frames: tuple[str, ...]
    annotated: tuple[int, ...]
    annotation_files: tuple[str, ...]
    #: object id -> annotated positions where it appears (from YouTube-VOS meta.json), or None.
    objects: dict[int, tuple[int, ...]] | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def _list_images(folder: Path) -> list[str]:
    names = [
        p.name
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(names, key=natural_key)


def _make_sequence(
    name: str, image_dir: Path, annotation_dir: Path, meta_objects: dict | None = None
) -> VideoSequence | None:
    if not image_dir.is_dir() or not annotation_dir.is_dir():
        return None
    frames = _list_images(image_dir)
    position = {Path(f).stem: i for i, f in enumerate(frames)}
    pngs = sorted(
        (
            p.name
            for p in annotation_dir.iterdir()
            if p.suffix.lower() == ".png" and not p.name.startswith(".")
        ),
        key=natural_key,
    )
    annotated = [(position[Path(p).stem], p) for p in pngs if Path(p).stem in position]
    if len(annotated) < len(pngs):
        log.warning(
            "%s: %d annotation(s) without a frame of the same name ignored",
            name,
            len(pngs) - len(annotated),
        )
    annotated.sort()
    objects = None
    if meta_objects is not None:
        objects = {}
        for key, info in meta_objects.items():
            found = tuple(sorted(position[s] for s in info.get("frames", []) if s in position))
            objects[int(key)] = found
    return VideoSequence(
        name=name,
        image_dir=image_dir,
        annotation_dir=annotation_dir,
        frames=tuple(frames),
        annotated=tuple(a for a, _ in annotated),
        annotation_files=tuple(p for _, p in annotated),
        objects=objects,
    )


class VideoDataset:
    """A list of :class:`VideoSequence` with lazy frame and label reading."""

    kind = "video"

    def __init__(self, root: Path, sequences: list[VideoSequence]) -> None:
        self.root = root
        self.sequences = sequences
        # sequence name -> True for DAVIS-2016 style 0/255 masks (see the module docstring).
        self._binary: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self.sequences)} sequences)"

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sequences]

    def read_frame(self, seq: VideoSequence, position: int) -> np.ndarray:
        """Frame ``position`` of ``seq``, RGB uint8 (H, W, 3)."""
        return read_image_rgb(seq.image_dir / seq.frames[position])

    def read_labels(
        self, seq: VideoSequence, position: int, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """The label map (H, W) uint8 of annotated frame ``position``: 0 bg, k object k, VOID.

        ``size`` (height, width) resizes it (nearest) when the PNG's size differs from the
        frame's, a defect real datasets have (an annotation one pixel narrower than its frame).
        """
        index = seq.annotated.index(position)
        path = seq.annotation_dir / seq.annotation_files[index]
        try:
            raw = read_label_png(path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise VostrackError(f"{path}: not a readable label PNG ({exc})") from None
        binary = self._binary.get(seq.name)
        if binary is None:
            values = np.flatnonzero(np.bincount(raw.reshape(-1), minlength=256))
            binary = bool(np.isin(values, (0, VOID)).all())
            self._binary[seq.name] = binary
        labels = (raw > 127).astype(np.uint8) if binary else raw
        if size is not None and labels.shape != tuple(size):
            log.debug(
                "%s: %dx%d annotation resized to its %dx%d frame",
                path,
                labels.shape[1],
                labels.shape[0],
                size[1],
                size[0],
            )
            labels = cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        return labels


def _filter(sequences: list[VideoSequence], exclude: Sequence[str]) -> list[VideoSequence]:
    excluded = set(exclude)
    kept = [s for s in sequences if s.name not in excluded]
    if len(sequences) - len(kept):
        log.info("excluded %d sequence(s)", len(sequences) - len(kept))
    return kept


class DavisDataset(VideoDataset):
    """A DAVIS tree (2016 0/255 or 2017 palette annotations).

    ``split`` names the image set to train on (``ImageSets/<year>/<split>.txt``, the highest
    year that has one). When the tree has an ``ImageSets`` folder but no list for ``split`` the
    dataset refuses (a tree with only ``val.txt`` is an evaluation tree); ``split=None`` takes
    every sequence. ``sequences`` picks sequences by name instead; ``exclude`` drops some.
    """

    kind = "davis"

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        sequences: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        resolution: str | None = None,
    ) -> None:
        root = Path(root)
        resolution = resolution or _davis_resolution(root)
        if resolution is None:
            raise VostrackError(
                f"{root}: not a DAVIS tree (no JPEGImages/480p and Annotations/480p)"
            )
        images = root / "JPEGImages" / resolution
        annotations = root / "Annotations" / resolution
        if not (images.is_dir() and annotations.is_dir()):
            raise VostrackError(
                f"{root}: no JPEGImages/{resolution} and Annotations/{resolution} "
                "(davis_resolution)"
            )
        available = sorted(
            p.name for p in annotations.iterdir() if p.is_dir() and (images / p.name).is_dir()
        )
        if sequences is not None:
            names = list(sequences)
        elif split is not None and (root / "ImageSets").is_dir():
            names = self._read_split(root, split)
        else:
            names = available
        missing = [n for n in names if n not in set(available)]
        if missing:
            raise VostrackError(
                f"{root}: sequence '{missing[0]}' has no image and annotation "
                f"folders ({len(missing)} missing)"
            )
        seqs = [_make_sequence(n, images / n, annotations / n) for n in names]
        seqs = _filter([s for s in seqs if s is not None and s.annotated], exclude)
        if not seqs:
            raise VostrackError(f"{root}: no DAVIS sequence with annotations to train on")
        super().__init__(root, seqs)
        log.info("DAVIS %s: %d sequences", root, len(seqs))

    @staticmethod
    def _read_split(root: Path, split: str) -> list[str]:
        years = sorted(
            (p for p in (root / "ImageSets").iterdir() if p.is_dir()),
            key=lambda p: natural_key(p.name),
            reverse=True,
        )
        for year in years:
            listing = year / f"{split}.txt"
            if listing.is_file():
                names = [
                    ln.strip()
                    for ln in listing.read_text(encoding="utf-8").splitlines()
                    if ln.strip()
                ]
                log.info("DAVIS %s: sequences of %s", root, listing)
                return list(dict.fromkeys(names))
        raise VostrackError(
            f"{root}: ImageSets has no {split}.txt (is this an evaluation "
            f"tree?); pass split=None to train on every sequence"
        )


class YouTubeVOSDataset(VideoDataset):
    """A YouTube-VOS tree (``ROOT/train`` or the split folder itself); ``meta.json``, when there,
    says which objects each annotated frame holds, so a reference frame with objects is found
    without reading masks. Sparse annotations are handled by the sampler."""

    kind = "youtube-vos"

    def __init__(
        self, root: str | Path, exclude: Sequence[str] = (), use_meta: bool = True
    ) -> None:
        root = Path(root)
        split = _youtube_split_dir(root)
        if split is None:
            raise VostrackError(
                f"{root}: not a YouTube-VOS tree (no train/JPEGImages and train/Annotations)"
            )
        meta_videos = None
        meta_file = split / "meta.json"
        if use_meta and meta_file.is_file():
            try:
                meta_videos = json.loads(meta_file.read_text(encoding="utf-8"))["videos"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: unreadable meta.json ignored (%s)", meta_file, exc)
        images, annotations = split / "JPEGImages", split / "Annotations"
        names = sorted(p.name for p in annotations.iterdir() if p.is_dir())
        seqs = []
        if not names and any(p.suffix.lower() == ".png" for p in annotations.iterdir()):
            # One video's folder (JPEGImages/*.jpg + Annotations/*.png): a one-video dataset.
            seq = _make_sequence(split.name, images, annotations)
            seqs = [seq] if seq is not None and seq.annotated else []
        for name in names:
            meta = None if meta_videos is None else meta_videos.get(name, {}).get("objects")
            seq = _make_sequence(name, images / name, annotations / name, meta)
            if seq is not None and seq.annotated:
                seqs.append(seq)
        seqs = _filter(seqs, exclude)
        if not seqs:
            raise VostrackError(f"{root}: no YouTube-VOS video with annotations to train on")
        super().__init__(root, seqs)
        log.info("YouTube-VOS %s: %d videos", root, len(seqs))


# --------------------------------------------------------------------------------------------
# Clip sampling
# --------------------------------------------------------------------------------------------


def pick_frames(
    positions: Sequence[int],
    count: int,
    max_gap: int,
    rng: np.random.Generator,
    first_gap: int | None = None,
) -> list[int] | None:
    """``count`` annotated positions in order, each within ``max_gap`` frames of the one before
    (``first_gap`` for the reference -> next step; default ``max_gap``), drawn uniformly among
    those in reach. Where annotations are sparser than ``max_gap``, the next annotated frame is
    taken. ``positions`` may be descending (a clip played backwards). None if there are fewer
    than ``count`` positions."""
    n = len(positions)
    if n < count:
        return None
    index = int(rng.integers(0, n - count + 1))
    picked = [index]
    for step in range(1, count):
        gap = (first_gap or max_gap) if step == 1 else max_gap
        current = positions[index]
        # Leave room for the frames still to come after this one.
        last = n - (count - step)
        reach = index + 1
        while reach + 1 <= last and abs(positions[reach + 1] - current) <= gap:
            reach += 1
        index = int(rng.integers(index + 1, reach + 1))
        picked.append(index)
    return [int(positions[i]) for i in picked]


@dataclass(frozen=True)
class VideoSamplingSettings:
    """How clips are drawn from a video dataset (a training config's ``video`` section).

    The reference may be up to ``reference_gap_scale`` times farther from the next frame than
    the largest gap between the other frames (at inference it is often far away).
    ``reverse`` is the probability of a clip played backwards. ``max_objects`` objects at most
    (a random subset of those visible on the reference with ``min_object_pixels``); the
    trainer's own ``max_objects`` then keeps at most that many of them. ``attempts`` draws before
    giving up on a clip with a visible object.

    Which videos: ``davis_split``, the image set of a DAVIS tree to train on
    (``ImageSets/<year>/<split>.txt``; null: every sequence of the tree), at
    ``davis_resolution`` (``480p``, ``Full-Resolution``; null: the tree's one, 480p when it has
    both); ``youtube_meta``: read a YouTube-VOS tree's ``meta.json`` for the objects of each
    annotated frame (false: find them in the masks).
    """

    reference_gap_scale: float = 2.0
    reverse: float = 0.5
    max_objects: int = 4
    min_object_pixels: int = 100
    attempts: int = 20
    davis_split: str | None = "train"
    davis_resolution: str | None = None
    youtube_meta: bool = True

    def __post_init__(self) -> None:
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not isinstance(self.youtube_meta, bool):
            raise ValueError(f"youtube_meta must be true or false, got {self.youtube_meta!r}")


@dataclass(frozen=True)
class VideoSamplingConfig(VideoSamplingSettings, ClipSourceConfig):
    """:class:`VideoSamplingSettings` with the run's frames per clip, augmentation and
    ``max_gap``: the largest frame distance between consecutive clip frames (an int, or a
    :class:`GapSchedule` to grow it over training)."""

    max_gap: int | GapSchedule = 5

    def __post_init__(self) -> None:
        ClipSourceConfig.__post_init__(self)
        VideoSamplingSettings.__post_init__(self)


class VideoClipSource:
    """Clips of ``num_frames`` frames from a :class:`VideoDataset`, augmented to the training
    size: a :class:`vostrack.data.clips.ClipSource`."""

    def __init__(
        self,
        dataset: VideoDataset,
        config: VideoSamplingConfig = VideoSamplingConfig(),
        name: str | None = None,
    ) -> None:
        self.dataset = dataset
        self.config = config
        self.name = name or f"{dataset.kind}:{Path(dataset.root).name}"
        self._gaps = GapSchedule.of(config.max_gap)
        # Every frame of a clip needs a mask: only sequences with enough annotated frames.
        self.sequences = [s for s in dataset.sequences if len(s.annotated) >= config.num_frames]
        if not self.sequences:
            raise VostrackError(
                f"{dataset.root}: no sequence has {config.num_frames} annotated "
                "frames (a clip needs a mask on each of its frames)"
            )
        if len(self.sequences) < len(dataset.sequences):
            log.info(
                "%s: %d sequence(s) with fewer than %d annotated frames skipped",
                dataset.root,
                len(dataset.sequences) - len(self.sequences),
                config.num_frames,
            )

    def __repr__(self) -> str:
        return f"VideoClipSource({self.dataset!r})"

    def max_gap(self, step: int) -> int:
        return self._gaps.at(step)

    def sample(self, rng: np.random.Generator, step: int = 0) -> Clip:
        cfg = self.config
        gap = self.max_gap(step)
        first_gap = max(gap, int(math.ceil(gap * cfg.reference_gap_scale)))
        sequences = self.sequences
        for _ in range(cfg.attempts):
            seq = sequences[int(rng.integers(len(sequences)))]
            positions = list(seq.annotated)
            if seq.objects is not None:
                # Start on a frame meta.json says has an object; the rest may follow any order.
                with_objects = set().union(*seq.objects.values()) if seq.objects else set()
                if not with_objects:
                    continue
            backwards = rng.random() < cfg.reverse
            if backwards:
                positions.reverse()
            picked = pick_frames(positions, cfg.num_frames, gap, rng, first_gap)
            if picked is None:
                continue
            if seq.objects is not None and picked[0] not in with_objects:
                continue
            clip = self._read_clip(seq, picked, rng)
            if clip is None:
                continue
            clip = augment_clip(clip, cfg.augment, rng)
            if clip.num_objects:
                return clip
        raise VostrackError(
            f"{self.dataset!r}: no clip with a visible object after {cfg.attempts} attempts"
        )

    def _read_clip(
        self, seq: VideoSequence, picked: list[int], rng: np.random.Generator
    ) -> Clip | None:
        cfg = self.config
        first = self.dataset.read_frame(seq, picked[0])
        size = first.shape[:2]
        ref_labels = self.dataset.read_labels(seq, picked[0], size)
        counts = np.bincount(ref_labels.reshape(-1), minlength=256)
        ids = [k for k in range(1, VOID) if counts[k] >= cfg.min_object_pixels]
        if not ids:
            return None
        if len(ids) > cfg.max_objects:
            ids = sorted(int(k) for k in rng.choice(ids, size=cfg.max_objects, replace=False))
        frames = [first]
        labels = [ref_labels]
        for position in picked[1:]:
            frame = self.dataset.read_frame(seq, position)
            if frame.shape[:2] != size:
                frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            frames.append(frame)
            labels.append(self.dataset.read_labels(seq, position, size))
        # Keep the chosen ids (renumbered 1..n); everything else becomes background, void stays.
        lut = np.zeros(256, np.uint8)
        lut[VOID] = VOID
        lut[np.array(ids)] = np.arange(1, len(ids) + 1, dtype=np.uint8)
        name = f"{seq.name}:" + ",".join(Path(seq.frames[p]).stem for p in picked)
        return Clip(np.stack(frames), lut[np.stack(labels)], len(ids), name=name, source=self.name)
