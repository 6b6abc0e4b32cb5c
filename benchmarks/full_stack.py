"""Full stack on the bar recipe: dense FP32 ResNet-20 vs distilled + 75% sparse + INT8 (issue 7).

    OMP_NUM_THREADS=2 python benchmarks/full_stack.py                       # baseline, control, stack
    OMP_NUM_THREADS=2 python benchmarks/full_stack.py --only latency        # later, on a quieter machine

Recipe: ../shared/BAR-RECIPE.md (Fashion-MNIST, 10,000-image seed-0 training subset, all 10,000 test
images, CIFAR ResNet-20, Momentum 0.9 + L2 5e-4, batch 128, cosine per iteration). Steps (``--only``):

* ``baseline``: the 8-epoch dense FP32 baseline (``--baseline`` when the file exists, else trained here at
  lr 0.1 and cached in ``--work``); top-1; exported as a dense FP32 inference model (legacy format).
* ``control``: FP32 fine-tune from the baseline, cosine from 0.01, ``--epochs`` epochs.
* ``stack``: from the baseline, one ``model.fit`` of ``--epochs`` epochs with DistillCallback (soft-label
  KD from the dense baseline as teacher), GradualPruneCallback (cubic ramp to ``--sparsity``) and
  QATCallback (8-bit, per-channel weights); then ``export_int8`` and ``verify_deployment`` on all test
  images (real INT8 Paddle Inference top-1, agreement with the simulation, oneDNN kernel census), a check
  that the pruned weights are zero in the INT8 file, and stored weight sizes (raw and zip).
  ``--shrink R`` first removes channels (``shrink_network(target_mac_reduction=R, round_to=--round-to,
  keep_residual=--keep-residual)``) before
  the same fit: the variant that changes the dense kernels' work.
* ``census``: executed oneDNN primitives by kind for one batch of each exported model (what was fused).
* ``latency``: Paddle Inference + oneDNN, ``OMP_NUM_THREADS`` threads: the dense FP32 baseline, the
  stack's FP32 twin and INT8 model (and the ``shrink_stack`` models when present) timed
  interleaved in one worker process (median of ``--repeats`` runs after ``--warmup``), ``--rounds``
  times; load average and CPU recorded beside the figures.

Results are merged into ``--out`` after every step (a crash keeps what was measured before it).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from benchmarks._eval import arrays, top1  # noqa: E402
from benchmarks.quant_resnet20 import fit  # noqa: E402  (the bar recipe's optimizer, cosine per step)
from slim_callbacks.distill import DistillCallback  # noqa: E402
from slim_callbacks.prune import GradualPruneCallback  # noqa: E402
from slim_callbacks.quant import QATCallback, export_float, export_int8, verify_deployment  # noqa: E402
from slim_callbacks.quant.export import _run_worker  # noqa: E402  (the interleaved Paddle Inference timer)
from slim_callbacks.quant.qat import folded_pairs, load_quant_state, quant_state, quantize_qat, quantized_layers  # noqa: E402
from trainers.data import build_datasets  # noqa: E402
from trainers.models import build_model  # noqa: E402

STEPS = ("baseline", "control", "stack", "export", "census", "latency")


class Progress(paddle.callbacks.Callback):
    """One line per epoch (and every ``every`` steps): loss terms and wall time."""

    def __init__(self, name: str, every: int = 20):
        super().__init__()
        self.name, self.every = name, every

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.t0 = epoch, time.perf_counter()

    def on_train_batch_end(self, step, logs=None):
        if step % self.every == 0:
            loss = [round(float(np.asarray(v).reshape(-1)[0]), 4) for v in (logs or {}).get("loss", [])]
            print(f"  {self.name} epoch {self.epoch} step {step} loss {loss} "
                  f"{time.perf_counter() - self.t0:.0f}s", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        print(f"  {self.name} epoch {epoch} done in {time.perf_counter() - self.t0:.0f}s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)


def file_sizes(prefix: str) -> dict:
    """Bytes of PREFIX.pdiparams, raw and inside a zip (zipfile, ZIP_DEFLATED, level 9)."""
    path = prefix + ".pdiparams"
    with tempfile.TemporaryFile() as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            archive.write(path, os.path.basename(path))
        zipped = tmp.tell()
    return {"file": path, "bytes": os.path.getsize(path), "zip_bytes": zipped}


READ_EXPORT = r"""
import sys, numpy as np, paddle
paddle.enable_static()
exe = paddle.static.Executor(paddle.CPUPlace())
program = paddle.static.load_inference_model(sys.argv[1], exe)[0]
scope = paddle.static.global_scope()
weights = {v.name: np.array(scope.find_var(v.name).get_tensor()) for v in program.list_vars()
           if v.persistable and v.name not in ("feed", "fetch")}
np.savez(sys.argv[2], **{k: w for k, w in weights.items() if w.dtype == np.int8})
"""


def exported_zeros(net: paddle.nn.Layer, prefix: str, work: str) -> dict:
    """Are the pruned (float zero) weights still zero in the INT8 file? Reads the int8 tensors back."""
    out = os.path.join(work, "exported_int8_weights.npz")
    env = dict(os.environ, FLAGS_enable_pir_api="0", OMP_NUM_THREADS="1", GLOG_minloglevel="2")
    proc = subprocess.run([sys.executable, "-c", READ_EXPORT, prefix, out], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    exported = list(np.load(out).values())
    layers, lost, pruned, int8_zeros, int8_total = [], [], 0, 0, 0
    for name, layer in quantized_layers(net).items():
        w = layer.weight.numpy()
        if w.ndim == 2:  # a Linear [in, out] is exported as a 1x1 convolution [out, in, 1, 1]
            w = w.T.reshape(w.shape[1], w.shape[0], 1, 1)
        zero = w == 0
        hit = next((i for i, e in enumerate(exported) if e.shape == w.shape and np.all(e[zero] == 0)), None)
        pruned += int(zero.sum())
        if hit is None:
            lost.append(name)
            continue
        e = exported.pop(hit)
        int8_zeros += int((e == 0).sum())
        int8_total += e.size
        layers.append(name)
    return {"layers_checked": len(layers), "layers_with_lost_zeros": lost, "pruned_weights": pruned,
            "int8_zeros": int8_zeros, "int8_weights": int8_total,
            "int8_zero_fraction": int8_zeros / max(1, int8_total)}


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"cpu": fields.get("Model name", "?").strip(), "cpus": os.cpu_count(),
            "avx512_vnni": "avx512_vnni" in flags, "amx_int8": "amx_int8" in flags, "paddle": paddle.__version__}


def stamp() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_average": os.getloadavg(),
            "threads": int(os.environ["OMP_NUM_THREADS"]), "command": "OMP_NUM_THREADS=%s python %s" % (
                os.environ["OMP_NUM_THREADS"], " ".join(sys.argv))}


def save_quantized(net: paddle.nn.Layer, prefix: str) -> None:
    paddle.save(net.state_dict(), prefix + ".pdparams")
    with open(prefix + ".quant.pkl", "wb") as f:
        pickle.dump({"bn_pairs": folded_pairs(net), "quant": quant_state(net)}, f)


def load_quantized(prefix: str, shrink_spec: dict | None, classes: int) -> paddle.nn.Layer:
    """Rebuild the trained full-stack network (fake-quantized, pruned) saved by :func:`save_quantized`."""
    net = build_model("resnet20", num_classes=classes)
    if shrink_spec is not None:
        from slim_callbacks.prune.shrink import apply_shrunk_architecture

        net = apply_shrunk_architecture(net, shrink_spec)
    with open(prefix + ".quant.pkl", "rb") as f:
        state = pickle.load(f)
    quantize_qat(net, bn_pairs=state["bn_pairs"], unsigned_inputs=[])
    load_quant_state(net, state["quant"])
    net.set_state_dict(paddle.load(prefix + ".pdparams"))
    net.eval()
    return net


def deploy(net: paddle.nn.Layer, prefix: str, x: np.ndarray, y: np.ndarray, threads: int) -> dict:
    """export_int8 + verify_deployment (real INT8 on all of ``x``; FP32 twin PREFIX_fp32 written fresh),
    and the stored sizes."""
    for ext in (".pdmodel", ".pdiparams"):  # verify_deployment would reuse a stale FP32 twin
        if os.path.exists(prefix + "_fp32" + ext):
            os.remove(prefix + "_fp32" + ext)
    export_int8(net, prefix, [None, 3, 32, 32])
    result = {"deploy": verify_deployment(net, prefix, x, y, batch_sizes=(), threads=threads)}
    result["sizes"] = {"int8": file_sizes(prefix), "fp32_twin": file_sizes(prefix + "_fp32")}
    return result


CENSUS = r"""
import sys, numpy as np
from slim_callbacks.quant._deploy_worker import make_predictor, run
p = make_predictor(sys.argv[1] + ".pdmodel", sys.argv[1] + ".pdiparams", sys.argv[2] == "1", 1, sys.argv[4] == "1")
x = np.load(sys.argv[3])["x"]
run(p, x)  # the first run also reorders weights once
print("=====SECOND RUN=====", flush=True)
run(p, x)
"""


def primitive_census(prefix: str, int8: bool, x: np.ndarray, work: str, fuse_residual: bool = False) -> dict:
    """Executed oneDNN primitives by kind (convolution, binary, eltwise, reorder, ...) in the second
    run of one batch (ONEDNN_VERBOSE=1, 1 thread): which ops were fused into the convolutions."""
    data = os.path.join(work, "census_x.npz")
    np.savez(data, x=x)
    env = dict(os.environ, FLAGS_enable_pir_api="0", ONEDNN_VERBOSE="1", GLOG_minloglevel="2", OMP_NUM_THREADS="1",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", CENSUS, prefix, "1" if int8 else "0", data,
                          "1" if fuse_residual else "0"], env=env,
                         capture_output=True, text=True, timeout=600).stdout.split("=====SECOND RUN=====")[-1]
    kinds: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split(",")
        if "exec" in parts and len(parts) > parts.index("exec") + 2:
            kind = parts[parts.index("exec") + 2]
            if kind == "convolution" and "src:f32" in line:
                kind = "convolution_f32"
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def exported_models(work: str, base_prefix: str) -> dict:
    """{label: [pdmodel, pdiparams, int8]} of the dense FP32 baseline and every exported stack present."""
    models = {"fp32_dense": [base_prefix + ".pdmodel", base_prefix + ".pdiparams", False]}
    for key in ("stack", "shrink_stack", "shrink_stack_kr"):
        p = os.path.join(work, key + "_int8")
        if os.path.exists(p + ".pdmodel"):
            models[f"{key}_fp32"] = [p + "_fp32.pdmodel", p + "_fp32.pdiparams", False]
            models[f"{key}_int8"] = [p + ".pdmodel", p + ".pdiparams", True]
            models[f"{key}_int8_fuse_residual"] = [p + ".pdmodel", p + ".pdiparams", True, True]
    return models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="baseline,control,stack", help=f"comma list of steps: {','.join(STEPS)}")
    ap.add_argument("--work", default="benchmarks/work/full_stack")
    ap.add_argument("--out", default="benchmarks/results/full_stack.json")
    ap.add_argument("--baseline", default="benchmarks/work/quant_resnet20_bar/baseline.pdparams",
                    help="the 8-epoch bar-recipe baseline; trained into --work when the file is missing")
    ap.add_argument("--base-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4, help="fine-tune epochs of the control and the full stack")
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--granularity", default="global", help="GradualPruneCallback granularity (element-wise: global/unstructured)")
    ap.add_argument("--prune-end", type=int, default=None, help="epoch where the ramp reaches --sparsity (default epochs-2)")
    ap.add_argument("--qat-start", type=int, default=None, help="epoch where QAT starts (default epochs-2)")
    ap.add_argument("--frequency", type=int, default=20, help="sparsity steps every N optimizer updates")
    ap.add_argument("--kd-weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--feature-pair", action="store_true", help="also an l2 feature pair layer3 -> layer3")
    ap.add_argument("--shrink", type=float, default=0.0, help="remove this fraction of MACs before the fit (0: off)")
    ap.add_argument("--round-to", type=int, default=16, help="--shrink: kept channel counts rounded up to this")
    ap.add_argument("--keep-residual", action="store_true", help="--shrink: leave residual streams whole")
    ap.add_argument("--name", default=None, help="result key/file prefix of the stack (default stack / shrink_stack)")
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=300, help="latency: timed runs per model and batch size")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="latency: independent worker runs")
    args = ap.parse_args()
    steps = [s for s in args.only.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"unknown step(s) {bad}; valid: {', '.join(STEPS)}")
    name = args.name or ("shrink_stack" if args.shrink else "stack")
    prune_end = args.epochs - 2 if args.prune_end is None else args.prune_end
    qat_start = args.epochs - 2 if args.qat_start is None else args.qat_start
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    threads = int(os.environ["OMP_NUM_THREADS"])
    results: dict = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    results["machine"] = machine()

    def save():
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.out)

    train, test, classes = build_datasets("fashion_mnist", train_subset=args.train_subset, subset_seed=0)
    x_test, y_test = arrays(test, args.test_limit)
    base_file = args.baseline if os.path.exists(args.baseline) else os.path.join(args.work, "baseline.pdparams")
    base_prefix = os.path.join(args.work, "baseline_fp32")

    def from_baseline() -> paddle.nn.Layer:
        net = build_model("resnet20", num_classes=classes)
        net.set_state_dict(paddle.load(base_file))
        return net

    if "baseline" in steps:
        entry = stamp()
        if not os.path.exists(base_file):
            paddle.seed(0)
            np.random.seed(0)
            net = build_model("resnet20", num_classes=classes)
            timer = fit(net, train, args.base_epochs, 0.1, 128, [Progress("baseline")])
            paddle.save(net.state_dict(), base_file)
            entry["epoch_seconds"] = timer.epoch_seconds
        net = from_baseline()
        entry.update(file=base_file, epochs=args.base_epochs, top1=top1(net, x_test, y_test),
                     params=int(sum(p.size for p in net.parameters())))
        export_float(net, base_prefix, [None, 3, 32, 32])
        entry["export"] = file_sizes(base_prefix)
        results["baseline"] = entry
        print("baseline", json.dumps(entry), flush=True)
        save()

    if "control" in steps:
        entry = stamp()
        paddle.seed(0)
        np.random.seed(0)
        net = from_baseline()
        timer = fit(net, train, args.epochs, 0.01, 128, [Progress("control")])
        paddle.save(net.state_dict(), os.path.join(args.work, "control.pdparams"))
        entry.update(epochs=args.epochs, lr=0.01, top1=top1(net, x_test, y_test), epoch_seconds=timer.epoch_seconds)
        results["control"] = entry
        print("control", json.dumps(entry), flush=True)
        save()

    if "stack" in steps:
        entry = stamp()
        entry["config"] = {"epochs": args.epochs, "lr": 0.01, "teacher": f"dense FP32 baseline ({base_file})",
                           "kd_weight": args.kd_weight, "temperature": args.temperature,
                           "feature_pair": "layer3->layer3 l2" if args.feature_pair else None,
                           "sparsity": args.sparsity, "granularity": args.granularity, "schedule": "cubic",
                           "prune_start": 0, "prune_end": prune_end, "frequency": args.frequency,
                           "qat_start": qat_start, "freeze_observer_epoch": qat_start + 1 if qat_start + 1 < args.epochs else None,
                           "qat": "8-bit, per-channel weights, BN folded (QATCallback defaults)", "shrink": args.shrink,
                           "round_to": args.round_to, "keep_residual": args.keep_residual}
        paddle.seed(0)
        np.random.seed(0)
        net = from_baseline()
        teacher = from_baseline()
        teacher.eval()
        shrink_spec = None
        if args.shrink:
            from slim_callbacks.prune.shrink import count_macs_per_image, describe_architecture, shrink_network

            r = shrink_network(net, target_mac_reduction=args.shrink, round_to=args.round_to,
                               keep_residual=args.keep_residual)
            shrink_spec = describe_architecture(net)
            entry["shrink"] = {"macs_before": r.macs_before, "macs_after": count_macs_per_image(net),
                               "params_after": int(sum(p.size for p in net.parameters())), "round_to": args.round_to,
                               "top1_after_shrink_before_fit": top1(net, x_test, y_test)}
            print("shrunk", json.dumps(entry["shrink"]), flush=True)
        distill = DistillCallback(teacher, feature_pairs=[("layer3", "layer3")] if args.feature_pair else None,
                                  soft_label_weight=args.kd_weight, temperature=args.temperature)
        prune = GradualPruneCallback(args.sparsity, granularity=args.granularity, schedule="cubic", start_epoch=0,
                                     end_epoch=prune_end, frequency=args.frequency)
        qat = QATCallback(start_epoch=qat_start, freeze_observer_epoch=entry["config"]["freeze_observer_epoch"])
        timer = fit(net, train, args.epochs, 0.01, 128, [distill, prune, qat, Progress(name)])
        entry["epoch_seconds"] = timer.epoch_seconds
        entry["prune_summary"] = {k: v for k, v in prune.summary.items() if k != "per_layer"}
        entry["top1_sim"] = top1(net, x_test, y_test)
        print(name, "simulated top-1", entry["top1_sim"], flush=True)
        prefix = os.path.join(args.work, name)
        save_quantized(net, prefix)
        if shrink_spec is not None:
            with open(prefix + ".arch.json", "w") as f:
                json.dump(shrink_spec, f)
        results[name] = entry
        save()

    if "export" in steps or "stack" in steps:
        # deployment: the real INT8 model on all test images (timing in the 'latency' step)
        entry = results[name]
        prefix = os.path.join(args.work, name)
        if "stack" not in steps:  # a separate run: rebuild the trained network from the files
            spec = None
            if os.path.exists(prefix + ".arch.json"):
                with open(prefix + ".arch.json") as f:
                    spec = json.load(f)
            net = load_quantized(prefix, spec, classes)
            entry["export_rerun"] = stamp()
        int8_prefix = prefix + "_int8"
        entry.update(deploy(net, int8_prefix, x_test, y_test, threads))
        entry["pruned_zeros_in_int8_file"] = exported_zeros(net, int8_prefix, args.work)
        results[name] = entry
        print(name, json.dumps({k: entry[k] for k in ("deploy", "pruned_zeros_in_int8_file", "sizes")}), flush=True)
        save()

    if "census" in steps:
        entry = stamp()
        entry["primitives_per_batch"] = {
            key: primitive_census(m[0][:-len(".pdmodel")], m[2], x_test[:2], args.work, len(m) > 3 and m[3])
            for key, m in exported_models(args.work, base_prefix).items()}
        results["census"] = entry
        print("census", json.dumps(entry["primitives_per_batch"]), flush=True)
        save()

    if "latency" in steps:
        models = exported_models(args.work, base_prefix)
        entry = stamp()
        entry.update(models={k: v[0] for k, v in models.items()}, repeats=args.repeats, warmup=args.warmup,
                     engine="Paddle Inference 3.3.1, legacy .pdmodel, oneDNN (INT8: enable_onednn_int8)",
                     rounds=[])
        results["latency"] = entry
        for r in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="full-stack-lat-") as tmp:
                data = os.path.join(tmp, "x.npz")
                np.savez(data, x=x_test[:64])
                job = {"models": models, "data": data, "eval_batch": 32, "threads": threads,
                       "timing": {"batch_sizes": [1, 32], "repeats": args.repeats, "warmup": args.warmup},
                       "out": os.path.join(tmp, "o.npz"), "result": os.path.join(tmp, "r.json")}
                load_before = os.getloadavg()
                _run_worker(job, threads)
                with open(job["result"]) as f:
                    lat = json.load(f)["latency_ms"]
            row = {"load_average_before": load_before, "load_average_after": os.getloadavg(), "latency_ms": lat,
                   "speedup_vs_fp32_dense": {k: {b: lat["fp32_dense"][b] / ms for b, ms in v.items()}
                                             for k, v in lat.items() if k != "fp32_dense"}}
            entry["rounds"].append(row)
            print("latency round", r, json.dumps(row), flush=True)
            save()
        for key in entry["rounds"][0]["speedup_vs_fp32_dense"]:
            entry.setdefault("median_speedup_b32", {})[key] = float(np.median(
                [row["speedup_vs_fp32_dense"][key]["32"] for row in entry["rounds"]]))
        save()
        print("median speed-up at batch 32 vs dense FP32:", json.dumps(entry["median_speedup_b32"]), flush=True)


if __name__ == "__main__":
    main()
