"""Backbones, chosen by name. Each returns a Keras model mapping an image batch (NHWC, float,
already normalised) to a dict of pyramid features {"C2": stride 4, ..., "C5": stride 32}."""

from __future__ import annotations

from collections.abc import Callable

_REGISTRY: dict[str, Callable] = {}


def register_backbone(name: str) -> Callable[[Callable], Callable]:
    """Register a backbone builder under ``name``."""

    def wrap(builder: Callable) -> Callable:
        _REGISTRY[name] = builder
        return builder

    return wrap


def backbone_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_backbone_builder(name: str) -> Callable:
    """The builder registered as ``name``; KeyError names the known ones."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def _load_all() -> None:
    # Importing a backbone module registers it; kept lazy so that `import vostrack` stays cheap.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
