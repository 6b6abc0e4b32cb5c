"""PTQ: range selection on known distributions, calibration of a network, PTQCallback, bad input."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn

from slim_callbacks.quant import PTQ_ALGOS, PTQCallback, calibrate, choose_range, quantized_layers


def heavy_tailed(seed=0, n=200_000):
    rng = np.random.RandomState(seed)
    body = np.abs(rng.standard_normal(n))
    outliers = np.abs(rng.standard_normal(20)) * 5 + 40  # a handful of huge values
    return np.concatenate([body, outliers])


def hist_of(a, bins=2048):
    edges = np.linspace(0, a.max(), bins + 1)
    return np.histogram(a, bins=bins, range=(0, a.max()))[0], edges


def test_abs_max_and_avg_are_exact():
    a = heavy_tailed()
    h, e = hist_of(a)
    assert choose_range(h, e, "abs_max", abs_max=float(a.max())) == pytest.approx(a.max())
    assert choose_range(h, e, "avg", batch_maxima=[1.0, 2.0, 6.0]) == pytest.approx(3.0)


@pytest.mark.parametrize("algo", ["hist", "KL"])
def test_histogram_algorithms_clip_outliers(algo):
    a = heavy_tailed()
    h, e = hist_of(a)
    r = choose_range(h, e, algo, hist_percent=0.999)
    assert 2.0 < r < 0.5 * a.max(), r  # well below the outliers (~40+), above the normal body's bulk
    if algo == "hist":
        assert r == pytest.approx(np.quantile(a, 0.999), rel=0.02)


@pytest.mark.parametrize("bits,expected", [(8, 9.89), (4, 5.03)])
def test_mse_finds_the_known_optimal_clip_of_a_laplace(bits, expected):
    # Banner et al. 2019 (ACIQ): the MSE-optimal clip of Laplace(0, b) is 9.89 b at 8 bits, 5.03 b at 4 bits
    a = np.abs(np.random.RandomState(0).laplace(0, 1, 1_000_000))
    h, e = hist_of(a)
    r = choose_range(h, e, "mse", bits=bits)
    assert r == pytest.approx(expected, rel=0.05) and r < a.max()


def test_kl_keeps_full_range_of_uniform_data():
    a = np.random.RandomState(1).uniform(0, 1, 100_000)
    h, e = hist_of(a)
    assert choose_range(h, e, "KL") > 0.9


class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2D(4)
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.fc(nn.functional.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("algo", PTQ_ALGOS)
def test_calibrate_sets_ranges_and_output_stays_close(algo):
    paddle.seed(0)
    net = Net()
    net.eval()
    x = np.random.RandomState(0).randn(64, 3, 4, 4).astype("float32")
    ref = net(paddle.to_tensor(x)).numpy()
    ranges = calibrate(net, x, algo=algo, batches=2, bins=256)
    assert set(ranges) == {"conv", "fc"}
    first_batch_max = float(np.abs(x[:32]).max())
    both_max = float(np.abs(x).max())
    if algo == "abs_max":
        assert ranges["conv"] == pytest.approx(both_max, rel=1e-6)
    if algo == "avg":
        assert ranges["conv"] == pytest.approx((first_batch_max + float(np.abs(x[32:]).max())) / 2, rel=1e-6)
    assert 0 < ranges["conv"] <= both_max * 1.0001
    out = net(paddle.to_tensor(x)).numpy()
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
    assert quantized_layers(net)["conv"].act_quant.frozen


def test_ptq_bad_input_and_callback():
    with pytest.raises(ValueError, match="empty"):
        calibrate(Net(), [], algo="KL")
    with pytest.raises(ValueError, match="valid: abs_max"):
        calibrate(Net(), np.zeros((2, 3, 4, 4), "float32"), algo="percentile")
    with pytest.raises(ValueError, match="calibration data"):
        PTQCallback(None)
    paddle.seed(0)
    net = Net()
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.01, parameters=net.parameters()), nn.CrossEntropyLoss())
    x = np.random.RandomState(0).randn(32, 3, 4, 4).astype("float32")
    y = np.random.RandomState(1).randint(0, 3, (32, 1)).astype("int64")
    ds = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
    cb = PTQCallback(paddle.io.DataLoader(ds, batch_size=8), algo="mse", batches=2)
    model.fit(ds, epochs=1, batch_size=8, verbose=0, callbacks=[cb])
    assert set(cb.ranges) == {"conv", "fc"} and set(quantized_layers(net)) == {"conv", "fc"}


def test_kl_ignores_the_zero_spike_of_relu_outputs():
    # half of a ReLU's outputs are exact zeros; with them in the histogram KL chose 0.5 x max
    paddle.seed(0)
    net = nn.Sequential(nn.ReLU(), nn.Linear(16, 4))
    x = np.random.RandomState(0).randn(4096, 16).astype("float32")
    ranges = calibrate(net, x, algo="KL", batches=8, bins=1024)
    assert ranges["1"] > 0.75 * float(np.maximum(x[:256], 0).max())
