"""Sensitivity analysis and the per-layer ratios derived from it."""

import numpy as np
import paddle
import pytest
from paddle import nn

from slim_callbacks.prune import Masker, SensitivityResult, ratios_for_target, sensitivity
from slim_callbacks.reporting import Reporter


def _net():
    paddle.seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _fidelity(net):
    """Evaluate = minus the mean squared distance to the unpruned outputs (higher is better, 0 at baseline)."""
    x = paddle.to_tensor(np.random.RandomState(0).randn(64, 16).astype("float32"))
    reference = net(x).numpy()

    def evaluate(model):
        with paddle.no_grad():
            return -float(((model(x).numpy() - reference) ** 2).mean())

    return evaluate


def test_sensitivity_shape_monotone_and_restores_weights(tmp_path):
    net = _net()
    before = [p.numpy().copy() for p in net.parameters()]
    reporter, records = Reporter(), []
    reporter.add_sink(records.append)
    ratios = [0.1, 0.3, 0.5, 0.7, 0.9]
    result = sensitivity(net, _fidelity(net), ratios=ratios, reporter=reporter)
    assert result.baseline == 0.0 and result.ratios == ratios
    assert list(result.metrics) == ["0.weight", "2.weight", "4.weight"]
    assert all(len(v) == len(ratios) for v in result.metrics.values())
    for values in result.metrics.values():  # pruning more of one layer hurts more
        assert all(a >= b for a, b in zip(values, values[1:])) and values[-1] < values[0] < 0
    for a, b in zip(before, net.parameters()):
        np.testing.assert_array_equal(a, b.numpy())
    table = result.to_markdown()
    assert table.count("\n| ") == 4 and "| 0.weight | 512 |" in table
    png = result.plot(tmp_path / "sens.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    tags = {r.tag for r in records}
    assert tags == {"sensitivity/0.weight", "sensitivity/2.weight", "sensitivity/4.weight"}
    assert sorted(r.step for r in records if r.tag == "sensitivity/2.weight") == [0, 10, 30, 50, 70, 90]
    assert result.to_dict()["metrics"]["2.weight"] == result.metrics["2.weight"]


def test_channel_sensitivity_with_macs():
    net = nn.Sequential(nn.Conv2D(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2D(8, 8, 3, padding=1))
    x = paddle.randn([2, 3, 8, 8])
    ref = net(x).numpy()
    result = sensitivity(net, lambda m: -float(((m(x).numpy() - ref) ** 2).mean()), ratios=[0.25, 0.5],
                         granularity="channel", criterion="l2", input_shape=[1, 3, 8, 8])
    assert result.macs == {"0.weight": 8 * 3 * 9 * 64, "2.weight": 8 * 8 * 9 * 64}
    ratios, _ = ratios_for_target(result, 0.3, by="macs")
    removed = sum(ratios[n] * result.macs[n] for n in ratios) / sum(result.macs.values())
    assert removed == pytest.approx(0.3, abs=0.01)


def _synthetic():
    # layer a is sensitive, b robust; b twice as large
    return SensitivityResult(
        baseline=0.9,
        ratios=[0.2, 0.4, 0.6, 0.8],
        metrics={"a": [0.85, 0.7, 0.5, 0.2], "b": [0.9, 0.9, 0.89, 0.85]},
        sizes={"a": 100, "b": 200},
    )


def test_ratios_for_target_prefers_robust_layers_and_hits_the_target():
    result = _synthetic()
    ratios, loss = ratios_for_target(result, 0.5)
    overall = (ratios["a"] * 100 + ratios["b"] * 200) / 300
    assert overall == pytest.approx(0.5, abs=1e-3)
    assert ratios["b"] > ratios["a"]
    # least predicted loss: pruning uniformly at 0.5 would cost layer a 0.3 (0.9 -> 0.6 interpolated)
    assert loss < 0.3
    with pytest.raises(ValueError, match="out of reach"):
        ratios_for_target(result, 0.85)
    with pytest.raises(ValueError, match="input_shape"):
        ratios_for_target(result, 0.3, by="macs")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ratios_for_target(result, 1.2)


def test_ratios_apply_to_a_masker():
    net = _net()
    result = sensitivity(net, _fidelity(net), ratios=[0.2, 0.5, 0.8])
    ratios, _ = ratios_for_target(result, 0.6)
    masker = Masker(net)
    masker.update(ratios)
    assert masker.sparsity_report().overall == pytest.approx(0.6, abs=0.01)
