"""What a DistillCallback step costs beyond the work it cannot avoid.

Side by side, in one process, alternating rounds (ABCDE BCDEA ...: one round runs ``--steps`` steps of
each variant, in rotated order) so machine noise hits all alike, each on the same fixed batch of
32x32 images:

* ``student``: ``model.train_batch`` of the student alone (hapi, no seam).
* ``student+teacher``: the floor: hapi ``train_batch`` of the student plus the teacher's forward under
  ``no_grad`` on the same batch (run as a bare seam loss term returning 0), no distillation math.
* ``distill_kd``: ``DistillCallback(teacher, soft_label_weight=1)``.
* ``distill_full``: ``DistillCallback`` with two feature pairs (MSE, 1x1-conv adapters where channels
  differ), KD, ``task_loss_weight=0.5`` and MixUp.
* ``hand_full``: the same losses as ``distill_full`` written by hand in a plain loop (no hapi, no seam),
  to show how much of the full cost is the losses themselves.

    python benchmarks/distill_overhead.py --teacher resnet56 --student resnet20 --batch 64 --rounds 30 --steps 1

Prints one JSON line per round and a summary: median ms/step per variant, and the median per-round
ratio of each variant to ``student+teacher`` (1.00 = no overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402

from slim_callbacks.distill import DistillCallback, kd_loss  # noqa: E402
from slim_callbacks.seam import Seam  # noqa: E402
from trainers.models import build_model  # noqa: E402

PAIRS = [("layer2", "layer2"), ("layer3", "layer3")]


def _prepared(net: nn.Layer) -> paddle.Model:
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=net.parameters()), nn.CrossEntropyLoss())
    return model


def _start(cb: DistillCallback, model: paddle.Model) -> None:
    cb.set_model(model)
    cb.set_params({"steps": 100, "epochs": 1})
    cb.on_train_begin()
    cb.on_epoch_begin(0)  # slim callbacks set up at the first epoch begin


class Variant:
    """Set up once; ``step()`` runs one training step."""

    def __init__(self, kind: str, args, teacher: nn.Layer, x: np.ndarray, y: np.ndarray) -> None:
        paddle.seed(0)
        self.kind = kind
        self.x, self.y = x, y
        student = build_model(args.student, num_classes=10, width=args.student_width)
        self.student = student
        self.teacher = teacher
        if kind == "hand_full":
            self._setup_hand(student, teacher)
            return
        self.model = _prepared(student)
        if kind == "student+teacher":
            seam = Seam.attach(self.model)

            def teacher_forward(ctx):
                with paddle.no_grad():
                    teacher(paddle.to_tensor(ctx.inputs[0]))
                return paddle.zeros([])

            seam.add_loss_term("teacher_forward", teacher_forward)
        elif kind == "distill_kd":
            _start(DistillCallback(teacher, soft_label_weight=1.0), self.model)
        elif kind == "distill_full":
            _start(DistillCallback(teacher, feature_pairs=PAIRS, feature_loss="mse", soft_label_weight=1.0,
                                   task_loss_weight=0.5, mixing="mixup"), self.model)

    def _setup_hand(self, student: nn.Layer, teacher: nn.Layer) -> None:
        feats = {}

        def grab(key):
            return lambda layer, inputs, output: feats.__setitem__(key, output)

        for s, t in PAIRS:
            getattr(student, s).register_forward_post_hook(grab("s" + s))
            getattr(teacher, t).register_forward_post_hook(grab("t" + t))
        self.feats = feats
        probe = paddle.to_tensor(self.x[:2])
        with paddle.no_grad():
            student.eval()
            student(probe)
            teacher(probe)
            student.train()
        self.adapters = {}
        for s, t in PAIRS:
            cs, ct = feats["s" + s].shape[1], feats["t" + t].shape[1]
            if cs != ct:
                self.adapters[s] = nn.Sequential(nn.Conv2D(cs, ct, 1, bias_attr=False), nn.BatchNorm2D(ct))
        params = student.parameters() + [p for a in self.adapters.values() for p in a.parameters()]
        self.opt = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=params)
        self.rng = np.random.default_rng(0)

    def step(self) -> None:
        if self.kind != "hand_full":
            self.model.train_batch([self.x], [self.y])
            return
        x, y = paddle.to_tensor(self.x), paddle.to_tensor(self.y)
        lam = float(self.rng.beta(1.0, 1.0))
        perm = paddle.to_tensor(self.rng.permutation(len(self.x)))
        x = x * lam + paddle.gather(x, perm) * (1 - lam)
        logits = self.student(x)
        with paddle.no_grad():
            t_logits = self.teacher(x)
        ce = nn.functional.cross_entropy
        loss = 0.5 * (lam * ce(logits, y) + (1 - lam) * ce(logits, paddle.gather(y, perm)))
        for s, t in PAIRS:
            f = self.feats["s" + s]
            f = self.adapters[s](f) if s in self.adapters else f
            loss = loss + ((f - self.feats["t" + t]) ** 2).mean()
        loss = loss + kd_loss(logits, t_logits, 4.0)
        loss.backward()
        self.opt.step()
        self.opt.clear_grad()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--teacher-width", type=float, default=1.0)
    p.add_argument("--student", default="resnet20")
    p.add_argument("--student-width", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    paddle.base.core.set_num_threads(args.threads)

    rng = np.random.RandomState(0)
    x = rng.randn(args.batch, 3, 32, 32).astype("float32")
    y = rng.randint(0, 10, (args.batch, 1)).astype("int64")
    paddle.seed(0)
    teacher = build_model(args.teacher, num_classes=10, width=args.teacher_width)
    teacher.eval()
    kinds = ["student", "student+teacher", "distill_kd", "distill_full", "hand_full"]
    variants = {k: Variant(k, args, teacher, x, y) for k in kinds}
    for v in variants.values():
        for _ in range(args.warmup):
            v.step()
    per_round = []
    for r in range(args.rounds):
        row = {}
        order = kinds[r % len(kinds):] + kinds[: r % len(kinds)]  # rotate, so no variant always runs first
        for k in order:
            v = variants[k]
            start = time.perf_counter()
            for _ in range(args.steps):
                v.step()
            row[k] = 1000 * (time.perf_counter() - start) / args.steps
        per_round.append(row)
        print(json.dumps({"round": r, **{k: round(row[k], 1) for k in kinds}}), flush=True)
    base = "student+teacher"
    summary = {
        "ms_per_step_median": {k: round(float(np.median([row[k] for row in per_round])), 1) for k in kinds},
        "ratio_to_student+teacher_median": {
            k: round(float(np.median([row[k] / row[base] for row in per_round])), 3) for k in kinds
        },
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus ({platform.processor() or 'unknown'})",
        "threads": args.threads,
        "paddle": paddle.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
