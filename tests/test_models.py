"""Tests for trainers/models.py: sizes, shapes, names, registry errors."""

import paddle
import pytest

from slim_callbacks.report import count_macs, count_parameters
from trainers.models import MODELS, build_model


def test_resnet20_matches_bar_recipe_figures():
    net = build_model("resnet20", num_classes=10)
    # BAR-RECIPE: 274,042 parameters = paddle.summary's "Total params", which includes the BN running
    # mean/variance that Paddle stores as non-trainable Parameters; 272,474 of them are trainable.
    assert count_parameters(net, trainable_only=False) == 274_042
    assert count_parameters(net) == 272_474
    assert paddle.summary(net, (1, 3, 32, 32))["total_params"] == 274_042
    total, per_layer = count_macs(net)
    assert total == 40_813_184  # 40.81M per image
    assert per_layer["conv1"] == 32 * 32 * 16 * 3 * 9
    assert per_layer["layer2.0.shortcut.0"] == 16 * 16 * 32 * 16
    assert per_layer["fc"] == 64 * 10


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_at_two_widths(name):
    widths = [1.0] if name == "resnet18" else [0.5, 1.5]
    for width in widths:
        net = build_model(name, num_classes=7, width=width)
        net.eval()
        out = net(paddle.randn([2, 3, 32, 32]))
        assert list(out.shape) == [2, 7], (name, width)


def test_width_scales_channels():
    net = build_model("resnet20", 10, width=2)
    assert net.conv1.weight.shape[0] == 32
    assert net.layer2[0].conv1.weight.shape[0] == 64
    assert net.layer3[2].conv2.weight.shape[0] == 128
    assert net.fc.weight.shape == [128, 10]
    narrow = build_model("mobilenet_v2", 10, width=0.5)
    wide = build_model("mobilenet_v2", 10, width=1.0)
    assert count_parameters(narrow) < count_parameters(wide)


def test_depths_have_expected_blocks():
    for name, blocks in (("resnet20", 3), ("resnet32", 5), ("resnet56", 9)):
        net = build_model(name, 10)
        assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [blocks] * 3


def test_layers_addressable_by_name():
    names = dict(build_model("resnet20", 10).named_sublayers())
    for key in ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc",
                "layer3.2.conv2", "layer2.0.conv1", "layer2.0.shortcut.0", "layer2.0.shortcut.1",
                "layer1.0.bn2", "layer1.0.relu1", "layer1.0.relu2"):
        assert key in names, key
    assert isinstance(names["layer1.0.shortcut"], paddle.nn.Identity)
    assert isinstance(names["layer2.0.shortcut.0"], paddle.nn.Conv2D)
    # separate ReLU instances per use site
    assert names["layer1.0.relu1"] is not names["layer1.0.relu2"]
    mobile = dict(build_model("mobilenet_v2", 10).named_sublayers())
    for key in ("features", "features.0.0", "features.17", "features.18", "classifier", "classifier.1"):
        assert key in mobile, key
    # depthwise conv inside an inverted residual block
    dw = mobile["features.2.conv.1.0"]
    assert dw._groups == dw.weight.shape[0] and dw.weight.shape[1] == 1


def test_mobilenet_downsamples_32_to_4():
    net = build_model("mobilenet_v2", 10)
    net.eval()
    feats = net.features(paddle.zeros([1, 3, 32, 32]))
    assert list(feats.shape) == [1, 1280, 4, 4]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet21", 10)
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("width", [0, -1.0])
def test_bad_width_rejected(width):
    with pytest.raises(ValueError, match="width"):
        build_model("resnet20", 10, width=width)


def test_resnet18_rejects_width():
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", 10, width=2.0)
