"""Training-step overhead of GradualPruneCallback vs a bare hapi fit, measured side by side.

One process, one model (CIFAR ResNet-20, 32x32 inputs), in-memory random data. Rounds alternate:
a bare ``fit`` epoch, then one epoch per pruning variant, so drifts in machine load hit every variant
alike. Each batch is timed from ``on_train_batch_begin`` to ``on_train_batch_end`` (forward, backward,
optimizer step and the seam step hook that re-applies masks); the first batches of each epoch are
dropped as warm-up. Prints a markdown table of median and mean step times and the overhead vs bare.

    OMP_NUM_THREADS=2 python -m benchmarks.prune_overhead --rounds 4 --steps 20
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed epoch")
    parser.add_argument("--warmup", type=int, default=3, help="batches dropped at the start of each epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args()

    import paddle
    from paddle import nn

    from slim_callbacks.prune import GradualPruneCallback
    from benchmarks._eval import resnet20_momentum_model

    net, model = resnet20_momentum_model()
    rng = np.random.RandomState(0)
    n = args.steps * args.batch_size
    data = paddle.io.TensorDataset([
        paddle.to_tensor(rng.rand(n, 3, 32, 32).astype("float32")),
        paddle.to_tensor(rng.randint(0, 10, (n, 1)).astype("int64")),
    ])

    class Timer(paddle.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_begin(self, step, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, step, logs=None):
            if step >= args.warmup:
                self.times.append(time.perf_counter() - self.t0)

    def pruner(mask_gradients: bool) -> GradualPruneCallback:
        return GradualPruneCallback(args.sparsity, granularity="global", schedule="constant",
                                    mask_gradients=mask_gradients, strip_at_end=False, histograms=False)

    variants = {
        "bare fit": lambda: [],
        "prune, re-apply after step": lambda: [pruner(False)],
        "prune, re-apply + gradient masks": lambda: [pruner(True)],
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, make in variants.items():
            timer = Timer()
            model.fit(data, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False, callbacks=make() + [timer])
            times[name].extend(timer.times)
            print(f"round {r}: {name}: median {statistics.median(timer.times) * 1e3:.1f} ms", file=sys.stderr, flush=True)

    # the cost of holding the masks in isolation: one Masker.apply() (in-place multiply of every
    # selected weight), timed alone, and a backward pass with and without gradient-masking hooks
    from slim_callbacks.prune import Masker

    masker = Masker(net, granularity="global", mask_gradients=False)
    masker.update(args.sparsity)
    t0 = time.perf_counter()
    for _ in range(200):
        masker.apply()
    apply_ms = (time.perf_counter() - t0) / 200 * 1e3
    x, y = data[0][0][None].tile([args.batch_size, 1, 1, 1]), data[0][1][None].tile([args.batch_size, 1])

    def backward_ms(reps: int = 6) -> float:
        out = []
        for _ in range(reps):
            loss = nn.functional.cross_entropy(net(x), y)
            t0 = time.perf_counter()
            loss.backward()
            out.append(time.perf_counter() - t0)
            net.clear_gradients()
        return statistics.median(out) * 1e3

    plain = []
    hooked = []
    for _ in range(3):  # alternate
        masker.remove_hooks()
        masker.mask_gradients = False
        plain.append(backward_ms())
        masker.mask_gradients = True
        masker.set_masks({n: m.numpy() for n, m in masker.masks.items()})
        hooked.append(backward_ms())
    masker.strip()

    bare = statistics.median(times["bare fit"])
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine {platform.machine()} "
          f"{os.cpu_count()} cpus; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; paddle {paddle.__version__}")
    print(f"ResNet-20 32x32, batch {args.batch_size}, Momentum; {args.rounds} rounds x {args.steps} steps "
          f"(first {args.warmup} of each epoch dropped); pruning: global {args.sparsity}, masks fixed\n")
    print("| variant | steps timed | median step (ms) | mean step (ms) | median overhead vs bare |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {len(values)} | {med * 1e3:.1f} | {statistics.mean(values) * 1e3:.1f} | "
              f"{(med / bare - 1) * 100:+.2f}% |")
    print(f"\nMasker.apply() alone: {apply_ms:.3f} ms per call ({len(masker.targets)} weights); "
          f"backward pass median {statistics.median(plain):.1f} ms without gradient hooks, "
          f"{statistics.median(hooked):.1f} ms with them")


if __name__ == "__main__":
    main()
