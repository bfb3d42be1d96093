"""Throughput of `vostrack batch`: the same short videos with 1 and 2 local worker processes and
on 2 Ray actors of a one-machine Ray, measured in one run (configurations interleaved when
repeated).

    python benchmarks/batch.py [--model default] [--videos 8] [--frames 24] [--size 256x144]
                               [--mirror | --no-mirror] [--repeats 1] [--no-ray]

The videos are procedural scenes (vostrack.data.procedural) written as mp4 with their
first-frame masks, and a CSV manifest. Each configuration is the real CLI in its own process
(`python -m vostrack batch ... -q`) into a fresh output folder, so its wall time holds what a
user waits for: starting the workers and loading the model in each, then the videos. Ray is
started once, before the runs (a cluster is up before a batch is sent to it; its start is
printed apart), and each Ray run connects to it by address. Prints one markdown row per run:
wall time, videos per hour, frames per second (frames computed / wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_videos(root: Path, count: int, frames: int, width: int, height: int) -> Path:
    import imageio_ffmpeg
    import numpy as np

    from vostrack.data.procedural import SceneConfig, make_clip
    from vostrack.io.palette import write_label_png

    rows = ["input,mask"]
    for i in range(count):
        images, labels = make_clip(
            SceneConfig(height=height, width=width, num_frames=frames, num_objects=2, seed=i)
        )
        video = root / f"clip{i}.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(video),
            (width, height),
            fps=24,
            codec="libx264",
            macro_block_size=1,
            output_params=["-crf", "16"],
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for image in images:
            writer.send(np.ascontiguousarray(image))
        writer.close()
        write_label_png(root / f"clip{i}.png", labels[0])
        rows.append(f"{video.name},clip{i}.png")
    manifest = root / "jobs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def run(manifest: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "vostrack",
        "batch",
        str(manifest),
        "-o",
        str(out),
        "--model",
        args.model,
        "--mirror" if args.mirror else "--no-mirror",
        "-q",
        *extra,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    totals = json.loads((out / "batch.json").read_text())["totals"]
    return {
        "wall_s": wall,
        "videos_per_hour": 3600 * totals["complete"] / wall,
        "frames_per_second": totals["frames_computed"] / wall,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="256x144", help="WIDTHxHEIGHT of the videos")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-ray", action="store_true", help="Local workers only.")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    root = Path(tempfile.mkdtemp(prefix="vostrack-batch-bench-"))
    manifest = make_videos(root, args.videos, args.frames, width, height)
    configs = [("local, 1 worker", ["--workers", "1"]), ("local, 2 workers", ["--workers", "2"])]
    address = None
    if not args.no_ray:
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        address = ray.get_runtime_context().gcs_address
        print(f"one-machine Ray started in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        configs.append(("Ray, 2 actors (1 CPU each)", ["--ray", address, "--workers", "2"]))

    print(
        f"{args.videos} videos of {args.frames} frames, {width}x{height}, model {args.model} "
        f"({'mirrored' if args.mirror else '--no-mirror'}); {cpu_name()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("| configuration | wall s | videos/hour | frames/s |")
    print("|---|---|---|---|")
    try:
        for repeat in range(args.repeats):
            for index, (name, extra) in enumerate(configs):
                figures = run(manifest, root / f"out-{repeat}-{index}", args, extra)
                print(
                    f"| {name} | {figures['wall_s']:.1f} | {figures['videos_per_hour']:.0f} | "
                    f"{figures['frames_per_second']:.2f} |",
                    flush=True,
                )
    finally:
        if address is not None:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    main()
