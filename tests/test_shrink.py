"""Dependency graph tracing and physical channel pruning (slim_callbacks/prune/depgraph.py, shrink.py)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from paddle import nn
from paddle.vision import models as vision

from slim_callbacks.prune.depgraph import build_dependency_graph
from slim_callbacks.prune.shrink import (
    UnsupportedPatternError,
    apply_plan,
    count_macs_per_image,
    plan_pruning,
    prune_channels,
    shrink_network,
)
from trainers.models import build_model


def _eval_out(net: nn.Layer, x: paddle.Tensor) -> np.ndarray:
    net.eval()
    with paddle.no_grad():
        return net(x).numpy()


# ---- small nets covering concat, flatten -> Linear, grouped conv, channel shuffle, untraced ops ----
class ConcatNet(nn.Layer):
    """Two branches concatenated, a depthwise conv and BN on the concat, flatten of a 4x4 map -> MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2D(3, 6, 3, padding=1), nn.BatchNorm2D(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2D(3, 10, 3, padding=1), nn.BatchNorm2D(10), nn.ReLU())
        self.dw = nn.Conv2D(16, 16, 3, padding=1, groups=16)
        self.bn = nn.BatchNorm2D(16)
        self.pool = nn.AdaptiveAvgPool2D(4)
        self.fc1 = nn.Linear(16 * 16, 12)
        self.bn1d = nn.BatchNorm1D(12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        y = paddle.concat([self.a(x), self.b(x)], axis=1)
        y = F_relu(self.bn(self.dw(y)))
        y = paddle.flatten(self.pool(y), 1)
        return self.fc2(paddle.nn.functional.relu(self.bn1d(self.fc1(y))))


def F_relu(x):
    return paddle.nn.functional.relu(x)


class GroupedNet(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2D(3, 8, 3, padding=1)
        self.grouped = nn.Conv2D(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2D(8, 4, 1)
        self.tail = nn.Conv2D(4, 6, 1)
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.tail(self.head(self.grouped(self.stem(x))))
        return self.fc(paddle.flatten(self.pool(y), 1))


class ShuffleNet(nn.Layer):
    """ShuffleNet-style channel shuffle written with reshape/transpose/reshape, or nn.ChannelShuffle."""

    def __init__(self, use_layer: bool = False) -> None:
        super().__init__()
        self.c1 = nn.Conv2D(3, 8, 3, padding=1)
        self.shuffle = nn.ChannelShuffle(2) if use_layer else None
        self.c2 = nn.Conv2D(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.c1(x)
        if self.shuffle is not None:
            y = self.shuffle(y)
        else:
            n, c, h, w = y.shape
            y = y.reshape([n, 2, c // 2, h, w]).transpose([0, 2, 1, 3, 4]).reshape([n, c, h, w])
        return self.fc(paddle.flatten(self.pool(self.c2(y)), 1))


class SplitNet(nn.Layer):
    """Uses a tensor op the tracer does not know (slicing) on a feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2D(3, 8, 3, padding=1)
        self.c2 = nn.Conv2D(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.c2(self.c1(x)[:, :4])
        return self.fc(y.mean([2, 3]))


# ---- graph ------------------------------------------------------------------------------------------
def test_resnet20_residual_stage_is_one_group_and_classifier_is_pinned():
    net = build_model("resnet20", 10)
    graph = build_dependency_graph(net)
    stage1 = graph.group_for_layer("conv1")
    names = stage1.layer_names()
    for layer in ("bn1", "layer1.0.conv2", "layer1.1.bn2", "layer1.2.conv2"):
        assert layer in names
    assert {m.layer for m in stage1.members if m.kind == "in"} >= {"layer1.0.conv1", "layer2.0.shortcut.0"}
    stage3 = graph.group_for_layer("layer3.0.shortcut.0")
    assert "layer3.2.conv2" in stage3.layer_names() and any(m.layer == "fc" and m.kind == "in" for m in stage3.members)
    inner = graph.group_for_layer("layer2.1.conv1")
    assert inner.layer_names() == ["layer2.1.conv1", "layer2.1.bn1"] and inner.prunable
    assert not graph.group_for_layer("fc").prunable and graph.group_for_layer("fc").pinned == ["network output"]
    assert sum(g.prunable for g in graph.groups) == 12  # 9 block-internal + 3 residual stages
    text = str(graph)
    assert "layer1.0.bn1.norm" in text and "pinned: network output" in text and "12 prunable" in text
    assert graph.predict_macs() == count_macs_per_image(net) == 40_813_184


def test_depthwise_couples_input_and_output_in_mobilenet():
    graph = build_dependency_graph(build_model("mobilenet_v2", 10))
    group = graph.group_for_layer("features.2.conv.0.0")  # expand conv of the first 6x block
    kinds = {(m.layer, m.kind) for m in group.members}
    assert ("features.2.conv.1.0", "depthwise") in kinds and ("features.2.conv.2", "in") in kinds
    assert group.prunable


def test_concat_offsets_and_flatten_blocks_in_the_graph():
    graph = build_dependency_graph(ConcatNet())
    ga, gb = graph.group_for_layer("a.0"), graph.group_for_layer("b.0")
    dw_a = [m for m in ga.members if m.layer == "dw"][0]
    dw_b = [m for m in gb.members if m.layer == "dw"][0]
    assert (dw_a.kind, dw_a.offset, dw_b.offset) == ("depthwise", 0, 6)
    fc_b = [m for m in gb.members if m.layer == "fc1"][0]
    assert (fc_b.kind, fc_b.offset, fc_b.inner) == ("in", 6 * 16, 16)  # channel c -> features 96 + 16c ..
    assert graph.group_for_layer("bn1d").layer_names() == ["fc1", "bn1d"]


# ---- pruning on every listed architecture ------------------------------------------------------------
ARCHS = {
    "resnet20": lambda: build_model("resnet20", 10),
    "resnet56": lambda: build_model("resnet56", 10),
    "mobilenet_v2_cifar": lambda: build_model("mobilenet_v2", 10, width=0.5),
    "vision_resnet18": lambda: vision.resnet18(num_classes=7),
    "vision_resnet50": lambda: vision.resnet50(num_classes=7),
    "vision_mobilenet_v2": lambda: vision.mobilenet_v2(num_classes=7, scale=0.5),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("ratio", [0.25, 0.6])
def test_prune_keeps_output_shape_and_meets_predictions(arch, ratio):
    paddle.seed(0)
    net = ARCHS[arch]()
    x = paddle.randn([2, 3, 32, 32])
    shape = _eval_out(net, x).shape
    graph = build_dependency_graph(net, x)
    plan = plan_pruning(graph, ratio, criterion="l2")
    predicted_params = plan.predicted_parameters()
    result = apply_plan(plan, x)
    out = _eval_out(net, x)
    assert out.shape == shape and np.isfinite(out).all()
    assert result.macs_after == plan.predicted_macs < result.macs_before
    assert result.params_after == predicted_params == sum(int(np.prod(p.shape)) for p in net.parameters())
    assert result.params_after < result.params_before
    net.train()
    net(x).mean().backward()  # training forward/backward works on the shrunk shapes
    for name, p in net.named_parameters():
        if p.grad is not None:
            assert list(p.grad.shape) == list(p.shape), name


@pytest.mark.slow  # ~20 s: vgg16's 25088x4096 classifier is 400 MB of float32
def test_vgg16_with_flatten_of_7x7_into_the_classifier():
    net = vision.vgg16(num_classes=5)
    x = paddle.randn([1, 3, 32, 32])
    graph = build_dependency_graph(net, x)
    last = graph.group_for_layer("features.28")  # last conv: its channels feed classifier.0 in blocks of 49
    fc_member = [m for m in last.members if m.layer == "classifier.0"][0]
    assert fc_member.inner == 49
    result = shrink_network(net, 0.5, example_input=x)
    assert list(net.classifier[0].weight.shape) == [256 * 49, 2048]
    assert _eval_out(net, x).shape == (1, 5)
    assert result.macs_after == result.plan.predicted_macs


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "bn_scale"])
def test_criteria_and_round_to(criterion):
    net = build_model("resnet20", 10)
    prune_channels(net, 0.3, criterion=criterion, round_to=8)
    for name in ("conv1", "layer1.0.conv1", "layer2.1.conv1", "layer3.0.conv2"):
        layer = dict(net.named_sublayers())[name]
        assert layer.weight.shape[0] % 8 == 0 and layer._out_channels == layer.weight.shape[0]
    assert dict(net.named_sublayers())["layer3.0.conv1"].weight.shape[0] == 48  # 64 - 19 = 45 -> 48


def test_group_importance_uses_every_member():
    net = build_model("resnet20", 10)
    graph = build_dependency_graph(net)
    group = graph.group_for_layer("layer2.1.conv1")
    # channel 3 has a large filter in the producer but zero input weights in the consumer and a small one
    # elsewhere: only the first-conv norm (PaddleSlim) would keep it
    w1 = net.layer2[1].conv1.weight.numpy()
    w2 = net.layer2[1].conv2.weight.numpy()
    w1[:] = 1.0
    w1[3] = 1.2
    w2[:] = 1.0
    w2[:, 3] = 0.0
    net.layer2[1].conv1.weight.set_value(w1)
    net.layer2[1].conv2.weight.set_value(w2)
    from slim_callbacks.prune.shrink import group_importance
    scores = group_importance(graph, group, "l1")
    assert scores.argmin() == 3


def test_target_mac_reduction_is_reached_and_measured():
    net = build_model("resnet20", 10)
    result = shrink_network(net, target_mac_reduction=0.5)
    reduction = 1 - result.macs_after / result.macs_before
    assert 0.5 <= reduction < 0.55
    assert result.macs_after == count_macs_per_image(net)
    with pytest.raises(ValueError, match="unreachable"):
        prune_channels(build_model("resnet20", 10), target_mac_reduction=0.999)


# ---- exactness: channels that contribute nothing are removed without changing the outputs ------------
def _zero_bn_channels_and_prune(net: nn.Layer, x: paddle.Tensor, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Give every BN random gammas, then zero gamma and beta of the channels bn_scale will drop."""
    rng = np.random.default_rng(0)
    graph = build_dependency_graph(net, x)
    for layer in net.sublayers():
        if isinstance(layer, nn.layer.norm._BatchNormBase):
            n = layer.weight.shape[0]
            layer.weight.set_value(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.bias.set_value(rng.uniform(-0.5, 0.5, n).astype("float32"))
            layer._mean.set_value(rng.uniform(-0.2, 0.2, n).astype("float32"))
            layer._variance.set_value(rng.uniform(0.5, 1.5, n).astype("float32"))
    plan = plan_pruning(graph, ratio, criterion="bn_scale")
    assert plan.kept, "nothing to prune"
    for gi, kept in plan.kept.items():
        group = graph.groups[gi]
        drop = np.setdiff1d(np.arange(group.size), kept)
        assert any(m.kind == "norm" for m in group.members)
        for m in group.members:
            if m.kind == "norm":
                bn = graph.layers[m.layer].layer
                for t in (bn.weight, bn.bias):
                    v = t.numpy()
                    v[m.offset + drop] = 0.0
                    t.set_value(v)
    # re-plan: the zeroed channels now have the lowest |gamma| in every member
    plan = plan_pruning(graph, ratio, criterion="bn_scale")
    before = _eval_out(net, x)
    apply_plan(plan, x)
    return before, _eval_out(net, x)


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v2_cifar", "vision_resnet18"])
def test_pruning_zeroed_channels_leaves_outputs_unchanged(arch):
    paddle.seed(1)
    net = ARCHS[arch]()
    x = paddle.randn([2, 3, 32, 32])
    before, after = _zero_bn_channels_and_prune(net, x, 0.4)
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)


def test_exactness_through_concat_depthwise_and_flatten():
    paddle.seed(2)
    net = ConcatNet()
    x = paddle.randn([2, 3, 16, 16])
    before, after = _zero_bn_channels_and_prune(net, x, 0.5)
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)
    assert net.dw._groups == net.dw.weight.shape[0] == 8 and net.fc1.weight.shape == [8 * 16, 6]


# ---- refusals --------------------------------------------------------------------------------------------
def test_grouped_conv_is_refused_with_layer_name_and_can_be_ignored():
    net = GroupedNet()
    x = paddle.randn([1, 3, 8, 8])
    weights = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    with pytest.raises(UnsupportedPatternError, match=r"grouped \(Conv2D\): grouped conv \(groups=2"):
        prune_channels(net, 0.5, example_input=x)
    assert all(np.array_equal(v.numpy(), weights[k]) for k, v in net.state_dict().items())  # untouched
    prune_channels(net, 0.5, example_input=x, ignored_layers=["grouped"])
    assert net.head.weight.shape == [2, 8, 1, 1] and net.grouped.weight.shape == [8, 4, 3, 3]
    assert _eval_out(net, x).shape == (1, 3)


@pytest.mark.parametrize("use_layer", [False, True])
def test_channel_shuffle_is_refused(use_layer):
    net = ShuffleNet(use_layer)
    x = paddle.randn([1, 3, 8, 8])
    pattern = "ChannelShuffle" if use_layer else r"reshape \[1, 8, 8, 8\] -> \[1, 2, 4, 8, 8\]"
    with pytest.raises(UnsupportedPatternError, match=pattern):
        prune_channels(net, 0.5, example_input=x)
    assert net.c1.weight.shape == [8, 3, 3, 3]
    # the classifier side (c2's output group) is independent of the shuffle and may still be pruned
    prune_channels(net, {"c2": 0.5}, example_input=x)
    assert net.c2.weight.shape == [4, 8, 1, 1] and _eval_out(net, x).shape == (1, 3)


def test_untraced_op_on_feature_maps_is_refused():
    net = SplitNet()
    graph = build_dependency_graph(net, paddle.randn([1, 3, 8, 8]))
    assert graph.hazards and "c2 (Conv2D)" in graph.hazards[0]
    with pytest.raises(UnsupportedPatternError, match="op the tracer does not know"):
        prune_channels(net, 0.5, input_shape=(1, 3, 8, 8))


def test_bad_arguments_name_the_problem():
    net = build_model("resnet20", 10)
    with pytest.raises(ValueError, match="valid: .*layer1.0.conv1"):
        prune_channels(net, {"layer1.0.conv9": 0.5})
    with pytest.raises(ValueError, match="network output"):
        prune_channels(net, {"fc": 0.5})
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        prune_channels(net, 1.0)
    with pytest.raises(ValueError, match="valid: l1, l2, fpgm, bn_scale"):
        prune_channels(net, 0.5, criterion="l3")
    with pytest.raises(ValueError, match="exactly one"):
        prune_channels(net)
    with pytest.raises(ValueError, match="conflicts"):
        prune_channels(net, {"layer1.0.conv2": 0.5, "layer1.1.conv2": 0.25})
    assert net.conv1.weight.shape == [16, 3, 3, 3]


def test_per_layer_ratios_touch_only_their_groups():
    net = build_model("resnet20", 10)
    prune_channels(net, {"layer2.1.conv1": 0.5, "layer3.0.shortcut.0": 0.25})
    assert net.layer2[1].conv1.weight.shape == [16, 32, 3, 3] and net.layer2[1].conv2.weight.shape == [32, 16, 3, 3]
    assert net.layer3[2].conv2.weight.shape[0] == 48 and net.fc.weight.shape == [48, 10]
    assert net.layer1[0].conv1.weight.shape == [16, 16, 3, 3]


class HardCodedReshape(nn.Layer):
    """A forward that hard-codes a channel count the tracer cannot see: pruning must roll back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2D(3, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2D(2)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).reshape([-1, 64]))


def test_failed_shrink_is_rolled_back():
    net = HardCodedReshape()
    x = paddle.randn([1, 3, 8, 8])
    before = _eval_out(net, x)
    with pytest.raises(RuntimeError, match="rolled back"):
        prune_channels(net, 0.5, example_input=x)
    assert net.conv.weight.shape == [16, 3, 3, 3] and net.conv._out_channels == 16 and net.fc.weight.shape == [64, 3]
    np.testing.assert_array_equal(_eval_out(net, x), before)


def test_plan_from_explicit_kept_channels():
    from slim_callbacks.prune.shrink import plan_from_kept
    net = build_model("resnet20", 10)
    graph = build_dependency_graph(net)
    gi = graph.group_for_layer("layer2.1.conv1").index
    plan = plan_from_kept(graph, {gi: [0, 5, 7]})
    w = net.layer2[1].conv2.weight.numpy()[:, [0, 5, 7]]
    apply_plan(plan)
    np.testing.assert_array_equal(net.layer2[1].conv2.weight.numpy(), w)
    graph = build_dependency_graph(net)
    with pytest.raises(ValueError, match="not prunable"):
        plan_from_kept(graph, {graph.group_for_layer("fc").index: [0]})
    with pytest.raises(ValueError, match="distinct, non-empty"):
        plan_from_kept(graph, {graph.group_for_layer("layer2.1.conv1").index: [0, 3]})


def test_legacy_batchnorm_class_with_fused_act_is_sliced_exactly():
    paddle.seed(3)
    net = nn.Sequential(nn.Conv2D(3, 8, 3, padding=1), nn.BatchNorm(8, act="relu"), nn.Conv2D(8, 6, 3, padding=1),
                        nn.BatchNorm(6), nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(6, 2))
    x = paddle.randn([2, 3, 8, 8])
    before, after = _zero_bn_channels_and_prune(net, x, 0.5)
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)
    assert net[1]._mean.shape == [4] and net[3].weight.shape == [3] and net[6].weight.shape == [3, 2]


def test_unknown_ignored_layer_is_an_error():
    with pytest.raises(ValueError, match=r"ignored_layers \['nope'\] are not layers"):
        prune_channels(GroupedNet(), 0.5, input_shape=(1, 3, 8, 8), ignored_layers=["nope"])


def test_keep_residual_leaves_every_residual_stream_whole():
    from slim_callbacks.prune.shrink import prune_channels

    net = build_model("resnet20", 10, width=0.5)
    prune_channels(net, 0.5, keep_residual=True)
    assert net.conv1.weight.shape[0] == 8 and net.fc.weight.shape[0] == 32  # streams: 8 / 16 / 32 channels
    assert net.layer2[0].shortcut[0].weight.shape[:2] == [16, 8]
    assert all(block.conv1.weight.shape[0] == block.conv2.weight.shape[1] == block.conv2.weight.shape[0] // 2
               for stage in (net.layer1, net.layer2, net.layer3) for block in stage)


def test_mac_count_includes_qat_wrapped_layers():
    from slim_callbacks.prune.shrink import count_macs_per_image
    from slim_callbacks.quant import quantize_qat

    net = build_model("resnet20", 10, width=0.5)
    dense = count_macs_per_image(net)
    quantize_qat(net, example_inputs=paddle.randn([2, 3, 32, 32]))
    assert count_macs_per_image(net) == dense > 0
