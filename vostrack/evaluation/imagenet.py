"""ImageNet-2012 validation top-1 / top-5 of a backbone's classifier (``vostrack
validate-backbone``): a check that a backbone and its weights are the ones published.

Class order
-----------
Every model here numbers the 1000 classes in *sorted-synset order*: class ``k`` is the ``k``-th
WordNet id (``n01440764`` = 0 tench, ..., ``n02124075`` = 285 Egyptian cat, ...,
``n07920052`` = 967 espresso, ..., ``n15075141`` = 999 toilet tissue) when the 1000 wnids are
sorted as strings. The ILSVRC2012 devkit numbers them differently (``ILSVRC2012_ID`` 1..1000,
the order of ``meta.mat``: 1 = n02119789 kit fox, ...), so its ground truth must be converted.

Ground truth (``--labels``), detected from the file's format
------------------------------------------------------------
(a) *devkit*: ``ILSVRC2012_validation_ground_truth.txt``, one 1-based ``ILSVRC2012_ID`` per line,
    line ``i`` for ``ILSVRC2012_val_{i:08d}.JPEG``. Needs ``--synsets``: the devkit's synset list
    in ILSVRC2012_ID order, either one wnid per line (line ``i`` = ILSVRC2012_ID ``i``) or a
    plain-text export of ``meta.mat`` / ``map_clsloc.txt`` whose lines carry the ID next to the
    wnid (``1 n02119789 kit fox`` or ``n02119789 1 kit_fox``; IDs above 1000, the non-leaf
    synsets of ``meta.mat``, are ignored). The ID of an image becomes the sorted position of its
    wnid among the 1000. A list that is already sorted is refused: it is not the devkit order.
(b) *sorted*: two columns ``ILSVRC2012_val_00000001.JPEG 65``, the image's file name and its
    0-based class in sorted-synset order (the widely used ``val.txt`` of Caffe and others).
    Labels are matched to images by file name.

Images (``--data``)
-------------------
Either flat (``ILSVRC2012_val_00000001.JPEG`` ...; ``--labels`` required) or one folder per
synset (``n01440764/*.JPEG`` ...), where the folder names the class and ``--labels`` is optional
(if given, it must agree with the folders). A folder's class is its wnid's sorted position among
the 1000 ILSVRC2012 synsets: those of ``--synsets`` if given, else the folder names themselves,
which then must be all 1000. Either way the label file must have exactly one label per image.
Images are taken in sorted file-name order (``--limit`` keeps the first N).

Evaluation preprocessing (each backbone's official eval, reproduced in numpy)
-----------------------------------------------------------------------------
* ``resnet50_v2`` (tensorflow/models ``official/resnet`` r1.8 ``imagenet_preprocessing.py``):
  decode, resize so that the short side is 256 (the other side ``int(side * 256 / short)``) with
  TF1 ``resize_images(BILINEAR, align_corners=False)``, central 224 x 224 crop (top/left offset
  ``(size - 224) // 2``), subtract the channel means (the network's own ``normalize_images``).
  Its 1001 logits have class 0 = background: it is dropped, so logit ``k + 1`` is class ``k``.
  Published top-1 of the r1.8 checkpoint (``resnet_v2_imagenet_checkpoint``): 76.47 %.
* ``efficientnet_lite2`` (tensorflow/tpu ``efficientnet/preprocessing.py`` of the Lite release,
  ``CROP_PADDING = 32``): the central square of side ``int(260 / 292 * short side)`` (offset
  ``(size - crop + 1) // 2``), resized to 260 x 260 with TF1 ``resize_bicubic`` (legacy, not
  half-pixel), then the module's ``normalize_images`` ((x - 127) / 128 on 0..255).

The TF1 resizers are reimplemented here exactly (legacy pixel mapping, TF's coefficient tables,
float32 results without rounding) and checked against TensorFlow by the tests; OpenCV's and
PIL's resizers use other pixel mappings/kernels and move the top-1 by a few tenths. The only
known difference from the official pipelines is the JPEG decoder: PIL's libjpeg with the
accurate integer DCT, where TF's ``decode_jpeg`` defaults to the fast one (differences of about
one grey level).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vostrack.errors import VostrackError

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "NUM_CLASSES",
    "EvalSpec",
    "LabelsFile",
    "Result",
    "ValSet",
    "efficientnet_eval_crop",
    "check_weights",
    "eval_spec",
    "evaluate",
    "load_classifier",
    "load_val_set",
    "read_labels",
    "read_synsets",
    "resize_bicubic_tf1",
    "resize_bilinear_tf1",
    "resnet_v2_eval_crop",
]

NUM_CLASSES = 1000
BACKBONES = ("efficientnet_lite2", "resnet50_v2")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_WNID = re.compile(r"n\d{8}")
_OFFICIAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.jpe?g", re.IGNORECASE)


# ------------------------------------------------------------------------------ label files
def _lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of the non-empty, non-comment lines of ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise VostrackError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise VostrackError(f"{what} file {path} is a folder") from None
    except OSError as exc:
        raise VostrackError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1)]
    rows = [(n, tokens) for n, tokens in rows if tokens and not tokens[0].startswith("#")]
    if not rows:
        raise VostrackError(f"{what} file {path} is empty")
    return rows


def read_synsets(path: Path) -> list[str]:
    """The 1000 wnids of a devkit synset list, in ILSVRC2012_ID order (item ``i`` = ID ``i+1``).

    Lines are one wnid each (line order = ID order), or carry the ID next to the wnid
    (``1 n02119789 ...`` or ``n02119789 1 ...``); IDs above 1000 are ignored.
    """
    rows = _lines(path, "synsets")
    entries: list[tuple[int | None, str]] = []
    for n, tokens in rows:
        wnids = [i for i, t in enumerate(tokens[:3]) if _WNID.fullmatch(t)]
        if not wnids:
            raise VostrackError(
                f"{path}: line {n}: no WordNet id (n########) in {' '.join(tokens)[:60]!r}"
            )
        w = wnids[0]
        ids = [t for i, t in enumerate(tokens[:2]) if i != w and t.isdigit()]
        entries.append((int(ids[0]) if ids else None, tokens[w]))
    with_ids = sum(e[0] is not None for e in entries)
    if with_ids and with_ids != len(entries):
        raise VostrackError(f"{path}: some lines give an ILSVRC2012_ID and some do not")
    if with_ids:
        by_id: dict[int, str] = {}
        for ident, wnid in entries:
            if ident in by_id and by_id[ident] != wnid:
                raise VostrackError(f"{path}: ILSVRC2012_ID {ident} given twice")
            by_id[ident] = wnid
        missing = [i for i in range(1, NUM_CLASSES + 1) if i not in by_id]
        if missing:
            raise VostrackError(
                f"{path}: no synset for ILSVRC2012_ID {missing[0]} "
                f"({len(missing)} of 1..{NUM_CLASSES} missing)"
            )
        wnids = [by_id[i] for i in range(1, NUM_CLASSES + 1)]
    else:
        wnids = [wnid for _, wnid in entries]
        if len(wnids) != NUM_CLASSES:
            raise VostrackError(f"{path} lists {len(wnids)} synsets, not {NUM_CLASSES}")
    if len(set(wnids)) != NUM_CLASSES:
        seen: set[str] = set()
        dup = next(w for w in wnids if w in seen or seen.add(w))
        raise VostrackError(f"{path}: synset {dup} is listed twice")
    return wnids


@dataclasses.dataclass(frozen=True)
class LabelsFile:
    """A ground-truth file: ``kind`` "devkit" (``values`` = 1-based ILSVRC2012_IDs, line order)
    or "sorted" (``values`` = 0-based sorted-synset classes of the images ``names``)."""

    path: Path
    kind: str
    values: tuple[int, ...]
    names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.values)


def read_labels(path: Path) -> LabelsFile:
    """Read a ground-truth file, telling its format from its columns (see the module doc)."""
    rows = _lines(path, "labels")
    widths = {len(tokens) for _, tokens in rows}
    if widths == {1}:
        values = []
        for n, (token,) in rows:
            if not token.isdigit():
                raise VostrackError(
                    f"{path}: line {n}: {token!r} is not an ILSVRC2012_ID "
                    "(a devkit ground truth has one integer per line)"
                )
            value = int(token)
            if not 1 <= value <= NUM_CLASSES:
                raise VostrackError(
                    f"{path}: line {n}: ILSVRC2012_ID {value} outside "
                    f"1..{NUM_CLASSES} (a devkit ground truth is 1-based)"
                )
            values.append(value)
        return LabelsFile(Path(path), "devkit", tuple(values))
    if widths == {2}:
        names, values, seen = [], [], set()
        for n, (name, token) in rows:
            if not token.lstrip("-").isdigit():
                raise VostrackError(f"{path}: line {n}: {token!r} is not a class index")
            value = int(token)
            if not 0 <= value < NUM_CLASSES:
                raise VostrackError(
                    f"{path}: line {n}: label {value} outside 0..{NUM_CLASSES - 1}"
                    " (a two-column labels file is 0-based, sorted-synset order)"
                )
            name = Path(name).name
            if name in seen:
                raise VostrackError(f"{path}: line {n}: {name} is listed twice")
            seen.add(name)
            names.append(name)
            values.append(value)
        return LabelsFile(Path(path), "sorted", tuple(values), tuple(names))
    raise VostrackError(
        f"{path}: expected one ILSVRC2012_ID per line (devkit ground truth) or "
        "two columns 'IMAGE LABEL' (0-based, sorted-synset order) on every line"
    )


# ---------------------------------------------------------------------------------- val set
@dataclasses.dataclass(frozen=True)
class ValSet:
    """Images in evaluation order and their classes (0-based, sorted-synset order)."""

    paths: tuple[Path, ...]
    labels: np.ndarray
    layout: str  # "flat" or "synset folders"

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, limit: int | None) -> ValSet:
        if limit is None or limit >= len(self):
            return self
        return ValSet(self.paths[:limit], self.labels[:limit], self.layout)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _sorted_index(wnids: Sequence[str]) -> dict[str, int]:
    return {wnid: k for k, wnid in enumerate(sorted(wnids))}


def _devkit_to_sorted(labels: LabelsFile, synsets: Path | None) -> np.ndarray:
    if synsets is None:
        raise VostrackError(
            f"{labels.path} is a devkit ground truth (one ILSVRC2012_ID per "
            "line, devkit class order): give --synsets, the devkit's synset list "
            "in ILSVRC2012_ID order, to convert it to the models' order"
        )
    wnids = read_synsets(synsets)
    if wnids == sorted(wnids):
        raise VostrackError(
            f"{synsets} lists the synsets in sorted order, not in the devkit's "
            "ILSVRC2012_ID order (meta.mat: 1 = n02119789 kit fox, ...)"
        )
    index = _sorted_index(wnids)
    id_to_class = np.array([-1] + [index[w] for w in wnids], np.int64)
    return id_to_class[np.array(labels.values, np.int64)]


def _check_count(labels: LabelsFile, data: Path, count: int) -> None:
    if len(labels) != count:
        raise VostrackError(
            f"{labels.path} has {len(labels)} labels but {data} has {count} "
            "images: they must be the same images"
        )


def _labels_of(
    labels: LabelsFile, classes: np.ndarray, paths: Sequence[Path], data: Path, positional_ok: bool
) -> np.ndarray:
    """The class of each image from a labels file (``classes``: its values in sorted order)."""
    _check_count(labels, data, len(paths))
    if labels.kind == "sorted":
        by_name = dict(zip(labels.names, classes))
        missing = [p.name for p in paths if p.name not in by_name]
        if missing:
            raise VostrackError(
                f"{labels.path} has no label for {missing[0]} "
                f"({len(missing)} images of {data} have none)"
            )
        return np.array([by_name[p.name] for p in paths], np.int64)
    # devkit: line i is ILSVRC2012_val_{i:08d}; other names are taken in sorted order.
    numbers = [_OFFICIAL_NAME.fullmatch(p.name) for p in paths]
    if all(numbers):
        order = np.array([int(m.group(1)) for m in numbers], np.int64)
        bad = [p.name for p, k in zip(paths, order) if not 1 <= k <= len(labels)]
        if bad:
            raise VostrackError(f"{bad[0]} has no line in {labels.path} ({len(labels)} lines)")
        if len(set(order.tolist())) != len(order):
            raise VostrackError(f"{data} has two images with the same number")
        return classes[order - 1]
    if any(numbers) or not positional_ok:
        raise VostrackError(
            f"with a devkit ground truth the images must all be named "
            f"ILSVRC2012_val_########.JPEG ({paths[numbers.index(None)].name} "
            "is not)"
        )
    return classes


def load_val_set(data: Path, labels: Path | None = None, synsets: Path | None = None) -> ValSet:
    """The images of ``data`` (flat or one folder per synset) with their sorted-synset classes."""
    data = Path(data)
    if not data.exists():
        raise VostrackError(f"ImageNet val folder not found: {data}")
    if not data.is_dir():
        raise VostrackError(f"--data {data} is not a folder")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    synset_folders = [p for p in folders if _WNID.fullmatch(p.name)]
    top_images = _image_files(data)
    labels_file = read_labels(labels) if labels is not None else None

    if synset_folders:
        if top_images:
            raise VostrackError(
                f"{data} has both synset folders and images ({top_images[0].name}): give one layout"
            )
        others = [p.name for p in folders if p not in synset_folders]
        if others:
            raise VostrackError(f"{data}/{others[0]} is not a synset folder (n########)")
        if synsets is not None:
            index = _sorted_index(read_synsets(synsets))
        elif len(synset_folders) == NUM_CLASSES:
            index = _sorted_index([p.name for p in synset_folders])
        else:
            raise VostrackError(
                f"{data} has {len(synset_folders)} synset folders, not "
                f"{NUM_CLASSES}: give --synsets (the {NUM_CLASSES} ILSVRC2012 "
                "synsets) so that their class indices are known"
            )
        unknown = [p.name for p in synset_folders if p.name not in index]
        if unknown:
            raise VostrackError(
                f"unknown synset {unknown[0]}: not one of the {NUM_CLASSES} "
                f"ILSVRC2012 synsets{f' of {synsets}' if synsets else ''}"
            )
        paths, folder_classes = [], []
        for folder in synset_folders:
            files = _image_files(folder)
            paths.extend(files)
            folder_classes.extend([index[folder.name]] * len(files))
        # Evaluation order: by file name, as for the flat layout (--limit then samples classes).
        order = sorted(range(len(paths)), key=lambda i: (paths[i].name, str(paths[i])))
        paths = [paths[i] for i in order]
        classes = np.array([folder_classes[i] for i in order], np.int64)
        if not paths:
            raise VostrackError(f"no images (.JPEG/.jpg/.png) in the synset folders of {data}")
        if labels_file is not None:
            given = _labels_of(
                labels_file, _file_classes(labels_file, synsets), paths, data, positional_ok=False
            )
            wrong = np.flatnonzero(given != classes)
            if wrong.size:
                p = paths[wrong[0]]
                raise VostrackError(
                    f"{labels_file.path} gives {p.name} class {given[wrong[0]]} "
                    f"but it is in folder {p.parent.name} (class "
                    f"{classes[wrong[0]]}): {wrong.size} disagreements"
                )
        return ValSet(tuple(paths), classes, "synset folders")

    if not top_images:
        raise VostrackError(f"no images (.JPEG/.jpg/.png) in {data}")
    if labels_file is None:
        raise VostrackError(
            f"{data} holds the images directly: give --labels (or use one folder per synset)"
        )
    classes = _labels_of(
        labels_file, _file_classes(labels_file, synsets), top_images, data, positional_ok=True
    )
    return ValSet(tuple(top_images), classes, "flat")


def _file_classes(labels: LabelsFile, synsets: Path | None) -> np.ndarray:
    if labels.kind == "devkit":
        return _devkit_to_sorted(labels, synsets)
    return np.array(labels.values, np.int64)


# ------------------------------------------------------------------------- TF1 resizers
def _resample(image: np.ndarray, axis: int, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_k weights[:, k] * image[indices[:, k]] along ``axis`` (float32)."""
    shape = [1] * image.ndim
    shape[axis] = -1
    out = None
    for k in range(indices.shape[1]):
        term = np.take(image, indices[:, k], axis=axis) * weights[:, k].reshape(shape)
        out = term if out is None else out + term
    return out


def _legacy_positions(in_size: int, out_size: int) -> np.ndarray:
    # TF1's LegacyScaler with align_corners=False: in = out * (in_size / out_size), in float32.
    scale = np.float32(in_size) / np.float32(out_size)
    return np.arange(out_size, dtype=np.float32) * scale


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    pos = _legacy_positions(in_size, out_size)
    low = np.floor(pos)
    lerp = (pos - low).astype(np.float32)
    lower = np.maximum(low.astype(np.int64), 0)
    upper = np.minimum(np.ceil(pos).astype(np.int64), in_size - 1)
    return np.stack([lower, upper], 1), np.stack([1 - lerp, lerp], 1).astype(np.float32)


def resize_bilinear_tf1(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.compat.v1.image.resize_bilinear(align_corners=False, half_pixel_centers=False)``
    (what TF1's ``resize_images(BILINEAR)`` did) of an HWC image, as float32."""
    image = np.asarray(image, np.float32)
    ys = _bilinear_taps(image.shape[0], height)
    xs = _bilinear_taps(image.shape[1], width)
    return _resample(_resample(image, 1, *xs), 0, *ys)


_CUBIC_TABLE_SIZE = 1024


def _cubic_table(a: float) -> np.ndarray:
    # resize_bicubic_op.cc InitCoeffsTable: row i = (w(x), w(x + 1)) for x = i / 1024.
    x = np.arange(_CUBIC_TABLE_SIZE + 1, dtype=np.float64) / _CUBIC_TABLE_SIZE
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x1 = x + 1.0
    far = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    return np.stack([near, far], 1).astype(np.float32)


_LEGACY_CUBIC = _cubic_table(-0.75)  # half_pixel_centers=False uses a = -0.75, not Keys' -0.5


def _bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    pos = _legacy_positions(in_size, out_size)
    loc = np.floor(pos)
    delta = (pos - loc).astype(np.float32)
    offset = np.rint(delta * np.float32(_CUBIC_TABLE_SIZE)).astype(np.int64)  # lrintf
    t = _LEGACY_CUBIC
    weights = np.stack(
        [
            t[offset, 1],
            t[offset, 0],
            t[_CUBIC_TABLE_SIZE - offset, 0],
            t[_CUBIC_TABLE_SIZE - offset, 1],
        ],
        1,
    )
    loc = loc.astype(np.int64)
    indices = np.clip(np.stack([loc - 1, loc, loc + 1, loc + 2], 1), 0, in_size - 1)
    return indices, weights


def resize_bicubic_tf1(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.compat.v1.image.resize_bicubic(align_corners=False, half_pixel_centers=False)`` of
    an HWC image, as float32 (not clipped: cubic overshoots a little past 0..255)."""
    image = np.asarray(image, np.float32)
    ys = _bicubic_taps(image.shape[0], height)
    xs = _bicubic_taps(image.shape[1], width)
    return _resample(_resample(image, 1, *xs), 0, *ys)


# ------------------------------------------------------------------------ eval crops
RESNET_RESIZE_MIN = 256
RESNET_SIZE = 224
EFFICIENTNET_CROP_PADDING = 32


def resnet_v2_eval_crop(
    image: np.ndarray, size: int = RESNET_SIZE, resize_min: int = RESNET_RESIZE_MIN
) -> np.ndarray:
    """The r1.8 official ResNet eval view of an RGB uint8 image: short side to 256 (bilinear),
    central ``size`` x ``size``; float32 on 0..255, means not yet subtracted."""
    h, w = image.shape[:2]
    scale = np.float32(resize_min) / np.float32(min(h, w))
    new_h, new_w = int(np.float32(h) * scale), int(np.float32(w) * scale)
    resized = resize_bilinear_tf1(image, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def efficientnet_eval_crop(
    image: np.ndarray, size: int = 260, crop_padding: int = EFFICIENTNET_CROP_PADDING
) -> np.ndarray:
    """The TPU repo's EfficientNet(-Lite) eval view of an RGB uint8 image: the central square of
    side ``int(size / (size + 32) * short side)``, bicubic-resized to ``size``; float32 0..255."""
    h, w = image.shape[:2]
    crop = int(np.float32(size / (size + crop_padding)) * np.float32(min(h, w)))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    return resize_bicubic_tf1(image[top : top + crop, left : left + crop], size, size)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (EXIF orientation ignored, as TF's decoder does)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise VostrackError(f"cannot read image {path}: {exc}") from None


# ---------------------------------------------------------------------------- backbones
@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """How a backbone's classifier is evaluated."""

    backbone: str
    input_size: int
    crop: Callable[[np.ndarray], np.ndarray]  # RGB uint8 -> float32 0..255, size x size
    normalizer_module: str  # module whose normalize_images maps RGB in [0, 1] to the input
    background_class: bool  # logit 0 is "background" (1001 logits)
    needs_checkpoint: bool


def eval_spec(backbone: str) -> EvalSpec:
    if backbone == "efficientnet_lite2":
        return EvalSpec(
            backbone,
            260,
            lambda im: efficientnet_eval_crop(im, 260),
            "vostrack.network.backbones.efficientnet_lite",
            False,
            False,
        )
    if backbone == "resnet50_v2":
        return EvalSpec(
            backbone,
            RESNET_SIZE,
            resnet_v2_eval_crop,
            "vostrack.network.backbones.resnet_v2",
            True,
            True,
        )
    raise VostrackError(
        f"no ImageNet evaluation for backbone {backbone!r} (known: {', '.join(BACKBONES)})"
    )


def check_weights(backbone: str, checkpoint: Path | None) -> None:
    """Refuse a missing or misplaced ``--checkpoint`` before any work is done."""
    spec = eval_spec(backbone)
    if spec.needs_checkpoint and checkpoint is None:
        raise VostrackError(
            f"{backbone} needs --checkpoint: vostrack has no pretrained weights "
            "for it (the official one is resnet_v2_imagenet_checkpoint of "
            "tensorflow/models r1.8)"
        )
    if not spec.needs_checkpoint and checkpoint is not None:
        raise VostrackError(
            f"--checkpoint is only for resnet50_v2: {backbone} takes its weights "
            "from its weight package"
        )
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not (checkpoint.exists() or Path(f"{checkpoint}.index").exists()):
            raise VostrackError(
                f"checkpoint not found: {checkpoint} (neither the folder nor a "
                f"TF1 checkpoint prefix with {checkpoint.name}.index)"
            )


def _normalizer(spec: EvalSpec) -> Callable[[np.ndarray], np.ndarray]:
    import importlib

    from keras import ops

    try:
        module = importlib.import_module(spec.normalizer_module)
    except ImportError as exc:
        raise VostrackError(
            f"backbone {spec.backbone} is not available in this build ({exc})"
        ) from None
    normalize = module.normalize_images
    return lambda batch: np.asarray(
        ops.convert_to_numpy(normalize(batch / np.float32(255))), np.float32
    )


def load_classifier(backbone: str, checkpoint: Path | None = None) -> Callable:
    """A function from a normalised NHWC batch to its (N, 1001 or 1000) logits."""
    import keras

    spec = eval_spec(backbone)
    check_weights(backbone, checkpoint)
    shape = (spec.input_size, spec.input_size, 3)
    if backbone == "efficientnet_lite2":
        from vostrack.network.backbones.efficientnet_lite import efficientnet_lite2

        model = efficientnet_lite2(weights="imagenet", include_top=True, input_shape=shape)
    else:
        from vostrack.network.backbones import get_backbone_builder

        try:
            builder = get_backbone_builder(backbone)
        except KeyError as exc:
            raise VostrackError(
                f"backbone {backbone} is not available in this build ({exc})"
            ) from None
        # weights=<path>: the TF1 checkpoint goes through
        # tf1_checkpoint.load_resnet_v2_checkpoint; a .weights.h5 converted from it also works.
        model = builder(weights=checkpoint, include_top=True, input_shape=shape)
    logits = model.output["logits"] if isinstance(model.output, dict) else model.output
    classifier = keras.Model(model.input, logits, name=f"{backbone}_classifier")
    return classifier.predict_on_batch


# ---------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class Result:
    top1_correct: int
    top5_correct: int
    count: int

    @property
    def top1(self) -> float:
        return 100.0 * self.top1_correct / self.count

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_correct / self.count

    def line(self) -> str:
        return f"top-1 {self.top1:.2f} %  top-5 {self.top5:.2f} %  ({self.count} images)"


def _batches(
    paths: Sequence[Path], prepare: Callable[[Path], np.ndarray], batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    """Prepared batches in order, the next one decoding while the caller runs the current one
    (so at most two batches are in memory)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = None
        for start in range(0, len(paths), batch_size):
            futures = [pool.submit(prepare, p) for p in paths[start : start + batch_size]]
            if pending is not None:
                yield np.stack([f.result() for f in pending])
            pending = futures
        if pending:
            yield np.stack([f.result() for f in pending])


def evaluate(
    val_set: ValSet,
    backbone: str,
    checkpoint: Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    classifier: Callable | None = None,
) -> Result:
    """Top-1 / top-5 of ``backbone``'s classifier on ``val_set``."""
    spec = eval_spec(backbone)
    if classifier is None:
        check_weights(backbone, checkpoint)
    if len(val_set) == 0:
        raise VostrackError("no images to evaluate")
    normalize = _normalizer(spec)
    if classifier is None:
        classifier = load_classifier(backbone, checkpoint)
    expected = NUM_CLASSES + spec.background_class

    def prepare(path: Path) -> np.ndarray:
        return spec.crop(read_rgb(path))

    from tqdm import tqdm

    top1 = top5 = done = 0
    workers = max(1, min(8, os.cpu_count() or 1))
    with tqdm(
        total=len(val_set), unit="img", disable=not progress, dynamic_ncols=True, desc=backbone
    ) as bar:
        for batch in _batches(val_set.paths, prepare, batch_size, workers):
            n = len(batch)
            if n < batch_size:  # same shape every call: no retracing for the last batch
                batch = np.concatenate(
                    [batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)]
                )
            logits = np.asarray(classifier(normalize(batch)))[:n]
            if logits.shape[-1] != expected:
                raise VostrackError(
                    f"{backbone} gives {logits.shape[-1]} logits, expected {expected}"
                )
            if spec.background_class:
                logits = logits[:, 1:]  # logit k + 1 is sorted-synset class k
            labels = val_set.labels[done : done + n]
            ranked = np.argsort(-logits, axis=1, kind="stable")[:, :5]
            top1 += int(np.sum(ranked[:, 0] == labels))
            top5 += int(np.sum(np.any(ranked == labels[:, None], axis=1)))
            done += n
            bar.update(n)
            bar.set_postfix_str(f"top-1 {100 * top1 / done:.2f} %")
    return Result(top1, top5, done)
