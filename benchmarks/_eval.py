"""Evaluation helpers shared by the benchmark scripts (whole datasets as arrays, top-1)."""

from __future__ import annotations

import numpy as np
import paddle


def arrays(ds, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` (image, label) items of ``ds`` as float32 images and a flat int64 label vector."""
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = zip(*(ds[i] for i in range(n)))
    return np.stack(xs).astype("float32"), np.concatenate(ys).astype("int64")


def top1(net: paddle.nn.Layer, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of ``net`` (eval mode) on arrays ``x``, ``y``."""
    net.eval()
    correct = 0
    with paddle.no_grad():
        for i in range(0, len(x), batch):
            correct += int((net(paddle.to_tensor(x[i:i + batch])).numpy().argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


def resnet20_momentum_model(seed: int = 0, lr: float = 0.01) -> tuple[paddle.nn.Layer, paddle.Model]:
    """A CIFAR ResNet-20 (10 classes) in a ``paddle.Model`` prepared with Momentum 0.9, L2 5e-4 and
    cross-entropy: the set-up the pruning overhead benchmarks time."""
    from trainers.models import build_model

    paddle.seed(seed)
    net = build_model("resnet20", num_classes=10)
    model = paddle.Model(net)
    opt = paddle.optimizer.Momentum(lr, momentum=0.9, parameters=net.parameters(), weight_decay=5e-4)
    model.prepare(opt, paddle.nn.CrossEntropyLoss())
    return net, model
