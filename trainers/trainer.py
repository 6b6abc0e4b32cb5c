"""SlimTrainer: paddle.Model + compression callbacks + VisualDL + atomic checkpoints, in the right order.

Callback order given to ``model.fit`` (hapi adds its ProgBarLogger in front and LRScheduler behind):

1. the compression callbacks, in the order the user listed them (they register loss terms, batch
   transforms and step hooks on the shared seam, whose own ordering rules make the result independent
   of this order where it matters);
2. :class:`~slim_callbacks.vdl.SlimVisualDL`, so it sees the losses and reports of everything before it;
3. :class:`CheckpointCallback`, last, so a checkpoint holds the state every callback has just updated.

Checkpoints go through the seam, so they carry compression state (``PATH.slim``) and are written
atomically. A non-finite loss stops training with an error naming the step and the loss terms; the
last checkpoint written before it stays the newest.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import paddle

from slim_callbacks.callback import SlimCallback
from slim_callbacks.seam import Seam
from slim_callbacks.vdl import SlimVisualDL, check_writable_dir

__all__ = ["TrainConfig", "SlimTrainer", "CheckpointCallback", "set_cpu_threads", "seed_everything"]

OPTIMIZERS = ("momentum", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")


def set_cpu_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads for Paddle's kernels (default: all cores, at most 8).

    ``import paddle`` pins OMP_NUM_THREADS to 1 when it is unset; on the 2-core reference machine two
    threads trained ResNets about 1.5x faster.
    """
    if threads is None:
        threads = min(os.cpu_count() or 1, 8)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    paddle.base.core.set_num_threads(int(threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return int(threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and Paddle so a run (data order, augmentation, init) repeats exactly on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


@dataclass
class TrainConfig:
    """Training hyper-parameters (the BAR-RECIPE defaults: Momentum 0.9, L2 5e-4, cosine per step)."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "momentum"
    lr_schedule: str = "cosine"
    seed: int = 0
    threads: int | None = None
    accumulate: int = 1
    log_freq: int = 20
    save_freq: int = 1
    num_workers: int = 0
    verbose: int = 2

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not valid; use one of {list(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} is not valid; use one of {list(LR_SCHEDULES)}")
        for name in ("epochs", "batch_size", "accumulate", "log_freq", "save_freq"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


# settings that may change between a run and its resume without changing the result
_RESUME_FREE = {"threads", "verbose", "log_freq", "save_freq", "num_workers"}


def run_fingerprint(
    config: "TrainConfig", callbacks: Sequence[paddle.callbacks.Callback], network: paddle.nn.Layer, name: str
) -> dict[str, Any]:
    """What must match for a resume to continue the same run: training settings, the compression
    callbacks (class and, where one offers ``get_config()``, its settings) and the network's parameter
    shapes. Plain hapi callbacks (loggers, early stopping) may change freely."""
    settings = {k: v for k, v in asdict(config).items() if k not in _RESUME_FREE}
    cbs = []
    for cb in callbacks:
        if not isinstance(cb, SlimCallback):
            continue
        get_config = getattr(cb, "get_config", None)
        cbs.append({"type": type(cb).__name__, **(get_config() if callable(get_config) else {})})
    shapes = {name: list(p.shape) for name, p in network.named_parameters()}
    return {"config": {"model": name, **settings}, "callbacks": cbs, "network": shapes}


def check_same_run(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise a ValueError listing every difference between a checkpoint's run and this one."""
    if not saved or not current:
        return
    problems = []
    for key, value in saved.get("config", {}).items():
        now = current["config"].get(key)
        if now != value:
            problems.append(f"{key}: checkpoint {value!r}, now {now!r}")
    if saved.get("callbacks") != current.get("callbacks"):
        problems.append(f"callbacks: checkpoint {saved.get('callbacks')}, now {current.get('callbacks')}")
    old_net, new_net = saved.get("network", {}), current.get("network", {})
    if old_net != new_net:
        diff = sorted(k for k in set(old_net) | set(new_net) if old_net.get(k) != new_net.get(k))
        problems.append(f"network parameters differ: {diff[:5]}{' ...' if len(diff) > 5 else ''}")
    if problems:
        raise ValueError(
            "cannot resume: the checkpoint was written by a different recipe; differences: " + "; ".join(problems)
        )


class CheckpointCallback(SlimCallback):
    """Save ``epoch_<n>`` and ``latest`` every ``save_freq`` epochs through the seam (atomic, with
    compression state); stop with a clear error on a non-finite loss.

    ``n`` counts epochs completed including those before a resume, so names never collide.
    """

    priority = 100  # last: saves the state every other callback has just updated

    def __init__(
        self,
        save_dir: str,
        save_freq: int = 1,
        epochs_done: int = 0,
        seed: int | None = None,
        sampler: paddle.io.DistributedBatchSampler | None = None,
        fingerprint: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_dir = check_writable_dir(save_dir, "checkpoint dir")
        self.save_freq = save_freq
        self.epochs_done = epochs_done
        self.seed = seed
        self.sampler = sampler
        self.fingerprint = fingerprint or {}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # Every epoch's randomness (shuffle order, augmentation, dropout) is a function of the seed and
        # the absolute epoch index only, so a resumed run replays exactly what an uninterrupted one does.
        if self.seed is not None:
            seed_everything(self.seed + 1009 * self.epochs_done)
        if self.sampler is not None:
            self.sampler.set_epoch((self.seed or 0) + self.epochs_done)

    def setup(self, seam: Seam) -> None:
        seam.register_state(
            "trainer", lambda: {"epochs_done": self.epochs_done, "fingerprint": self.fingerprint}, self._restore
        )

    def _restore(self, state: dict) -> None:
        self.epochs_done = int(state.get("epochs_done", 0))

    def teardown(self, seam: Seam) -> None:
        seam.unregister_state("trainer")

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        losses = (logs or {}).get("loss")
        if losses is None:
            return
        values = [float(np.asarray(v).mean()) for v in (losses if isinstance(losses, list) else [losses])]
        if not all(math.isfinite(v) for v in values):
            names = self.seam.loss_names("train") if self.seam else []
            detail = ", ".join(f"{n}={v}" for n, v in zip(names, values))
            raise FloatingPointError(
                f"non-finite loss at optimizer step {self.global_step} (epoch {self.epochs_done + 1}, "
                f"batch {step}): {detail}. Training stopped; the last good checkpoint is "
                f"{os.path.join(self.save_dir, 'latest')!r}. Lower the learning rate or check the data."
            )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs_done += 1
        if self.epochs_done % self.save_freq == 0:
            self.model.save(os.path.join(self.save_dir, f"epoch_{self.epochs_done}"))
            self.model.save(os.path.join(self.save_dir, "latest"))


def dataset_arrays(data: paddle.io.Dataset, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` (image, label) items of ``data`` stacked into two arrays."""
    n = len(data) if limit is None else min(limit, len(data))
    items = [data[i] for i in range(n)]
    return np.stack([np.asarray(i[0]) for i in items]), np.stack([np.asarray(i[1]) for i in items]).reshape(n, -1)


class SlimTrainer:
    """Compose a network, data and compression callbacks into one logged, checkpointed ``fit``.

    Args:
        network: the model to train (a plain ``paddle.nn.Layer``).
        train_data, eval_data: ``paddle.io.Dataset`` objects yielding ``(image, label)``.
        callbacks: compression callbacks (QATCallback, GradualPruneCallback, DistillCallback ...).
        config: optimization settings.
        log_dir: VisualDL logs, the compression card and (by default) checkpoints go here.
        input_shape: one example input's shape with batch 1, for MAC counting and export.
        name: the model's name in the compression card.
    """

    def __init__(
        self,
        network: paddle.nn.Layer,
        train_data: paddle.io.Dataset,
        eval_data: paddle.io.Dataset | None = None,
        *,
        callbacks: Sequence[paddle.callbacks.Callback] = (),
        config: TrainConfig | None = None,
        log_dir: str = "runs/slim",
        save_dir: str | None = None,
        input_shape: Sequence[int] = (1, 3, 32, 32),
        name: str = "model",
    ) -> None:
        self.config = config or TrainConfig()
        self.log_dir = check_writable_dir(log_dir)
        self.save_dir = save_dir or os.path.join(log_dir, "checkpoints")
        self.network = network
        self.train_data = train_data
        self.eval_data = eval_data
        self.callbacks = list(callbacks)
        self.input_shape = tuple(input_shape)
        self.name = name
        self.threads = set_cpu_threads(self.config.threads)
        self.model = paddle.Model(network)
        self.model.prepare(self._optimizer(), paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
        self.vdl = SlimVisualDL(self.log_dir, log_freq=self.config.log_freq, close_at_end=False)
        self.history: list[dict[str, Any]] = []

    # --------------------------------------------------------------------------------- building
    def _batches_per_epoch(self) -> int:
        nranks = paddle.distributed.ParallelEnv().nranks
        return max(1, math.ceil(len(self.train_data) / (self.config.batch_size * nranks)))

    def _optimizer(self) -> paddle.optimizer.Optimizer:
        c = self.config
        lr: Any = c.lr
        if c.lr_schedule == "cosine":
            # hapi's LRScheduler callback steps it once per batch
            lr = paddle.optimizer.lr.CosineAnnealingDecay(learning_rate=c.lr, T_max=c.epochs * self._batches_per_epoch())
        params = self.network.parameters()
        decay = paddle.regularizer.L2Decay(c.weight_decay) if c.weight_decay else None
        if c.optimizer == "momentum":
            return paddle.optimizer.Momentum(lr, momentum=c.momentum, parameters=params, weight_decay=decay)
        if c.optimizer == "adam":
            return paddle.optimizer.Adam(lr, parameters=params, weight_decay=decay)
        return paddle.optimizer.SGD(lr, parameters=params, weight_decay=decay)

    # ---------------------------------------------------------------------------------- running
    def fit(self, resume: str | None = None) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs in all (a resumed run trains only the remaining ones).

        Returns the final evaluation (``{'loss': ..., 'acc': ...}``) or {} without eval data.
        """
        seed_everything(self.config.seed)
        seam = Seam.attach(self.model)  # held for the whole run so resume state can wait for its owners
        try:
            epochs_done = 0
            fingerprint = run_fingerprint(self.config, self.callbacks, self.network, self.name)
            if resume:
                state = Seam.read_checkpoint_state(resume)
                saved = state.get("state", {}).get("trainer", {})
                if state and "trainer" not in state.get("state", {}):
                    raise ValueError(
                        f"cannot resume from {resume!r}: it holds no training state (only checkpoints written "
                        f"during training do, {os.path.join(self.save_dir, 'latest')!r} or 'epoch_<n>'; 'final' "
                        f"is the finished model, for loading)")
                check_same_run(saved.get("fingerprint", {}), fingerprint)  # before any weight is loaded
                self.model.load(resume)
                epochs_done = int(saved.get("epochs_done", 0))
            remaining = self.config.epochs - epochs_done
            if remaining <= 0:
                print(f"checkpoint {resume!r} already holds {epochs_done} epochs; nothing to train")
                return self.evaluate()
            loader = self._loader(self.train_data, shuffle=True)
            checkpoint = CheckpointCallback(
                self.save_dir,
                self.config.save_freq,
                epochs_done,
                self.config.seed,
                loader.batch_sampler,
                fingerprint=fingerprint,
            )
            self.model.fit(
                loader,
                self._loader(self.eval_data, shuffle=False),
                epochs=remaining,
                log_freq=self.config.log_freq,
                verbose=self.config.verbose,
                num_workers=self.config.num_workers,
                callbacks=[*self.callbacks, self.vdl, checkpoint],
                accumulate_grad_batches=self.config.accumulate,
            )
            # the finished model (masks stripped, channels removed, quantizers in place), with its
            # architecture when channels were removed, so it loads into a freshly built network
            self.model.save(os.path.join(self.save_dir, "final"))
        finally:
            seam.release()
        return self.evaluate()

    def _loader(self, data: paddle.io.Dataset | None, shuffle: bool) -> paddle.io.DataLoader | None:
        """Batches sharded across ranks (as hapi does); the train sampler's epoch is set by
        :class:`CheckpointCallback` from the absolute epoch index."""
        if data is None:
            return None
        sampler = paddle.io.DistributedBatchSampler(data, batch_size=self.config.batch_size, shuffle=shuffle)
        return paddle.io.DataLoader(data, batch_sampler=sampler, num_workers=self.config.num_workers)

    def evaluate(self) -> dict[str, Any]:
        if self.eval_data is None:
            return {}
        result = self.model.evaluate(self.eval_data, batch_size=self.config.batch_size, verbose=0)
        flat = {k: float(np.asarray(v[0] if isinstance(v, list) else v).mean()) for k, v in result.items()}
        self.history.append(flat)
        return flat

    def export_fp32(self, directory: str) -> str:
        """``paddle.jit.save`` the network for inference (dynamic batch); returns the path prefix."""
        check_writable_dir(directory, "export dir")
        path = os.path.join(directory, "model_fp32")
        spec = [paddle.static.InputSpec([None, *self.input_shape[1:]], "float32", "image")]
        was_training = self.network.training
        self.network.eval()
        try:
            paddle.jit.save(self.network, path, input_spec=spec)
        finally:
            self.network.train(was_training)
        return path

    def export(self, directory: str, check_images: int = 1000) -> dict[str, Any]:
        """Write the inference model(s) to ``directory`` and check them; the result goes in the card.

        A float network is saved with ``paddle.jit.save``. A network quantized by QATCallback or
        PTQCallback is exported as a Paddle Inference INT8 model (legacy format, int8 weights) and
        checked by :func:`slim_callbacks.quant.verify_deployment` on up to ``check_images`` evaluation
        images: top-1 of INT8 vs the QAT simulation vs float, argmax agreement, and FP32 vs INT8
        latency at batch 1 and 32.
        """
        from slim_callbacks.quant import export_int8, is_quantized, verify_deployment

        if not is_quantized(self.network):
            return {"fp32_model": self.export_fp32(directory)}
        check_writable_dir(directory, "export dir")
        path = os.path.join(directory, "model_int8")
        result: dict[str, Any] = {"int8_model": path, **export_int8(self.network, path, [None, *self.input_shape[1:]])}
        if self.eval_data is not None:
            x, y = dataset_arrays(self.eval_data, check_images)
            result["int8_check"] = verify_deployment(self.network, path, x, y, threads=self.threads)
        return result

    def write_card(self, extra: dict[str, Any] | None = None):
        """Write the compression card (card.md, card.json) beside the logs and as VisualDL text."""
        from slim_callbacks.report import build_card, write_card

        info = {"training": asdict(self.config) | {"threads": self.threads}}
        if self.history:
            info["final_eval"] = self.history[-1]
        info.update(extra or {})
        card = build_card(self.network, self.input_shape, name=self.name, extra=info)
        if paddle.distributed.ParallelEnv().local_rank == 0:
            write_card(card, self.log_dir)
            if self.vdl.writer is not None:
                self.vdl.writer.add_text("compression/card", card.to_markdown(), 0)
        self.vdl.close()
        return card
