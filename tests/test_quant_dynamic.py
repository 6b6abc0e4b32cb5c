"""Weight-only dynamic int8: Linear and LSTM/GRU outputs stay close, stored size shrinks, bad input."""

from __future__ import annotations

import os

import numpy as np
import paddle
import pytest
from paddle import nn

from slim_callbacks.quant import DynamicQuantLinear, DynamicQuantRNN, quantize_dynamic


class Seq(nn.Layer):
    def __init__(self, kind="LSTM"):
        super().__init__()
        self.embed = nn.Linear(16, 64)
        self.rnn = getattr(nn, kind)(64, 64, num_layers=2, direction="bidirect")
        self.head = nn.Linear(128, 5)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dynamic_quantization_is_close_and_smaller(kind, tmp_path):
    paddle.seed(0)
    net = Seq(kind)
    net.eval()
    x = paddle.randn([4, 10, 16])
    ref = net(x).numpy()
    paddle.save(net.state_dict(), str(tmp_path / "fp32.pdparams"))
    names = quantize_dynamic(net)
    assert names == ["embed", "rnn", "head"]
    assert isinstance(net.rnn, DynamicQuantRNN) and isinstance(net.head, DynamicQuantLinear)
    out = net(x).numpy()
    assert np.abs(out - ref).max() < 0.02 * np.abs(ref).max() + 1e-3
    paddle.save(net.state_dict(), str(tmp_path / "int8.pdparams"))
    ratio = os.path.getsize(tmp_path / "int8.pdparams") / os.path.getsize(tmp_path / "fp32.pdparams")
    assert ratio < 0.32, ratio
    # state round trip
    other = Seq(kind)
    quantize_dynamic(other)
    other.set_state_dict(paddle.load(str(tmp_path / "int8.pdparams")))
    other.eval()
    np.testing.assert_allclose(other(x).numpy(), out, rtol=1e-5, atol=1e-6)


def test_dynamic_bad_input():
    with pytest.raises(ValueError, match="valid"):
        quantize_dynamic(Seq(), layer_types=["Conv2D"])
    with pytest.raises(ValueError, match="bits=12"):
        quantize_dynamic(Seq(), bits=12)
    with pytest.raises(ValueError, match="no layer of types"):
        quantize_dynamic(nn.Sequential(nn.ReLU()))
