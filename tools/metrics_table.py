"""The loss curve of a training run as a Markdown table: mean losses per block of steps.

    python tools/metrics_table.py RUN [--every 500]

Reads RUN/metrics.jsonl (what ``vostrack train`` logs every ``log_every`` steps); the rows of
periodic validation (``val_jf``) are listed after the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("loss", "loss_mask", "loss_part", "loss_track")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--every", type=int, default=500)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run / "metrics.jsonl").open(encoding="utf-8")]
    blocks: dict[int, list[dict]] = {}
    for row in rows:
        if "loss" in row:
            blocks.setdefault((row["step"] - 1) // args.every, []).append(row)
    print("| steps | " + " | ".join(COLUMNS) + " | steps/s |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for block, items in sorted(blocks.items()):
        means = [sum(r.get(c, 0.0) for r in items) / len(items) for c in COLUMNS]
        speed = sum(r.get("steps_per_s", 0.0) for r in items) / len(items)
        first, last = block * args.every + 1, max(r["step"] for r in items)
        print(f"| {first}-{last} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {speed:.2f} |")
    for row in rows:
        if "val_jf" in row:
            print(f"step {row['step']}: validation J&F {row['val_jf']:.3f}")


if __name__ == "__main__":
    main()
