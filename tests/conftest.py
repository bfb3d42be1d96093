"""Shared fixtures: small generated videos and masks, the network test double, and a tiny real
network (matching branch, ImageNet backbone) with its exported model folder."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from tests.doubles import ColourPropagator
from vostrack.io.palette import write_label_png

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_matching_config():
    """The tiny matching network's architecture and settings."""
    from vostrack.network.config import InferenceSettings, MatchingSettings, ModelConfig

    return ModelConfig(name="tiny", parts=None), InferenceSettings(
        working_short_side=96, matching=MatchingSettings(memory_frames=3)
    )


@pytest.fixture(scope="session")
def tiny_network():
    """The tiny matching network (built once per session: several modules read it, none
    changes it)."""
    from vostrack.network.vos import VosNetwork

    return VosNetwork(*tiny_matching_config())


@pytest.fixture(scope="session")
def tiny_model(tiny_network, tmp_path_factory) -> Path:
    """``tiny_network`` exported: a complete model folder (frozen graph, SavedModel, weights)."""
    from vostrack.serving.export import export_model

    return export_model(tiny_network, tmp_path_factory.mktemp("models") / "tiny", "tiny")


@pytest.fixture(autouse=True)
def _restore_vostrack_logger():
    """The CLI points the ``vostrack`` logger at its own handler and stops propagation (to keep
    the progress bar intact); undo that after each in-process CLI run, so that a later test's
    ``caplog`` sees the library's warnings whatever ran before it."""
    logger = logging.getLogger("vostrack")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def write_video(path: Path, frames, fps: float = 10.0, crf: int = 12) -> Path:
    """Encode RGB frames as H.264 mp4 (nearly lossless, so colours survive)."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv444p",
        macro_block_size=1,
        output_params=["-crf", str(crf)],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def squares_clip(
    num_frames: int = 12, height: int = 64, width: int = 96, appear_at: dict[int, int] | None = None
):
    """Flat-colour squares moving over a dark background: exact ground truth, and colours that
    survive video compression, so the colour double tracks them perfectly."""
    appear_at = appear_at or {}
    colours = {1: (230, 40, 40), 2: (40, 200, 60), 3: (60, 80, 230)}
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[:] = (20, 20, 20)
    labels = np.zeros((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        for k, colour in colours.items():
            if t < appear_at.get(k, 0):
                continue
            y = 8 + 14 * (k - 1)
            x = 4 + 2 * t + 10 * (k - 1)
            frames[t, y : y + 12, x : x + 12] = colour
            labels[t, y : y + 12, x : x + 12] = k
    return frames, labels


@pytest.fixture
def squares(tmp_path):
    """(video path, frames, labels, first-frame mask path) of a 12-frame 64x96 clip."""
    frames, labels = squares_clip()
    video = write_video(tmp_path / "squares.mp4", frames)
    mask = tmp_path / "mask.png"
    write_label_png(mask, labels[0])
    return video, frames, labels, mask


def write_frame_folder(folder: Path, frames, names=None, ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:05d}" for i in range(len(frames))]
    paths = []
    for name, frame in zip(names, frames):
        path = folder / f"{name}{ext}"
        cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


@pytest.fixture
def double(monkeypatch):
    """Make every model name load the colour double (the network is not part of this test)."""
    propagator = ColourPropagator()

    def load(name, runtime="frozen", mirror=None, overrides=()):
        return propagator, {"name": name, "runtime": runtime, "kind": "test-double"}

    monkeypatch.setattr("vostrack.registry.load_propagator", load)
    return propagator


def fails(args, *needles) -> str:
    """Run the CLI; it must fail with one line on stderr (no traceback) holding every needle."""
    from click.testing import CliRunner

    from vostrack.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def jax_env() -> dict[str, str]:
    """Environment for a subprocess on the JAX backend (CPU), or skip the calling test when JAX
    is neither installed nor in the folders of ``VOSTRACK_JAX_PATH`` (default /tmp/jaxpkgs, where
    a dev set-up may install it with ``pip install --target``)."""
    extra = os.environ.get("VOSTRACK_JAX_PATH", "/tmp/jaxpkgs")
    if importlib.util.find_spec("jax") is not None:
        extra = ""
    elif not any((Path(p) / "jax" / "__init__.py").is_file() for p in extra.split(os.pathsep) if p):
        pytest.skip("JAX is not installed (set VOSTRACK_JAX_PATH to a folder that has it)")
    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (extra, repo, os.environ.get("PYTHONPATH", "")) if p)
    return dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=path,
        **_jax_cache(),
    )


@functools.cache
def _jax_cache() -> dict[str, str]:
    """One XLA compilation cache for this test session's JAX subprocesses: each builds the
    network, whose first run compiles every op on its own (~900 small programs, 30-40 s on
    these CPUs), and later processes find them compiled. Fresh for every session."""
    folder = tempfile.mkdtemp(prefix="vostrack-jax-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return {
        "JAX_COMPILATION_CACHE_DIR": folder,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def run_on_jax(script: str, workdir: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter on the JAX backend in ``workdir``; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=workdir,
        env=jax_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
