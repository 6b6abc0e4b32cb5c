"""INT8 deployment with and without oneDNN's conv + residual-add fusion, against plain FP32.

    OMP_NUM_THREADS=2 python benchmarks/int8_residual_fusion.py --work benchmarks/work/quant_latency_fused \
        --out benchmarks/results/int8_residual_fusion.json

Times the models that ``benchmarks/quant_latency.py --work DIR`` exported (``NAME.pdmodel`` INT8 and
``NAME_fp32.pdmodel``, its FP32 twin) in one worker process, interleaved: FP32, INT8 as
:func:`slim_callbacks.quant.inference_config` deploys it (residual fusion off: every conv INT8), and
INT8 with ``fuse_residual=True`` (Paddle's default pass list). Batch 1 and 32, median of ``--repeats``
runs after ``--warmup``; the kernel census of each INT8 variant says how many convs ran in f32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from slim_callbacks.quant.export import _run_worker  # noqa: E402

SHAPES = {"resnet20": 32, "resnet18": 224}
_F32_CONV = re.compile(r"exec,cpu,convolution,[^,]*,forward_inference,src:f32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="benchmarks/work/quant_latency_fused")
    ap.add_argument("--models", default="resnet20,resnet18")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/int8_residual_fusion.json")
    args = ap.parse_args()
    res: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "command": "OMP_NUM_THREADS=2 python " + " ".join(sys.argv), "threads": args.threads,
                 "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "load_avg_start": os.getloadavg()}
    for name in args.models.split(","):
        prefix = os.path.join(args.work, name)
        hw = SHAPES[name]
        models = {"fp32": [prefix + "_fp32.pdmodel", prefix + "_fp32.pdiparams", False],
                  "int8": [prefix + ".pdmodel", prefix + ".pdiparams", True, False],
                  "int8_fuse_residual": [prefix + ".pdmodel", prefix + ".pdiparams", True, True]}
        entry: dict = {"f32_convs": {}}
        with tempfile.TemporaryDirectory(prefix="residual-fusion-") as tmp:
            data = os.path.join(tmp, "x.npz")
            np.savez(data, x=np.random.default_rng(0).normal(size=(2, 3, hw, hw)).astype("float32"))
            for label in ("int8", "int8_fuse_residual"):  # census: one 2-image batch, ONEDNN_VERBOSE
                job = {"models": {label: models[label]}, "data": data, "eval_batch": 2, "threads": 1,
                       "timing": None, "out": os.path.join(tmp, "o.npz"), "result": os.path.join(tmp, "r.json")}
                entry["f32_convs"][label] = len(_F32_CONV.findall(_run_worker(job, 1, verbose=True)))
            job = {"models": models, "data": data, "eval_batch": 2, "threads": args.threads,
                   "timing": {"batch_sizes": [1, 32], "repeats": args.repeats, "warmup": args.warmup},
                   "out": os.path.join(tmp, "o.npz"), "result": os.path.join(tmp, "r.json")}
            _run_worker(job, args.threads)
            with open(job["result"]) as f:
                entry["latency_ms"] = json.load(f)["latency_ms"]
            logits = dict(np.load(job["out"]))
        entry["max_abs_logit_diff_fused_vs_not"] = float(np.abs(logits["int8"] - logits["int8_fuse_residual"]).max())
        res[name] = entry
        print(name, json.dumps(entry), flush=True)
    res["load_avg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
