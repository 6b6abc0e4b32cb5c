"""Weight-only dynamic int8 (quantize_dynamic) on a small LSTM model and a Transformer-style MLP stack.

    OMP_NUM_THREADS=2 python benchmarks/quant_dynamic.py --out benchmarks/results/quant_dynamic.json

Reports the stored state-dict size (paddle.save) FP32 vs int8, output error, and median forward latency
(dygraph, no_grad) with FP32 and int8 runs interleaved.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from paddle import nn  # noqa: E402

from slim_callbacks.quant import quantize_dynamic  # noqa: E402


class LSTMClassifier(nn.Layer):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(64, 256)
        self.rnn = nn.LSTM(256, 256, num_layers=2)
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


class MLPStack(nn.Layer):
    """Transformer-style feed-forward blocks (d=256, 4x expansion), 4 layers."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.LayerList([nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256))
                                    for _ in range(4)])
        self.norms = nn.LayerList([nn.LayerNorm(256) for _ in range(4)])

    def forward(self, x):
        for block, norm in zip(self.blocks, self.norms):
            x = x + block(norm(x))
        return x


def size_of(net):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.pdparams")
        paddle.save(net.state_dict(), path)
        return os.path.getsize(path)


def timed(nets, x, repeats=30, warmup=5):
    samples = {k: [] for k in nets}
    with paddle.no_grad():
        for net in nets.values():
            for _ in range(warmup):
                net(x)
        for _ in range(repeats):
            for k, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                samples[k].append((time.perf_counter() - t0) * 1000)
    return {k: float(np.median(v)) for k, v in samples.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/quant_dynamic.json")
    args = ap.parse_args()
    paddle.seed(0)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": int(os.environ["OMP_NUM_THREADS"]),
               "command": " ".join(sys.argv)}
    for name, make, shape in [("lstm", LSTMClassifier, [32, 20, 64]), ("mlp_stack", MLPStack, [32, 64, 256])]:
        fp32 = make()
        fp32.eval()
        int8 = copy.deepcopy(fp32)
        quantize_dynamic(int8)
        int8.eval()
        x = paddle.randn(shape)
        ref, out = fp32(x).numpy(), int8(x).numpy()
        results[name] = {
            "bytes_fp32": size_of(fp32), "bytes_int8": size_of(int8),
            "max_abs_err": float(np.abs(out - ref).max()), "ref_abs_max": float(np.abs(ref).max()),
            "latency_ms": timed({"fp32": fp32, "int8": int8}, x), "input_shape": shape,
        }
        results[name]["size_ratio"] = results[name]["bytes_int8"] / results[name]["bytes_fp32"]
        print(name, json.dumps(results[name]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
