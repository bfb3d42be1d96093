"""Frame sources: a video file or a folder of images, streamed one RGB frame at a time.

Both kinds are opened (and checked) up front by :func:`open_frames`, which returns a
:class:`FrameSource` that knows the frame count, size, rate and the name of every frame, and
yields frames lazily so that memory does not grow with the length of the video.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from vostrack.errors import VostrackError, first_line

log = logging.getLogger(__name__)
EXIF_ORIENTATION = 0x0112


class _ToDebug(logging.Handler):
    """imageio-ffmpeg warns through its own logger, which reaches stderr through logging's last
    resort when nothing handles it: e.g. "frame size ... is different from the source frame
    size" on every rotated video, which is expected (frames come upright). Its records go to
    vostrack's debug log instead."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("imageio-ffmpeg: %s", record.getMessage())


logging.getLogger("imageio_ffmpeg").addHandler(_ToDebug())
logging.getLogger("imageio_ffmpeg").propagate = False

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_FPS = 24.0


def natural_key(name: str) -> tuple:
    """Sort key that orders ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    return tuple(
        (0, int(part), part) if part.isdigit() else (1, part.lower(), part)
        for part in re.split(r"(\d+)", name)
        if part
    )


@dataclass(frozen=True)
class FrameSource:
    """An opened video or frame folder. Iterate it to get RGB uint8 frames (H, W, 3)."""

    path: Path
    kind: str  # "video" or "frames"
    width: int
    height: int
    fps: float
    frame_names: tuple[str, ...]  # one per frame; output masks are named <name>.png
    frame_files: tuple[Path, ...] = ()  # for a folder: the image of each frame
    variable_rate: bool = False  # a video whose frames are not evenly spaced in time

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._iter_video() if self.kind == "video" else self._iter_folder()

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "width": self.width,
            "height": self.height,
            "num_frames": self.num_frames,
            "fps": self.fps,
        }

    def in_order(self, order: range, spill_dir: Path | None = None) -> Iterator[np.ndarray]:
        """The frames of ``order`` (a range of frame indices, ascending or descending), one at
        a time. A video is decoded forward only: for a descending range its frames are decoded
        once into a temporary file in ``spill_dir`` (removed when done) and read back in
        reverse, so memory stays one frame whatever the length."""
        if not order:
            return iter(())
        if order.step > 0:
            return self._ascending(order)
        if self.kind == "frames":
            return (self._read_file(i) for i in order)
        from vostrack.io.frame_store import reversed_through_disk

        ascending = range(order[-1], order[0] + 1)
        return reversed_through_disk(self._ascending(ascending), len(ascending), spill_dir)

    def _ascending(self, order: range) -> Iterator[np.ndarray]:
        if self.kind == "frames":
            yield from (self._read_file(i) for i in order)
            return
        frames = iter(self)
        try:
            for index, frame in enumerate(frames):
                if index >= order.stop:
                    break
                if index >= order.start:
                    yield frame
        finally:
            frames.close()  # stops the decoder when the range ends before the video

    def _iter_folder(self) -> Iterator[np.ndarray]:
        for index in range(self.num_frames):
            yield self._read_file(index)

    def _read_file(self, index: int) -> np.ndarray:
        file = self.frame_files[index]
        frame = read_image_rgb(file)
        if frame.shape[:2] != (self.height, self.width):  # changed since it was opened
            raise VostrackError(
                f"{file}: frame is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                f"{self.width}x{self.height}; all frames of a folder must have one size"
            )
        return frame

    def _iter_video(self) -> Iterator[np.ndarray]:
        import imageio_ffmpeg

        # passthrough: no frame duplication/dropping on variable-rate video, so the decoded
        # frames match the demuxed count and the names given to them.
        reader = imageio_ffmpeg.read_frames(
            str(self.path), pix_fmt="rgb24", output_params=["-fps_mode", "passthrough"]
        )
        try:
            meta = next(reader)
            width, height = meta["size"]
            count = 0
            for raw in reader:
                count += 1
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as exc:
            raise VostrackError(
                f"{self.path}: cannot decode the video ({first_line(exc)})"
            ) from None
        finally:
            reader.close()
        if count != self.num_frames:
            raise VostrackError(
                f"{self.path}: decoded {count} frames but the container holds "
                f"{self.num_frames}; the file may be damaged"
            )


def open_frames(path: str | Path, fps: float | None = None) -> FrameSource:
    """Open a video file or a folder of frames, checking that it can be read.

    ``fps`` overrides the frame rate (a folder has none of its own; default 24).
    """
    path = Path(path)
    if not path.exists():
        raise VostrackError(f"input not found: {path}")
    if path.is_dir():
        return _open_folder(path, fps)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise VostrackError(f"{path} is a single image; give a video file or a folder of frames")
    return _open_video(path, fps)


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder in natural order (hidden files skipped)."""
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def _open_folder(folder: Path, fps: float | None) -> FrameSource:
    files = list_images(folder)
    if not files:
        raise VostrackError(f"{folder}: no frames found (looked for {', '.join(IMAGE_SUFFIXES)})")
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise VostrackError(
            f"{folder}: two frames are named {dup!r} (different extensions); "
            "output masks are named after frames, so names must be unique"
        )
    first = read_image_rgb(files[0])
    height, width = first.shape[:2]
    for file in files[1:]:
        size = image_size(file)
        if size != (height, width):
            raise VostrackError(
                f"{file}: frame is {size[1]}x{size[0]} but the first frame ({files[0].name}) "
                f"is {width}x{height}; all frames of a folder must have one size"
            )
    return FrameSource(
        path=folder,
        kind="frames",
        width=width,
        height=height,
        fps=float(fps or DEFAULT_FOLDER_FPS),
        frame_names=tuple(stems),
        frame_files=tuple(files),
    )


def image_size(file: Path) -> tuple[int, int]:
    """(height, width) of an image as :func:`read_image_rgb` will return it, from its header
    (cheap: no decoding), or a one-line error if it is not a readable image."""
    try:
        with Image.open(file) as image:
            width, height = image.size
            # OpenCV applies the EXIF orientation when decoding: 5-8 swap the sides.
            if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            return height, width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    return read_image_rgb(file).shape[:2]  # a format only OpenCV reads: decode it


def read_image_rgb(file: Path) -> np.ndarray:
    """Read an image file as RGB uint8, or raise a one-line error."""
    data = np.fromfile(str(file), dtype=np.uint8)  # np.fromfile + imdecode handles any path
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise VostrackError(f"{file}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _open_video(path: Path, fps: float | None) -> FrameSource:
    import imageio_ffmpeg

    num_frames, variable_rate = _probe_video(path)
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration) as exc:
        raise VostrackError(f"{path}: not a readable video ({first_line(exc)})") from None
    width, height = meta["size"]
    rate = float(fps or meta.get("fps") or DEFAULT_FOLDER_FPS)
    digits = max(5, len(str(num_frames - 1)))
    names = tuple(f"{i:0{digits}d}" for i in range(num_frames))
    return FrameSource(
        path=path,
        kind="video",
        width=int(width),
        height=int(height),
        fps=rate,
        frame_names=names,
        variable_rate=variable_rate,
    )


def _probe_video(path: Path) -> tuple[int, bool]:
    """Count the video frames by demuxing the file once (no decoding: fast), and tell whether
    their timestamps are unevenly spaced (a variable frame rate).

    ffmpeg exits 0 on a truncated file and only says so on stderr, so the error lines are
    checked here; a damaged video is refused before any work is done rather than segmented
    up to the point where it breaks.
    """
    import imageio_ffmpeg

    # framecrc lists every packet with its timestamps on stdout; -stats counts them on stderr.
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-stats",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-c",
        "copy",
        "-f",
        "framecrc",
        "-",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VostrackError(f"{path}: cannot run ffmpeg to read the video ({exc})") from None
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", proc.stderr) if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith("frame=")]
    counts = [int(m.group(1)) for ln in lines if (m := re.match(r"frame=\s*(\d+)", ln))]
    if proc.returncode != 0 or not counts:
        reason = _ffmpeg_reason(errors) or "no video stream"
        raise VostrackError(f"{path}: not a readable video ({reason})")
    if any("partial file" in ln or "Invalid data" in ln or "Invalid NAL" in ln for ln in errors):
        raise VostrackError(
            f"{path}: the video is truncated or damaged "
            f"({_ffmpeg_reason(errors)}); {counts[-1]} frames could be read"
        )
    for line in errors:
        log.warning("%s: ffmpeg: %s", path.name, _strip_ffmpeg_prefix(line))
    if counts[-1] == 0:
        raise VostrackError(f"{path}: the video has no frames")
    return counts[-1], _uneven(proc.stdout)


def _uneven(framecrc: str) -> bool:
    """Whether the presentation times in ffmpeg's framecrc listing are unevenly spaced."""
    times = []
    for line in framecrc.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if line.startswith("#") or len(fields) < 3:
            continue
        try:
            times.append(int(fields[2]))
        except ValueError:
            return False  # no timestamps (raw streams): nothing to say about the rate
    steps = np.diff(np.unique(times))
    if steps.size < 2:
        return False
    typical = float(np.median(steps))
    return bool(typical > 0 and (steps.max() - steps.min()) > 0.1 * typical)


def _strip_ffmpeg_prefix(line: str) -> str:
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", line)


def _ffmpeg_reason(errors: list[str]) -> str:
    for line in errors:
        text = _strip_ffmpeg_prefix(line)
        if text and not text.lower().startswith("error opening input file"):
            return text
    return _strip_ffmpeg_prefix(errors[0]) if errors else ""
