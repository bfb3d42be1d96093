"""Annotation masks: reading the formats users have, and placing each mask on its frame.

Three formats are accepted and turned into one thing, a uint8 label map (0 = background,
k = object k):
- palette PNG (DAVIS and others): the palette *index* is the object id, whatever its colour;
- 8- or 16-bit grayscale: a mask whose only non-zero value is the largest (255, 65535) is one
  object (id 1); otherwise each value is an object id (0/1/2/...);
- RGB colour-coded: each distinct non-black colour is one object; the same colour gets the same
  id in every mask of a run, and the mapping is reported.

Void, the DAVIS convention that `vostrack validate` follows too: value 255 (in an RGB mask,
the DAVIS palette's colour of index 255) marks pixels of unknown label, not an object, unless it
is the mask's only non-zero value (a 0/255 binary mask, as DAVIS-2016 ships). Void pixels are
read as background, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from vostrack.errors import VostrackError
from vostrack.io.frames import FrameSource, list_images
from vostrack.io.palette import DAVIS_PALETTE

log = logging.getLogger(__name__)

# More distinct values than this is not an id map but a lossy or anti-aliased picture.
MAX_OBJECTS_IN_MASK = 64
SIZE_TOLERANCE_PX = 2
VOID = 255


@dataclass(frozen=True)
class Annotation:
    """The label map given for one frame."""

    frame: int
    labels: np.ndarray  # (H, W) uint8
    sources: tuple[Path, ...]

    @property
    def object_ids(self) -> list[int]:
        return [int(v) for v in np.unique(self.labels) if v != 0]


@dataclass
class MaskReader:
    """Reads mask files into label maps; remembers colour -> id across the files of one run."""

    colour_ids: dict[tuple[int, int, int], int] = field(default_factory=dict)

    def read(self, path: str | Path) -> np.ndarray:
        path = Path(path)
        if not path.exists():
            raise VostrackError(f"mask not found: {path}")
        if path.is_dir():
            raise VostrackError(f"mask {path} is a folder; give an image file")
        try:
            with Image.open(path) as image:
                image.load()
                return self._labels(image, path)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise VostrackError(
                f"mask {path} is not a readable image ({exc.__class__.__name__})"
            ) from None

    def _labels(self, image: Image.Image, path: Path) -> np.ndarray:
        if image.mode == "P":
            return _without_void(np.array(image, dtype=np.uint8), path)
        if image.mode == "1":
            return np.array(image, dtype=np.uint8)
        if image.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            return self._from_gray(np.array(image), path)
        if image.mode == "LA":
            return self._from_gray(np.array(image.getchannel("L")), path)
        rgba = np.array(image.convert("RGBA"))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 0  # transparent pixels are background
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return self._from_gray(rgb[..., 0], path)
        return self._from_colours(rgb, path)

    def _from_gray(self, gray: np.ndarray, path: Path) -> np.ndarray:
        values = np.unique(gray)
        nonzero = values[values != 0]
        if len(nonzero) > MAX_OBJECTS_IN_MASK:
            # A JPEG or anti-aliased mask: its values are not ids. One object is the only
            # reading that makes sense, so threshold at mid-grey and say so.
            top = 65535 if gray.dtype.itemsize > 1 and nonzero.max() > 255 else 255
            log.warning(
                "%s has %d grey levels; reading it as one object (threshold at half of %d)",
                path.name,
                len(nonzero),
                top,
            )
            return (gray >= (top + 1) // 2).astype(np.uint8)
        if len(nonzero) == 1 and nonzero[0] in (255, 65535):  # a binary mask, 8 or 16 bits
            return (gray == nonzero[0]).astype(np.uint8)
        if nonzero.size and nonzero.max() > 255:
            raise VostrackError(
                f"mask {path}: object ids above 254 are not supported (found {int(nonzero.max())})"
            )
        return _without_void(gray.astype(np.uint8), path)

    def _from_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        packed = (
            (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        )
        colours, first_index, inverse = np.unique(
            packed.reshape(-1), return_index=True, return_inverse=True
        )
        nonblack = [c for c in colours if c != 0]
        if len(nonblack) > MAX_OBJECTS_IN_MASK:
            raise VostrackError(
                f"mask {path} has {len(nonblack)} colours; a colour-coded mask needs one flat "
                "colour per object (no anti-aliasing or JPEG compression)"
            )
        ids = np.zeros(len(colours), dtype=np.uint8)
        void = _VOID_CODE if len(nonblack) > 1 else None  # only that colour: it is an object
        if void is not None and void in colours:
            count = int((packed == void).sum())
            log.warning(
                "%s: %d pixels have the DAVIS void colour #e0e0c0 (index 255); they "
                "are read as background",
                path.name,
                count,
            )
        # New colours get ids in the order they first appear in the image (raster order).
        for k in np.argsort(first_index):
            code = int(colours[k])
            if code == 0 or code == void:
                continue
            colour = (code >> 16, (code >> 8) & 255, code & 255)
            if colour not in self.colour_ids:
                if len(self.colour_ids) >= 255:
                    raise VostrackError(f"mask {path}: more than 255 objects")
                self.colour_ids[colour] = len(self.colour_ids) + 1
                log.info(
                    "%s: colour #%02x%02x%02x -> object %d",
                    path.name,
                    *colour,
                    self.colour_ids[colour],
                )
            ids[k] = self.colour_ids[colour]
        return ids[inverse].reshape(packed.shape)


_VOID_RGB = DAVIS_PALETTE[VOID]
_VOID_CODE = (int(_VOID_RGB[0]) << 16) | (int(_VOID_RGB[1]) << 8) | int(_VOID_RGB[2])


def _without_void(labels: np.ndarray, path: Path) -> np.ndarray:
    """Void (255) read as background, unless it is the only label (a 0/255 binary mask)."""
    void = labels == VOID
    if not void.any():
        return labels
    if not ((labels != 0) & ~void).any():
        return void.astype(np.uint8)
    log.warning(
        "%s: %d void pixels (value %d) are read as background", path.name, int(void.sum()), VOID
    )
    return np.where(void, 0, labels).astype(np.uint8)


def fit_to_frame(labels: np.ndarray, source: FrameSource, path: Path) -> np.ndarray:
    """Resize a mask that is off by a few pixels (nearest neighbour); refuse anything else."""
    height, width = labels.shape
    if (height, width) == source.size:
        return labels
    if (
        abs(height - source.height) <= SIZE_TOLERANCE_PX
        and abs(width - source.width) <= SIZE_TOLERANCE_PX
    ):
        log.warning(
            "mask %s is %dx%d, frames are %dx%d; resizing it (nearest neighbour)",
            path,
            width,
            height,
            source.width,
            source.height,
        )
        return cv2.resize(labels, (source.width, source.height), interpolation=cv2.INTER_NEAREST)
    raise VostrackError(
        f"mask {path} is {width}x{height} but the frames are {source.width}x{source.height}"
    )


def frame_of_mask(path: Path, source: FrameSource) -> int | None:
    """The frame a mask file is named after (``00012.png`` -> frame 12), or None."""
    stem = path.stem
    if stem in source.frame_names:
        return source.frame_names.index(stem)
    if stem.isdigit():
        value = int(stem)
        if source.kind == "video":
            return value
        for index, name in enumerate(source.frame_names):
            if name.isdigit() and int(name) == value:
                return index
    return None


def expand_mask_paths(paths: Sequence[str | Path]) -> list[Path]:
    """A folder given as a mask stands for every image in it (each named after its frame)."""
    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = list_images(path)
            if not files:
                raise VostrackError(f"mask folder {path} holds no images")
            expanded.extend(files)
        else:
            expanded.append(path)
    return expanded


def load_annotations(
    mask_paths: Sequence[str | Path],
    mask_frames: Sequence[int],
    source: FrameSource,
    reader: MaskReader | None = None,
    default_frame: int = 0,
) -> list[Annotation]:
    """Read every mask, place it on its frame, and merge masks given for the same frame.

    Placement: ``mask_frames`` pairs with the masks in order (one value may serve a single
    mask); without it a mask named like a frame goes to that frame, any other to
    ``default_frame`` (the first frame segmented).
    """
    reader = reader or MaskReader()
    paths = expand_mask_paths(mask_paths)
    if not paths:
        raise VostrackError("no mask given: use --mask PATH (the objects on one frame)")
    if mask_frames and len(mask_frames) != len(paths):
        raise VostrackError(
            f"{len(mask_frames)} --mask-frame values for {len(paths)} masks; "
            "give one per mask, in the same order"
        )
    by_frame: dict[int, Annotation] = {}
    for i, path in enumerate(paths):
        frame = mask_frames[i] if mask_frames else frame_of_mask(path, source)
        frame = default_frame if frame is None else frame
        if not 0 <= frame < source.num_frames:
            raise VostrackError(
                f"mask {path} is for frame {frame}, but the input has "
                f"{source.num_frames} frames (0..{source.num_frames - 1})"
            )
        labels = fit_to_frame(reader.read(path), source, path)
        if not labels.any():
            raise VostrackError(f"mask {path} holds no object (every pixel is background)")
        if frame in by_frame:
            labels = _merge_same_frame(by_frame[frame], labels, path)
            by_frame[frame] = Annotation(frame, labels, by_frame[frame].sources + (path,))
        else:
            by_frame[frame] = Annotation(frame, labels, (path,))
    return [by_frame[f] for f in sorted(by_frame)]


def _merge_same_frame(previous: Annotation, labels: np.ndarray, path: Path) -> np.ndarray:
    """Two masks of one frame may split its objects between them, but must not contradict."""
    both = (previous.labels > 0) & (labels > 0)
    clash = both & (previous.labels != labels)
    shared_ids = set(previous.object_ids) & set(int(v) for v in np.unique(labels) if v)
    differs = [k for k in shared_ids if not np.array_equal(previous.labels == k, labels == k)]
    if clash.any() or differs:
        other = ", ".join(str(p) for p in previous.sources)
        what = (
            f"object {sorted(differs)[0]} differs"
            if differs
            else f"{int(clash.sum())} pixels get different objects"
        )
        raise VostrackError(
            f"masks {other} and {path} are both for frame {previous.frame} but disagree ({what})"
        )
    return np.where(labels > 0, labels, previous.labels).astype(np.uint8)
