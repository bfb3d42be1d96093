"""Where models live and how a model name becomes a runnable :class:`Propagator`.

A model is a folder holding ``manifest.json`` (plus the files it names). ``--model`` takes a
model name, looked up in the folders below in order, or a path to such a folder:
1. ``$VOSTRACK_MODELS`` (a list of folders, separated like PATH);
2. ``models/`` of the source tree this package runs from (a clone, or an editable install);
3. ``<prefix>/share/vostrack/models`` (where a regular install puts the shipped models).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vostrack.errors import VostrackError, first_line
from vostrack.inference.contract import Propagator

if TYPE_CHECKING:
    from vostrack.inference.propagator import Runtime
    from vostrack.network.config import InferenceSettings, ModelConfig

DEFAULT_MODEL = "default"
MANIFEST = "manifest.json"
RUNTIMES = ("frozen", "keras", "litert")


def model_search_path() -> list[Path]:
    paths = [Path(p) for p in os.environ.get("VOSTRACK_MODELS", "").split(os.pathsep) if p]
    paths.append(Path(__file__).resolve().parent.parent / "models")
    paths.append(Path(sys.prefix) / "share" / "vostrack" / "models")
    return paths


def available_models() -> list[str]:
    names: set[str] = set()
    for folder in model_search_path():
        if folder.is_dir():
            names.update(p.parent.name for p in folder.glob(f"*/{MANIFEST}"))
    return sorted(names)


def resolve_model(name: str) -> Path:
    """The folder of model ``name`` (a name or a path), or a one-line error."""
    candidate = Path(name)
    if (candidate / MANIFEST).is_file():
        return candidate
    if os.sep not in name and "/" not in name:
        for folder in model_search_path():
            if (folder / name / MANIFEST).is_file():
                return folder / name
    known = ", ".join(available_models()) or "none"
    raise VostrackError(
        f"unknown model {name!r} (installed models: {known}; a path to a model "
        f"folder with a {MANIFEST} also works)"
    )


def read_manifest(model_dir: Path) -> dict:
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VostrackError(f"model {model_dir}: unreadable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict):
        raise VostrackError(
            f"model {model_dir}: {MANIFEST} must hold a mapping, not {type(manifest).__name__}"
        )
    return manifest


def manifest_config(model_dir: Path, manifest: dict) -> tuple[ModelConfig, InferenceSettings]:
    """The architecture and inference settings a manifest records (its ``config``: a model
    file's mapping), or a one-line error naming what is wrong."""
    from vostrack.network.config import model_from_dict

    values = manifest.get("config")
    if not isinstance(values, dict):
        raise VostrackError(
            f"model {model_dir}: the config in {MANIFEST} must be a mapping, "
            f"not {type(values).__name__}"
        )
    try:
        return model_from_dict(values)
    except VostrackError as exc:
        raise VostrackError(f"model {model_dir}: {MANIFEST}: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise VostrackError(
            f"model {model_dir}: invalid config in {MANIFEST} "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None


def load_propagator(
    name: str,
    runtime: str = "frozen",
    mirror: bool | None = None,
    overrides: Sequence[str] = (),
    threads: int | None = None,
) -> tuple[Propagator, dict]:
    """Load model ``name`` for ``runtime`` with its inference settings changed by ``overrides``
    (``"parts.max_parts=4"``, ...: :func:`vostrack.network.config.apply_overrides`; the frozen
    graph takes only the run-time ones); returns the propagator and a description of it.
    ``mirror`` (``--mirror/--no-mirror``) is the override ``mirror_average``; None keeps the
    model's own. ``threads``: the cores the frozen graph's ops may use (None: all)."""
    if runtime not in RUNTIMES:
        raise VostrackError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    model_dir = resolve_model(name)
    manifest = read_manifest(model_dir)
    fmt = manifest.get("format")
    from vostrack.serving.export import FORMAT, FORMERLY

    if fmt != FORMAT and fmt not in FORMERLY:
        raise VostrackError(
            f"model {name!r} has format {fmt!r}, which this version of vostrack cannot run"
        )
    from google.protobuf.message import DecodeError

    from vostrack.network.config import BAKED, RUN_TIME, apply_overrides

    overrides = [*overrides] + ([] if mirror is None else [f"mirror_average={str(mirror).lower()}"])
    config, settings = manifest_config(model_dir, manifest)
    settings = apply_overrides(
        settings,
        overrides,
        config,
        allowed=(BAKED, RUN_TIME) if runtime == "keras" else (RUN_TIME,),
    )
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not isinstance(manifest.get("tensors", {}), dict):
        raise VostrackError(
            f"model {name!r} in {model_dir}: {MANIFEST} is damaged "
            "(files and tensors must be mappings)"
        )
    try:
        if runtime == "frozen":
            from vostrack.inference.runtimes import FrozenRuntime

            backend = FrozenRuntime(
                model_dir / files["frozen_graph"], config, settings, manifest["tensors"], threads
            )
        elif runtime == "litert":
            if "litert" not in files:
                raise VostrackError(
                    f"model {name!r} in {model_dir} has no LiteRT model; make one with "
                    "`vostrack export --model MODEL --litert -o FOLDER`"
                )
            from vostrack.inference.runtimes import LiteRuntime

            try:
                backend = LiteRuntime(model_dir / files["litert"], config, settings, threads)
            except ImportError as exc:
                raise VostrackError(
                    f"--runtime litert needs the litert extra ({exc.name or exc} is not "
                    'installed): python3 -m pip install -e ".[litert]"'
                ) from None
        else:
            from vostrack.inference.runtimes import KerasRuntime
            from vostrack.network.vos import load_network

            backend = KerasRuntime(
                load_network(model_dir, config, settings, files["keras_weights"])
            )
    except (KeyError, OSError, ValueError, TypeError, DecodeError) as exc:
        raise VostrackError(
            f"model {name!r} in {model_dir} is incomplete or damaged "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None
    info = {
        "name": name,
        "path": str(model_dir),
        "runtime": runtime,
        "format": fmt,
        "version": manifest.get("version"),
        "backbone": config.backbone,
        "mirror_average": settings.mirror_average,
    }
    if overrides:
        info["overrides"] = list(overrides)
    return build_propagator(backend, name=name), info


def build_propagator(
    runtime: Runtime, mirror: bool | None = None, name: str = "vostrack"
) -> Propagator:
    """The propagator for a runtime (the frozen graph or a Keras network): the part path's when
    the network has one, averaged with the mirror image when ``mirror`` (None: the settings'
    ``mirror_average``). The one place that choice is made: segment, validate, the benchmarks
    and the trainer's validation all come here."""
    from vostrack.inference.propagator import MatchingPropagator, PartsPropagator

    propagator = (PartsPropagator if runtime.config.parts else MatchingPropagator)(
        runtime, name=name
    )
    if runtime.settings.mirror_average if mirror is None else mirror:
        from vostrack.inference.ensemble import MirroredPropagator

        propagator = MirroredPropagator(propagator)
    return propagator
