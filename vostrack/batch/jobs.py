"""The videos of a batch, from a manifest (CSV or JSONL) or a dataset tree (DAVIS, YouTube-VOS).

Only the manifest's shape is checked here (columns, types, names): a problem is one line naming
the file and its line, and stops the batch before any work. Whether each input can be read is
the business of that video's run: a missing or broken file fails that video alone.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from vostrack.errors import VostrackError
from vostrack.io.frames import list_images, natural_key

CSV_COLUMNS = ("input", "mask", "mask_frame", "name", "fps")
JSONL_KEYS = ("input", "mask", "masks", "name", "fps")
# Separates several masks (and their frames) in one CSV cell.
LIST_SEPARATOR = ";"
# Files of OUT_ROOT itself, which no video may be named after.
RESERVED_NAMES = ("batch.json",)


@dataclass(frozen=True)
class VideoJob:
    """One video: its input, its masks (with their frames, or none: placed by name as
    ``segment --mask`` places them), the name of its output folder and its frame rate."""

    name: str
    input: Path
    masks: tuple[Path, ...]
    mask_frames: tuple[int, ...] = ()
    fps: float | None = None

    def identity(self) -> dict:
        """What batch.json records of the job, to tell a later run whether it is the same."""
        return {
            "input": str(self.input),
            "masks": [str(m) for m in self.masks],
            "mask_frames": list(self.mask_frames),
            "fps": self.fps,
        }


def read_jobs(path: Path) -> list[VideoJob]:
    """The videos of the manifest or tree at ``path``, or a one-line error."""
    path = Path(path)
    if not path.exists():
        raise VostrackError(f"jobs {path}: not found")
    entries = "lines"
    if path.is_dir():
        jobs, entries = _read_tree(path), "sequences"
    else:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            jobs = _read_csv(path)
        elif suffix in (".jsonl", ".ndjson"):
            jobs = _read_jsonl(path)
        else:
            raise VostrackError(
                f"jobs {path}: give a .csv or .jsonl manifest, or a DAVIS or YouTube-VOS folder"
            )
    if not jobs:
        raise VostrackError(f"jobs {path}: no videos")
    _check_unique([(j.name, i) for i, j in jobs], str(path), entries)
    return [j for _, j in jobs]


# ------------------------------------------------------------------------------ manifests
def _read_csv(path: Path) -> list[tuple[int, VideoJob]]:
    text = _read_text(path)
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None:
        raise VostrackError(f"jobs {path}: empty file (the first line names the columns)")
    header = [h.strip().lower() for h in header]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise VostrackError(
            f"jobs {path} line 1: unknown column {unknown[0]!r} "
            f"(columns: {', '.join(CSV_COLUMNS)}; input and mask are required)"
        )
    for required in ("input", "mask"):
        if required not in header:
            raise VostrackError(f"jobs {path} line 1: no {required!r} column")
    if len(set(header)) != len(header):
        raise VostrackError(f"jobs {path} line 1: a column is named twice")
    base = _base(path)
    jobs = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise VostrackError(
                f"jobs {path} line {line}: {len(row)} fields, the header has {len(header)}"
            )
        cells = {k: v.strip() for k, v in zip(header, row)}
        where = f"jobs {path} line {line}"
        masks = [m.strip() for m in cells["mask"].split(LIST_SEPARATOR) if m.strip()]
        frames_text = cells.get("mask_frame", "")
        frames = (
            [_int(f.strip(), where, "mask_frame") for f in frames_text.split(LIST_SEPARATOR)]
            if frames_text
            else []
        )
        fps = _fps(cells["fps"], where) if cells.get("fps") else None
        jobs.append(
            (line, _job(where, base, cells["input"], masks, frames, cells.get("name") or None, fps))
        )
    return jobs


def _read_jsonl(path: Path) -> list[tuple[int, VideoJob]]:
    base = _base(path)
    jobs = []
    for line, text in enumerate(_read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        where = f"jobs {path} line {line}"
        try:
            row = json.loads(text)
        except ValueError as exc:
            raise VostrackError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise VostrackError(f"{where}: give one JSON object per line")
        unknown = [k for k in row if k not in JSONL_KEYS]
        if unknown:
            raise VostrackError(
                f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(JSONL_KEYS)})"
            )
        if ("mask" in row) == ("masks" in row):
            raise VostrackError(f"{where}: give 'mask' (one path) or 'masks' (a list), once")
        masks, frames = _jsonl_masks(row.get("masks", [row.get("mask")]), where)
        name = row.get("name")
        if name is not None and not isinstance(name, str):
            raise VostrackError(f"{where}: 'name' must be a string")
        fps = row.get("fps")
        if fps is not None:
            fps = _fps(fps, where)
        jobs.append((line, _job(where, base, row.get("input"), masks, frames, name, fps)))
    return jobs


def _jsonl_masks(items: object, where: str) -> tuple[list[str], list[int]]:
    """``["a.png", ...]`` or ``[{"path": "a.png", "frame": 0}, ...]`` (a frame on every mask,
    or on none)."""
    if not isinstance(items, list) or not items:
        raise VostrackError(f"{where}: 'masks' must be a non-empty list")
    masks, frames = [], []
    for item in items:
        if isinstance(item, dict):
            extra = [k for k in item if k not in ("path", "frame")]
            if extra or not isinstance(item.get("path"), str):
                raise VostrackError(
                    f"{where}: a mask object holds 'path' (a string) and optionally 'frame'"
                )
            masks.append(item["path"])
            if "frame" in item:
                frames.append(_int(item["frame"], where, "frame"))
        elif isinstance(item, str):
            masks.append(item)
        else:
            raise VostrackError(f"{where}: a mask is a path string or {{'path', 'frame'}} object")
    return masks, frames


def _job(
    where: str,
    base: Path,
    input_text: object,
    masks: list[str],
    frames: list[int],
    name: str | None,
    fps: float | None,
) -> VideoJob:
    if not isinstance(input_text, str) or not input_text.strip():
        raise VostrackError(f"{where}: no input (a video file or a frame folder)")
    if not masks:
        raise VostrackError(f"{where}: no mask (the objects on one frame)")
    if frames and len(frames) != len(masks):
        raise VostrackError(
            f"{where}: {len(frames)} mask frames for {len(masks)} masks; give one per mask, "
            "or none (each mask then goes to the frame it is named after, else frame 0)"
        )
    input_path = _resolve(base, input_text.strip())
    if name is None:
        name = input_path.stem if input_path.suffix and not input_path.is_dir() else input_path.name
        check_name(name, f"{where}: the name taken from the input, {name!r},", hint=True)
    else:
        check_name(name, f"{where}: name {name!r}")
    return VideoJob(
        name=name,
        input=input_path,
        masks=tuple(_resolve(base, m) for m in masks),
        mask_frames=tuple(frames),
        fps=fps,
    )


def check_name(name: str, what: str, hint: bool = False) -> None:
    """A name becomes a folder of OUT_ROOT: one plain component, no hidden file, nothing that
    reaches outside it."""
    problem = None
    if not name or name.strip() != name:
        problem = "is empty or starts or ends with a space"
    elif name.startswith("."):
        problem = "starts with a dot"
    elif any(c in name for c in ("/", "\\", "\0")) or any(ord(c) < 32 for c in name):
        problem = "holds a slash or a control character"
    elif name.lower() in RESERVED_NAMES:
        problem = f"is the batch's own {name}"
    if problem:
        raise VostrackError(
            f"{what} {problem}; "
            + ("give a 'name'" if hint else "a name is one plain folder name, like clip_01")
        )


def _check_unique(names: list[tuple[str, int]], where: str, entries: str) -> None:
    seen: dict[str, int] = {}
    for name, line in names:
        key = name.casefold()  # one folder on a case-insensitive file system
        if key in seen:
            raise VostrackError(
                f"jobs {where}: two videos are named {name!r} ({entries} {seen[key]} and {line}); "
                "names must be unique: give a 'name'"
            )
        seen[key] = line


def _base(path: Path) -> Path:
    """Relative paths of a manifest are relative to its folder (absolute: runs and workers
    see the same path whatever their working folder)."""
    return Path(os.path.abspath(path)).parent


def _resolve(base: Path, text: str) -> Path:
    return Path(os.path.abspath(base / os.path.expanduser(text)))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise VostrackError(f"jobs {path}: not UTF-8 text") from None
    except OSError as exc:
        raise VostrackError(f"jobs {path}: cannot read it ({exc.strerror})") from None


def _int(value: object, where: str, key: str) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise VostrackError(f"{where}: {key} {value!r} is not a frame index (0, 1, 2, ...)")
    return value


def _fps(value: object, where: str) -> float:
    try:
        fps = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        fps = math.nan
    if not math.isfinite(fps) or fps <= 0:
        raise VostrackError(f"{where}: fps {value!r} is not a positive number")
    return fps


# ---------------------------------------------------------------------------------- trees
def _read_tree(root: Path) -> list[tuple[int, VideoJob]]:
    """DAVIS (``JPEGImages/480p/<seq>``, ``Annotations/480p/<seq>``: the first annotation is
    the mask) or YouTube-VOS (``JPEGImages/<id>``, ``Annotations/<id>``: every annotation is a
    mask, at the frame it is named after: objects may appear later)."""
    davis = root / "JPEGImages" / "480p"
    if davis.is_dir():
        return _tree_jobs(root, davis, root / "Annotations" / "480p", first_only=True)
    if (root / "JPEGImages").is_dir():
        return _tree_jobs(root, root / "JPEGImages", root / "Annotations", first_only=False)
    raise VostrackError(
        f"jobs {root}: a folder of jobs is a DAVIS tree (JPEGImages/480p/<seq>, "
        "Annotations/480p/<seq>) or a YouTube-VOS tree (JPEGImages/<id>, Annotations/<id>)"
    )


def _tree_jobs(
    root: Path, frames_root: Path, masks_root: Path, first_only: bool
) -> list[tuple[int, VideoJob]]:
    kind = "DAVIS" if first_only else "YouTube-VOS"
    if not masks_root.is_dir():
        raise VostrackError(f"jobs {root}: {kind} tree without {masks_root.relative_to(root)}")
    sequences = sorted(
        (p for p in frames_root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )
    jobs = []
    for index, folder in enumerate(sequences, start=1):
        annotations = masks_root / folder.name
        masks = (
            [p for p in list_images(annotations) if p.suffix.lower() == ".png"]
            if annotations.is_dir()
            else []
        )
        if not masks:
            raise VostrackError(
                f"jobs {root}: sequence {folder.name} has no annotation PNG in "
                f"{annotations.relative_to(root)}"
            )
        check_name(folder.name, f"jobs {root}: sequence name {folder.name!r}")
        base = Path(os.path.abspath(root))
        chosen = masks[:1] if first_only else masks
        jobs.append(
            (
                index,
                VideoJob(
                    name=folder.name,
                    input=base / folder.relative_to(root),
                    masks=tuple(base / m.relative_to(root) for m in chosen),
                ),
            )
        )
    return jobs
