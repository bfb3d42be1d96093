"""ResNet-50 v2 backbone and the importer of the official TF1 checkpoint (TF model zoo r1.8).

No official checkpoint can be downloaded here, so the reference is the official model itself,
transcribed below in TF1 graph code (``official/resnet/resnet_model.py``, v2, bottleneck) and
written independently of the Keras model: variables get their names from TF1's own layer naming
(``variable_scope(None, default_name=...)``, which is what ``tf.layers`` used: conv2d, conv2d_1,
...), are filled with random values (random BN moving statistics included, so that inference-mode
BN is really checked), saved with ``tf.compat.v1.train.Saver`` and run in a Session. The importer
must then reproduce the reference's logits and final features.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tests.conftest import fails  # noqa: E402
from vostrack.cli import cli  # noqa: E402
from vostrack.errors import VostrackError  # noqa: E402
from vostrack.network.backbones import get_backbone_builder  # noqa: E402
from vostrack.network.backbones.resnet_v2 import (  # noqa: E402
    CHANNEL_MEANS,
    normalize_images,
    resnet50_v2,
)
from vostrack.network.tf1_checkpoint import (  # noqa: E402
    load_resnet_v2_checkpoint,
    official_variable_names,
)

# Keras' own save_weights on the TF backend calls np.array(tensor, copy=False): not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# Odd, non-square: exercises the explicit padding of strided convs (which differs from "SAME"
# on even sizes) and the "SAME" max-pool on odd sizes.
INPUT_SHAPE = (2, 61, 78, 3)


# ----------------------------------------------------------------- the reference (TF1, official)
class _OfficialResNet50V2:
    """r1.8 ``resnet_model.Model(resnet_size=50, bottleneck=True, num_classes=1001,
    num_filters=64, kernel_size=7, conv_stride=2, first_pool_size=3, first_pool_stride=2,
    block_sizes=[3, 4, 6, 3], block_strides=[1, 2, 2, 2], final_size=2048, version=2)`` in
    inference mode, NHWC. Variables are created with the layers' initialisers replaced by zeros;
    the test loads random values afterwards."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    # tf.layers.conv2d / batch_normalization / dense: a layer is a variable scope named by TF's
    # uniquifier from its default name.
    def conv2d_fixed_padding(self, inputs, filters, kernel_size, strides):
        if strides > 1:
            pad_total = kernel_size - 1
            pad_beg = pad_total // 2
            pad_end = pad_total - pad_beg
            inputs = tf.pad(inputs, [[0, 0], [pad_beg, pad_end], [pad_beg, pad_end], [0, 0]])
        with tf1.variable_scope(None, default_name="conv2d"):
            kernel = tf1.get_variable(
                "kernel",
                [kernel_size, kernel_size, inputs.shape[-1], filters],
                initializer=tf1.zeros_initializer(),
            )
        return tf.nn.conv2d(inputs, kernel, strides, "SAME" if strides == 1 else "VALID")

    def batch_norm(self, inputs):
        channels = inputs.shape[-1]
        with tf1.variable_scope(None, default_name="batch_normalization"):
            params = [
                tf1.get_variable(
                    n,
                    [channels],
                    initializer=tf1.zeros_initializer(),
                    trainable=n in ("gamma", "beta"),
                )
                for n in ("gamma", "beta", "moving_mean", "moving_variance")
            ]
        gamma, beta, mean, variance = params
        outputs, _, _ = tf1.nn.fused_batch_norm(
            inputs, gamma, beta, mean, variance, epsilon=1e-5, is_training=False
        )
        return outputs

    def dense(self, inputs, units):
        with tf1.variable_scope(None, default_name="dense"):
            kernel = tf1.get_variable(
                "kernel", [inputs.shape[-1], units], initializer=tf1.zeros_initializer()
            )
            bias = tf1.get_variable("bias", [units], initializer=tf1.zeros_initializer())
        return tf.matmul(inputs, kernel) + bias

    def bottleneck_block_v2(self, inputs, filters, projection_shortcut, strides):
        shortcut = inputs
        inputs = self.batch_norm(inputs)
        inputs = tf.nn.relu(inputs)
        if projection_shortcut is not None:
            shortcut = projection_shortcut(inputs)
        inputs = self.conv2d_fixed_padding(inputs, filters, 1, 1)
        inputs = self.batch_norm(inputs)
        inputs = tf.nn.relu(inputs)
        inputs = self.conv2d_fixed_padding(inputs, filters, 3, strides)
        inputs = self.batch_norm(inputs)
        inputs = tf.nn.relu(inputs)
        inputs = self.conv2d_fixed_padding(inputs, 4 * filters, 1, 1)
        return inputs + shortcut

    def block_layer(self, inputs, filters, blocks, strides):
        def projection_shortcut(x):
            return self.conv2d_fixed_padding(x, 4 * filters, 1, strides)

        inputs = self.bottleneck_block_v2(inputs, filters, projection_shortcut, strides)
        for _ in range(1, blocks):
            inputs = self.bottleneck_block_v2(inputs, filters, None, 1)
        return inputs

    def __call__(self, inputs):
        with tf1.variable_scope("resnet_model"):
            inputs = self.conv2d_fixed_padding(inputs, 64, 7, 2)
            # v2: no BN/ReLU after the initial conv.
            inputs = tf.nn.max_pool2d(inputs, 3, 2, "SAME")
            for i, num_blocks in enumerate([3, 4, 6, 3]):
                inputs = self.block_layer(inputs, 64 * 2**i, num_blocks, [1, 2, 2, 2][i])
            inputs = self.batch_norm(inputs)
            features = tf.nn.relu(inputs)
            inputs = tf.reduce_mean(features, [1, 2], keepdims=True)
            inputs = tf.reshape(inputs, [-1, 2048])
            return self.dense(inputs, 1001), features

    def random_value(self, variable) -> np.ndarray:
        """He-scaled kernels; BN parameters and moving statistics far from the identity."""
        name, shape = variable.op.name, variable.shape.as_list()
        kind = name.rsplit("/", 1)[-1]
        if kind == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return self.rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        if kind == "gamma":
            return self.rng.uniform(0.5, 1.5, shape)
        if kind == "moving_variance":
            return self.rng.uniform(0.5, 4.0, shape)
        return self.rng.normal(0, 0.5, shape)  # beta, moving_mean, bias


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(checkpoint prefix, images, reference logits, reference final features, model variables
    in creation order as (name, shape))."""
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 60.0, INPUT_SHAPE).astype(np.float32)  # like mean-subtracted RGB
    prefix = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    graph = tf.Graph()
    with graph.as_default():
        net = _OfficialResNet50V2(rng)
        inputs = tf1.placeholder(tf.float32, (None, None, None, 3))
        logits, features = net(inputs)
        model_variables = list(tf1.global_variables())
        # What a training checkpoint also holds, and the importer must ignore.
        tf1.train.get_or_create_global_step()
        tf1.get_variable("resnet_model/conv2d/kernel/Momentum", [7, 7, 3, 64])
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            for variable in model_variables:
                variable.load(net.random_value(variable).astype(np.float32), sess)
            path = tf1.train.Saver().save(sess, str(prefix), global_step=7, write_meta_graph=False)
            out_logits, out_features = sess.run([logits, features], {inputs: images})
    names = [(v.op.name, tuple(v.shape.as_list())) for v in model_variables]
    return path, images, out_logits, out_features, names


def _close(actual, expected, rtol=1e-4):
    # Measured: 1e-6 of the largest value (float32 summation order); a wrong padding or BN
    # epsilon gives 0.3 and 5e-3.
    scale = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(np.asarray(actual) - expected)))
    assert error <= rtol * scale, f"max abs diff {error} vs max |reference| {scale}"


# ------------------------------------------------------------------------------------ tests
def test_variable_names_follow_the_official_creation_order(reference):
    *_, reference_names = reference
    names = official_variable_names()
    assert names == reference_names
    # 1 initial conv + 16 blocks x 3 convs + 4 projection shortcuts = 53 conv kernels;
    # 16 blocks x 3 BNs + the final BN = 49 BNs of 4 variables; dense kernel + bias.
    assert sum(n.endswith("/kernel") and "/conv2d" in n for n, _ in names) == 53
    assert sum(n.endswith("/gamma") for n, _ in names) == 49
    assert len(names) == 53 + 4 * 49 + 2 == 251
    assert names[-2:] == [
        ("resnet_model/dense/kernel", (2048, 1001)),
        ("resnet_model/dense/bias", (1001,)),
    ]
    assert len(official_variable_names(include_top=False)) == 249
    # ~25.6M numbers, all of them in the Keras model (moving statistics included).
    model = resnet50_v2(include_top=True)
    assert sum(int(np.prod(s)) for _, s in names) == model.count_params()


def test_imported_model_reproduces_the_reference(reference):
    path, images, logits, features, _ = reference
    model = resnet50_v2(include_top=True)
    load_resnet_v2_checkpoint(model, path)
    outputs = model(images, training=False)
    assert tuple(outputs["logits"].shape) == (2, 1001)
    assert np.std(logits) > 1.0  # the reference is not degenerate
    _close(outputs["logits"], logits)
    _close(outputs["C5"], features)


def test_headless_model_imports_the_same_features(reference):
    path, images, _, features, _ = reference
    model = get_backbone_builder("resnet50_v2")(weights=path)  # a TF1 checkpoint as weights
    outputs = model(images, training=False)
    assert sorted(outputs) == ["C2", "C3", "C4", "C5"]
    _close(outputs["C5"], features)


def test_pyramid_strides_and_channels():
    model = resnet50_v2(input_shape=(224, 224, 3))
    shapes = {k: tuple(v.shape) for k, v in model.output.items()}
    assert shapes == {
        "C2": (None, 56, 56, 256),
        "C3": (None, 28, 28, 512),
        "C4": (None, 14, 14, 1024),
        "C5": (None, 7, 7, 2048),
    }
    # Pre-activation features: C2..C4 are the first BN+ReLU of the next layer (C3: layer 3's
    # activation of layer 2's stride-8 output).
    assert model.output["C3"] is model.get_layer("layer3_block1_preact_relu").output


def test_normalize_images():
    rgb = np.array([[[[1.0, 0.5, 0.0]]]], np.float32)
    expected = np.array([255.0, 127.5, 0.0]) - np.array(CHANNEL_MEANS)
    np.testing.assert_allclose(np.asarray(normalize_images(rgb))[0, 0, 0], expected, atol=1e-4)


def test_import_backbone_command(reference, tmp_path):
    path, images, logits, features, _ = reference
    out = tmp_path / "resnet50_v2.weights.h5"
    result = CliRunner().invoke(cli, ["import-backbone", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]  # no leftovers
    _close(resnet50_v2(weights=out, include_top=True)(images)["logits"], logits)
    _close(resnet50_v2(weights=out)(images)["C5"], features)
    # Refuses to overwrite, and a checkpoint file name works as well as its prefix.
    fails(["import-backbone", path, "-o", out], "exists")
    result = CliRunner().invoke(
        cli, ["import-backbone", f"{path}.index", "-o", str(out), "--overwrite"]
    )
    assert result.exit_code == 0, result.output


def test_import_backbone_errors(tmp_path):
    fails(
        ["import-backbone", tmp_path / "model.ckpt-225207", "-o", tmp_path / "r.weights.h5"],
        "no TF checkpoint",
    )
    (tmp_path / "junk.index").write_bytes(b"not a checkpoint")
    fails(["import-backbone", tmp_path / "junk", "-o", tmp_path / "r.weights.h5"], "cannot read")
    fails(["import-backbone", tmp_path / "junk", "-o", tmp_path / "r.h5"], ".weights.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.index"]


def test_wrong_checkpoint_is_one_line_error(tmp_path):
    # A checkpoint whose initial conv is 3x3: not ResNet-50 v2.
    graph = tf.Graph()
    with graph.as_default():
        tf1.get_variable("resnet_model/conv2d/kernel", [3, 3, 3, 64])
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            path = tf1.train.Saver().save(
                sess, str(tmp_path / "small.ckpt"), write_meta_graph=False
            )
    with pytest.raises(VostrackError, match=r"conv2d/kernel has shape \(3, 3, 3, 64\)"):
        load_resnet_v2_checkpoint(resnet50_v2(), path)
    line = fails(["import-backbone", path, "-o", tmp_path / "r.weights.h5"], "shape")
    assert "\n" not in line


def test_imagenet_weights_are_not_shipped():
    with pytest.raises(VostrackError, match="import-backbone"):
        resnet50_v2(weights="imagenet")
