"""Peak memory over a long run: is it flat in the number of frames?

    python benchmarks/memory.py [--frames 100 1000] [--model default] [--runtime litert]
                                [--no-mirror]

Runs `vostrack segment` (the real CLI: decoding, model, PNG writer) on procedural 854x480 frame
folders of each length, one object, and prints the peak RSS of each run. Memory must not grow
with the video's length: frames are streamed and the model's memory is bounded. Each run's
peak is its own (``os.wait4``), not the largest of the runs so far.
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--runtime", default="frozen")
    parser.add_argument("--no-mirror", action="store_true")
    args = parser.parse_args()
    print(f"{'frames':>7} {'peak RSS MiB':>13} {'frames/s':>9}")
    for frames in args.frames:
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_folder(Path(tmp) / "frames", frames)
            command = [
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
                "--runtime",
                args.runtime,
                *(["--no-mirror"] if args.no_mirror else []),
            ]
            out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
            with out_path.open("w") as out, err_path.open("w") as err:
                proc = subprocess.Popen(command, stdout=out, stderr=err)
                # Reaped here rather than by Popen, so that this child's own rusage comes back.
                _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(err_path.read_text())
            fps = out_path.read_text().rsplit("(", 1)[-1].split(" ")[0]
            print(f"{frames:>7} {usage.ru_maxrss / 1024:>13.1f} {fps:>9}")


if __name__ == "__main__":
    main()
