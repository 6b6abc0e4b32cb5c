"""Filter pruning by physical shrink on CIFAR ResNet-20 / Fashion-MNIST, with the bar's recipe.

Recipe (../shared/BAR-RECIPE.md): 10,000-image training subset (seed-0 permutation), all 10,000 test
images, crop + flip; Momentum 0.9, L2 5e-4, batch 128. FP32 baseline: lr 0.1 cosine per iteration,
8 epochs (or loaded from --baseline, e.g. the quantization benchmark's cached one). From it:

* ``control``: FP32 fine-tune, cosine from 0.01, --tune-epochs epochs;
* ``shrink-<criterion>``: ``shrink_network(target_mac_reduction=--target)`` then the same fine-tune;
* ``gradual-<criterion>``: the same fine-tune with ``GradualPruneCallback(granularity='channel',
  shrink='step')`` in the fit, ramping (cubic, every --frequency updates) to the uniform ratio that
  removes --target of the MACs by epoch --ramp-end, removing channels as it goes.

Prints top-1 before/after fine-tuning, MACs and parameters (hook-counted; asserted equal to the prediction).

    OMP_NUM_THREADS=2 python benchmarks/shrink_accuracy.py --baseline benchmarks/work/quant_resnet20/baseline.pdparams
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

from slim_callbacks.prune import GradualPruneCallback  # noqa: E402
from slim_callbacks.prune.depgraph import build_dependency_graph  # noqa: E402
from slim_callbacks.prune.shrink import count_macs_per_image, plan_pruning, shrink_network  # noqa: E402
from benchmarks._eval import arrays, top1  # noqa: E402
from trainers.data import build_datasets  # noqa: E402
from trainers.models import build_model  # noqa: E402


def fit(net: paddle.nn.Layer, train, epochs: int, lr: float, batch: int = 128, callbacks=()) -> float:
    """Bar recipe fine-tune; returns seconds per epoch."""
    steps = epochs * int(np.ceil(len(train) / batch))
    sched = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=steps)
    opt = paddle.optimizer.Momentum(sched, momentum=0.9, parameters=net.parameters(),
                                    weight_decay=paddle.regularizer.L2Decay(5e-4))
    model = paddle.Model(net)
    model.prepare(opt, paddle.nn.CrossEntropyLoss())
    t0 = time.perf_counter()
    model.fit(train, epochs=epochs, batch_size=batch, shuffle=True, verbose=0, num_workers=0,
              callbacks=[paddle.callbacks.LRScheduler(by_step=True, by_epoch=False), *callbacks])
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="", help="FP32 baseline .pdparams to start from (else trained)")
    ap.add_argument("--work", default="benchmarks/work/shrink_resnet20")
    ap.add_argument("--out", default="benchmarks/results/shrink_accuracy.json")
    ap.add_argument("--base-epochs", type=int, default=8)
    ap.add_argument("--tune-epochs", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.5, help="fraction of MACs removed, in [0, 1)")
    ap.add_argument("--criteria", default="l1", help="comma list of l1,l2,fpgm,bn_scale")
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--runs", default="control,shrink", help="comma list of control,shrink,gradual")
    ap.add_argument("--ignored", default="", help="comma list of layers whose coupled groups stay whole, e.g. "
                    "layer2.0.shortcut.0,layer3.0.shortcut.0,fc keeps the three residual streams")
    ap.add_argument("--keep-residual", action="store_true", help="prune only inside blocks (keep_residual=True)")
    ap.add_argument("--tag", default="", help="suffix of the result keys (several variants in one file)")
    ap.add_argument("--ramp-end", type=float, default=1.5, help="gradual: epoch where the final ratio is reached")
    ap.add_argument("--frequency", type=int, default=10, help="gradual: optimizer updates between removals")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    paddle.seed(0)
    np.random.seed(0)
    train, test, classes = build_datasets("fashion_mnist", train_subset=10000, subset_seed=0)
    x_test, y_test = arrays(test)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": "python " + " ".join(sys.argv),
                 "threads": os.environ["OMP_NUM_THREADS"], "machine": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "paddle": paddle.__version__, "load_avg_start": os.getloadavg()}

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    base_file = args.baseline or os.path.join(args.work, "baseline.pdparams")
    net = build_model("resnet20", num_classes=classes)
    if os.path.exists(base_file):
        net.set_state_dict(paddle.load(base_file))
        res["baseline_file"] = base_file
    else:
        res["baseline_epoch_seconds"] = fit(net, train, args.base_epochs, 0.1)
        paddle.save(net.state_dict(), base_file)
    base_state = copy.deepcopy(net.state_dict())
    res["baseline_top1"] = top1(net, x_test, y_test)
    print("baseline", res["baseline_top1"], flush=True)
    save()
    runs = set(args.runs.split(","))
    ignored = [n for n in args.ignored.split(",") if n]
    res["ignored_layers"], res["keep_residual"] = ignored, args.keep_residual
    if "control" in runs:
        net = build_model("resnet20", num_classes=classes)
        net.set_state_dict(base_state)
        res["control_epoch_seconds"] = fit(net, train, args.tune_epochs, 0.01)
        res["control_top1"] = top1(net, x_test, y_test)
        print("control", res["control_top1"], flush=True)
        save()
    if "shrink" in runs:
        for criterion in args.criteria.split(","):
            net = build_model("resnet20", num_classes=classes)
            net.set_state_dict(base_state)
            r = shrink_network(net, target_mac_reduction=args.target, criterion=criterion, round_to=args.round_to,
                               ignored_layers=ignored, keep_residual=args.keep_residual)
            assert r.macs_after == r.plan.predicted_macs
            entry = {"macs": [r.macs_before, r.macs_after], "params": [r.params_before, r.params_after],
                     "mac_reduction": 1 - r.macs_after / r.macs_before,
                     "uniform_ratio": max(r.plan.ratios.values()), "top1_before_tune": top1(net, x_test, y_test)}
            entry["epoch_seconds"] = fit(net, train, args.tune_epochs, 0.01)
            entry["top1"] = top1(net, x_test, y_test)
            res[f"shrink_{criterion}{args.tag}"] = entry
            print(criterion, json.dumps(entry), flush=True)
            save()
    if "gradual" in runs:
        for criterion in args.criteria.split(","):
            net = build_model("resnet20", num_classes=classes)
            net.set_state_dict(base_state)
            ratio = max(plan_pruning(build_dependency_graph(net), target_mac_reduction=args.target,
                                     round_to=args.round_to, ignored_layers=ignored,
                                     keep_residual=args.keep_residual).ratios.values())
            cb = GradualPruneCallback(ratio, granularity="channel", criterion=criterion, schedule="cubic",
                                      end_epoch=args.ramp_end, frequency=args.frequency, shrink="step",
                                      round_to=args.round_to, ignored_layers=ignored,
                                      keep_residual=args.keep_residual, input_shape=[1, 3, 32, 32])
            macs_before = count_macs_per_image(net)
            entry = {"uniform_ratio": ratio, "ramp_end": args.ramp_end, "frequency": args.frequency}
            entry["epoch_seconds"] = fit(net, train, args.tune_epochs, 0.01, callbacks=[cb])
            entry["macs"] = [macs_before, count_macs_per_image(net)]
            entry["mac_reduction"] = 1 - entry["macs"][1] / entry["macs"][0]
            entry["removals"] = len(cb.shrinks)
            entry["top1"] = top1(net, x_test, y_test)
            res[f"gradual_{criterion}{args.tag}"] = entry
            print("gradual", criterion, json.dumps(entry), flush=True)
            save()
    res["load_avg_end"] = os.getloadavg()
    save()


if __name__ == "__main__":
    main()
