"""Does distillation help? Student alone vs distilled vs distilled + CutMix/MixUp, same epochs and seeds.

1. Train the teacher (or load ``--teacher-params``) and record its test accuracy.
2. Train the student from the same initial weights (``--seed``) for ``--epochs`` in each setting:
   ``alone``; ``kd`` (soft labels); ``kd+at`` (soft labels + attention transfer on layer2/layer3);
   ``kd+at+cutmix``; ``kd+at+mixup``.
3. Print one JSON line per setting and a summary (test top-1 after the last epoch).

    python benchmarks/distill_accuracy.py --dataset sample --teacher resnet56 --student resnet20 \
        --teacher-epochs 4 --epochs 4 --threads 2

Data: 'sample' (embedded 5000/1000 Fashion-MNIST images), or 'fashion_mnist' (Debian's full copy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402

from slim_callbacks.distill import DistillCallback  # noqa: E402
from trainers.data import build_datasets  # noqa: E402
from trainers.models import build_model  # noqa: E402

SETTINGS = {
    "alone": None,
    "kd": dict(soft_label_weight=1.0),
    "kd+at": dict(soft_label_weight=1.0, feature_pairs=[("layer2", "layer2"), ("layer3", "layer3")],
                  feature_loss="at", pair_weights=[100.0, 100.0]),
    "kd+at+cutmix": dict(soft_label_weight=1.0, feature_pairs=[("layer2", "layer2"), ("layer3", "layer3")],
                         feature_loss="at", pair_weights=[100.0, 100.0], mixing={"mode": "cutmix", "seed": 0}),
    "kd+at+mixup": dict(soft_label_weight=1.0, feature_pairs=[("layer2", "layer2"), ("layer3", "layer3")],
                        feature_loss="at", pair_weights=[100.0, 100.0],
                        mixing={"mode": "mixup", "alpha": 0.4, "seed": 0}),
}


def _fit(net: nn.Layer, train, test, epochs: int, args, callbacks=()) -> float:
    model = paddle.Model(net)
    steps = (len(train) + args.batch - 1) // args.batch
    lr = paddle.optimizer.lr.CosineAnnealingDecay(args.lr, T_max=max(1, epochs * steps))
    model.prepare(paddle.optimizer.Momentum(lr, momentum=0.9, parameters=net.parameters(),
                                            weight_decay=paddle.regularizer.L2Decay(5e-4)),
                  nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    lr_cb = paddle.callbacks.LRScheduler(by_step=True, by_epoch=False)
    model.fit(train, epochs=epochs, batch_size=args.batch, verbose=0, shuffle=True,
              callbacks=[lr_cb, *callbacks])
    return float(model.evaluate(test, batch_size=500, verbose=0)["acc"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="sample", choices=["sample", "fashion_mnist"])
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--teacher-width", type=float, default=1.0)
    p.add_argument("--teacher-params", default=None, help="skip teacher training: load these parameters")
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--student", default="resnet20")
    p.add_argument("--student-width", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--save-teacher", default=None, help="write the trained teacher's parameters here")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    paddle.base.core.set_num_threads(args.threads)
    train, test, classes = build_datasets(args.dataset, train_subset=args.train_subset)

    start = time.time()
    paddle.seed(args.seed)
    teacher = build_model(args.teacher, num_classes=classes, width=args.teacher_width)
    if args.teacher_params:
        teacher.set_state_dict(paddle.load(args.teacher_params))
        model = paddle.Model(teacher)
        model.prepare(metrics=paddle.metric.Accuracy())
        teacher_acc = float(model.evaluate(test, batch_size=500, verbose=0)["acc"])
    else:
        teacher_acc = _fit(teacher, train, test, args.teacher_epochs, args)
        if args.save_teacher:
            paddle.save(teacher.state_dict(), args.save_teacher)
    print(json.dumps({"setting": "teacher", "model": args.teacher, "width": args.teacher_width,
                      "epochs": args.teacher_params or args.teacher_epochs, "acc": round(teacher_acc, 4),
                      "minutes": round((time.time() - start) / 60, 1)}), flush=True)

    results = {}
    for name in args.settings.split(","):
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; valid: {', '.join(SETTINGS)}")
        t0 = time.time()
        paddle.seed(args.seed + 1)  # same student initialization in every setting
        student = build_model(args.student, num_classes=classes, width=args.student_width)
        callbacks = [DistillCallback(teacher, **SETTINGS[name])] if SETTINGS[name] else []
        results[name] = _fit(student, train, test, args.epochs, args, callbacks)
        print(json.dumps({"setting": name, "acc": round(results[name], 4),
                          "minutes": round((time.time() - t0) / 60, 1)}), flush=True)
    print(json.dumps({
        "teacher": f"{args.teacher} w{args.teacher_width} "
                   f"({args.teacher_params or str(args.teacher_epochs) + ' epochs'}): {teacher_acc:.4f}",
        "student": f"{args.student} w{args.student_width}, {args.epochs} epochs, seed {args.seed + 1}",
        "test_top1": {k: round(v, 4) for k, v in results.items()},
        "dataset": args.dataset, "train_images": len(train), "test_images": len(test),
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "threads": args.threads,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }, indent=1))


if __name__ == "__main__":
    main()
