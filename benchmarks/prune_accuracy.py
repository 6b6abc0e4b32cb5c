"""80% unstructured sparsity on CIFAR ResNet-20 / Fashion-MNIST: gradual vs one-shot vs FP32 control.

The bar's recipe (shared BAR-RECIPE.md): 10,000-image training subset (seed-0 permutation), all 10,000
test images, 32x32, crop + flip; Momentum 0.9, weight decay 5e-4, batch 128. Baseline: lr 0.1 cosine per
iteration, 8 epochs. Fine-tunes from the baseline, cosine from 0.01, 4 epochs each:

* ``fp32``: no pruning (the control);
* ``gradual``: GradualPruneCallback global magnitude, cubic 0 -> 0.8 between epochs 0 and 3, updated
  every ``--frequency`` optimizer steps (the last epoch fine-tunes at 0.8);
* ``oneshot``: 0.8 at once before the first step (``schedule='constant'``), then fine-tuned.

Prints top-1 of each, final sparsity, and dense vs zipped weight bytes (report.weights_file_size).

    OMP_NUM_THREADS=2 python -m benchmarks.prune_accuracy --out /tmp/prune_bench \
        [--baseline benchmarks/work/quant_resnet20/baseline.pdparams]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/prune_bench")
    parser.add_argument("--base-epochs", type=int, default=8)
    parser.add_argument("--tune-epochs", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--frequency", type=int, default=20)
    parser.add_argument("--runs", default="fp32,gradual,oneshot")
    parser.add_argument("--data", default="fashion_mnist", help="fashion_mnist (the bar) or sample (quick check)")
    parser.add_argument("--train-subset", type=int, default=10000, help="0 = the whole training split")
    parser.add_argument("--baseline", default="", help="a baseline .pdparams trained with the same recipe (else trained here)")
    args = parser.parse_args()

    import paddle
    from paddle import nn

    from slim_callbacks.prune import GradualPruneCallback
    from slim_callbacks.report import weights_file_size
    from trainers.data import build_datasets
    from trainers.models import build_model

    os.makedirs(args.out, exist_ok=True)
    train, test, classes = build_datasets(args.data, train_subset=args.train_subset or None, subset_seed=0)
    steps = -(-len(train) // 128)

    def fresh(lr: float, epochs: int):
        paddle.seed(0)
        with paddle.utils.unique_name.guard():
            net = build_model("resnet20", num_classes=classes)
        sched = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=epochs * steps)
        opt = paddle.optimizer.Momentum(sched, momentum=0.9, parameters=net.parameters(),
                                        weight_decay=paddle.regularizer.L2Decay(5e-4))
        model = paddle.Model(net)
        model.prepare(opt, nn.CrossEntropyLoss(), paddle.metric.Accuracy())
        return model

    results = {}
    base_path = args.baseline[: -len(".pdparams")] if args.baseline else os.path.join(args.out, f"baseline_{args.data}")
    results["baseline_file"] = base_path + ".pdparams"
    if not os.path.exists(base_path + ".pdparams"):
        model = fresh(0.1, args.base_epochs)
        t0 = time.time()
        model.fit(train, batch_size=128, epochs=args.base_epochs, shuffle=True, verbose=0, num_workers=0)
        paddle.save(model.network.state_dict(), base_path + ".pdparams")
        results["baseline_seconds"] = round(time.time() - t0, 1)
    model = fresh(0.1, args.base_epochs)
    model.network.set_state_dict(paddle.load(base_path + ".pdparams"))
    results["baseline_top1"] = model.evaluate(test, batch_size=500, verbose=0)["acc"]
    print("baseline", results["baseline_top1"], flush=True)

    for run in args.runs.split(","):
        model = fresh(0.01, args.tune_epochs)
        model.network.set_state_dict(paddle.load(base_path + ".pdparams"))
        callbacks = []
        if run == "gradual":
            callbacks = [GradualPruneCallback(args.sparsity, granularity="global", schedule="cubic", start_epoch=0,
                                              end_epoch=args.tune_epochs - 1, frequency=args.frequency)]
        elif run == "oneshot":
            callbacks = [GradualPruneCallback(args.sparsity, granularity="global", schedule="constant")]
        elif run != "fp32":
            raise ValueError(f"unknown run {run!r}; valid: fp32, gradual, oneshot")
        t0 = time.time()
        model.fit(train, batch_size=128, epochs=args.tune_epochs, shuffle=True, verbose=0, callbacks=callbacks)
        entry = {"top1": model.evaluate(test, batch_size=500, verbose=0)["acc"], "seconds": round(time.time() - t0, 1),
                 **weights_file_size(model.network)}
        if callbacks:
            entry.update({k: v for k, v in callbacks[0].summary.items() if k != "per_layer"})
        results[run] = entry
        print(run, json.dumps(entry), flush=True)

    results["date"] = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
    results["threads"] = os.environ.get("OMP_NUM_THREADS")
    with open(os.path.join(args.out, f"results_{args.data}.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
