"""Training speed on this machine: `vostrack train` steps/s and losses for each precision (or
any training options), in interleaved rounds of fresh runs from the same seed.

    python benchmarks/train_speed.py [--config configs/train-cpu-split.json] [--steps 60]
        [--variants "--precision float32" "--precision mixed_bfloat16"] [--rounds 2]

Each run is the real CLI in its own process, validation off; the steady rate is measured
between the 10th step and the last (the first steps compile the step function), and the
losses are the mean of the logged ones over the second half of the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(config: Path, steps: int, options: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "vostrack", "train", "--config", str(config)]
    command += ["--out", str(out), "--steps", str(steps), "-q", *options]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in logged if "steps_per_s" in m]
    early = next(m for m in logged if m["step"] >= 10)
    late = logged[-1]
    elapsed = [m["step"] / m["steps_per_s"] for m in (early, late)]  # since the first step
    losses = [m["loss"] for m in logged if m["step"] > steps // 2]
    return {
        "steps_per_s": (late["step"] - early["step"]) / (elapsed[1] - elapsed[0]),
        "loss": statistics.mean(losses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/train-cpu-split.json"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--variants", nargs="+", default=["--precision float32", "--precision mixed_bfloat16"]
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = json.loads(args.config.read_text())
    # validation off and no checkpoint but the last: the step alone is timed
    config = {**base, "val": None, "val_every": 10**9, "checkpoint_every": 10**9, "log_every": 5}
    config["warmup_steps"] = min(config.get("warmup_steps", 0), args.steps)
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}")
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(config))
        for round_ in range(args.rounds):
            for variant in args.variants:
                out = Path(folder) / f"run-{round_}-{len(results[variant])}-{abs(hash(variant))}"
                r = run(path, args.steps, shlex.split(variant), out)
                results[variant].append(r)
                print(
                    f"round {round_ + 1} {variant}: {r['steps_per_s']:.3f} steps/s, "
                    f"loss {r['loss']:.4f}",
                    flush=True,
                )
    first = statistics.median(r["steps_per_s"] for r in results[args.variants[0]])
    for variant, rows in results.items():
        rate = statistics.median(r["steps_per_s"] for r in rows)
        loss = statistics.mean(r["loss"] for r in rows)
        print(f"{variant}: median {rate:.3f} steps/s (ratio {rate / first:.2f}), loss {loss:.4f}")


if __name__ == "__main__":
    main()
