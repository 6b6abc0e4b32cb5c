"""QAT / PTQ / INT8 deployment of CIFAR ResNet-20 on Fashion-MNIST, with the bar's recipe (BAR-RECIPE.md).

    OMP_NUM_THREADS=2 python benchmarks/quant_resnet20.py --out benchmarks/results/quant_resnet20.json

Steps: FP32 baseline (8 epochs, cached in --work), then from it: an FP32 control fine-tune and a QAT
fine-tune (2 epochs each, QATCallback), export + verify_deployment of the QAT model on the full test set,
and PTQ with every algorithm (10 batches of 128 training images) with the best one exported and verified.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from slim_callbacks.quant import PTQ_ALGOS, QATCallback, calibrate, export_int8, verify_deployment  # noqa: E402
from benchmarks._eval import arrays, top1  # noqa: E402
from trainers.data import build_datasets  # noqa: E402
from trainers.models import build_model  # noqa: E402


class Timer(paddle.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epoch_seconds, self.images = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self.t0)


def fit(net, train, epochs, lr, batch, callbacks=()):
    steps = epochs * int(np.ceil(len(train) / batch))
    sched = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=steps)
    opt = paddle.optimizer.Momentum(sched, momentum=0.9, parameters=net.parameters(),
                                    weight_decay=paddle.regularizer.L2Decay(5e-4))
    model = paddle.Model(net)
    model.prepare(opt, paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    timer = Timer()
    lr_cb = paddle.callbacks.LRScheduler(by_step=True, by_epoch=False)
    model.fit(train, epochs=epochs, batch_size=batch, shuffle=True, verbose=0, num_workers=0,
              callbacks=[timer, lr_cb, *callbacks])
    return timer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="benchmarks/work/quant_resnet20")
    ap.add_argument("--out", default="benchmarks/results/quant_resnet20.json")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of steps to skip: control,qat,ptq")
    ap.add_argument("--ptq-eval", type=int, default=10000, help="test images for the PTQ algorithm sweep")
    ap.add_argument("--train-subset", type=int, default=10000, help="training images (the bar: 10000)")
    ap.add_argument("--test-limit", type=int, default=None, help="test images (the bar: all 10000)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    threads = int(os.environ["OMP_NUM_THREADS"])
    paddle.seed(0)
    np.random.seed(0)
    train, test, classes = build_datasets("fashion_mnist", train_subset=args.train_subset, subset_seed=0)
    calib_ds, _, _ = build_datasets("fashion_mnist", train_subset=args.train_subset, subset_seed=0, augment=False)
    x_test, y_test = arrays(test, args.test_limit)
    x_cal, _ = arrays(calib_ds, 1280)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": threads,
                     "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                     "paddle": paddle.__version__, "command": " ".join(sys.argv)}

    def save():
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    base_file = os.path.join(args.work, "baseline.pdparams")
    net = build_model("resnet20", num_classes=classes)
    if os.path.exists(base_file):
        net.set_state_dict(paddle.load(base_file))
    else:
        t = fit(net, train, args.epochs, 0.1, 128)
        paddle.save(net.state_dict(), base_file)
        results["baseline_epoch_seconds"] = t.epoch_seconds
    base_state = copy.deepcopy(net.state_dict())
    results["baseline_top1"] = top1(net, x_test, y_test)
    print("baseline", results["baseline_top1"], flush=True)
    save()

    if "control" not in skip:
        net = build_model("resnet20", num_classes=classes)
        net.set_state_dict(base_state)
        t = fit(net, train, args.finetune_epochs, 0.01, 128)
        results["fp32_finetune_top1"] = top1(net, x_test, y_test)
        results["fp32_finetune_epoch_seconds"] = t.epoch_seconds
        print("fp32 control", results["fp32_finetune_top1"], t.epoch_seconds, flush=True)
        save()

    if "qat" not in skip:
        net = build_model("resnet20", num_classes=classes)
        net.set_state_dict(base_state)
        t = fit(net, train, args.finetune_epochs, 0.01, 128, [QATCallback(freeze_observer_epoch=args.finetune_epochs - 1 if args.finetune_epochs > 1 else None)])
        results["qat_sim_top1"] = top1(net, x_test, y_test)
        results["qat_epoch_seconds"] = t.epoch_seconds
        print("qat", results["qat_sim_top1"], t.epoch_seconds, flush=True)
        path = os.path.join(args.work, "qat_int8")
        export_int8(net, path, [None, 3, 32, 32])
        results["qat_deploy"] = verify_deployment(net, path, x_test, y_test, batch_sizes=(1, 32), threads=threads,
                                                  repeats=50, warmup=10)
        print(json.dumps(results["qat_deploy"]), flush=True)
        save()

    if "ptq" not in skip:
        results["ptq_sim_top1"] = {}
        best = None
        for algo in PTQ_ALGOS:
            net = build_model("resnet20", num_classes=classes)
            net.set_state_dict(base_state)
            t0 = time.perf_counter()
            calibrate(net, x_cal, algo=algo, batches=10)
            acc = top1(net, x_test[:args.ptq_eval], y_test[:args.ptq_eval])
            results["ptq_sim_top1"][algo] = acc
            results["ptq_eval_images"] = min(args.ptq_eval, len(x_test))
            print("ptq", algo, acc, time.perf_counter() - t0, flush=True)
            if best is None or acc > best[1]:
                best = (algo, acc, net)
            save()
        path = os.path.join(args.work, "ptq_int8")
        export_int8(best[2], path, [None, 3, 32, 32])
        results["ptq_best"] = best[0]
        results["ptq_deploy"] = verify_deployment(best[2], path, x_test, y_test, batch_sizes=(1, 32), threads=threads,
                                                  repeats=30, warmup=5)
        print(json.dumps(results["ptq_deploy"]), flush=True)
        save()


if __name__ == "__main__":
    main()
