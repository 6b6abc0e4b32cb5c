"""Models for 3x32x32 inputs (CIFAR-style), built from paddle.nn with named stages.

Every sub-layer is reachable by a stable dotted name from ``net.named_sublayers()``, so
compression code (distillation taps, pruning groups, reports) can address layers by name:

* CIFAR ResNet-20/32/56 (He et al. 2016, sec. 4.2): ``conv1, bn1, relu, layer1, layer2, layer3,
  avgpool, fc``; each basic block has ``conv1, bn1, relu1, conv2, bn2, shortcut, relu2``, e.g.
  ``'layer3.2.conv2'``. Projection shortcuts (option B: 1x1 conv + BN) where the shape changes,
  otherwise ``shortcut`` is an ``nn.Identity``.
* MobileNetV2 for 32x32 inputs: ``features`` (``features.0`` stem, ``features.1`` ..
  ``features.17`` inverted residual blocks, ``features.18`` last 1x1 conv), ``avgpool``,
  ``classifier`` (``Dropout``, ``Linear``).
* ``resnet18``: ``paddle.vision.models.resnet18`` (ImageNet stem), for completeness.

Figures for ``build_model('resnet20', 10)``: 272,474 trainable parameters and 274,042 parameters
in total (Paddle stores each BatchNorm's running mean and variance as non-trainable Parameters,
1,568 values here, which ``paddle.summary`` counts in its "Total params"); 40,813,184
multiply-accumulates per 3x32x32 image (convolutions and the Linear layer).
"""

from __future__ import annotations

from typing import Callable

import paddle
from paddle import nn

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "InvertedResidual",
    "MobileNetV2Cifar",
    "MODELS",
    "build_model",
    "resnet20",
    "resnet32",
    "resnet56",
    "mobilenet_v2",
    "resnet18",
]


def _scaled_channels(base: int, width: float) -> int:
    """``base * width`` rounded to the nearest integer, at least 1 channel."""
    return max(1, int(round(base * width)))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` without losing more than 10% (MobileNet rule)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class BasicBlock(nn.Layer):
    """Two 3x3 conv + BN layers with a residual connection (CIFAR ResNet block).

    The shortcut is ``nn.Identity`` when the shape is unchanged, otherwise an ``nn.Sequential``
    of a 1x1 strided conv and BN (option B). Each ReLU use site has its own instance.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(in_channels, out_channels, 3, stride=stride, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2D(out_channels, out_channels, 3, stride=1, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2D(in_channels, out_channels, 1, stride=stride, bias_attr=False),
                nn.BatchNorm2D(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Layer):
    """CIFAR ResNet-(6n+2): a 3x3 stem, three stages of ``n`` basic blocks, average pool, Linear.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...).
        num_classes: outputs of the final Linear layer.
        width: channel multiplier; stage channels are round(16/32/64 * width).
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet depth must be 6n+2 with n >= 1 (20, 32, 56, ...), got {depth}")
        _check_width(width)
        _check_num_classes(num_classes)
        blocks_per_stage = (depth - 2) // 6
        channels = [_scaled_channels(c, width) for c in (16, 32, 64)]
        self.depth = depth
        self.width = width
        self.conv1 = nn.Conv2D(3, channels[0], 3, stride=1, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(channels[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(channels[0], channels[0], blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(channels[0], channels[1], blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(channels[1], channels[2], blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(channels[2], num_classes)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = paddle.flatten(self.avgpool(x), 1)
        return self.fc(x)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) + BN + ReLU6, named ``0``, ``1``, ``2``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2,
                      groups=groups, bias_attr=False),
            nn.BatchNorm2D(out_channels),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Layer):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> project 1x1 (linear bottleneck).

    Sub-layer ``conv`` is an ``nn.Sequential``: [expand ConvBNReLU6 (absent when expand_ratio == 1)],
    depthwise ConvBNReLU6, project Conv2D, BN. Residual when stride == 1 and channels match.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Layer] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2D(hidden, out_channels, 1, bias_attr=False),
            nn.BatchNorm2D(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Cifar(nn.Layer):
    """MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

    The stem conv and the first downsampling stage (24 channels) use stride 1 instead of 2, so the
    feature map goes 32 -> 16 -> 8 -> 4 before the last 1x1 conv (1280 channels, scaled up only when
    width > 1), global average pooling, Dropout(0.2) and Linear.
    """

    # (expand ratio t, output channels c, blocks n, first stride s)
    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),  # stride 2 in the ImageNet model
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        _check_width(width)
        _check_num_classes(num_classes)
        self.width = width
        in_channels = _make_divisible(32 * width)
        last_channels = _make_divisible(1280 * max(1.0, width))
        features: list[nn.Layer] = [ConvBNReLU6(3, in_channels, 3, stride=1)]
        for t, c, n, s in self.SETTINGS:
            out_channels = _make_divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
        features.append(ConvBNReLU6(in_channels, last_channels, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = paddle.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _check_width(width: float) -> None:
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(f"width multiplier must be a number > 0, got {width!r}")


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")


def resnet20(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-20 (3 stages x 3 blocks, 16/32/64 x width channels)."""
    return CifarResNet(20, num_classes, width)


def resnet32(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-32 (3 stages x 5 blocks)."""
    return CifarResNet(32, num_classes, width)


def resnet56(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-56 (3 stages x 9 blocks)."""
    return CifarResNet(56, num_classes, width)


def mobilenet_v2(num_classes: int = 10, width: float = 1.0) -> MobileNetV2Cifar:
    """MobileNetV2 for 32x32 inputs with a channel width multiplier."""
    return MobileNetV2Cifar(num_classes, width)


def resnet18(num_classes: int = 10, width: float = 1.0) -> nn.Layer:
    """``paddle.vision.models.resnet18`` (ImageNet stem: 7x7/2 conv + max pool), random init.

    Only width 1.0 is supported: paddle's BasicBlock has no width multiplier.
    """
    _check_width(width)
    _check_num_classes(num_classes)
    if width != 1.0:
        raise ValueError(f"resnet18 (paddle.vision) supports only width=1.0, got {width!r}")
    return paddle.vision.models.resnet18(num_classes=num_classes)


MODELS: dict[str, Callable[..., nn.Layer]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
}


def build_model(name: str, num_classes: int, width: float = 1.0) -> nn.Layer:
    """Build a registered model by name for 3x32x32 inputs.

    Args:
        name: a key of ``MODELS`` ('resnet20', 'resnet32', 'resnet56', 'mobilenet_v2', 'resnet18').
        num_classes: number of output logits.
        width: channel multiplier (> 0); 1.0 is the published architecture.

    Raises:
        ValueError: unknown name (the message lists the valid names), width <= 0, num_classes < 1.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    _check_width(width)
    return MODELS[name](num_classes=num_classes, width=width)
