"""Result writers: palette PNGs, the overlay video and per-object areas, on a background thread.

The inference loop hands each finished frame to :class:`ResultWriter` and goes on with the next
one; PNG encoding and video encoding happen on the writer's thread (and in ffmpeg's process), so
decoding, compute and encoding overlap. The queue is bounded, so a slow disk slows the loop down
instead of filling memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from vostrack.errors import VostrackError
from vostrack.io.palette import DAVIS_PALETTE, write_label_png

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5


def render_overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The frame with each object's palette colour blended in and its contour drawn."""
    out = frame.copy()
    ids = [int(k) for k in np.unique(labels) if k]
    if not ids:
        return out
    colours = DAVIS_PALETTE[labels]
    inside = labels > 0
    blended = frame.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    out[inside] = blended[inside].round().astype(np.uint8)
    for k in ids:
        contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        colour = tuple(int(c) for c in DAVIS_PALETTE[k])
        cv2.drawContours(out, contours, -1, colour, thickness=2, lineType=cv2.LINE_AA)
    return out


class OverlayVideo:
    """An H.264 mp4 written to a temporary name and renamed into place by :meth:`finish`."""

    def __init__(self, path: Path, width: int, height: int, fps: float):
        import imageio_ffmpeg

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix or '.mp4'}")
        # yuv420p (what every player opens) needs even sizes: pad by one pixel where needed.
        self._pad = (height % 2, width % 2)
        size = (width + self._pad[1], height + self._pad[0])
        self._writer = imageio_ffmpeg.write_frames(
            str(self.tmp), size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=7,
            macro_block_size=1, ffmpeg_log_level="error")
        self._writer.send(None)

    def append(self, rgb: np.ndarray) -> None:
        if any(self._pad):
            rgb = np.pad(rgb, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        self._writer.send(np.ascontiguousarray(rgb))

    def finish(self) -> None:
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


@dataclass
class FrameResult:
    index: int
    labels: np.ndarray
    frame: np.ndarray | None = None  # needed only for the overlay
    write_png: bool = True  # False when re-rendering frames a resumed run already has


class ResultWriter:
    """Writes finished frames on a background thread, in order."""

    def __init__(self, output_dir: Path, frame_names: Sequence[str], overlay: OverlayVideo | None,
                 queue_size: int = 8):
        self.output_dir = Path(output_dir)
        self.frame_names = frame_names
        self.overlay = overlay
        self.areas: dict[int, list[int]] = {}
        self.frames_written = 0  # frames fully handled, in order from 0
        self._queue: queue.Queue[FrameResult | None] = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vostrack-writer", daemon=True)
        self._thread.start()

    def put(self, result: FrameResult) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(result, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Write everything queued, then stop; the overlay is renamed into place."""
        self._stop()
        self._raise_if_failed()
        if self.overlay is not None:
            self.overlay.finish()

    def abort(self) -> None:
        """Write what is queued (those frames are done), then stop; drop the partial overlay."""
        self._stop()
        if self.overlay is not None:
            self.overlay.abort()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error = self._error
            if isinstance(error, OSError):
                raise VostrackError(f"cannot write results: {error.strerror or error} "
                                    f"({error.filename or self.output_dir})") from None
            raise error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep draining so that put() never blocks forever
            try:
                self._write(item)
            except BaseException as exc:  # surfaced in the main thread by put()/close()
                self._error = exc

    def _write(self, item: FrameResult) -> None:
        if item.write_png:
            write_label_png(self.output_dir / f"{self.frame_names[item.index]}.png", item.labels)
        if self.overlay is not None:
            self.overlay.append(render_overlay(item.frame, item.labels))
        counts = np.bincount(item.labels.reshape(-1), minlength=256)
        for k in np.nonzero(counts[1:])[0] + 1:
            self.areas.setdefault(int(k), [])
        for k, series in self.areas.items():
            series.extend([0] * (item.index - len(series)))
            series.append(int(counts[k]))
        self.frames_written = item.index + 1
