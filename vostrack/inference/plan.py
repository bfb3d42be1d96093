"""Which frames a run segments, in which direction, from which annotations.

The rule (stated in the README): an object is segmented on a frame by propagation from its
nearest annotation in the direction propagated, never across another annotation of it.

- ``forward``: from the object's latest annotation at or before the frame; nothing before its
  first annotation.
- ``backward``: the mirror image: from its earliest annotation at or after the frame (the video
  played in reverse); nothing after its last annotation.
- ``both`` (the default): forward, and on the frames before the object's first annotation,
  backward from that first annotation.

So ``both`` runs at most two passes over the video: a backward pass from the latest *first*
annotation of any object down to the range's start (fed each object's first annotation only, as
it is reached), then the usual forward pass from the earliest annotation to the range's end.
Where both passes give objects on a frame, each object's pixels come from its own pass; an
object claims a pixel another one also claims when its annotation is nearer to the frame (the
forward one on a tie).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vostrack.errors import VostrackError

DIRECTIONS = ("both", "forward", "backward")
FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class Pass:
    """One pass of the network over the video: ``frames`` in the order they are fed (frames
    before the pass's first annotation come out empty), and at each annotated frame the
    objects whose annotation it feeds (others are left out of this pass)."""

    direction: str
    frames: range
    feeds: Mapping[int, frozenset[int]]


@dataclass(frozen=True)
class Plan:
    """The passes of a run over frames ``first..last`` (inclusive) and how their label maps make
    each frame's result. ``annotated``: the frame of each annotation and the objects it holds."""

    first: int
    last: int
    direction: str
    annotated: Mapping[int, frozenset[int]]

    @classmethod
    def make(
        cls,
        num_frames: int,
        annotated: Mapping[int, Sequence[int]],
        direction: str = "both",
        first: int = 0,
        last: int | None = None,
    ) -> Plan:
        if direction not in DIRECTIONS:
            raise VostrackError(f"direction must be one of {', '.join(DIRECTIONS)}")
        last = num_frames - 1 if last is None else last
        if last < first:
            raise VostrackError(f"the end frame ({last}) comes before the start frame ({first})")
        if not 0 <= first <= last < num_frames:
            raise VostrackError(
                f"frames {first}..{last} are not within the video's 0..{num_frames - 1}"
            )
        outside = sorted(f for f in annotated if not first <= f <= last)
        if outside:
            raise VostrackError(
                f"a mask is given for frame {outside[0]}, outside the frames segmented "
                f"({first}..{last}); give masks of frames within --start-frame/--end-frame"
            )
        return cls(
            first, last, direction, {f: frozenset(ids) for f, ids in sorted(annotated.items())}
        )

    @functools.cached_property
    def _annotations_of(self) -> dict[int, list[int]]:
        """Each object's annotated frames, ascending."""
        frames: dict[int, list[int]] = {}
        for frame, ids in self.annotated.items():
            for k in ids:
                frames.setdefault(k, []).append(frame)
        return frames

    @property
    def objects(self) -> tuple[int, ...]:
        return tuple(sorted(self._annotations_of))

    @functools.cached_property
    def first_annotations(self) -> dict[int, int]:
        """Each object's first annotated frame."""
        return {k: frames[0] for k, frames in self._annotations_of.items()}

    def source(self, frame: int, k: int) -> tuple[str, int] | None:
        """Where object ``k`` on ``frame`` comes from: (pass direction, the annotation's distance
        in frames), or None when no pass gives it."""
        frames = self._annotations_of.get(k, [])
        at = bisect.bisect_right(frames, frame)  # frames[:at] <= frame
        if self.direction != BACKWARD and at:
            return FORWARD, frame - frames[at - 1]
        after = bisect.bisect_left(frames, frame)  # frames[after:] >= frame
        if self.direction != FORWARD and after < len(frames):
            return BACKWARD, frames[after] - frame
        return None

    @functools.cached_property
    def passes(self) -> tuple[Pass, ...]:
        """The passes to run, in order: the backward one first, so that its label maps on
        frames the forward pass also reaches wait for it (in a small store of label maps)."""
        if self.direction == FORWARD:
            return (Pass(FORWARD, range(self.first, self.last + 1), self.annotated),)
        if self.direction == BACKWARD:
            return (Pass(BACKWARD, range(self.last, self.first - 1, -1), self.annotated),)
        firsts: dict[int, set[int]] = {}
        for k, frame in self.first_annotations.items():
            firsts.setdefault(frame, set()).add(k)
        forward = Pass(FORWARD, range(self.first, self.last + 1), self.annotated)
        top = max(firsts, default=self.first)
        if top == self.first:  # every object is annotated on the first frame: nothing before
            return (forward,)
        feeds = {f: frozenset(ids) for f, ids in sorted(firsts.items())}
        return Pass(BACKWARD, range(top, self.first - 1, -1), feeds), forward

    def combined(self, frame: int) -> bool:
        """Whether both passes reach ``frame``: its result combines their label maps."""
        return len(self.passes) == 2 and frame in self.passes[0].frames

    def combine(self, frame: int, forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
        """``frame``'s labels from both passes' label maps: each object from its own pass; where
        two claim a pixel, the one whose annotation is nearer (forward on a tie) keeps it."""
        out = np.zeros_like(forward)
        ranked = []
        for k in self.objects:
            found = self.source(frame, k)
            if found is not None:
                direction, distance = found
                # painted farthest first: the nearest is painted last and keeps the pixel
                ranked.append((-distance, direction == FORWARD, k, direction))
        for _, _, k, direction in sorted(ranked):
            labels = forward if direction == FORWARD else backward
            out[labels == k] = k
        return out
