"""FP32 oneDNN latency of dense vs physically shrunk networks (slim_callbacks.prune.shrink).

For each model: build it (seed 0, random weights: latency does not depend on values), shrink copies
with ``shrink_network(target_mac_reduction=..., round_to=r)``, one per ``--round-to`` value, export all
with ``paddle.jit.save`` in the legacy program format (FLAGS_enable_pir_api=0, as in
../shared/BAR-RECIPE.md), load them in Paddle Inference with oneDNN and ``--threads`` math threads, then
time them interleaved (dense, shrunk variants, dense, ...) after warm-up and report the median per
batch. MACs are per image, counted with hooks.

    python benchmarks/shrink_latency.py --models resnet20 resnet18 --batch 32 --runs 200 --threads 2 \
        --round-to 1 8 16
"""

from __future__ import annotations

import os

os.environ.setdefault("FLAGS_enable_pir_api", "0")  # legacy .pdmodel for Paddle Inference + oneDNN

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.inference as pi  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from slim_callbacks.prune.shrink import count_macs_per_image, shrink_network  # noqa: E402
from trainers.models import build_model  # noqa: E402


def export(net: paddle.nn.Layer, path: str, hw: int) -> None:
    net.eval()
    paddle.jit.save(net, path, input_spec=[paddle.static.InputSpec([None, 3, hw, hw], "float32")])


def predictor(path: str, threads: int) -> pi.Predictor:
    config = pi.Config(path + ".pdmodel", path + ".pdiparams")
    config.disable_gpu()
    config.enable_onednn()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    return pi.create_predictor(config)


def run_once(pred: pi.Predictor, x: np.ndarray) -> float:
    handle = pred.get_input_handle(pred.get_input_names()[0])
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    start = time.perf_counter()
    pred.run()
    out = pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()
    elapsed = time.perf_counter() - start
    assert np.isfinite(out).all()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet18"])
    ap.add_argument("--target", type=float, default=0.5, help="fraction of MACs to remove, in [0, 1)")
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--round-to", type=int, nargs="+", default=[1], help="one shrunk variant per value")
    ap.add_argument("--keep-residual", action="store_true", help="also a keep_residual=True variant per round_to")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    paddle.seed(0)
    x = np.random.default_rng(0).normal(size=(args.batch, 3, args.hw, args.hw)).astype("float32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        preds = {}
        for name in args.models:
            dense = build_model(name, 10)
            macs_dense = count_macs_per_image(dense, (1, 3, args.hw, args.hw))
            variants = [("dense", dense, None)]
            for r in args.round_to:
                for keep in (False, True) if args.keep_residual else (False,):
                    shrunk = copy.deepcopy(dense)
                    result = shrink_network(shrunk, target_mac_reduction=args.target, criterion=args.criterion,
                                            round_to=r, keep_residual=keep, input_shape=(1, 3, args.hw, args.hw))
                    assert result.macs_after == result.plan.predicted_macs
                    variants.append((f"round_to={r}" + (", keep_residual" if keep else ""), shrunk, result))
            for tag, net, result in variants:
                path = os.path.join(tmp, f"{name}_{tag}", "model")
                export(net, path, args.hw)
                preds[(name, tag)] = predictor(path, args.threads)
                if result is not None:
                    rows.append({"model": name, "variant": tag, "macs_dense": macs_dense,
                                 "macs_shrunk": result.macs_after, "params_dense": result.params_before,
                                 "params_shrunk": result.params_after})
        times = {key: [] for key in preds}
        for _ in range(args.warmup):
            for key, pred in preds.items():
                run_once(pred, x)
        for _ in range(args.runs):  # interleaved so load from other processes hits both alike
            for key, pred in preds.items():
                times[key].append(run_once(pred, x))
    for row in rows:
        d = float(np.median(times[(row["model"], "dense")])) * 1e3
        s = float(np.median(times[(row["model"], row["variant"])])) * 1e3
        row.update(dense_ms=round(d, 3), shrunk_ms=round(s, 3), ratio=round(s / d, 3))
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "batch": args.batch, "hw": args.hw,
            "runs": args.runs, "paddle": paddle.__version__, "target_mac_reduction": args.target,
            "criterion": args.criterion, "round_to": args.round_to, "load_avg": os.getloadavg()}
    print(json.dumps(meta))
    print("| model | shrunk variant | MACs/img dense -> shrunk | params dense -> shrunk | dense ms | shrunk ms "
          "| shrunk/dense |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['macs_dense'] / 1e6:.2f}M -> {r['macs_shrunk'] / 1e6:.2f}M "
              f"(-{100 * (1 - r['macs_shrunk'] / r['macs_dense']):.1f}%) | {r['params_dense']:,} -> "
              f"{r['params_shrunk']:,} | {r['dense_ms']:.2f} | {r['shrunk_ms']:.2f} | {r['ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
