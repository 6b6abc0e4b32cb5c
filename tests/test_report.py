"""Tests for slim_callbacks/report.py: parameter/nonzero counts, MACs, file sizes, the card."""

import json
import os

import paddle
import paddle.nn.functional as F
import pytest
from paddle import nn

from slim_callbacks import report
from slim_callbacks.report import (
    CompressionCard,
    build_card,
    count_macs,
    count_nonzero,
    count_parameters,
    layer_sparsity,
    register_mac_counter,
    weights_file_size,
    write_card,
)
from trainers.models import build_model


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2D(4, 6, 3, padding=1, groups=2),            # 6x5x5 outputs, 2*9 MACs each
        nn.Conv2D(6, 6, 3, stride=2, padding=1, groups=6),  # depthwise: 6x3x3 outputs, 9 MACs each
        nn.Flatten(),
        nn.Linear(54, 3),                                   # 3 outputs, 54 MACs each
    )


def test_macs_tiny_net_by_hand():
    total, per_layer = count_macs(tiny_net(), input_shape=(2, 4, 5, 5))
    assert per_layer == {"0": 6 * 5 * 5 * 2 * 9, "1": 6 * 3 * 3 * 9, "3": 3 * 54}
    assert total == 2700 + 486 + 162


def test_macs_follow_physically_narrower_conv():
    net = build_model("resnet20", 10)
    before, layers_before = count_macs(net)
    block = net.layer1[0]
    block.conv1 = nn.Conv2D(16, 8, 3, padding=1, bias_attr=False)
    block.bn1 = nn.BatchNorm2D(8)
    block.conv2 = nn.Conv2D(8, 16, 3, padding=1, bias_attr=False)
    after, layers_after = count_macs(net)
    full = 32 * 32 * 16 * 16 * 9
    assert layers_after["layer1.0.conv1"] == full // 2
    assert layers_after["layer1.0.conv2"] == full // 2
    assert before - after == full
    assert {k: v for k, v in layers_after.items() if not k.startswith("layer1.0.")} == {
        k: v for k, v in layers_before.items() if not k.startswith("layer1.0.")
    }


def test_macs_of_qat_wrapped_net_equal_float_net():
    from paddle.nn.quant.qat import QuantedConv2D, QuantedLinear
    from paddle.quantization import QAT, QuantConfig
    from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver

    net = build_model("resnet20", 10)
    float_total, float_layers = count_macs(net)
    quanter = FakeQuanterWithAbsMaxObserver(moving_rate=0.9)
    QAT(QuantConfig(activation=quanter, weight=quanter)).quantize(net, inplace=True)
    wrapped = [layer for _, layer in net.named_sublayers() if isinstance(layer, (QuantedConv2D, QuantedLinear))]
    assert len(wrapped) == 22  # 19 convs + 2 shortcut convs + fc
    qat_total, qat_layers = count_macs(net)
    assert qat_total == float_total == 40_813_184
    assert qat_layers == float_layers
    assert count_parameters(net) == 272_474  # quantizer state is non-trainable


class CallingWrapper(nn.Layer):
    """Wraps a conv and calls it: only the inner conv may count."""

    def __init__(self, conv):
        super().__init__()
        self.inner = conv
        self.weight = conv.weight  # exposes the wrapped weight too: must not double count
        self.scale = self.create_parameter([1], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x):
        return self.inner(x) * self.scale


class OwningWrapper(nn.Layer):
    """Owns the conv's weight and calls F.conv2d itself (like paddle's QuantedConv2D)."""

    def __init__(self, conv):
        super().__init__()
        self.weight = conv.weight
        self._groups = conv._groups

    def forward(self, x):
        return F.conv2d(x, self.weight * 1.0, stride=2, padding=1, groups=self._groups)


class DeclaredLinear(nn.Layer):
    mac_counter_like = nn.Linear

    def __init__(self, linear):
        super().__init__()
        self.weight = linear.weight

    def forward(self, x):
        return paddle.matmul(x, self.weight)


def test_wrappers_counted_once():
    plain_total, _ = count_macs(tiny_net(), input_shape=(1, 4, 5, 5))
    net = tiny_net()
    net[0] = CallingWrapper(net[0])
    net[1] = OwningWrapper(net[1])
    net[3] = DeclaredLinear(net[3])
    total, per_layer = count_macs(net, input_shape=(1, 4, 5, 5))
    assert total == plain_total
    assert set(per_layer) == {"0.inner", "1", "3"}


def test_registered_counter_for_custom_type():
    class Scale(nn.Layer):
        def forward(self, x):
            return x * 2

    register_mac_counter(Scale, lambda layer, inputs, output: int(output.numel()))
    try:
        total, per_layer = count_macs(nn.Sequential(Scale()), input_shape=(3, 2, 4))
        assert per_layer == {"0": 8} and total == 8
    finally:
        report._MAC_COUNTERS.pop(Scale)
    with pytest.raises(TypeError, match="paddle.nn.Layer subclass"):
        register_mac_counter(int, lambda *a: 0)


def test_count_macs_restores_flags_and_removes_hooks_on_error():
    class Boom(nn.Layer):
        def forward(self, x):
            raise RuntimeError("boom")

    net = nn.Sequential(nn.Conv2D(3, 4, 3), nn.Dropout(0.5), Boom())
    net.train()
    net[1].eval()  # mixed flags must come back exactly
    with pytest.raises(RuntimeError, match="boom"):
        count_macs(net)
    assert [net.training, net[0].training, net[1].training, net[2].training] == [True, True, False, True]
    for _, layer in net.named_sublayers(include_self=True):
        assert not layer._forward_pre_hooks and not layer._forward_post_hooks
    total, _ = count_macs(net[:1])
    assert total == 30 * 30 * 4 * 27 and net.training


def test_count_nonzero_and_layer_sparsity():
    net = tiny_net()
    params = count_parameters(net)
    assert params == (6 * 2 * 9 + 6) + (6 * 9 + 6) + (54 * 3 + 3)
    base = count_nonzero(net)
    weight = net[0].weight  # [6, 2, 3, 3]: 108 values
    mask = paddle.ones_like(weight)
    mask[:3] = 0
    weight.set_value(weight * mask)
    assert count_nonzero(net) == base - 54  # 3 of 6 filters x 2 x 3 x 3; random init has no exact zeros
    assert count_parameters(net) == params
    sparsity = layer_sparsity(net)
    assert set(sparsity) == {"0.weight", "1.weight", "3.weight"}
    assert sparsity["0.weight"] == pytest.approx(0.5)
    assert sparsity["1.weight"] == 0.0


def test_file_size_shows_sparsity_gain():
    net = nn.Sequential(nn.Linear(128, 128))
    dense = weights_file_size(net)
    assert dense["state_dict_bytes"] > 128 * 128 * 4
    mask = paddle.ones_like(net[0].weight)
    mask[:, :112] = 0  # 87.5% zeros
    net[0].weight.set_value(net[0].weight * mask)
    sparse = weights_file_size(net)
    assert sparse["state_dict_bytes"] == dense["state_dict_bytes"]
    assert sparse["zip_bytes"] < dense["zip_bytes"] * 0.4


def test_card_markdown_and_json_round_trip(tmp_path):
    net = tiny_net()
    card = build_card(net, (1, 4, 5, 5), name="tiny", extra={"int8": {"top1": 0.91, "latency_ms": 2.4}})
    assert card.macs == 3348 and card.params == count_parameters(net)
    md_path, json_path = write_card(card, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["card.json", "card.md"]
    loaded = CompressionCard.from_dict(json.loads(json_path.read_text()))
    assert loaded == card
    text = md_path.read_text()
    assert text == card.to_markdown()
    assert "# Compression card: tiny" in text and "3,348" in text and "| 0 | 2,700 |" in text
    assert '"top1": 0.91' in text
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        CompressionCard.from_dict({**card.to_dict(), "bogus": 1})


def test_write_card_is_atomic(tmp_path, monkeypatch):
    card = build_card(tiny_net(), (1, 4, 5, 5), name="tiny")
    write_card(card, tmp_path)
    old = (tmp_path / "card.md").read_text()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", failing_replace)
    card.name = "changed"
    with pytest.raises(OSError, match=str(tmp_path)):
        write_card(card, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["card.json", "card.md"]  # no temp files left
    assert (tmp_path / "card.md").read_text() == old


def test_write_card_errors_name_the_problem(tmp_path):
    card = build_card(tiny_net(), (1, 4, 5, 5), name="tiny")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="a_file"):
        write_card(card, blocker / "sub")
    card.extra["bad"] = object()
    with pytest.raises(TypeError, match="'bad'"):
        write_card(card, tmp_path / "new")
    assert not (tmp_path / "new").exists()
