"""The passes of one video through a propagator, as a plan (vostrack.inference.plan) lays them
out: a backward pass whose label maps wait in a store (label PNGs in a folder), then the final
pass in frame order, forward, combining them where both reach a frame. Shared by the segment
job (which writes outputs and resumes) and the Python API (which yields label maps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from vostrack.inference.contract import Propagator
from vostrack.inference.plan import BACKWARD, FORWARD, Plan
from vostrack.inference.prefetch import prefetch
from vostrack.inference.segmenter import VideoSegmenter
from vostrack.io.atomic import working_folder
from vostrack.io.frames import FrameSource
from vostrack.io.masks import Annotation
from vostrack.io.palette import read_label_png, write_label_png

#: Called with (index in the range, frame number, frame, segmenter) for each frame the final
#: pass replays instead of computing (a resumed run's written frames).
Replay = Callable[[int, int, np.ndarray, "VideoSegmenter | None"], None]


class VideoPasses:
    """One video's passes. ``corrected``: frames whose annotation is a correction (the whole
    frame's labels); ``store``: the folder of the backward pass's label maps; ``spill_dir``:
    where a video's frames wait to be read backwards (vostrack.io.frame_store)."""

    def __init__(
        self,
        source: FrameSource,
        annotations: Sequence[Annotation],
        propagator: Propagator,
        plan: Plan,
        store: Path,
        spill_dir: Path,
        corrected: Iterable[int] = (),
    ):
        self.source, self.propagator, self.plan = source, propagator, plan
        self.annotated = {a.frame: a.labels for a in annotations}
        self.store, self.spill_dir = Path(store), Path(spill_dir)
        self.corrected = set(corrected)
        self.backward = next((p for p in plan.passes if p.direction == BACKWARD), None)
        self.forward = any(p.direction == FORWARD for p in plan.passes)

    def stored(self, frame: int) -> Path:
        return self.store / f"{self.source.frame_names[frame]}.png"

    def run_backward(self, tick: Callable[[], None] = lambda: None) -> None:
        """The backward pass, if the plan has one; each label map goes to the store. Maps a
        stopped run stored are replayed (the reference and the state rebuilt from them), not
        recomputed. ``tick`` is called after each frame (progress; it may raise to stop)."""
        backward = self.backward
        if backward is None:
            return
        working_folder(self.store)
        done = 0
        for t in backward.frames:
            if not self.stored(t).is_file():
                break
            done += 1
        if done == len(backward.frames):
            for _ in range(done):
                tick()
            return
        feeds = {t: only_objects(self.annotated[t], ids) for t, ids in backward.feeds.items()}
        segmenter = VideoSegmenter(self.propagator)
        frames = self.source.in_order(backward.frames, spill_dir=self.spill_dir)
        for i, (t, frame) in enumerate(zip(backward.frames, prefetch(frames))):
            if i < done:
                labels = read_label_png(self.stored(t))
                if t in feeds:
                    segmenter.add_reference(frame, labels)
                if i == done - 1 and segmenter.started:
                    segmenter.reseed(frame, labels)
            else:
                labels = segmenter.step(frame, feeds.get(t), whole=t in self.corrected)
                write_label_png(self.stored(t), labels)
            tick()

    def final(
        self, start: int = 0, replay: Replay | None = None
    ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """``(index in the range, frame number, frame, labels)`` of the range's frames from
        ``start`` on, in order: the forward pass (unless the plan is backward only), combined
        with the stored backward maps where both reach a frame. The frames before ``start``
        go to ``replay`` with the segmenter, which it brings up to date."""
        plan = self.plan
        segmenter = VideoSegmenter(self.propagator)
        order = range(plan.first, plan.last + 1)
        frames = prefetch(self.source.in_order(order))
        try:
            for i, (t, frame) in enumerate(zip(order, frames)):
                if i < start:
                    if replay is not None:
                        replay(i, t, frame, segmenter if self.forward else None)
                    continue
                labels = None
                if self.forward:
                    whole = t in self.corrected
                    labels = segmenter.step(frame, self.annotated.get(t), whole=whole)
                if not self.forward or plan.combined(t):
                    backward = read_label_png(self.stored(t))
                    labels = backward if labels is None else plan.combine(t, labels, backward)
                yield i, t, frame, labels
        finally:
            frames.close()

    def forward_objects(self, frame: int) -> list[int]:
        """The objects the forward pass gives on ``frame`` (those it encoded there)."""
        return [k for k in self.plan.objects if (self.plan.source(frame, k) or ("",))[0] == FORWARD]


def only_objects(labels: np.ndarray, objects: Iterable[int]) -> np.ndarray:
    """``labels`` with every object but ``objects`` set to background."""
    return np.where(np.isin(labels, list(objects)), labels, 0).astype(labels.dtype)
