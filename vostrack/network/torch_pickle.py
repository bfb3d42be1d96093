"""Read the tensors of a torch ``.pth`` state dict with ``pickle`` and numpy alone.

Why this is hand-written: the backbone's ImageNet weights ship as a torch checkpoint, but the
product must not depend on torch (hundreds of MB, and the TF runtime never needs it), and no
library reads these files without torch (``safetensors`` reads its own format only). A state dict
is a plain pickle whose tensors are rebuilt by ``torch._utils._rebuild_tensor_v2`` from typed
storages, so a custom ``Unpickler`` that maps those globals onto numpy does the whole job.

Two on-disk layouts exist:

- legacy (``torch.save(..., _use_new_zipfile_serialization=False)``, and everything before
  torch 1.6): five pickles/blobs in a row: magic number, protocol version, sys info, the object
  pickle (tensors reference storages through ``persistent_id``), the list of storage keys in
  the order their bytes follow, then for each storage an 8-byte little-endian element count and
  its raw little-endian data;
- zip (torch >= 1.6 default): ``<archive>/data.pkl`` is the object pickle and each storage is the
  member ``<archive>/data/<key>``.

Both are supported. Only dense, CPU, little-endian tensors are handled; anything else raises.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from vostrack.errors import VostrackError

# The number torch writes first in a legacy file (torch/serialization.py: MAGIC_NUMBER).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchPickleError(VostrackError):
    """The file is not a torch checkpoint this reader understands."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only its dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage referenced by the object pickle; its bytes are filled in later (legacy
    layout) or read on demand (zip layout)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int | None):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    """A tensor view (offset, shape, strides in elements) of a storage not read yet."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self.storage = storage
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise TorchPickleError(f"storage {self.storage.key} has no data")
        if not self.shape:
            return data[self.offset].copy()
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    return data


class _Unpickler(pickle.Unpickler):
    """Maps the few torch globals a state dict uses; refuses every other non-builtin global so
    that a crafted file cannot run code (``pickle.load`` would import anything)."""

    _SAFE_GLOBALS: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file: BinaryIO, load_storage: Callable[[tuple], _Storage]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE_GLOBALS:
            return self._SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchPickleError(f"unsupported global in torch pickle: {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return self._load_storage(tuple(pid))


def _storage_type_of(pid: tuple) -> tuple[str, _StorageType, int | None]:
    # pid = ("storage", storage_type, key, location, numel[, view_metadata])
    if len(pid) < 5 or pid[0] != "storage":
        raise TorchPickleError(f"unsupported persistent id {pid[:1]!r}")
    if len(pid) > 5 and pid[5] is not None:
        raise TorchPickleError("storage views (torch < 0.4 files) are not supported")
    storage_type = pid[1]
    if not isinstance(storage_type, _StorageType):
        raise TorchPickleError(f"unsupported storage type {storage_type!r}")
    return str(pid[2]), storage_type, pid[4]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _load_legacy(f: BinaryIO) -> Any:
    magic = pickle.load(f)
    if magic != LEGACY_MAGIC:
        raise TorchPickleError("not a torch legacy checkpoint (bad magic number)")
    protocol = pickle.load(f)
    if protocol != LEGACY_PROTOCOL:
        raise TorchPickleError(f"unsupported torch legacy protocol {protocol}")
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise TorchPickleError("big-endian torch checkpoints are not supported")

    storages: dict[str, _Storage] = {}

    def load_storage(pid: tuple) -> _Storage:
        key, storage_type, numel = _storage_type_of(pid)
        if key not in storages:
            storages[key] = _Storage(key, storage_type.dtype, numel)
        return storages[key]

    obj = _Unpickler(f, load_storage).load()
    keys = pickle.load(f)
    for key in keys:
        (numel,) = np.frombuffer(f.read(8), "<i8")
        storage = storages.get(str(key))
        if storage is None:
            raise TorchPickleError(f"storage {key} is stored but never referenced")
        nbytes = int(numel) * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchPickleError(f"truncated file: storage {key} is short")
        storage.data = np.frombuffer(raw, storage.dtype)
    return _materialise(obj)


def _load_zip(path: str | os.PathLike) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchPickleError(f"{path}: zip file without a single data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}

        def load_storage(pid: tuple) -> _Storage:
            key, storage_type, _ = _storage_type_of(pid)
            if key not in storages:
                storage = _Storage(key, storage_type.dtype, None)
                storage.data = np.frombuffer(archive.read(f"{prefix}data/{key}"), storage.dtype)
                storages[key] = storage
            return storages[key]

        with archive.open(pkl[0]) as f:
            obj = _Unpickler(f, load_storage).load()
    return _materialise(obj)


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The ``{name: array}`` mapping saved in a torch ``.pth`` file, without importing torch.

    Arrays keep torch's layout (e.g. OIHW convolution kernels) and dtype.
    """
    if zipfile.is_zipfile(path):
        obj = _load_zip(path)
    else:
        with open(path, "rb") as f:
            obj = _load_legacy(f)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TorchPickleError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)
