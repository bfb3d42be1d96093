"""`vostrack validate-backbone`: ImageNet val top-1/top-5 on a tiny generated val set, the label
formats and their class orders, the per-backbone eval preprocessing, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vostrack.cli import cli
from vostrack.errors import VostrackError
from vostrack.evaluation import imagenet
from vostrack.evaluation.imagenet import (
    Result,
    ValSet,
    efficientnet_eval_crop,
    evaluate,
    load_val_set,
    read_labels,
    read_synsets,
    resize_bicubic_tf1,
    resize_bilinear_tf1,
    resnet_v2_eval_crop,
)

skimage_data = pytest.importorskip("skimage.data")

# The images and their true classes in sorted-synset order (what the models output).
# chelsea: Egyptian cat; coffee: espresso; rocket (a launch vehicle, which ImageNet lacks):
# missile, which EfficientNet-Lite2 ranks second (top-5 hit, top-1 miss); astronaut: labelled
# tench on purpose, a class no model puts in its top 5 for a portrait (miss in both).
CLASSES = {285: "n02124075", 967: "n07920052", 657: "n03773504", 0: "n01440764"}
IMAGES = [("chelsea", 285), ("coffee", 967), ("rocket", 657), ("astronaut", 0)]
EXPECTED = "top-1 50.00 %  top-5 75.00 %  (4 images)"  # chelsea, coffee top-1; rocket top-5


def sorted_wnids() -> list[str]:
    """1000 sorted wnids with the real ones of CLASSES at their real sorted positions.

    Only the classes used here need their real wnid; the others are filled with made-up ids
    that keep the list sorted (consecutive numbers after each real one: the gaps between the
    real ones are far larger than the number of classes between them), so the sorted position
    of every real wnid is its class index, which is all that the conversion depends on.
    """
    anchors = sorted((k, int(w[1:])) for k, w in CLASSES.items())
    wnids = []
    for k in range(imagenet.NUM_CLASSES):
        base_k, base = max(a for a in anchors if a[0] <= k)
        wnids.append(f"n{base + k - base_k:08d}")
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert all(wnids[k] == w for k, w in CLASSES.items())
    return wnids


def devkit_order() -> list[str]:
    """A stand-in for the devkit's synset list: the same wnids in a fixed shuffled order (the
    devkit's ILSVRC2012_IDs are not the sorted order, which is the point of the conversion)."""
    wnids = sorted_wnids()
    order = np.random.default_rng(2012).permutation(len(wnids))
    return [wnids[i] for i in order]


def rgb(name: str) -> np.ndarray:
    image = getattr(skimage_data, name)()
    return image[..., :3] if image.ndim == 3 else np.stack([image] * 3, -1)


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    """A flat val folder with official names, the devkit ground truth and synset list, and the
    two-column sorted-order labels of the same images."""
    root = tmp_path_factory.mktemp("imagenet")
    data = root / "val"
    data.mkdir()
    devkit = devkit_order()
    ids, pairs = [], []
    for i, (name, label) in enumerate(IMAGES, start=1):
        file_name = f"ILSVRC2012_val_{i:08d}.JPEG"
        Image.fromarray(rgb(name)).save(data / file_name, quality=95)
        ids.append(devkit.index(CLASSES[label]) + 1)  # 1-based ILSVRC2012_ID
        pairs.append(f"{file_name} {label}")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, ids)) + "\n")
    (root / "synsets.txt").write_text("\n".join(devkit) + "\n")
    (root / "val.txt").write_text("\n".join(pairs) + "\n")
    return root


def gt(val):
    return val / "ILSVRC2012_validation_ground_truth.txt"


@pytest.fixture(scope="module")
def classifiers():
    return {}


@pytest.fixture
def cached_models(monkeypatch, classifiers):
    """Build each classifier once for the whole module (the CLI would build it per run)."""
    real = imagenet.load_classifier

    def load(backbone, checkpoint=None):
        key = (backbone, str(checkpoint))
        if key not in classifiers:
            classifiers[key] = real(backbone, checkpoint)
        return classifiers[key]

    monkeypatch.setattr(imagenet, "load_classifier", load)


def run(*args):
    return CliRunner().invoke(cli, ["validate-backbone", *map(str, args)])


def fails(*args, needles=()):
    result = run(*args)
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------- end to end
def test_devkit_ground_truth_with_synsets(val, cached_models):
    result = run("--data", val / "val", "--labels", gt(val), "--synsets", val / "synsets.txt", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == EXPECTED


def test_limit_and_batches(val, cached_models):
    # cat + espresso only: both top-1; batch size 1 exercises the padding and batching.
    result = run(
        "--data", val / "val", "--labels", val / "val.txt", "--limit", 2, "--batch-size", 1, "-q"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "top-1 100.00 %  top-5 100.00 %  (2 images)"
    result = run("--data", val / "val", "--labels", val / "val.txt", "--batch-size", 3)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == EXPECTED
    assert "4 images (flat)" in result.stderr


def test_synset_folders(val, tmp_path, cached_models):
    data = tmp_path / "val"
    for i, (_name, label) in enumerate(IMAGES, start=1):
        folder = data / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(
            (val / "val" / f"ILSVRC2012_val_{i:08d}.JPEG").read_bytes()
        )
    result = run("--data", data, "--synsets", val / "synsets.txt", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == EXPECTED
    # Labels given too: they must agree with the folders (both formats).
    for labels in (["--labels", val / "val.txt"], ["--labels", gt(val)]):
        result = run("--data", data, "--synsets", val / "synsets.txt", *labels, "-q")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == EXPECTED
    # Without --synsets the folders must be the 1000 classes.
    fails("--data", data, needles=["4 synset folders", "--synsets"])
    for wnid in sorted_wnids():
        (data / wnid).mkdir(exist_ok=True)
    assert np.array_equal(load_val_set(data).labels, [285, 967, 657, 0])


def test_resnet50_v2_drops_the_background_logit(val, tmp_path, cached_models):
    """End to end on a ResNet whose classifier is rigged: background (logit 0) highest, then
    logit 286 = class 285, then the other logits in increasing order. Dropping the background
    gives 285 for every image (top-5: 285, 999, 998, 997, 996)."""
    from vostrack.network.backbones import get_backbone_builder

    model = get_backbone_builder("resnet50_v2")(
        weights=None, include_top=True, input_shape=(224, 224, 3)
    )
    dense = model.get_layer("logits")
    kernel, bias = dense.get_weights()
    bias = np.arange(1001, dtype=np.float32) / 1000
    bias[0], bias[286] = 100.0, 10.0
    dense.set_weights([np.zeros_like(kernel), bias])
    weights = tmp_path / "rigged.weights.h5"
    model.save_weights(str(weights))
    result = run(
        "--data",
        val / "val",
        "--labels",
        val / "val.txt",
        "--backbone",
        "resnet50_v2",
        "--checkpoint",
        weights,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "top-1 25.00 %  top-5 25.00 %  (4 images)"


def test_background_offset_and_topk_counting(val):
    labels = read_labels(val / "val.txt")
    val_set = ValSet(tuple(sorted((val / "val").iterdir())), np.array(labels.values), "flat")

    def classifier(batch):  # 1001 logits: class k is logit k + 1
        logits = np.zeros((len(batch), 1001), np.float32)
        logits[:, 1:] = np.arange(1000) / 1000 - 1  # class 0 lowest, 999 highest of the rest
        logits[:, 0] = 50.0  # background: must never count
        logits[:, 1 + 285] = 9.0
        logits[:, 1 + 657] = 8.0
        logits[:, 1 + 967] = 7.0
        return logits

    result = evaluate(val_set, "resnet50_v2", batch_size=3, progress=False, classifier=classifier)
    # chelsea (285) top-1; rocket (657) and coffee (967) top-5; astronaut (0) neither, though
    # taking logit k as class k (background kept) would rank class 0 first.
    assert result == Result(1, 3, 4)
    assert result.line() == "top-1 25.00 %  top-5 75.00 %  (4 images)"


# ----------------------------------------------------------------------- label formats
def test_devkit_and_sorted_formats_give_the_same_classes(val):
    devkit = load_val_set(val / "val", gt(val), val / "synsets.txt")
    two_column = load_val_set(val / "val", val / "val.txt")
    assert np.array_equal(devkit.labels, [285, 967, 657, 0])
    assert np.array_equal(two_column.labels, [285, 967, 657, 0])
    assert read_labels(gt(val)).kind == "devkit" and read_labels(val / "val.txt").kind == "sorted"


def test_synsets_as_a_meta_export(val, tmp_path):
    """'ID wnid name' lines in any order, with the non-leaf synsets (IDs > 1000) of meta.mat,
    and map_clsloc.txt's 'wnid ID name' give the same list."""
    devkit = devkit_order()
    lines = [f"{i} {w} some name, with words" for i, w in enumerate(devkit, start=1)]
    lines += ["1001 n00001740 entity", "1860 n00002137 abstraction"]
    rng = np.random.default_rng(0)
    meta = tmp_path / "meta.txt"
    meta.write_text("# ILSVRC2012_ID WNID words\n" + "\n".join(rng.permutation(lines)) + "\n")
    assert read_synsets(meta) == devkit
    clsloc = tmp_path / "map_clsloc.txt"
    clsloc.write_text("\n".join(f"{w} {i} name" for i, w in enumerate(devkit, start=1)))
    assert read_synsets(clsloc) == devkit
    assert np.array_equal(load_val_set(val / "val", gt(val), meta).labels, [285, 967, 657, 0])


def test_two_column_labels_match_by_file_name(val, tmp_path):
    shuffled = tmp_path / "val.txt"
    lines = (val / "val.txt").read_text().splitlines()
    shuffled.write_text("\n".join(reversed(lines)))
    assert np.array_equal(load_val_set(val / "val", shuffled).labels, [285, 967, 657, 0])


# ----------------------------------------------------------------------- preprocessing
def test_tf1_resizers_match_tensorflow():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    for h, w, oh, ow in [
        (375, 500, 256, 341),
        (300, 451, 260, 260),
        (231, 231, 260, 260),
        (9, 7, 3, 20),
    ]:
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        batch = image[None].astype(np.float32)
        want = tf.compat.v1.image.resize_bilinear(
            batch, [oh, ow], align_corners=False, half_pixel_centers=False
        )[0].numpy()
        np.testing.assert_allclose(resize_bilinear_tf1(image, oh, ow), want, atol=1e-3)
        want = tf.compat.v1.image.resize_bicubic(
            batch, [oh, ow], align_corners=False, half_pixel_centers=False
        )[0].numpy()
        np.testing.assert_allclose(resize_bicubic_tf1(image, oh, ow), want, atol=1e-3)


def test_eval_crops_follow_the_official_code():
    tf = pytest.importorskip("tensorflow")
    image = rgb("chelsea")  # 300 x 451
    # r1.8 ResNet: short side 256 -> 256 x 384 (int(451 * 256 / 300) = 384), centre 224.
    resized = tf.compat.v1.image.resize_images(
        image.astype(np.float32), [256, 384], tf.image.ResizeMethod.BILINEAR
    )
    want = resized.numpy()[16:240, 80:304]
    np.testing.assert_allclose(resnet_v2_eval_crop(image), want, atol=1e-3)
    # TPU EfficientNet: crop int(260 / 292 * 300) = 267, offsets (300-267+1)//2, (451-267+1)//2.
    crop = image[17:284, 92:359].astype(np.float32)
    want = tf.compat.v1.image.resize_bicubic(crop[None], [260, 260])[0].numpy()
    np.testing.assert_allclose(efficientnet_eval_crop(image), want, atol=1e-3)


# ----------------------------------------------------------------------- errors
def test_errors_are_one_line(val, tmp_path, cached_models):
    data, synsets = val / "val", val / "synsets.txt"
    fails(needles=["--data"])
    fails("--data", tmp_path / "nope", "--labels", val / "val.txt", needles=["not found"])
    (tmp_path / "empty").mkdir()
    fails("--data", tmp_path / "empty", "--labels", val / "val.txt", needles=["no images"])
    fails("--data", data, needles=["--labels"])
    fails("--data", data, "--labels", gt(val), needles=["--synsets"])
    fails("--data", data, "--labels", tmp_path / "none.txt", needles=["not found"])
    fails(
        "--backbone",
        "resnet50_v2",
        "--data",
        data,
        "--labels",
        val / "val.txt",
        needles=["--checkpoint"],
    )
    fails(
        "--data",
        data,
        "--labels",
        val / "val.txt",
        "--checkpoint",
        tmp_path,
        needles=["only for resnet50_v2"],
    )
    fails(
        "--backbone",
        "resnet50_v2",
        "--checkpoint",
        tmp_path / "model.ckpt-1",
        "--data",
        data,
        "--labels",
        val / "val.txt",
        needles=["checkpoint not found"],
    )

    short = tmp_path / "short.txt"
    short.write_text("\n".join(gt(val).read_text().split()[:3]))
    fails("--data", data, "--labels", short, "--synsets", synsets, needles=["3 labels", "4 images"])
    too_many = tmp_path / "many.txt"
    too_many.write_text((val / "val.txt").read_text() + "ILSVRC2012_val_00000005.JPEG 1\n")
    fails("--data", data, "--labels", too_many, needles=["5 labels", "4 images"])
    bad = tmp_path / "bad.txt"
    bad.write_text((val / "val.txt").read_text().replace(" 657", " 1000"))
    fails("--data", data, "--labels", bad, needles=["label 1000 outside 0..999"])
    bad.write_text("0\n1\n2\n3\n")
    fails("--data", data, "--labels", bad, "--synsets", synsets, needles=["outside 1..1000"])
    bad.write_text("a b c\n")
    fails("--data", data, "--labels", bad, needles=["expected"])

    sorted_list = tmp_path / "sorted.txt"
    sorted_list.write_text("\n".join(sorted_wnids()))
    fails("--data", data, "--labels", gt(val), "--synsets", sorted_list, needles=["sorted order"])
    truncated = tmp_path / "truncated.txt"
    truncated.write_text("\n".join(devkit_order()[:999]))
    fails(
        "--data",
        data,
        "--labels",
        gt(val),
        "--synsets",
        truncated,
        needles=["999 synsets, not 1000"],
    )
    twice = tmp_path / "twice.txt"
    twice.write_text("\n".join(devkit_order()[:999] + devkit_order()[:1]))
    fails("--data", data, "--labels", gt(val), "--synsets", twice, needles=["twice"])

    folders = tmp_path / "folders"
    (folders / "n99999999").mkdir(parents=True)
    Image.fromarray(rgb("coffee")).save(folders / "n99999999" / "x.JPEG")
    fails("--data", folders, "--synsets", synsets, needles=["unknown synset n99999999"])
    (folders / "n99999999").rename(folders / CLASSES[285])
    cat = folders / CLASSES[285]
    (cat / "x.JPEG").rename(cat / "ILSVRC2012_val_00000001.JPEG")
    one = tmp_path / "one.txt"
    one.write_text("ILSVRC2012_val_00000001.JPEG 967\n")  # coffee image filed under the cat
    fails("--data", folders, "--synsets", synsets, "--labels", one, needles=["in folder n02124075"])

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"not a jpeg")
    one.write_text("ILSVRC2012_val_00000001.JPEG 1\n")
    fails("--data", junk, "--labels", one, "-q", needles=["cannot read image"])


def test_missing_label_for_an_image(val, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text((val / "val.txt").read_text().replace("00000003", "00000099"))
    with pytest.raises(VostrackError, match="no label for ILSVRC2012_val_00000003.JPEG"):
        load_val_set(val / "val", other)
