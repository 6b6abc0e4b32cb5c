"""Find Conv2D -> BatchNorm pairs, by tracing one forward pass or, without an input, by structure.

Tracing (preferred): forward hooks record each conv's output tensor; a BatchNorm whose input *is* that
tensor (the same object) is paired with it. This follows the real data flow, never names.
Structure (fallback, no example input): within one parent, a BatchNorm registered right after a conv with
``num_features == out_channels``. It matches the common ``conv, bn`` layouts (ResNets, MobileNets) and is
reported as a guess in the returned pairs' provenance.
"""

from __future__ import annotations

from typing import Sequence

import paddle
from paddle import nn

__all__ = ["BN_TYPES", "RELU_TYPES", "find_conv_bn_pairs", "find_relu_fed_layers"]

BN_TYPES = (nn.BatchNorm2D, nn.BatchNorm)
RELU_TYPES = (nn.ReLU, nn.ReLU6)


def _as_inputs(example_inputs) -> list:
    if isinstance(example_inputs, (list, tuple)):
        return [paddle.to_tensor(x) if not isinstance(x, paddle.Tensor) else x for x in example_inputs]
    return [example_inputs if isinstance(example_inputs, paddle.Tensor) else paddle.to_tensor(example_inputs)]


def _trace_pairs(network: nn.Layer, example_inputs) -> list[tuple[str, str]]:
    names = {id(layer): name for name, layer in network.named_sublayers()}
    conv_out: dict[int, tuple[str, paddle.Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    handles = []

    def conv_hook(layer, inputs, output):
        conv_out[id(output)] = (names[id(layer)], output)

    def bn_hook(layer, inputs):
        x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        hit = conv_out.get(id(x))
        if hit is not None and hit[1] is x:
            pairs.append((hit[0], names[id(layer)]))

    for _, layer in network.named_sublayers():
        if isinstance(layer, nn.Conv2D):
            handles.append(layer.register_forward_post_hook(conv_hook))
        elif isinstance(layer, BN_TYPES):
            handles.append(layer.register_forward_pre_hook(bn_hook))
    _traced_forward(network, example_inputs, handles)
    seen_conv, seen_bn, unique = set(), set(), []
    for conv, bn in pairs:  # a layer called twice could repeat; keep first and only 1:1 pairs
        if conv not in seen_conv and bn not in seen_bn:
            unique.append((conv, bn))
            seen_conv.add(conv)
            seen_bn.add(bn)
    return unique


def _traced_forward(network: nn.Layer, example_inputs, handles: list) -> None:
    """One eval-mode, no-grad forward for the hooks in ``handles``, which are removed afterwards."""
    was_training = network.training
    network.eval()
    try:
        with paddle.no_grad():
            network(*_as_inputs(example_inputs))
    finally:
        for h in handles:
            h.remove()
        if was_training:
            network.train()


def find_relu_fed_layers(network: nn.Layer, example_inputs, types: tuple = (nn.Conv2D, nn.Linear)) -> list[str]:
    """Names of ``types`` layers whose input *is* the output of an ``nn.ReLU``/``nn.ReLU6`` layer (traced).

    oneDNN quantizes such inputs as u8 (2**bits - 1 levels on [0, r]); the simulation must do the same.
    ReLUs applied functionally (``F.relu``) are invisible to hooks and stay signed.
    """
    names = {id(layer): name for name, layer in network.named_sublayers()}
    relu_out: dict[int, paddle.Tensor] = {}
    fed: list[str] = []
    handles = []

    def relu_hook(layer, inputs, output):
        relu_out[id(output)] = output

    def layer_hook(layer, inputs):
        x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        if relu_out.get(id(x)) is x and names[id(layer)] not in fed:
            fed.append(names[id(layer)])

    for _, layer in network.named_sublayers():
        if isinstance(layer, RELU_TYPES):
            handles.append(layer.register_forward_post_hook(relu_hook))
        elif isinstance(layer, types):
            handles.append(layer.register_forward_pre_hook(layer_hook))
    _traced_forward(network, example_inputs, handles)
    return fed


def _structural_pairs(network: nn.Layer) -> list[tuple[str, str]]:
    pairs = []
    for parent_name, parent in [("", network)] + list(network.named_sublayers()):
        children = list(parent.named_children())
        for (n1, l1), (n2, l2) in zip(children, children[1:]):
            if isinstance(l1, nn.Conv2D) and isinstance(l2, BN_TYPES) and l2.weight is not None \
                    and int(l2.weight.shape[0]) == int(l1.weight.shape[0]):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + n1, prefix + n2))
    return pairs


def find_conv_bn_pairs(network: nn.Layer, example_inputs: paddle.Tensor | Sequence | None = None
                       ) -> list[tuple[str, str]]:
    """``[(conv_name, bn_name), ...]`` of BatchNorms applied directly to a conv's output.

    Args:
        network: a float network (before quantization).
        example_inputs: one batch (tensor or list of tensors) for tracing; None uses the structural rule.
    """
    if example_inputs is not None:
        return _trace_pairs(network, example_inputs)
    return _structural_pairs(network)
