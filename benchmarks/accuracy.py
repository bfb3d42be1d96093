"""J, F and J&F per sequence on a DAVIS tree, next to RGMP's published numbers where known.

    python benchmarks/accuracy.py [--data ../shared/data/davis2016-dev] [--model default]
                                  [--runtime frozen] [--results DIR] [--set parts.max_parts=1]

Runs the model on every sequence from its first annotated frame (as `vostrack validate` does),
scores with the project's DAVIS scorer (official protocol: first and last frames excluded) and
prints one row per sequence and the mean over objects. ``--results`` scores segmentations
already written instead. ``--set KEY=VALUE`` (repeatable) changes an inference setting of the
model for this run (an ablation without retraining), as ``vostrack segment --set`` does: the
frozen graph follows the settings read at run time (``parts.max_parts``,
``matching.memory_frames``, ...); the others (``matching.top_k``, ...) are built into it at
export, so they need ``--runtime keras``, which builds the network from the settings (see
vostrack/network/config.py for each setting's kind).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

# RGMP (Oh et al., CVPR 2018) on DAVIS-2016 val, official protocol, J mean / F mean
# (../shared/data/README.md); the all-20 figure is from the paper.
RGMP = {
    "blackswan": (0.960, 0.986),
    "bmx-trees": (0.526, 0.745),
    "breakdance": (0.592, 0.631),
    "car-shadow": (0.963, 0.997),
}
RGMP_ALL20 = (0.815, 0.820, 0.818)  # J, F, J&F as published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", type=Path, default=repo.parent / "shared/data/davis2016-dev")
    parser.add_argument("--model", default="default")
    parser.add_argument("--runtime", default="frozen", choices=("frozen", "keras"))
    parser.add_argument("--results", type=Path, help="score these segmentations instead")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (JSON value)",
    )
    args = parser.parse_args()

    from vostrack.evaluation.davis import DavisTree, score
    from vostrack.evaluation.segment_tree import segment_tree
    from vostrack.inference.quiet import native_stderr_silenced
    from vostrack.registry import load_propagator

    tree = DavisTree(args.data)
    seqs = tree.sequences()
    results = args.results
    if results is None:
        results = Path(tempfile.mkdtemp(prefix="vostrack-accuracy-"))
        with native_stderr_silenced():
            propagator, info = load_propagator(args.model, args.runtime, overrides=args.settings)
        segment_tree(tree, seqs, propagator, results, info, progress=False)
    report = score(tree, results, seqs)

    changed = f" with {', '.join(args.settings)}" if args.settings else ""
    print(f"{args.data} | model {args.model}{changed} ({args.runtime}) | results {results}")
    print(f"{'sequence':<14}{'J':>7}{'F':>7}{'J&F':>7}   {'RGMP J':>7}{'RGMP F':>7}{'RGMP J&F':>9}")
    rgmp_rows = []
    for s in report.sequences:
        m = s.measures
        known = RGMP.get(s.sequence)
        theirs = (
            f"{known[0]:7.3f}{known[1]:7.3f}{sum(known) / 2:9.3f}"
            if known
            else f"{'-':>7}{'-':>7}{'-':>9}"
        )
        rgmp_rows.append(known)
        print(f"{s.sequence:<14}{m.j_mean:7.3f}{m.f_mean:7.3f}{m.jf:7.3f}   {theirs}")
    m = report.overall
    if all(rgmp_rows):
        j, f = (sum(r[i] for r in rgmp_rows) / len(rgmp_rows) for i in (0, 1))
        theirs = f"{j:7.3f}{f:7.3f}{(j + f) / 2:9.3f}"
    else:
        theirs = f"{'-':>7}{'-':>7}{'-':>9}"
    print(f"{'ALL':<14}{m.j_mean:7.3f}{m.f_mean:7.3f}{m.jf:7.3f}   {theirs}")
    print(
        f"(RGMP on all 20 DAVIS-2016 val sequences: J {RGMP_ALL20[0]:.3f}, "
        f"F {RGMP_ALL20[1]:.3f}, J&F {RGMP_ALL20[2]:.3f})"
    )


if __name__ == "__main__":
    from vostrack.errors import VostrackError

    try:
        main()
    except VostrackError as exc:  # bad data or model: one line, as the CLI gives
        raise SystemExit(f"error: {exc}") from None
