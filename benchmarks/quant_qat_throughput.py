"""QAT training throughput vs FP32: ResNet-20, batch 128, 3x32x32, one SGD step = forward+backward+update.

    OMP_NUM_THREADS=2 python benchmarks/quant_qat_throughput.py --steps 10 --out benchmarks/results/quant_qat_throughput.json

The FP32 and QAT (quantize_qat: per-channel 8-bit weights, EMA activations, BN folded) networks step
alternately in one process, so load from other processes hits both alike; medians are reported.
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

from slim_callbacks.quant import quantize_qat  # noqa: E402
from trainers.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/quant_qat_throughput.json")
    args = ap.parse_args()
    paddle.seed(0)
    nets = {"fp32": build_model("resnet20", num_classes=10), "qat": build_model("resnet20", num_classes=10)}
    x = paddle.randn([args.batch, 3, 32, 32])
    y = paddle.randint(0, 10, [args.batch, 1])
    quantize_qat(nets["qat"], example_inputs=x[:4])
    opts = {k: paddle.optimizer.Momentum(0.01, parameters=n.parameters()) for k, n in nets.items()}

    def step(k):
        net = nets[k]
        net.train()
        loss = paddle.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opts[k].step()
        opts[k].clear_grad()

    for k in nets:
        step(k)
    times = {k: [] for k in nets}
    load0 = os.getloadavg()
    for _ in range(args.steps):
        for k in nets:
            t0 = time.perf_counter()
            step(k)
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": int(os.environ["OMP_NUM_THREADS"]),
              "command": " ".join(sys.argv), "batch": args.batch, "steps": args.steps,
              "images_per_s": {k: args.batch / v for k, v in med.items()},
              "qat_over_fp32_throughput": med["fp32"] / med["qat"], "load_average": [load0, os.getloadavg()]}
    print(json.dumps(result), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
