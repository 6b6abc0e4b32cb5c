"""Per-step cost of holding pruning masks, measured as paired, interleaved training steps.

On a shared, loaded machine whole-epoch timings drift by tens of percent; pairing cancels most of it.
One paddle.Model (CIFAR ResNet-20, 32x32, batch 128, Momentum) runs ``model.train_batch`` through the
seam; steps alternate between *bare* (no pruning work) and *pruned* (what GradualPruneCallback adds to
every step: the seam step hook re-applying the masks, plus gradient-masking hooks when asked), in
ABAB... order with the order flipped every pair. Reported: median of the per-pair differences and of
the per-pair ratios.

    OMP_NUM_THREADS=2 python -m benchmarks.prune_paired --pairs 30
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args()

    import paddle

    from slim_callbacks.prune import Masker
    from slim_callbacks.seam import Seam
    from benchmarks._eval import resnet20_momentum_model

    net, model = resnet20_momentum_model()
    seam = Seam.attach(model)
    rng = np.random.RandomState(0)
    x = rng.rand(args.batch_size, 3, 32, 32).astype("float32")
    y = rng.randint(0, 10, (args.batch_size, 1)).astype("int64")
    masker = Masker(net, granularity="global", mask_gradients=False)
    masker.update(args.sparsity)
    saved = {n: m.numpy() for n, m in masker.masks.items()}

    def configure(mode: str) -> None:
        seam.remove_step_hook("prune")
        masker.remove_hooks()
        if mode == "bare":
            return
        seam.add_step_hook("prune", lambda ctx: masker.apply(), priority=20)
        masker.mask_gradients = mode == "apply+grad"
        if masker.mask_gradients:
            masker.set_masks(saved)

    def step(mode: str) -> float:
        configure(mode)
        t0 = time.perf_counter()
        model.train_batch([x], [y])
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up
        step("bare")
    results = {}
    for variant in ("apply", "apply+grad"):
        diffs, ratios = [], []
        for i in range(args.pairs):
            order = ("bare", variant) if i % 2 == 0 else (variant, "bare")
            t = {m: step(m) for m in order}
            diffs.append(t[variant] - t["bare"])
            ratios.append(t[variant] / t["bare"])
        results[variant] = (diffs, ratios)
    bare_times = [step("bare") for _ in range(5)]

    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine {platform.machine()} "
          f"{os.cpu_count()} cpus; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; paddle {paddle.__version__}")
    print(f"ResNet-20 32x32, batch {args.batch_size}, Momentum, global sparsity {args.sparsity}; "
          f"{args.pairs} interleaved pairs per variant; bare step median {statistics.median(bare_times) * 1e3:.0f} ms\n")
    print("| variant | median extra per step (ms) | median ratio pruned/bare | overhead |")
    print("|---|---:|---:|---:|")
    for variant, (diffs, ratios) in results.items():
        med = statistics.median(ratios)
        print(f"| {variant} | {statistics.median(diffs) * 1e3:+.2f} | {med:.4f} | {(med - 1) * 100:+.2f}% |")
    seam.release()


if __name__ == "__main__":
    main()
