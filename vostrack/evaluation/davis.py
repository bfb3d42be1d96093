"""Scoring results on a DAVIS tree with the official semi-supervised protocol (J and F).

A DAVIS tree looks like::

    ROOT/JPEGImages/480p/<seq>/*.jpg
    ROOT/Annotations/480p/<seq>/*.png
    ROOT/ImageSets/<year>/<name>.txt      (optional: one sequence name per line)

and results are palette PNGs ``RESULTS/<seq>/<frame>.png`` whose index is the object id.
The protocol is the one of davis2017-evaluation: the first frame (given) and the last frame are
not scored, J and F are computed per object and frame, and summarised per object with
:func:`~vostrack.evaluation.metrics.statistics`; global means are taken over all objects.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vostrack.errors import VostrackError
from vostrack.evaluation.metrics import boundary_f, jaccard, statistics
from vostrack.io.atomic import atomic_write
from vostrack.io.palette import read_label_png

__all__ = [
    "DavisTree",
    "GroundTruth",
    "Measures",
    "ObjectScore",
    "SequenceScore",
    "Report",
    "CSV_HEADER",
    "check_results",
    "score_sequence",
    "score",
]

log = logging.getLogger(__name__)

ANNOTATIONS = Path("Annotations") / "480p"
IMAGES = Path("JPEGImages") / "480p"
IMAGE_SETS = Path("ImageSets")
VOID_LABEL = 255
CSV_HEADER = (
    "sequence",
    "object",
    "J_mean",
    "J_recall",
    "J_decay",
    "F_mean",
    "F_recall",
    "F_decay",
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_png(path: Path) -> np.ndarray:
    """A label PNG as its index map, or a one-line VostrackError saying why it can't be read."""
    try:
        with open(path, "rb") as handle:
            signature = handle.read(len(_PNG_SIGNATURE))
    except OSError as exc:
        raise VostrackError(f"cannot read {path}: {_one_line(exc)}") from exc
    # Pillow would happily decode a JPEG named .png and the scores would silently be off.
    if signature != _PNG_SIGNATURE:
        raise VostrackError(f"{path} is not a PNG file")
    try:
        return read_label_png(path)
    except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for broken files
        reason = _one_line(exc).removeprefix(f"{path}: ")
        raise VostrackError(f"{path} is not a readable label PNG: {reason}") from exc


@dataclass(frozen=True)
class GroundTruth:
    """The annotations of one sequence, split into objects.

    ``masks`` is ``(n_objects, T, H, W)`` bool, object ``i`` being id ``i + 1``; ``void`` is
    ``(T, H, W)`` bool for DAVIS-2017 style annotations and None for DAVIS-2016 style ones.
    """

    sequence: str
    frames: list[str]
    masks: np.ndarray
    void: np.ndarray | None

    @property
    def n_objects(self) -> int:
        return int(self.masks.shape[0])


@dataclass(frozen=True)
class _Layout:
    davis2016: bool
    n_objects: int


class DavisTree:
    """A DAVIS dataset folder (480p annotations and images, optional image sets)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.annotations_dir = self.root / ANNOTATIONS
        self.images_dir = self.root / IMAGES
        self._layouts: dict[str, _Layout] = {}

    def __repr__(self) -> str:
        return f"DavisTree({str(self.root)!r})"

    def image_set(self, year: str | int, name: str) -> Path:
        """Path of ``ImageSets/<year>/<name>.txt`` (not checked)."""
        return self.root / IMAGE_SETS / str(year) / f"{name}.txt"

    def available_sequences(self) -> list[str]:
        """Every sequence with both an annotation folder and an image folder, sorted."""
        if not self.annotations_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.annotations_dir.iterdir()
            if p.is_dir() and (self.images_dir / p.name).is_dir()
        )

    def sequences(
        self, set_file: str | Path | None = None, names: Sequence[str] | None = None
    ) -> list[str]:
        """The sequences to work on.

        Default: every available sequence. ``set_file`` restricts to (and orders by) the names it
        lists; ``names`` picks sequences by name (from the set file, when both are given).
        """
        available = self.available_sequences()
        if not available:
            raise VostrackError(
                f"no DAVIS sequences found: looked for folders in {self.annotations_dir} "
                f"with a matching folder in {self.images_dir}"
            )
        known = set(available)
        chosen = available
        if set_file is not None:
            chosen = self._read_set_file(Path(set_file), known)
        if names is not None:
            names = list(dict.fromkeys(names))
            if not names:
                raise VostrackError("no sequence names given")
            listed = set(chosen)
            for name in names:
                if name not in known:
                    raise VostrackError(self._unknown_message(name))
                if name not in listed:
                    raise VostrackError(f"sequence '{name}' is not listed in {set_file}")
            chosen = names
        return list(chosen)

    def _unknown_message(self, name: str) -> str:
        if (self.annotations_dir / name).is_dir():
            return f"sequence '{name}' has annotations but no image folder {self.images_dir / name}"
        return f"unknown sequence '{name}': there is no folder {self.annotations_dir / name}"

    def _read_set_file(self, set_file: Path, known: set[str]) -> list[str]:
        if not set_file.is_file():
            raise VostrackError(f"set file {set_file} does not exist")
        try:
            text = set_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VostrackError(f"cannot read set file {set_file}: {_one_line(exc)}") from exc
        names = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
        if not names:
            raise VostrackError(f"set file {set_file} lists no sequences")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise VostrackError(
                f"set file {set_file} lists {len(unknown)} sequence(s) not in the tree, first: "
                f"'{unknown[0]}' ({self._unknown_message(unknown[0])})"
            )
        return names

    def frame_names(self, seq: str) -> list[str]:
        """Annotation file stems of a sequence, sorted (``00000``, ``00001``, ...)."""
        folder = self.annotations_dir / seq
        if not folder.is_dir():
            raise VostrackError(self._unknown_message(seq))
        frames = sorted(p.stem for p in folder.glob("*.png") if p.is_file())
        if not frames:
            raise VostrackError(f"sequence '{seq}' has no annotation PNGs in {folder}")
        return frames

    def annotation_path(self, seq: str, frame: str) -> Path:
        return self.annotations_dir / seq / f"{frame}.png"

    def _layout(self, seq: str) -> _Layout:
        """How labels map to objects: needs every annotation frame, so it is scanned once."""
        if seq in self._layouts:
            return self._layouts[seq]
        frames = self.frame_names(seq)
        present = np.zeros(256, dtype=bool)
        first_max = 0
        for index, frame in enumerate(frames):
            labels = _read_png(self.annotation_path(seq, frame))
            present |= np.bincount(labels.reshape(-1), minlength=256) > 0
            if index == 0:
                first_max = int(labels[labels != VOID_LABEL].max(initial=0))
        values = set(np.flatnonzero(present).tolist())
        if values <= {0, VOID_LABEL}:
            # DAVIS-2016 masks are 0/255 with no void; the official reader would take 255 as
            # void and find no object at all.
            layout = _Layout(davis2016=True, n_objects=1)
        else:
            # As official: the object count is set by the first frame, 255 is void.
            layout = _Layout(davis2016=False, n_objects=first_max)
        if layout.n_objects == 0:
            raise VostrackError(
                f"sequence '{seq}': the first annotation {self.annotation_path(seq, frames[0])} "
                f"has no object"
            )
        self._layouts[seq] = layout
        return layout

    def n_objects(self, seq: str) -> int:
        return self._layout(seq).n_objects

    def iter_ground_truth(
        self, seq: str, frames: Iterable[str] | None = None
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        """Yield ``(frame, masks (n_objects, H, W) bool, void (H, W) bool or None)`` per frame.

        One frame at a time, so long sequences never need their whole stack in memory.
        """
        layout = self._layout(seq)
        ids = np.arange(1, layout.n_objects + 1, dtype=np.uint8)[:, None, None]
        for frame in self.frame_names(seq) if frames is None else frames:
            labels = _read_png(self.annotation_path(seq, frame))
            if layout.davis2016:
                yield frame, (labels > 0)[None], None
            else:
                yield frame, labels[None] == ids, labels == VOID_LABEL

    def read_ground_truth(self, seq: str) -> GroundTruth:
        """All annotations of a sequence as object masks (and void, for DAVIS-2017 style)."""
        frames = self.frame_names(seq)
        masks, voids = [], []
        for _, frame_masks, void in self.iter_ground_truth(seq, frames):
            masks.append(frame_masks)
            voids.append(void)
        stacked = np.stack(masks, axis=1)
        void_stack = None if voids[0] is None else np.stack(voids, axis=0)
        return GroundTruth(sequence=seq, frames=frames, masks=stacked, void=void_stack)


@dataclass(frozen=True)
class Measures:
    """The six DAVIS numbers of an object (or their mean over several objects)."""

    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    @property
    def jf(self) -> float:
        return (self.j_mean + self.f_mean) / 2

    @classmethod
    def mean_of(cls, items: Sequence[Measures]) -> Measures:
        columns = np.array(
            [[getattr(m, name) for name in _MEASURE_FIELDS] for m in items], dtype=np.float64
        ).reshape(-1, len(_MEASURE_FIELDS))
        if columns.shape[0] == 0:
            return cls(*([math.nan] * len(_MEASURE_FIELDS)))
        return cls(*(float(v) for v in columns.mean(axis=0)))

    def values(self) -> tuple[float, ...]:
        """In CSV column order: J mean, recall, decay, F mean, recall, decay."""
        return tuple(getattr(self, name) for name in _MEASURE_FIELDS)


_MEASURE_FIELDS = ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")


@dataclass(frozen=True)
class ObjectScore:
    sequence: str
    object_id: int
    measures: Measures


@dataclass(frozen=True)
class SequenceScore:
    """Means over the objects of one sequence."""

    sequence: str
    n_objects: int
    measures: Measures


@dataclass(frozen=True)
class Report:
    """Per-object scores, with per-sequence and global (over all objects) means."""

    objects: tuple[ObjectScore, ...]

    @property
    def sequences(self) -> list[SequenceScore]:
        groups: dict[str, list[Measures]] = {}
        for obj in self.objects:
            groups.setdefault(obj.sequence, []).append(obj.measures)
        return [
            SequenceScore(seq, len(items), Measures.mean_of(items)) for seq, items in groups.items()
        ]

    @property
    def overall(self) -> Measures:
        """Means over all objects: the official global numbers (J&F = ``overall.jf``)."""
        return Measures.mean_of([obj.measures for obj in self.objects])

    def table(self) -> str:
        rows = [(s.sequence, s.n_objects, s.measures) for s in self.sequences]
        overall = ("ALL", len(self.objects), self.overall)
        width = max([len("sequence")] + [len(r[0]) for r in rows])
        titles = (
            "objects",
            "J&F",
            "J-Mean",
            "F-Mean",
            "J-Recall",
            "F-Recall",
            "J-Decay",
            "F-Decay",
        )
        header = f"{'sequence':<{width}}  " + "  ".join(f"{t:>8}" for t in titles)

        def line(name: str, count: int, m: Measures) -> str:
            numbers = (m.jf, m.j_mean, m.f_mean, m.j_recall, m.f_recall, m.j_decay, m.f_decay)
            return f"{name:<{width}}  {count:>8}  " + "  ".join(f"{v:>8.3f}" for v in numbers)

        out = [header, "-" * len(header)]
        out += [line(*row) for row in rows]
        out += ["-" * len(header), line(*overall)]
        return "\n".join(out)

    def csv_rows(self) -> list[list[str]]:
        """The CSV content, header first, ``ALL`` (global means) last."""
        rows = [list(CSV_HEADER)]
        for obj in self.objects:
            rows.append(
                [obj.sequence, str(obj.object_id)] + [f"{v:.6f}" for v in obj.measures.values()]
            )
        rows.append(["ALL", ""] + [f"{v:.6f}" for v in self.overall.values()])
        return rows

    def write_csv(self, path: str | Path) -> None:
        """Write the per-object CSV atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(self.csv_rows())

    def as_dict(self) -> dict:
        """A JSON-ready summary (e.g. for :func:`vostrack.io.atomic.write_json`)."""

        def flat(m: Measures) -> dict:
            return {**asdict(m), "jf": m.jf}

        return {
            "global": {"n_objects": len(self.objects), **flat(self.overall)},
            "sequences": [
                {"sequence": s.sequence, "n_objects": s.n_objects, **flat(s.measures)}
                for s in self.sequences
            ],
            "objects": [
                {"sequence": o.sequence, "object": o.object_id, **flat(o.measures)}
                for o in self.objects
            ],
        }


ANNOTATED = ("first", "middle")


def given_frame(tree: DavisTree, seq: str, annotated: str = "first") -> str:
    """The annotated frame whose mask a run is given: the first (the official protocol) or the
    middle one (masks then propagate both ways)."""
    if annotated not in ANNOTATED:
        raise VostrackError(f"the annotated frame is first or middle, not {annotated!r}")
    frames = tree.frame_names(seq)
    return frames[0] if annotated == "first" else frames[len(frames) // 2]


def _scored_frames(tree: DavisTree, seq: str, annotated: str = "first") -> list[str]:
    """The official protocol scores every frame but the first (given) and the last; with the
    middle frame given, that frame is not scored either."""
    frames = tree.frame_names(seq)
    if len(frames) < 3:
        raise VostrackError(
            f"sequence '{seq}' has {len(frames)} annotated frame(s); scoring drops the first "
            f"and last frame, so it needs at least 3"
        )
    given = given_frame(tree, seq, annotated)
    return [f for f in frames[1:-1] if f != given]


def check_results(
    tree: DavisTree, results_dir: str | Path, sequences: Sequence[str], annotated: str = "first"
) -> None:
    """Fail fast, before any scoring, when a sequence folder or frame of the results is missing."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise VostrackError(f"results folder {results_dir} does not exist")
    for seq in sequences:
        folder = results_dir / seq
        if not folder.is_dir():
            raise VostrackError(f"results folder {results_dir} has no folder for sequence '{seq}'")
        frames = _scored_frames(tree, seq, annotated)
        missing = [f for f in frames if not (folder / f"{f}.png").is_file()]
        if missing:
            raise VostrackError(
                f"results for sequence '{seq}' miss {len(missing)} of {len(frames)} scored "
                f"frames, first missing: {folder / (missing[0] + '.png')}"
            )


def score_sequence(
    tree: DavisTree, results_dir: str | Path, seq: str, annotated: str = "first"
) -> list[ObjectScore]:
    """Score one sequence's results; one frame in memory at a time."""
    results_dir = Path(results_dir)
    frames = _scored_frames(tree, seq, annotated)
    n_objects = tree.n_objects(seq)
    ids = np.arange(1, n_objects + 1, dtype=np.uint8)[:, None, None]
    j = np.zeros((n_objects, len(frames)))
    f = np.zeros((n_objects, len(frames)))
    for t, (frame, gt_masks, _void) in enumerate(tree.iter_ground_truth(seq, frames)):
        path = results_dir / seq / f"{frame}.png"
        labels = _read_png(path)
        if labels.shape != gt_masks.shape[1:]:
            raise VostrackError(
                f"{path} is {labels.shape[1]}x{labels.shape[0]} but the ground truth of "
                f"sequence '{seq}' is {gt_masks.shape[2]}x{gt_masks.shape[1]}"
            )
        top = int(labels.max())
        if top > n_objects:
            raise VostrackError(
                f"results for sequence '{seq}' have object id {top} in {path.name} but the "
                f"ground truth has {n_objects} object(s) (result PNG index = object id)"
            )
        # Ids absent from the results are empty masks, as the official zero padding.
        pred_masks = labels[None] == ids
        # The official semi-supervised evaluation passes no void mask, so neither do we.
        for k in range(n_objects):
            j[k, t] = jaccard(gt_masks[k], pred_masks[k])
            f[k, t] = boundary_f(gt_masks[k], pred_masks[k])
    scores = [
        ObjectScore(seq, k + 1, Measures(*statistics(j[k]), *statistics(f[k])))
        for k in range(n_objects)
    ]
    log.info(
        "scored %s: %d object(s), %d frame(s), J&F %.3f",
        seq,
        n_objects,
        len(frames),
        Measures.mean_of([s.measures for s in scores]).jf,
    )
    return scores


def score(
    tree: DavisTree,
    results_dir: str | Path,
    sequences: Sequence[str] | None = None,
    annotated: str = "first",
) -> Report:
    """Score ``results_dir`` against the tree, semi-supervised protocol (``annotated``: the
    frame whose mask was given, first or middle; it is not scored).

    ``sequences`` defaults to every sequence of the tree (see :meth:`DavisTree.sequences`).
    """
    if sequences is None:
        sequences = tree.sequences()
    else:
        sequences = tree.sequences(names=list(sequences))
    check_results(tree, results_dir, sequences, annotated)
    objects: list[ObjectScore] = []
    for seq in sequences:
        objects.extend(score_sequence(tree, results_dir, seq, annotated))
    return Report(tuple(objects))
