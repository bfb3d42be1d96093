"""The DAVIS palette and palette-PNG reading/writing.

DAVIS label PNGs are 8-bit palette images whose *index* is the object id; the colours are
only for display. The palette is the PASCAL VOC colour map (index 1 = dark red, 2 = green, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vostrack.io.atomic import atomic_write


def davis_palette() -> np.ndarray:
    """The 256x3 uint8 DAVIS (PASCAL VOC) palette."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


DAVIS_PALETTE = davis_palette()


def label_image(labels: np.ndarray) -> Image.Image:
    """A palette image of a uint8 label map, with the DAVIS palette."""
    if labels.dtype != np.uint8:
        labels = labels.astype(np.uint8)
    image = Image.fromarray(labels, mode="P")
    image.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    return image


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write a label map as a DAVIS palette PNG, atomically."""
    with atomic_write(path) as handle:
        label_image(labels).save(handle, format="PNG")


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a palette PNG as its index map (uint8); grayscale PNGs are returned as stored.

    Real annotation sets mix modes (DAVIS-2016 train holds a few grayscale+alpha PNGs): the
    alpha of an LA image and the bit depth of a 1-bit one carry no label, so they are dropped.
    """
    with Image.open(path) as image:
        if image.mode == "LA":
            image = image.getchannel("L")
        elif image.mode == "1":
            return np.array(image, dtype=np.uint8) * 255
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette or grayscale PNG, got mode {image.mode}")
        return np.array(image, dtype=np.uint8)
