"""The inference path outside the network imports neither TensorFlow nor keras: a runtime that
needs neither (and a CLI that answers --help or refuses bad input at once) depends on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LIGHT = [
    "vostrack",
    "vostrack.cli",
    "vostrack.registry",
    "vostrack.inference.pipeline",
    "vostrack.inference.propagator",
    "vostrack.inference.ensemble",
    "vostrack.inference.segmenter",
    "vostrack.io.frames",
    "vostrack.io.masks",
    "vostrack.io.writers",
    "vostrack.network.config",
    "vostrack.network.parts",
]


def test_the_inference_path_imports_no_tensorflow_nor_keras():
    script = (
        "import importlib, sys\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported: {done.stdout.strip()}"
