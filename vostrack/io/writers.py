"""Result writers: palette PNGs, the overlay video and per-object areas, on a background thread.

The inference loop hands each finished frame to :class:`ResultWriter` and goes on with the next
one; PNG encoding and video encoding happen on the writer's thread (and in ffmpeg's process), so
decoding, compute and encoding overlap. The queue is bounded, so a slow disk slows the loop down
instead of filling memory.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from vostrack.io.atomic import create_temp
from vostrack.io.disk import write_failure
from vostrack.io.palette import DAVIS_PALETTE, write_label_png

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5


def render_overlay(
    frame: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
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
        contours, _ = cv2.findContours(
            (labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        colour = tuple(int(c) for c in DAVIS_PALETTE[k])
        cv2.drawContours(out, contours, -1, colour, thickness=2, lineType=cv2.LINE_AA)
    return out


class OverlayVideo:
    """An H.264 video encoded by an ffmpeg process into an exclusive temporary file beside
    ``path``, renamed into place by :meth:`finish` only when ffmpeg reports success.

    Written by hand rather than with ``imageio_ffmpeg.write_frames``, which opens its output by
    name and reports neither ffmpeg's exit status nor its error output: a full disk there gave a
    truncated video under the final name. Here ffmpeg writes through the descriptor of the file
    we created (a planted symlink cannot redirect it), its stderr is kept, and any failure is an
    error with ffmpeg's own reason.
    """

    MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
    CRF = 15  # visually lossless for the flat colours drawn over the frames

    def __init__(self, path: Path, width: int, height: int, fps: float):
        import imageio_ffmpeg

        self.path = Path(path)
        fd, self.tmp = create_temp(self.path)
        # yuv420p (what every player opens) needs even sizes: pad by one pixel where needed.
        self._pad = (height % 2, width % 2)
        size = f"{width + self._pad[1]}x{height + self._pad[0]}"
        target = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else str(self.tmp)
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-nostdin",
            "-hide_banner",
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            size,
            "-r",
            str(Fraction(fps).limit_denominator(100000)),
            "-i",
            "-",
            "-an",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-crf",
            str(self.CRF),
            "-f",
            self.MUXERS.get(self.path.suffix.lower(), "mp4"),
            target,
        ]
        try:
            # Its own session: Ctrl-C in the terminal reaches vostrack, which then aborts ffmpeg.
            self._process = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(fd,),
                start_new_session=True,
            )
        except OSError:
            os.close(fd)
            self.tmp.unlink()
            raise
        self._fd = fd  # kept, to flush the finished file through it (never reopened by name)
        self._stderr: list[bytes] = []
        self._stderr_reader = threading.Thread(
            target=self._read_stderr, daemon=True, name="vostrack-ffmpeg-stderr"
        )
        self._stderr_reader.start()

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            if len(self._stderr) < 200:
                self._stderr.append(line)

    def _failure(self, exc: OSError | None = None) -> OSError:
        """ffmpeg's own reason as an OSError (errno ENOSPC when it says the disk is full)."""
        self._stderr_reader.join(timeout=5)
        lines = [ln.decode("utf-8", "replace").strip() for ln in self._stderr]
        lines = [ln for ln in lines if ln]
        reason = next((ln for ln in lines if "No space left" in ln), lines[0] if lines else None)
        if reason is None:
            reason = (
                f"ffmpeg exited with status {self._process.returncode}"
                if self._process.returncode
                else str(exc or "ffmpeg failed")
            )
        full = "No space left" in reason or (exc is not None and exc.errno == errno.ENOSPC)
        return OSError(
            errno.ENOSPC if full else errno.EIO,
            "no space left" if full else f"ffmpeg: {reason}",
            str(self.path),
        )

    def append(self, rgb: np.ndarray) -> None:
        if any(self._pad):
            rgb = np.pad(rgb, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        try:
            self._process.stdin.write(np.ascontiguousarray(rgb, dtype=np.uint8))
        except OSError as exc:  # ffmpeg is gone (BrokenPipeError): say why
            self._process.wait()
            raise self._failure(exc) from None

    def finish(self) -> None:
        """Wait for ffmpeg; rename the video into place only if it succeeded."""
        try:
            try:
                self._process.stdin.close()
            except OSError as exc:
                self._process.wait()
                raise self._failure(exc) from None
            self._process.wait()
            self._stderr_reader.join(timeout=5)
            if self._process.returncode != 0 or any(ln.strip() for ln in self._stderr):
                raise self._failure()
            os.fsync(self._fd)
            os.replace(self.tmp, self.path)
            self._close_fd()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop ffmpeg and remove the temporary file."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            self._process.kill()
        self._process.wait()
        self._close_fd()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class FrameResult:
    index: int
    labels: np.ndarray
    frame: np.ndarray | None = None  # needed only for the overlay
    write_png: bool = True  # False when re-rendering frames a resumed run already has


class ResultWriter:
    """Writes finished frames on a background thread, in order."""

    def __init__(
        self,
        output_dir: Path,
        frame_names: Sequence[str],
        overlay: OverlayVideo | None,
        queue_size: int = 8,
    ):
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
            try:
                self.overlay.finish()
            except OSError as exc:
                raise write_failure(exc, self.overlay.path, "the overlay video") from None

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
                overlay = self.overlay is not None and error.filename == str(self.overlay.path)
                raise write_failure(
                    error, self.output_dir, "the overlay video" if overlay else ""
                ) from None
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
        counts = np.bincount(item.labels.reshape(-1), minlength=256)
        for k in np.nonzero(counts[1:])[0] + 1:
            self.areas.setdefault(int(k), [])
        for k, series in self.areas.items():
            series.extend([0] * (item.index - len(series)))
            series.append(int(counts[k]))
        self.frames_written = item.index + 1  # its PNG is done, whatever becomes of the overlay
        if self.overlay is not None:
            self.overlay.append(render_overlay(item.frame, item.labels))
