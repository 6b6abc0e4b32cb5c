"""All three techniques in one plain ``paddle.Model.fit``, on the embedded Fashion-MNIST sample.

    python examples/fit_with_callbacks.py                  # a few minutes on 2 cores
    python examples/fit_with_callbacks.py --subset 512 --epochs 1 --teacher-epochs 1   # a quick look

1. trains a ResNet-32 teacher;
2. trains a half-width ResNet-20 student with DistillCallback (feature pair on layer3 through an
   auto 1x1 adapter + soft labels, on CutMix batches), GradualPruneCallback (cubic to 50% sparsity)
   and QATCallback (fake-quant from the last epoch), logging to VisualDL;
3. prints test accuracy, the measured sparsity and the compression card.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle  # noqa: E402

from slim_callbacks import SlimVisualDL  # noqa: E402
from slim_callbacks.distill import DistillCallback  # noqa: E402
from slim_callbacks.prune import GradualPruneCallback  # noqa: E402
from slim_callbacks.quant import QATCallback  # noqa: E402
from slim_callbacks.report import build_card  # noqa: E402
from trainers.data import build_datasets  # noqa: E402
from trainers.models import build_model  # noqa: E402
from trainers.trainer import set_cpu_threads  # noqa: E402


def prepared(network: paddle.nn.Layer, lr: float, steps: int) -> paddle.Model:
    model = paddle.Model(network)
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=max(1, steps))
    optimizer = paddle.optimizer.Momentum(schedule, momentum=0.9, parameters=network.parameters(),
                                          weight_decay=paddle.regularizer.L2Decay(5e-4))
    model.prepare(optimizer, paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", type=int, default=None, help="training images (default: all 5,000)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--log-dir", default="runs/example")
    args = p.parse_args()
    set_cpu_threads()
    paddle.seed(0)
    train, test, classes = build_datasets("sample", train_subset=args.subset)
    steps = -(-len(train) // args.batch_size)

    teacher = build_model("resnet32", classes)
    tmodel = prepared(teacher, 0.1, args.teacher_epochs * steps)
    tmodel.fit(train, batch_size=args.batch_size, epochs=args.teacher_epochs, verbose=0)
    teacher_acc = tmodel.evaluate(test, batch_size=256, verbose=0)["acc"]
    print(f"teacher resnet32 top-1: {teacher_acc:.4f}")

    student = build_model("resnet20", classes, width=0.5)
    model = prepared(student, 0.1, args.epochs * steps)
    model.fit(train, test, batch_size=args.batch_size, epochs=args.epochs, verbose=2, log_freq=20, callbacks=[
        # listed in any order: slim callbacks act in their documented priority order
        QATCallback(start_epoch=args.epochs - 1),
        GradualPruneCallback(final_sparsity=0.5, start_epoch=0, end_epoch=max(1, args.epochs - 1)),
        DistillCallback(teacher, feature_pairs=[("layer3", "layer3")], soft_label_weight=0.5,
                        mixing="cutmix"),
        SlimVisualDL(args.log_dir),
    ])
    result = model.evaluate(test, batch_size=256, verbose=0)
    card = build_card(student, (1, 3, 32, 32), name="resnet20-w0.5 distilled+pruned+QAT",
                      extra={"teacher_top1": float(teacher_acc), "student_top1": float(result["acc"])})
    print(card.to_markdown())
    print(json.dumps({"student_top1": float(result["acc"]), "sparsity": card.sparsity}))


if __name__ == "__main__":
    main()
