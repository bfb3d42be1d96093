"""Segment every sequence of a DAVIS tree from one annotated frame (what `vostrack validate`
and the trainer's periodic validation score): the first, as the official protocol does, or
the middle one (``annotated="middle"``: masks propagated both ways)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vostrack.evaluation.davis import DavisTree, given_frame
from vostrack.inference.contract import Propagator
from vostrack.inference.pipeline import OutputOptions, segment_video
from vostrack.io.frames import open_frames
from vostrack.io.masks import Annotation


def first_annotation(
    tree: DavisTree, seq: str, frame_names: Sequence[str], annotated: str = "first"
) -> Annotation:
    """The first (or middle) annotated frame of ``seq`` as the tree reads it (2016: one
    object; 2017: palette ids, 255 void), placed on its frame of ``frame_names``."""
    first = given_frame(tree, seq, annotated)
    _, masks, _ = next(tree.iter_ground_truth(seq, [first]))
    labels = np.zeros(masks.shape[1:], np.uint8)
    for k, mask in enumerate(masks, start=1):
        labels[mask] = k
    return Annotation(list(frame_names).index(first), labels, (tree.annotation_path(seq, first),))


def segment_tree(
    tree: DavisTree,
    sequences: Sequence[str],
    propagator: Propagator,
    output_dir: Path,
    model: dict | None = None,
    overwrite: bool = False,
    progress: bool = False,
    announce: Callable[[str], None] | None = None,
    annotated: str = "first",
) -> None:
    """Write ``output_dir/<seq>/<frame>.png`` for every sequence, from its ``annotated``
    (first or middle) annotated frame."""
    for seq in sequences:
        if announce is not None:
            announce(seq)
        source = open_frames(tree.images_dir / seq)
        segment_video(
            source,
            [first_annotation(tree, seq, source.frame_names, annotated)],
            propagator,
            OutputOptions(Path(output_dir) / seq, overwrite=overwrite, progress=progress),
            model,
        )
