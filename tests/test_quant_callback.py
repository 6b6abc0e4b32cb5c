"""QATCallback inside paddle.Model.fit: quantizes at the chosen epoch, keeps training, reports, saves."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

from slim_callbacks.callback import SlimCallback
from slim_callbacks.quant import QATCallback, QuantConv2D, is_quantized, quantize_qat, quantized_layers


class Small(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2D(1, 8, 3, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.bn1(self.conv1(x)))).flatten(1))


def dataset(n=64, seed=0):
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, size=(n, 1)).astype("int64")
    x = (rng.randn(n, 1, 8, 8) + y.reshape(-1, 1, 1, 1) * 1.5).astype("float32")
    return paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])


def make_model():
    paddle.seed(0)
    net = Small()
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Momentum(0.05, parameters=net.parameters()), nn.CrossEntropyLoss(),
                  paddle.metric.Accuracy())
    return model, net


class Probe(SlimCallback):
    """Snapshots weights at each epoch begin and collects reports."""

    def __init__(self):
        super().__init__()
        self.records, self.snapshots, self.quantized_at_begin, self.bn_frozen_at_begin = [], {}, {}, {}

    def setup(self, seam):
        seam.reporter.add_sink(self.records.append)

    def on_epoch_begin(self, epoch, logs=None):
        net = self.seam.network
        self.quantized_at_begin[epoch] = is_quantized(net)
        self.bn_frozen_at_begin[epoch] = getattr(net.bn1, "folded", None)
        self.snapshots[epoch] = net.conv1.weight.numpy().copy()


def test_qat_in_fit_quantizes_at_start_epoch_and_keeps_training(tmp_path):
    model, net = make_model()
    weight_id = id(net.conv1.weight)
    probe = Probe()
    qat = QATCallback(start_epoch=1, freeze_observer_epoch=2, freeze_bn_epoch=2)
    model.fit(dataset(), epochs=3, batch_size=16, verbose=0, callbacks=[qat, probe])
    assert probe.quantized_at_begin == {0: False, 1: False, 2: True}
    assert probe.bn_frozen_at_begin == {0: None, 1: None, 2: True}
    assert isinstance(net.conv1, QuantConv2D) and net.conv1.bn is not None and net.conv1.bn.folded
    assert id(net.conv1.weight) == weight_id
    assert not np.allclose(probe.snapshots[2], probe.snapshots[1])  # trained while quantized
    assert not np.allclose(net.conv1.weight.numpy(), probe.snapshots[2])
    assert net.conv1.act_quant.frozen
    tags = {r.tag for r in probe.records if r.kind == "histogram"}
    assert "quant/activation_range" in tags and "quant/weight_range/conv1" in tags
    # model.save / model.load round-trip the quantizer state (buffers in the state dict)
    model.save(str(tmp_path / "qat"))
    other, other_net = make_model()
    quantize_qat(other_net, bn_pairs=[("conv1", "bn1")])
    other.load(str(tmp_path / "qat"))
    for name, layer in quantized_layers(net).items():
        np.testing.assert_array_equal(quantized_layers(other_net)[name].act_quant.scale.numpy(),
                                      layer.act_quant.scale.numpy())
    other_net.bn1.folded = True
    x = paddle.randn([4, 1, 8, 8])
    net.eval(), other_net.eval()
    np.testing.assert_allclose(other_net(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_seam_state_restores_quantization_on_resume():
    model, net = make_model()
    qat = QATCallback(freeze_bn_epoch=0)
    model.fit(dataset(), epochs=1, batch_size=16, verbose=0, callbacks=[qat])
    qat.seam = type("S", (), {"network": net})()
    state = qat._get_state()
    assert state["quantized"] and state["bn_pairs"] == [("conv1", "bn1")]
    fresh_model, fresh = make_model()
    fresh.set_state_dict(net.state_dict())
    resumed = QATCallback()
    resumed.seam = type("S", (), {"network": fresh})()
    resumed._set_state(state)
    assert is_quantized(fresh) and fresh.bn1.folded
    x = paddle.randn([4, 1, 8, 8])
    net.eval(), fresh.eval()
    np.testing.assert_allclose(fresh(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_bad_callback_arguments():
    model, _ = make_model()
    with pytest.raises(ValueError, match="start_epoch=5.*2 epochs"):
        model.fit(dataset(), epochs=2, batch_size=16, verbose=0, callbacks=[QATCallback(start_epoch=5)])
    with pytest.raises(ValueError, match="weight_bits=16"):
        QATCallback(weight_bits=16)
    with pytest.raises(ValueError, match="valid"):
        QATCallback(layer_types=["LSTM"])
    with pytest.raises(ValueError, match="freeze_observer_epoch=1 must come after start_epoch=1"):
        QATCallback(start_epoch=1, freeze_observer_epoch=1)
    with pytest.raises(ValueError, match="freeze_bn_epoch"):
        QATCallback(freeze_bn_epoch=-1)
