"""Speed and memory of the per-frame step at 854x480 (frozen TF graph by default).

    python benchmarks/speed.py [--model default] [--runtime frozen] [--frames 60] [--objects 1 5]
                               [--mirror | --no-mirror] [--set KEY=VALUE ...]
                               [--variants "" "KEY=VALUE,KEY=VALUE" ... --rounds 3]

``--variants`` compares settings (each a comma-separated list of ``--set`` values, "" for none)
in interleaved rounds in one sitting (this machine's speed moves between runs), and prints each
variant's median frames/s over the rounds and its ratio to the first.

Each configuration runs in its own process (so that peak RSS is its own): frames come from the
procedural scene generator (streamed, like a video), the model sees the first frame's mask and
then steps through the rest. Prints frames per second (after a warm-up of 3 frames), the median
step time and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

from vostrack.registry import RUNTIMES


def child(
    model: str,
    runtime: str,
    frames: int,
    objects: int,
    mirror: bool | None,
    settings: list[str] | None = None,
) -> dict:
    import numpy as np

    from vostrack.data.procedural import SceneConfig, iter_scene
    from vostrack.inference.quiet import native_stderr_silenced
    from vostrack.registry import load_propagator

    with native_stderr_silenced():
        propagator, info = load_propagator(model, runtime, mirror, settings or ())
    scene = iter_scene(
        SceneConfig(height=480, width=854, num_frames=frames, num_objects=objects, seed=1)
    )
    frame, labels = next(scene)
    reference = propagator.encode_reference(frame, labels)
    state = propagator.initial_state(frame, labels, reference)
    times = []
    for frame, _ in scene:
        start = time.perf_counter()
        _, state = propagator.step(frame, reference, state)
        times.append(time.perf_counter() - start)
    steady = np.array(times[3:])
    return {
        "model": model,
        "runtime": runtime,
        "mirror": info["mirror_average"],
        "objects": objects,
        "frames": frames,
        "fps": round(1 / steady.mean(), 2),
        "median_step_ms": round(1000 * np.median(steady), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--runtime", default="frozen", choices=list(RUNTIMES))
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each frame with its mirror image (default: the model's)",
    )
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="K=V")
    parser.add_argument("--variants", nargs="+", help="settings to compare, interleaved")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(
                    args.model,
                    args.runtime,
                    args.frames,
                    args.objects[0],
                    args.mirror,
                    args.settings,
                )
            )
        )
        return
    if args.variants:
        compare(args)
        return
    print(
        f"# {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    print(f"{'objects':>7} {'frames/s':>9} {'median ms':>10} {'peak RSS MiB':>13}")
    for objects in args.objects:
        r = run_child(args, objects, args.settings)
        print(f"{objects:>7} {r['fps']:>9} {r['median_step_ms']:>10} {r['peak_rss_mib']:>13}")


def run_child(args: argparse.Namespace, objects: int, settings: list[str]) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--model",
            args.model,
            "--runtime",
            args.runtime,
            "--frames",
            str(args.frames),
            "--objects",
            str(objects),
            *(f"--set={s}" for s in settings),
        ]
        + ([] if args.mirror is None else ["--mirror" if args.mirror else "--no-mirror"]),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> None:
    import statistics

    variants = [[s for s in v.split(",") if s] for v in args.variants]
    fps: list[list[float]] = [[] for _ in variants]
    for round_ in range(args.rounds):
        for i, settings in enumerate(variants):
            r = run_child(args, args.objects[0], settings)
            fps[i].append(r["fps"])
            print(f"round {round_ + 1} {args.variants[i] or '(as shipped)'}: {r['fps']} frames/s")
    base = statistics.median(fps[0])
    for name, values in zip(args.variants, fps):
        median = statistics.median(values)
        print(f"{name or '(as shipped)'}: median {median} frames/s, ratio {median / base:.3f}")


if __name__ == "__main__":
    main()
