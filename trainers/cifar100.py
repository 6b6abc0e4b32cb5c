"""The bundled trainer's command line: ``python -m trainers.cifar100`` or ``slim-train``.

Examples::

    slim-train                                   # ResNet-20 on the embedded Fashion-MNIST sample
    slim-train --dataset cifar100 --data-file cifar-100-python.tar.gz --model resnet56 --epochs 30
    slim-train --recipe examples/recipes/prune_qat.yaml --log-dir runs/pq --export runs/pq/export
    slim-train --recipe R.yaml --resume runs/pq/checkpoints/latest

Precedence: command-line flag > recipe key > built-in default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from trainers.recipe import RecipeError, build_callbacks, load_recipe, parse_recipe
from trainers.trainer import TrainConfig

DEFAULTS: dict[str, Any] = {"model": "resnet20", "dataset": "sample", "width": 1.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slim-train",
        description="Train a 32x32 image classifier with compression callbacks (QAT, pruning, distillation).",
    )
    p.add_argument("--recipe", help="YAML recipe (model, data, training and callbacks); flags override it")
    p.add_argument("--dataset", help="sample (embedded, offline), fashion_mnist or cifar100 [sample]")
    p.add_argument("--data-file", help="local cifar-100-python.tar.gz for --dataset cifar100")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST idx .gz files")
    p.add_argument("--train-subset", type=int, help="train on a fixed seed-0 subset of this many images")
    p.add_argument("--model", help="resnet20, resnet32, resnet56, mobilenet_v2, resnet18 [resnet20]")
    p.add_argument("--width", type=float, help="channel width multiplier [1.0]")
    p.add_argument("--teacher", help="teacher for DistillCallback as ARCH:WEIGHTS.pdparams (e.g. resnet56:t.pdparams)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", help="momentum, adam or sgd [momentum]")
    p.add_argument("--threads", type=int, help="CPU threads [all cores, at most 8]")
    p.add_argument("--log-dir", default=None, help="VisualDL logs, card and checkpoints [runs/<model>-<dataset>]")
    p.add_argument("--resume", help="checkpoint prefix to resume from (e.g. LOG_DIR/checkpoints/latest)")
    p.add_argument("--seed", type=int)
    p.add_argument("--export", help="write the inference model(s) here and check them (INT8 when QAT ran)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    return p


def _merge(args: argparse.Namespace) -> dict[str, Any]:
    recipe = load_recipe(args.recipe) if args.recipe else parse_recipe({}, "<defaults>")
    merged: dict[str, Any] = {**DEFAULTS, **recipe}
    for key, value in vars(args).items():
        if key in ("recipe", "log_dir", "resume", "quiet") or value is None:
            continue
        merged[key] = value
    checked = parse_recipe({k: v for k, v in merged.items()}, recipe.source)
    return checked


def _teacher(spec: Any, num_classes: int):
    """``ARCH:WEIGHTS`` or {model, weights, width} -> a loaded, eval-mode teacher network."""
    import paddle

    from trainers.models import build_model

    if isinstance(spec, str):
        arch, _, weights = spec.partition(":")
        spec = {"model": arch, "weights": weights or None}
    if not isinstance(spec, dict) or "model" not in spec:
        raise RecipeError(f"teacher must be 'ARCH:WEIGHTS' or {{model: ..., weights: ...}}, got {spec!r}")
    net = build_model(spec["model"], num_classes=num_classes, width=float(spec.get("width", 1.0)))
    weights = spec.get("weights")
    if weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"teacher weights {weights!r} do not exist")
        net.set_state_dict(paddle.load(weights))
    net.eval()
    return net


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, train, export and write the card; returns the card as a dict."""
    args = build_parser().parse_args(argv)
    cfg = _merge(args)

    from trainers.data import build_datasets
    from trainers.models import build_model
    from trainers.trainer import SlimTrainer

    train, test, num_classes = build_datasets(
        cfg["dataset"], data_file=cfg.get("data_file"), data_dir=cfg.get("data_dir"), train_subset=cfg.get("train_subset")
    )
    train_cfg = TrainConfig(**{k: v for k, v in cfg.items() if k in TrainConfig.__dataclass_fields__})
    if "verbose" not in cfg:
        train_cfg.verbose = 2 if args.quiet else 1
    network = build_model(cfg["model"], num_classes=num_classes, width=float(cfg.get("width", 1.0)))
    context: dict[str, Any] = {}
    if any(cb.get("type") == "PTQCallback" for cb in cfg.get("callbacks") or []):
        import paddle

        calib, _, _ = build_datasets(cfg["dataset"], data_file=cfg.get("data_file"), data_dir=cfg.get("data_dir"),
                                     train_subset=cfg.get("train_subset"), augment=False)
        context["data"] = paddle.io.DataLoader(calib, batch_size=train_cfg.batch_size, shuffle=True)
    if cfg.get("teacher"):
        context["teacher"] = _teacher(cfg["teacher"], num_classes)
    callbacks = build_callbacks(cfg, context)
    log_dir = args.log_dir or os.path.join("runs", f"{cfg['model']}-{cfg['dataset']}")
    trainer = SlimTrainer(
        network, train, test, callbacks=callbacks, config=train_cfg, log_dir=log_dir, name=cfg["model"]
    )
    final = trainer.fit(resume=args.resume)
    extra: dict[str, Any] = {"recipe": cfg.source, "dataset": cfg["dataset"]}
    for cb in callbacks:
        if getattr(cb, "shrinks", None):  # GradualPruneCallback removed channels: dense -> shrunk figures
            (m0, m1), (p0, p1) = cb.summary["macs_per_image"], cb.summary["param_count"]
            extra["channel pruning"] = (f"MACs/image {m0:,} -> {m1:,} ({m1 / m0:.2f}x), parameters {p0:,} -> {p1:,} "
                                        f"({p1 / p0:.2f}x) in {len(cb.shrinks)} removal(s)")
    export_dir = args.export or cfg.get("export")
    if export_dir:
        extra["export"] = trainer.export(export_dir)
    card = trainer.write_card(extra)
    print(card.to_markdown())
    print(f"final eval: {json.dumps(final)}")
    print(f"logs: {log_dir}  (visualdl --logdir {log_dir} --host 127.0.0.1 --port 8040)")
    return card.to_dict()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except (RecipeError, FileNotFoundError, PermissionError, ValueError) as err:
        print(f"slim-train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
