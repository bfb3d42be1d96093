"""Peak memory over a long run: is it flat in the number of frames?

    python benchmarks/memory.py [--frames 100 1000] [--model default]

Runs `vostrack segment` (the real CLI: decoding, model, PNG writer) on procedural 854x480 frame
folders of each length, one object, and prints the peak RSS of each run. Memory must not grow
with the video's length: frames are streamed and the model's memory is bounded.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2


def make_folder(folder: Path, frames: int) -> Path:
    from vostrack.data.procedural import SceneConfig, iter_scene
    from vostrack.io.palette import write_label_png

    folder.mkdir(parents=True)
    for t, (frame, labels) in enumerate(
        iter_scene(SceneConfig(num_frames=frames, num_objects=1, seed=2))
    ):
        cv2.imwrite(str(folder / f"{t:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if t == 0:
            write_label_png(folder.parent / "mask.png", labels)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    print(f"{'frames':>7} {'peak RSS MiB':>13} {'frames/s':>9}")
    for frames in args.frames:
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_folder(Path(tmp) / "frames", frames)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "vostrack",
                    "segment",
                    str(folder),
                    "--mask",
                    str(Path(tmp) / "mask.png"),
                    "-o",
                    str(Path(tmp) / "out"),
                    "-q",
                    "--model",
                    args.model,
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(proc.stderr)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            fps = proc.stdout.rsplit("(", 1)[-1].split(" ")[0]
            # ru_maxrss of children is the largest child so far: report it only if it grew.
            print(f"{frames:>7} {max(peak, before) / 1024:>13.1f} {fps:>9}")


if __name__ == "__main__":
    main()
