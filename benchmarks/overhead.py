"""The seam's cost: training images/s of plain ``model.fit`` vs ``SlimTrainer`` with the seam installed
and no-op compression callbacks (plus its VisualDL logging and checkpoint callback), same model and
data, alternating A/B rounds in one process so machine noise hits both alike.

    python benchmarks/overhead.py --rounds 6 --images 2560 --threads 2

Prints one JSON line per round and a summary with the median ratio (SlimTrainer / plain; 1.0 = free).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from slim_callbacks.callback import SlimCallback  # noqa: E402
from trainers.data import build_datasets  # noqa: E402
from trainers.models import build_model  # noqa: E402
from trainers.trainer import SlimTrainer, TrainConfig, set_cpu_threads  # noqa: E402


class NoOp(SlimCallback):
    """Attaches to the seam and does nothing: the price of the plumbing alone."""


def plain_round(train, config: TrainConfig) -> float:
    paddle.seed(0)
    net = build_model("resnet20", 10)
    model = paddle.Model(net)
    opt = paddle.optimizer.Momentum(config.lr, momentum=0.9, parameters=net.parameters(),
                                    weight_decay=paddle.regularizer.L2Decay(config.weight_decay))
    model.prepare(opt, paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    start = time.perf_counter()
    model.fit(train, batch_size=config.batch_size, epochs=1, verbose=0, shuffle=True)
    return len(train) / (time.perf_counter() - start)


def slim_round(train, config: TrainConfig, log_dir: str) -> float:
    paddle.seed(0)
    net = build_model("resnet20", 10)
    trainer = SlimTrainer(net, train, None, callbacks=[NoOp(), NoOp()], config=config, log_dir=log_dir)
    start = time.perf_counter()
    trainer.fit()
    elapsed = time.perf_counter() - start
    trainer.vdl.close()
    return len(train) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--images", type=int, default=2560)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    threads = set_cpu_threads(args.threads)
    train, _, _ = build_datasets("sample", train_subset=args.images)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, threads=threads, verbose=0,
                         lr_schedule="constant", save_freq=1000)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_round(train, config)  # warm-up (kernel selection, allocator)
        for r in range(args.rounds):
            # alternate which goes first so drift does not favour one side
            if r % 2 == 0:
                a = plain_round(train, config)
                b = slim_round(train, config, os.path.join(tmp, f"r{r}"))
            else:
                b = slim_round(train, config, os.path.join(tmp, f"r{r}"))
                a = plain_round(train, config)
            ratios.append(b / a)
            print(json.dumps({"round": r, "plain_img_s": round(a, 1), "slim_img_s": round(b, 1), "ratio": round(b / a, 4)}))
    print(json.dumps({
        "summary": "SlimTrainer (seam + 2 no-op callbacks + VisualDL + checkpoint) / plain model.fit",
        "median_ratio": round(float(np.median(ratios)), 4),
        "min_ratio": round(float(np.min(ratios)), 4),
        "rounds": args.rounds, "images_per_round": args.images, "batch_size": args.batch_size,
        "threads": threads, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "paddle": paddle.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }))


if __name__ == "__main__":
    main()
