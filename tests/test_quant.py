"""Core QAT: fake-quant arithmetic vs numpy, STE, in-place wrapping, BN folding, state, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import paddle
import pytest
from paddle import nn

from slim_callbacks.quant import (
    ActivationQuantizer,
    FoldableBatchNorm,
    QuantConv2D,
    QuantLinear,
    fake_quantize,
    find_conv_bn_pairs,
    fold_batch_norms,
    freeze_observers,
    load_quant_state,
    quant_state,
    quantize_qat,
    quantized_layers,
    set_fake_quant_enabled,
)


def np_fake_quant(x, bits, axis=None):
    qmax = 2 ** (bits - 1) - 1
    if axis is None:
        r = np.abs(x).max()
    else:
        r = np.abs(np.moveaxis(x, axis, 0)).reshape(x.shape[axis], -1).max(1)
        shape = [1] * x.ndim
        shape[axis] = -1
        r = r.reshape(shape)
    # paddle.round rounds half away from zero
    q = np.clip(np.sign(x / r * qmax) * np.floor(np.abs(x / r * qmax) + 0.5), -qmax, qmax)
    return q * r / qmax


class Small(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2D(3, 8, 3, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(8)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2D(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2D(8)
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.dw(x)))
        return self.fc(self.pool(x).flatten(1))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_fake_quant_matches_numpy(bits, axis):
    rng = np.random.RandomState(bits + (axis or 0))
    x = rng.randn(6, 5, 3, 3).astype("float32") * rng.rand(6, 1, 1, 1).astype("float32")
    from slim_callbacks.quant import per_channel_absmax
    xt = paddle.to_tensor(x)
    out = fake_quantize(xt, per_channel_absmax(xt, axis), bits, axis).numpy()
    np.testing.assert_allclose(out, np_fake_quant(x, bits, axis), rtol=1e-5, atol=1e-6)
    one_slice = out if axis is None else np.take(out, 0, axis=axis)
    assert len(np.unique(one_slice)) <= 2 ** bits - 1


def test_quantized_conv_forward_equals_numpy_reference():
    paddle.seed(0)
    conv = nn.Conv2D(3, 4, 3, padding=1)
    x = paddle.randn([2, 3, 6, 6])
    wrapper = QuantConv2D(conv, weight_bits=4, per_channel=True)
    wrapper.train()
    out = wrapper(x).numpy()
    assert float(wrapper.act_quant.scale.numpy()[0]) == pytest.approx(float(np.abs(x.numpy()).max()), rel=1e-6)
    xq = np_fake_quant(x.numpy(), 8)
    wq = np_fake_quant(conv.weight.numpy(), 4, axis=0)
    ref = paddle.nn.functional.conv2d(paddle.to_tensor(xq), paddle.to_tensor(wq), conv.bias, padding=1).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_ste_gradient_is_identity_and_reaches_parameters():
    x = paddle.to_tensor(np.linspace(-2, 2, 11).astype("float32"), stop_gradient=False)
    y = fake_quantize(x, paddle.to_tensor([1.0]), 8)  # values beyond 1 clip in forward
    (y * paddle.arange(11, dtype="float32")).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.arange(11, dtype="float32"))
    assert float(y.numpy().max()) == pytest.approx(1.0)
    net = Small()
    quantize_qat(net, example_inputs=paddle.randn([2, 3, 8, 8]))
    net(paddle.randn([2, 3, 8, 8])).sum().backward()
    for p in (net.conv1.weight, net.bn1.weight, net.bn1.bias, net.fc.weight):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_wrapping_keeps_parameter_objects_keys_and_hooks():
    net = Small()
    before = {n: id(p) for n, p in net.named_parameters()}
    calls = []
    net.fc.register_forward_post_hook(lambda layer, i, o: calls.append(1))
    wrappers = quantize_qat(net, example_inputs=paddle.randn([2, 3, 8, 8]))
    assert sorted(wrappers) == ["conv1", "dw", "fc"]
    assert isinstance(net.dw, QuantConv2D) and net.dw.groups == 8
    assert isinstance(net.fc, QuantLinear)
    assert {n: id(p) for n, p in net.named_parameters()} == before
    calls.clear()  # the tracing forward fired it once
    net(paddle.randn([1, 3, 8, 8]))
    assert calls == [1]


def test_bn_pairs_by_trace_and_structure_and_folding_is_exact():
    paddle.seed(1)
    net = Small()
    net.train()
    for _ in range(3):  # give BN non-trivial running statistics
        net(paddle.randn([8, 3, 8, 8]) * 2 + 1)
    x = paddle.randn([4, 3, 8, 8])
    assert find_conv_bn_pairs(net, x) == [("conv1", "bn1"), ("dw", "bn2")]
    assert find_conv_bn_pairs(net) == [("conv1", "bn1"), ("dw", "bn2")]
    net.train()
    ref_train = net(x).numpy()  # BN with batch statistics
    mean_after_ref = net.bn1._mean.numpy().copy()
    net.eval()
    ref = net(x).numpy()
    quantize_qat(net, example_inputs=x)
    assert isinstance(net.bn1, FoldableBatchNorm) and not net.bn1.folded
    net.eval()
    set_fake_quant_enabled(net, False)
    np.testing.assert_allclose(net(x).numpy(), ref, rtol=1e-4, atol=1e-5)  # eval: exact running-stat fold
    net.train()
    np.testing.assert_allclose(net(x).numpy(), ref_train, rtol=1e-4, atol=1e-4)  # train: batch statistics
    assert not np.allclose(net.bn1._mean.numpy(), mean_after_ref)  # running statistics keep updating
    net.eval()
    ref = net(x).numpy()
    set_fake_quant_enabled(net, True)
    assert not np.allclose(net(x).numpy(), ref, atol=1e-7)


def test_freeze_bn_later_and_freeze_observers():
    net = Small()
    quantize_qat(net, fold_now=False, example_inputs=paddle.randn([2, 3, 8, 8]))
    net.train()
    mean0 = net.bn1._mean.numpy().copy()
    net(paddle.randn([4, 3, 8, 8]) + 3)
    assert not np.allclose(net.bn1._mean.numpy(), mean0)  # not folded: BN statistics still update
    assert fold_batch_norms(net) == ["bn1", "bn2"]
    mean1 = net.bn1._mean.numpy().copy()
    net(paddle.randn([4, 3, 8, 8]) + 3)
    np.testing.assert_array_equal(net.bn1._mean.numpy(), mean1)
    scale = net.conv1.act_quant.scale.numpy().copy()
    assert freeze_observers(net) == 3
    net(paddle.randn([4, 3, 8, 8]) * 10)
    np.testing.assert_array_equal(net.conv1.act_quant.scale.numpy(), scale)


def test_ema_observer_matches_bias_corrected_average():
    q = ActivationQuantizer(8, "ema_abs_max", moving_rate=0.5)
    q.train()
    maxima = [1.0, 3.0, 2.0]
    for m in maxima:
        q(paddle.to_tensor([m, -m / 2]))
    accum = state = 0.0
    for m in maxima:
        accum, state = 0.5 * accum + m, 0.5 * state + 1
    assert float(q.scale.numpy()[0]) == pytest.approx(accum / state, rel=1e-6)
    p = ActivationQuantizer(8, "percentile", moving_rate=0.0, percentile=0.99)
    p.train()
    sample = np.concatenate([np.linspace(0, 1, 990), np.full(10, 100.0)]).astype("float32")
    p(paddle.to_tensor(sample))
    assert float(p.scale.numpy()[0]) <= 1.0


def test_state_round_trips_through_state_dict_and_quant_state(tmp_path):
    paddle.seed(2)
    net = Small()
    quantize_qat(net, example_inputs=paddle.randn([2, 3, 8, 8]))
    net.train()
    net(paddle.randn([4, 3, 8, 8]))
    freeze_observers(net)
    paddle.save(net.state_dict(), str(tmp_path / "q.pdparams"))
    extra = quant_state(net)
    other = Small()
    quantize_qat(other, example_inputs=paddle.randn([2, 3, 8, 8]))
    other.set_state_dict(paddle.load(str(tmp_path / "q.pdparams")))
    load_quant_state(other, extra)
    for name, layer in quantized_layers(net).items():
        np.testing.assert_array_equal(quantized_layers(other)[name].act_quant.scale.numpy(), layer.act_quant.scale.numpy())
    assert quantized_layers(other)["conv1"].act_quant.frozen
    x = paddle.randn([2, 3, 8, 8])
    net.eval(), other.eval()
    np.testing.assert_allclose(other(x).numpy(), net(x).numpy(), rtol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="weight_bits=9"):
        quantize_qat(Small(), weight_bits=9)
    with pytest.raises(ValueError, match="activation_bits=1"):
        quantize_qat(Small(), activation_bits=1)
    with pytest.raises(ValueError, match="Sequential has no quantizable layer"):
        quantize_qat(nn.Sequential(nn.ReLU(), nn.BatchNorm2D(3)))
    with pytest.raises(ValueError, match="valid:.*Conv2D"):
        quantize_qat(Small(), layer_types=["Conv3D"])
    with pytest.raises(ValueError, match="observer"):
        quantize_qat(Small(), activation_observer="minmax")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrappers = quantize_qat(Small(), skip=["^fc$", "nonexistent"], example_inputs=paddle.randn([1, 3, 8, 8]))
    assert "fc" not in wrappers and "conv1" in wrappers
    msgs = [str(w.message) for w in caught if "nonexistent" in str(w.message)]
    assert msgs and "conv1" in msgs[0]
    net = Small()
    quantize_qat(net)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_qat(net)


def test_zero_weight_channel_stays_finite():
    """A pruned (all-zero) output channel must not produce NaN under per-channel quantization."""
    conv = nn.Conv2D(3, 4, 3)
    w = conv.weight.numpy()
    w[1] = 0
    conv.weight.set_value(w)
    wrapper = QuantConv2D(conv)
    out = wrapper(paddle.randn([2, 3, 5, 5])).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(wrapper.quantized_weight_and_bias()[0].numpy()[1], 0)


def test_relu_fed_inputs_are_quantized_unsigned_like_onednn():
    net = Small()
    wrappers = quantize_qat(net, example_inputs=paddle.randn([2, 3, 8, 8]))
    assert {n: w.act_quant.unsigned for n, w in wrappers.items()} == {"conv1": False, "dw": True, "fc": False}
    q = ActivationQuantizer(8)
    q.unsigned = True
    q.scale.set_value(paddle.to_tensor([1.0]))
    q.state.set_value(paddle.to_tensor([1.0]))
    q.eval()
    x = paddle.to_tensor(np.linspace(0, 1, 1001).astype("float32"))
    out = q(x).numpy()
    assert len(np.unique(out)) == 256  # u8: 255 steps on [0, r]
    np.testing.assert_allclose(out, np.floor(np.linspace(0, 1, 1001) * 255 + 0.5) / 255, atol=1e-6)
    state = quant_state(net)
    assert state["observers"]["dw.act_quant"]["unsigned"] is True
