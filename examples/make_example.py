"""Make the README's example: a procedural video of 3 textured shapes and its first-frame mask.

    python examples/make_example.py [--out examples] [--ground-truth DIR]

Writes ``shapes.mp4`` (854x480, 96 frames = 4 s at 24 fps, H.264 yuv420p) and
``shapes_mask.png`` (DAVIS palette PNG: 0 background, objects 1..3, on frame 0) into ``--out``.
``--ground-truth DIR`` also writes the label PNG of every frame (``00000.png`` ...) so a run on
the video can be scored. Everything comes from :mod:`vostrack.data.procedural`, so the example
is made by the project itself (no third-party media) and is identical every time it is remade
(the mp4 bytes depend on the bundled ffmpeg/x264 build; the frames before encoding do not).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

# Run from a checkout without installing: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vostrack.data.procedural import Scene, SceneConfig  # noqa: E402
from vostrack.io.atomic import atomic_path  # noqa: E402
from vostrack.io.palette import write_label_png  # noqa: E402

FPS = 24

#: The example scene. Seed 7 was chosen because all three objects are fully visible on frame 0
#: (a clean reference mask) and they cross each other repeatedly afterwards (real occlusion,
#: each object partly hidden at some point, none hidden for long).
EXAMPLE = SceneConfig(
    height=480,
    width=854,
    num_frames=4 * FPS,
    num_objects=3,
    seed=7,
    object_size=(0.17, 0.25),
    speed=0.014,
    shapes=("star", "blob", "polygon"),
    textures=("stripes", "noise", "checker"),
)


def _readable(path: Path) -> None:
    """Give a file the usual permissions (atomic writes create 0600 temporary files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_mp4(path: Path, frames, crf: int) -> None:
    """Encode RGB uint8 frames as H.264 (yuv420p, playable anywhere), atomically."""
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(
            tmp,
            format="FFMPEG",
            mode="I",
            fps=FPS,
            codec="libx264",
            quality=None,
            pixelformat="yuv420p",
            macro_block_size=1,
            ffmpeg_params=[
                "-crf",
                str(crf),
                "-preset",
                "slow",
                "-movflags",
                "+faststart",
                "-map_metadata",
                "-1",
            ],
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder for shapes.mp4 and shapes_mask.png (default: examples/)",
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write every frame's label PNG here (00000.png, ...)",
    )
    parser.add_argument(
        "--crf",
        type=int,
        default=20,
        help="x264 constant rate factor: lower = better and bigger (default 20)",
    )
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.ground_truth is not None:
        args.ground_truth.mkdir(parents=True, exist_ok=True)

    scene = Scene(EXAMPLE)
    first_labels: list[np.ndarray] = []

    def frames():
        for rendered in scene:
            if rendered.index == 0:
                first_labels.append(rendered.labels)
            if args.ground_truth is not None:
                gt_path = args.ground_truth / f"{rendered.index:05d}.png"
                write_label_png(gt_path, rendered.labels)
                _readable(gt_path)
            yield rendered.frame

    video = args.out / "shapes.mp4"
    write_mp4(video, frames(), args.crf)
    mask = first_labels[0]
    ids = sorted(int(i) for i in np.unique(mask) if i != 0)
    if ids != list(range(1, EXAMPLE.num_objects + 1)):
        print(f"error: first-frame mask holds ids {ids}", file=sys.stderr)
        return 1
    write_label_png(args.out / "shapes_mask.png", mask)
    _readable(video)
    _readable(args.out / "shapes_mask.png")
    print(
        f"wrote {video} ({video.stat().st_size / 1e6:.2f} MB, {EXAMPLE.num_frames} frames, "
        f"{EXAMPLE.width}x{EXAMPLE.height} @ {FPS} fps) and {args.out / 'shapes_mask.png'}"
    )
    if args.ground_truth is not None:
        print(f"wrote {EXAMPLE.num_frames} label PNGs to {args.ground_truth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
