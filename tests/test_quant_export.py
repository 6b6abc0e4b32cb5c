"""Export to Paddle Inference and run real oneDNN INT8 kernels; agreement with the QAT simulation."""

from __future__ import annotations

import os

import numpy as np
import paddle
import pytest
from paddle import nn

from slim_callbacks.quant import (
    calibrate,
    export_int8,
    freeze_observers,
    quantize_qat,
    verify_deployment,
)


class Tiny(nn.Layer):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2D(3, 16, 3, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(16)
        self.dw = nn.Conv2D(16, 16, 3, padding=1, groups=16, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(16)
        self.conv2 = nn.Conv2D(16, 32, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.dw(x)) + x)
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def task(n, seed):
    rng = np.random.RandomState(seed)
    protos = np.random.RandomState(123).randn(4, 3, 8, 8).astype("float32")
    y = rng.randint(0, 4, n)
    x = (protos[y] + rng.randn(n, 3, 8, 8) * 0.8).astype("float32")
    return x, y.astype("int64")


def train(net, x, y, steps, lr=0.05):
    opt = paddle.optimizer.Momentum(lr, parameters=net.parameters())
    net.train()
    for i in range(steps):
        j = (i * 32) % len(x)
        loss = nn.functional.cross_entropy(net(paddle.to_tensor(x[j:j + 32])), paddle.to_tensor(y[j:j + 32, None]))
        loss.backward()
        opt.step()
        opt.clear_grad()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    paddle.seed(0)
    x, y = task(512, 0)
    net = Tiny()
    train(net, x, y, 60)
    quantize_qat(net, example_inputs=paddle.to_tensor(x[:8]))
    train(net, x, y, 30, lr=0.01)
    freeze_observers(net)
    return net, tmp_path_factory.mktemp("export")


def test_export_runs_real_int8_kernels_and_agrees_with_simulation(trained):
    net, tmp = trained
    xt, yt = task(256, 1)
    path = str(tmp / "tiny")
    files = export_int8(net, path, [None, 3, 8, 8])
    assert os.path.getsize(files["pdmodel"]) > 0
    result = verify_deployment(net, path, xt, yt, batch_sizes=(1, 32), repeats=3, warmup=1, threads=1)
    assert result["top1_sim"] > 0.9
    assert result["agreement_int8_vs_sim"] >= 0.995
    assert abs(result["top1_int8"] - result["top1_sim"]) <= 0.02
    # 3 convs + 1 linear, all as s8/u8 oneDNN primitives, none in f32
    assert result["onednn_int8_primitives"] == 4 and result["onednn_fp32_primitives"] == 0
    assert result["latency_ms_int8_b32"] > 0 and result["latency_ms_fp32_b1"] > 0
    assert result["pdiparams_bytes_int8"] < 0.6 * result["pdiparams_bytes_fp32"]  # int8-stored weights
    # training still works in this process after the legacy-format save
    net.train()
    net(paddle.to_tensor(xt[:4])).sum().backward()


def test_float_weight_storage_also_runs_int8(trained):
    net, tmp = trained
    xt, yt = task(128, 2)
    export_int8(net, str(tmp / "float_w"), [None, 3, 8, 8], weight_storage="float")
    result = verify_deployment(net, str(tmp / "float_w"), xt, yt, batch_sizes=(), threads=1)
    assert result["agreement_int8_vs_sim"] >= 0.97 and result["onednn_int8_primitives"] == 4
    assert result["pdiparams_bytes_int8"] >= result["pdiparams_bytes_fp32"]
    with pytest.raises(ValueError, match="valid: int8, float"):
        export_int8(net, str(tmp / "x"), [None, 3, 8, 8], weight_storage="fp16")


def test_ptq_export_agrees(tmp_path):
    paddle.seed(0)
    x, y = task(512, 0)
    net = Tiny()
    train(net, x, y, 60)
    calibrate(net, x, algo="hist", batches=4, bins=512)
    export_int8(net, str(tmp_path / "ptq"), [None, 3, 8, 8])
    xt, yt = task(256, 1)
    result = verify_deployment(net, str(tmp_path / "ptq"), xt, yt, batch_sizes=(), check_kernels=False)
    assert result["agreement_int8_vs_sim"] >= 0.98 and result["top1_int8"] > 0.85


def test_export_before_quantization_or_observation_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="no quantized layer.*quantize_qat"):
        export_int8(Tiny(), str(tmp_path / "m"), [None, 3, 8, 8])
    net = Tiny()
    quantize_qat(net)
    with pytest.raises(RuntimeError, match="never observed.*conv1"):
        export_int8(net, str(tmp_path / "m"), [None, 3, 8, 8])
    with pytest.raises(FileNotFoundError, match="export_int8 first"):
        verify_deployment(net, str(tmp_path / "missing"), np.zeros((2, 3, 8, 8), "float32"))
