"""Training checkpoints: the folder format, written atomically and read back by variable path.

A checkpoint is a folder ``checkpoints/step_NNNNNNN/`` of a run: ``network-NNN.npz`` (every
variable of the network), ``optimizers-NNN.npz`` (both optimizers' variables) and
``state.json`` (step, best validation J&F, the whole training config); ``checkpoints/latest``
names the newest. The arrays go in npz shards of at most :data:`SHARD_BYTES`, so that a
checkpoint can travel to and from a GPU machine, whose transfers take files of limited size.

Keys. A network array is keyed by its variable's path (``variable.path``: ``stem_conv/kernel``,
``fpn/lateral_c2/kernel``, ``mask_head/refine3_res_a/kernel``): a path says which variable an
array is, where a position fits any model whose shapes come in the same order (the mask head has
convs of identical shape: a build that created them in another order would swap them silently).
An optimizer's variable is keyed by the optimizer's role (``heads``, ``backbone``), the path of
the network variable it belongs to and its slot (``heads/mask_head/output/kernel/momentum``), or
its own name for the counters (``heads/iteration``): Keras names optimizers by creation order
(``adam_w``, ``adam_w_1``, ...), so their own variable paths change from one process to another.
Restoring checks the keys both ways (a missing or an unexpected array is a one-line error, as is
another shape), or takes only the variables under some path prefixes (:func:`restore_network`'s
``only``, e.g. the backbone) and says what it left.

Old checkpoints (written before the keys were paths; the shipped model was trained into them)
hold ``a00000``, ``a00001``, ... in variable order: they load by position, with the checks they
always had (as many arrays as variables, the same shapes), and are then restored as keyed ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vostrack.errors import VostrackError
from vostrack.io.atomic import current_umask, write_json, write_text
from vostrack.training.config import BACKBONE, TrainConfig

if TYPE_CHECKING:
    from vostrack.network.config import InferenceSettings

log = logging.getLogger(__name__)

SHARD_BYTES = 15 * 2**20
NETWORK, OPTIMIZERS = "network", "optimizers"  # the shard prefixes
_POSITIONAL = re.compile(r"a\d{5}")


# ---------------------------------------------------------------------------------- arrays
def save_arrays(folder: Path, prefix: str, arrays: Mapping[str, np.ndarray]) -> None:
    """``arrays`` under their keys, in order, in npz shards ``prefix-NNN.npz`` of at most
    :data:`SHARD_BYTES` each (one array larger than that gets a shard of its own)."""
    shard: dict[str, np.ndarray] = {}
    size, index = 0, 0
    for key, array in arrays.items():
        if shard and size + array.nbytes > SHARD_BYTES:
            np.savez(folder / f"{prefix}-{index:03d}.npz", **shard)
            shard, size, index = {}, 0, index + 1
        shard[key] = array
        size += array.nbytes
    np.savez(folder / f"{prefix}-{index:03d}.npz", **shard)


def load_arrays(folder: Path, prefix: str) -> dict[str, np.ndarray]:
    """Every array of the ``prefix`` shards of ``folder`` by key, in the order they were saved."""
    arrays: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob(f"{prefix}-*.npz")):
        with np.load(path) as data:
            arrays.update({k: data[k] for k in data.files})
    return arrays


def is_positional(arrays: Mapping[str, Any]) -> bool:
    """An old checkpoint's arrays: keyed ``a00000``, ``a00001``, ... by position."""
    return bool(arrays) and all(_POSITIONAL.fullmatch(k) for k in arrays)


def _unique(keys: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise VostrackError(
                f"two variables of the {what} share the key {key}: a checkpoint "
                "could not tell them apart"
            )
        seen.add(key)
    return keys


def network_keys(network: Any) -> list[str]:
    """The key of each of ``network.variables``, in order: its path."""
    return _unique([v.path for v in network.variables], "network")


def optimizer_keys(role: str, optimizer: Any, variables: Sequence[Any]) -> list[str]:
    """The key of each of ``optimizer.variables``, in order: ``role/<path>/<slot>`` for a slot of
    one of ``variables`` (Keras names a slot ``<path with _ for />_<slot>``; the longest path
    that fits wins), ``role/<name>`` for the others (``iteration``, ``learning_rate``)."""
    owners = {v.path.replace("/", "_") + "_": v.path for v in variables}
    keys = []
    for slot in optimizer.variables:
        name = slot.name
        key = f"{role}/{name}"
        for cut in (i for i in range(len(name) - 1, 0, -1) if name[i] == "_"):
            owner = owners.get(name[: cut + 1])
            if owner is not None:
                key = f"{role}/{owner}/{name[cut + 1 :]}"
                break
        keys.append(key)
    return _unique(keys, "optimizers")


def network_arrays(network: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.numpy()) for k, v in zip(network_keys(network), network.variables)}


def optimizer_arrays(
    optimizers: Mapping[str, Any], variables: Sequence[Any]
) -> dict[str, np.ndarray]:
    """The variables of ``optimizers`` (role -> optimizer, built on some of ``variables``)."""
    return {
        k: np.asarray(v.numpy())
        for role, optimizer in optimizers.items()
        for k, v in zip(optimizer_keys(role, optimizer, variables), optimizer.variables)
    }


# ---------------------------------------------------------------------------------- restore
@dataclass
class Restored:
    """What a restore did: the keys assigned, the checkpoint's arrays it did not take, and the
    variables it left as they were (a partial restore)."""

    assigned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _some(keys: Sequence[str]) -> str:
    return ", ".join(keys[:3]) + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")


def _matches(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p.rstrip("/") + "/") for p in prefixes)


def restore_variables(
    variables: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    where: Path | str,
    only: Sequence[str] | None = None,
) -> Restored:
    """Assign ``arrays`` to ``variables`` (both by key). All of them, each array to its variable
    (a missing, an unexpected or a misshapen array is a one-line :class:`VostrackError`), or with
    ``only`` the variables whose key is one of those or lies under one (``"fpn"`` takes
    ``fpn/...``), which must all be in the checkpoint; the rest stay as they are."""
    if is_positional(arrays):
        arrays = _by_position(list(variables), list(arrays.values()), where)
    report = Restored()
    if only is None:
        wanted = list(variables)
        unexpected = [k for k in arrays if k not in variables]
        if unexpected:
            raise VostrackError(
                f"checkpoint {where} holds {_some(unexpected)}, which the model "
                "does not have: it was made with another config"
            )
    else:
        wanted = [k for k in variables if _matches(k, only)]
        idle = [p for p in only if not any(_matches(k, [p]) for k in variables)]
        if idle:
            raise VostrackError(f"no variable of the model lies under {_some(idle)}")
        report.skipped = [k for k in arrays if k not in wanted]
        report.kept = [k for k in variables if k not in wanted]
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise VostrackError(
            f"checkpoint {where} has no {_some(missing)}: it was made with another config"
        )
    for key in wanted:  # every shape first: a misfit assigns nothing
        if tuple(variables[key].shape) != arrays[key].shape:
            raise VostrackError(
                f"checkpoint {where} does not fit the model ({key}: "
                f"{arrays[key].shape} vs {tuple(variables[key].shape)})"
            )
    for key in wanted:
        variables[key].assign(arrays[key])
    report.assigned = wanted
    return report


def _by_position(
    keys: list[str], arrays: list[np.ndarray], where: Path | str
) -> dict[str, np.ndarray]:
    """An old checkpoint's arrays keyed by the variables they were saved from: the same config
    builds the same variables in the same order, which is all an old checkpoint can be checked
    against (as it always was: the count here, the shapes when assigned)."""
    if len(keys) != len(arrays):
        raise VostrackError(
            f"checkpoint {where} holds {len(arrays)} arrays, the model has "
            f"{len(keys)}: it was made with another config"
        )
    log.info("%s: an old checkpoint, its arrays taken in variable order", where)
    return dict(zip(keys, arrays))


def backbone_paths(network: Any) -> list[str]:
    """The paths of the backbone's variables (the network's encoder): they share no prefix."""
    return [v.path for v in network.encoder.variables]


def restore_network(network: Any, checkpoint: Path, only: Sequence[str] | None = None) -> Restored:
    """The network's variables from ``checkpoint`` (a checkpoint folder, or any folder of
    ``network-*.npz`` shards), all of them or those under ``only`` (path prefixes;
    :data:`~vostrack.training.config.BACKBONE` stands for the backbone's variables)."""
    if only is not None:
        only = [
            p for name in only for p in (backbone_paths(network) if name == BACKBONE else [name])
        ]
    variables = dict(zip(network_keys(network), network.variables))
    report = restore_variables(variables, load_arrays(checkpoint, NETWORK), checkpoint, only)
    if report.kept:
        log.info(
            "%s: restored %d variables, kept %d as built, skipped %d of the checkpoint's",
            checkpoint,
            len(report.assigned),
            len(report.kept),
            len(report.skipped),
        )
    return report


def restore_optimizers(
    optimizers: Mapping[str, Any], variables: Sequence[Any], checkpoint: Path
) -> Restored:
    """The variables of ``optimizers`` (role -> optimizer, as :func:`optimizer_arrays`)."""
    keyed = {
        k: v
        for role, optimizer in optimizers.items()
        for k, v in zip(optimizer_keys(role, optimizer, variables), optimizer.variables)
    }
    return restore_variables(keyed, load_arrays(checkpoint, OPTIMIZERS), checkpoint)


# --------------------------------------------------------------------------------- folders
def write_checkpoint(
    folder: Path,
    step: int,
    network: Mapping[str, np.ndarray],
    optimizers: Mapping[str, np.ndarray],
    state: dict,
) -> Path:
    """Write ``folder/step_NNNNNNN`` atomically and point ``folder/latest`` at it."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    # An exclusive, randomly named folder: a fixed temporary name could be a planted link.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 is for the name, not the result
        save_arrays(tmp, NETWORK, network)
        save_arrays(tmp, OPTIMIZERS, optimizers)
        write_json(tmp / "state.json", state)
        shutil.rmtree(folder / name, ignore_errors=True)
        os.replace(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text(folder / "latest", name + "\n")
    return folder / name


def read_state(checkpoint: Path) -> dict:
    """A checkpoint's ``state.json``: step, best, config."""
    return json.loads((checkpoint / "state.json").read_text())


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def checkpoint_config(path: Path) -> tuple[Path, TrainConfig]:
    """The checkpoint folder (a run folder stands for its latest one) and its training config."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise VostrackError(f"{path} holds no checkpoint")
        path = found
    if not (path / "state.json").is_file():
        raise VostrackError(f"{path} is not a checkpoint (no state.json)")
    return path, TrainConfig.from_dict(read_state(path)["config"])


def checkpoint_network(path: Path, settings: InferenceSettings | None = None) -> Any:
    """The network of a checkpoint (or of a run folder's latest one), for export: its trained
    architecture run with ``settings`` (None: the training config's; they do not change the
    weights), every variable restored by its path."""
    from vostrack.network.vos import VosNetwork

    path, config = checkpoint_config(path)
    settings = config.settings if settings is None else settings
    network = VosNetwork(config.model, settings, weights=None)
    restore_network(network, path)
    return network
