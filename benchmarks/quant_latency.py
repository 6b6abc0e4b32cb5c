"""INT8 vs FP32 latency with Paddle Inference + oneDNN (legacy format), FP32 and INT8 interleaved.

    OMP_NUM_THREADS=2 python benchmarks/quant_latency.py --models resnet20,resnet18 \
        --out benchmarks/results/quant_latency.json

Latency does not depend on the weights' values, so each model is PTQ-calibrated (abs_max, 2 batches of
random normal inputs) from its initialization, exported with export_int8 and timed by verify_deployment
(median of --repeats runs after warm-up, batch 1 and 32). The kernel census (ONEDNN_VERBOSE) checks that
every conv and linear layer ran INT8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from slim_callbacks.quant import calibrate, export_int8, verify_deployment  # noqa: E402
from trainers.models import build_model  # noqa: E402

SPECS = {"resnet20": (10, 32), "resnet18": (100, 224)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,resnet18")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--work", default="benchmarks/work/quant_latency")
    ap.add_argument("--out", default="benchmarks/results/quant_latency.json")
    args = ap.parse_args()
    threads = int(os.environ["OMP_NUM_THREADS"])
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": threads,
               "command": " ".join(sys.argv), "load_average_at_start": os.getloadavg()}
    for name in args.models.split(","):
        classes, size = SPECS[name]
        paddle.seed(0)
        net = build_model(name, num_classes=classes)
        rng = np.random.RandomState(0)
        x = rng.randn(64, 3, size, size).astype("float32")
        calibrate(net, x, algo="abs_max", batches=2)
        path = os.path.join(args.work, name)
        export_int8(net, path, [None, 3, size, size])
        r = verify_deployment(net, path, x[:32], None, batch_sizes=(1, 32), threads=threads,
                              repeats=args.repeats, warmup=5)
        r["load_average_after"] = os.getloadavg()
        results[name] = r
        print(name, json.dumps(r), flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
