"""The seam: the ONLY module that touches ``paddle.Model`` private members.

Paddle's hapi gives callbacks no access to the batch, the loss or the optimizer step. Compression needs
all three, so one :class:`Seam` is installed per ``paddle.Model`` and shared by every callback:

* **extra loss terms** - named functions of the step context added to the task loss. They appear as
  separate entries of ``logs['loss']`` (task loss first, then terms in registration order); the
  optimizer minimizes their sum. In eval mode only the task loss counts unless a term sets
  ``in_eval=True``.
* **batch transforms** - functions that rewrite the training batch (inputs, labels, label mixture)
  before the forward pass, applied in ascending ``priority`` then registration order. Eval batches are
  never transformed.
* **step hooks** - functions called right after each optimizer update (e.g. re-applying pruning masks).
* **extra layers** - layers created after ``prepare`` (distillation adapters) whose parameters join the
  optimizer and whose weights travel in checkpoints without becoming part of the exported network.
* **state providers** - named ``get``/``set`` pairs whose state is written beside ``model.save``'s files
  (``PATH.slim``) and restored by ``model.load``; state loaded before its provider registers is kept
  pending and handed over on registration (resume).
* the real network behind ``paddle.DataParallel`` and the optimizer-update counter that schedules use.
* **reshaped networks** - after channel pruning removed channels in place,
  :meth:`Seam.network_reshaped` records the architecture (written to ``PATH.slim``; ``model.load``
  rebuilds it before loading weights) and gives ``paddle.DataParallel`` the new parameters.

Hooks go in as *instance attributes* (``train_batch``, ``eval_batch``, ``save``, ``load``) and a wrapped
``_loss``; :meth:`Seam.uninstall` deletes/restores them and leaves the Model exactly as it was.
Writes are atomic as a set (:mod:`slim_callbacks.ckpt_files`): the files are written under temporary
names and renamed into place with the previous set kept as a hard-linked backup until the last rename,
so a process killed during a save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import paddle

from .ckpt_files import MANIFEST_KEY, commit_set, complete_prefix, manifest
from .reporting import Reporter

__all__ = ["Seam", "StepContext", "atomic_save"]

_ATTR = "_slim_seam"
_HOOKED = ("train_batch", "eval_batch", "save", "load")
SLIM_SUFFIX = ".slim"
_STRUCTURED = "__slim_structured_names__"


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


@dataclass
class StepContext:
    """What one train/eval step carries through the seam.

    Attributes:
        mode: ``'train'`` or ``'eval'``.
        inputs: the (possibly transformed) input tensors the network sees.
        labels: the labels given to metrics (transforms keep them clean, see ``label_mixture``).
        label_mixture: for mixed batches, ``[(weight, labels), ...]``: the task loss becomes
            ``sum(weight * loss(outputs, labels))``. Empty means the plain task loss on ``labels``.
        outputs: the network outputs, set before loss terms run.
        task_loss: the task loss terms, set before extra terms run.
        update: whether this batch ends with an optimizer update (gradient accumulation).
        info: free-form per-step data shared between transforms and terms (e.g. mixing lambda).
    """

    mode: str
    inputs: list
    labels: list
    update: bool = True
    label_mixture: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    task_loss: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass
class _Entry:
    name: str
    fn: Callable
    priority: float = 0.0
    in_eval: bool = False


def atomic_save(obj: Any, path: str) -> None:
    """``paddle.save`` to a temporary file in the same folder, then rename over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        paddle.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class Seam:
    """Per-Model hook point shared by all slim callbacks. Get one with :meth:`attach`."""

    def __init__(self, model: paddle.Model) -> None:
        if getattr(model, "_optimizer", None) is None or getattr(model, "_loss", None) is None:
            raise RuntimeError(
                "slim_callbacks needs a prepared model with a loss and an optimizer: "
                "call model.prepare(optimizer, loss, metrics) before fit"
            )
        self.model = model
        self.global_step = 0  #: optimizer updates done so far (restored on resume)
        self.reporter = Reporter()
        self.reporter.default_step = lambda: self.global_step
        self._users = 0
        self._orig_loss = model._loss
        self._orig = {name: getattr(model, name) for name in _HOOKED}
        self._terms: list[_Entry] = []
        self._transforms: list[_Entry] = []
        self._step_hooks: list[_Entry] = []
        self._extras: dict[str, paddle.nn.Layer] = {}
        self._providers: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        self._pending: dict[str, Any] = {}
        self._pending_extras: dict[str, dict] = {}
        self._pending_opt: dict[str, Any] | None = None
        #: parameter/buffer shapes after an in-place reshape (see :meth:`network_reshaped`), else None
        self.architecture: dict[str, Any] | None = None
        self._retired: list[Any] = []  # DataParallel wrappers replaced after a reshape (kept alive)
        self._ctx: StepContext | None = None
        #: the callbacks' event conductor (owned by slim_callbacks.callback; the seam only carries it)
        self.conductor: Any = None
        model._loss = self._loss
        model.train_batch = self._train_batch
        model.eval_batch = self._eval_batch
        model.save = self._save
        model.load = self._load
        setattr(model, _ATTR, self)

    # ------------------------------------------------------------------------------- life cycle
    @classmethod
    def attach(cls, model: paddle.Model) -> "Seam":
        """Install the seam on ``model`` if needed and count one more user. Pair with :meth:`release`."""
        seam = cls.get(model) or cls(model)
        seam._users += 1
        return seam

    @staticmethod
    def get(model: paddle.Model) -> "Seam | None":
        """The seam installed on ``model``, or None."""
        return model.__dict__.get(_ATTR)

    def release(self) -> None:
        """One user is done; the last one out uninstalls the seam."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            self.uninstall()

    def uninstall(self) -> None:
        """Remove every hook and registered parameter, leaving the Model as it was before :meth:`attach`."""
        model = self.model
        if model.__dict__.get(_ATTR) is not self:
            return
        for name in list(self._extras):
            self.unregister_layer(name)
        model._loss = self._orig_loss
        for name in _HOOKED:
            model.__dict__.pop(name, None)
        del model.__dict__[_ATTR]
        self._terms.clear()
        self._transforms.clear()
        self._step_hooks.clear()
        self._providers.clear()

    # ---------------------------------------------------------------------------- the network
    @property
    def network(self) -> paddle.nn.Layer:
        """The real network (never the DataParallel wrapper)."""
        return self.model.network

    @property
    def parallel_network(self) -> paddle.nn.Layer:
        """What the forward pass actually calls: the DataParallel wrapper when nranks > 1, else the network."""
        return getattr(self.model._adapter, "ddp_model", None) or self.model.network

    def network_reshaped(self) -> None:
        """Channels were removed from the network in place: record its architecture and re-wrap it.

        The architecture (:func:`slim_callbacks.prune.shrink.describe_architecture`) goes into every
        later ``PATH.slim``, and ``model.load`` applies it to the network before loading weights.

        With nranks > 1, ``paddle.DataParallel``'s C++ reducer was built for the parameters as they were
        (fused buckets, gradient hooks that Paddle offers no way to remove). Rather than rely on how it
        treats resized tensors, every parameter of the network is replaced by a fresh Parameter (same
        name, values and attributes) that the old reducer never sees, the optimizer is pointed at it
        (its accumulators are keyed by name and stay), and the network gets a new DataParallel. The old
        wrapper is kept alive: its hooks on the retired parameters still reference it.
        """
        from .prune.shrink import describe_architecture

        self.architecture = describe_architecture(self.network)
        adapter = self.model._adapter
        old = getattr(adapter, "ddp_model", None)
        if old is None:
            return
        swapped: dict[int, paddle.Tensor] = {}
        for layer in self.network.sublayers(include_self=True):
            for attr, p in list(layer._parameters.items()):
                if p is None:
                    continue
                if id(p) not in swapped:
                    swapped[id(p)] = paddle.base.framework.EagerParamBase.from_tensor(
                        p.detach().clone(), name=p.name, trainable=p.trainable, optimize_attr=p.optimize_attr,
                        regularizer=p.regularizer, do_model_average=p.do_model_average, need_clip=p.need_clip)
                layer._parameters[attr] = swapped[id(p)]
        opt = self.optimizer
        for holder in (getattr(opt, "_parameter_list", None), getattr(opt, "_param_groups", None)):
            for i, item in enumerate(holder or []):
                if isinstance(item, dict):
                    item["params"] = [swapped.get(id(q), q) for q in item["params"]]
                else:
                    holder[i] = swapped.get(id(item), item)
        self._retired.append(old)
        adapter.ddp_model = paddle.DataParallel(self.network, old._strategy, group=old.group,
                                                find_unused_parameters=old.find_unused_parameters)

    @property
    def optimizer(self) -> paddle.optimizer.Optimizer:
        return self.model._optimizer

    @property
    def nranks(self) -> int:
        return int(getattr(self.model._adapter, "_nranks", 1))

    @property
    def rank(self) -> int:
        return int(paddle.distributed.ParallelEnv().local_rank)

    def steps_per_epoch(self, batches_per_epoch: int | None) -> int | None:
        """Optimizer updates per epoch for ``batches_per_epoch`` batches under gradient accumulation."""
        if not batches_per_epoch:
            return None
        accumulate = int(getattr(self.model, "_accumulate", 1) or 1)
        return max(1, math.ceil(batches_per_epoch / accumulate))

    # ----------------------------------------------------------------------------- registration
    @staticmethod
    def _add(entries: list[_Entry], entry: _Entry, what: str) -> None:
        if any(e.name == entry.name for e in entries):
            raise ValueError(f"a {what} named {entry.name!r} is already registered; names: {[e.name for e in entries]}")
        entries.append(entry)
        # stable sort: equal priorities keep registration order
        entries.sort(key=lambda e: e.priority)

    @staticmethod
    def _remove(entries: list[_Entry], name: str) -> None:
        entries[:] = [e for e in entries if e.name != name]

    def add_loss_term(self, name: str, fn: Callable[[StepContext], paddle.Tensor], *, in_eval: bool = False) -> None:
        """Add ``fn(ctx) -> scalar Tensor`` to the loss under ``name`` (a separate entry of logs['loss'])."""
        self._add(self._terms, _Entry(name, fn, 0.0, in_eval), "loss term")

    def remove_loss_term(self, name: str) -> None:
        self._remove(self._terms, name)

    def loss_names(self, mode: str = "train") -> list[str]:
        """Names of the entries of logs['loss'] (train) or logs['eval_loss'] (eval), in order."""
        return ["task"] + [t.name for t in self._terms if mode == "train" or t.in_eval]

    def add_batch_transform(self, name: str, fn: Callable[[StepContext], None], *, priority: float = 0.0) -> None:
        """Run ``fn(ctx)`` on every training batch before the forward pass; it may replace
        ``ctx.inputs``/``ctx.labels`` and set ``ctx.label_mixture``. Lower ``priority`` runs first."""
        self._add(self._transforms, _Entry(name, fn, priority), "batch transform")

    def remove_batch_transform(self, name: str) -> None:
        self._remove(self._transforms, name)

    def add_step_hook(self, name: str, fn: Callable[[StepContext], None], *, priority: float = 0.0) -> None:
        """Call ``fn(ctx)`` right after each optimizer update (not after accumulation-only batches)."""
        self._add(self._step_hooks, _Entry(name, fn, priority), "step hook")

    def remove_step_hook(self, name: str) -> None:
        self._remove(self._step_hooks, name)

    def register_layer(self, name: str, layer: paddle.nn.Layer) -> None:
        """Train ``layer``'s parameters with the model's optimizer and keep its weights in checkpoints.

        The layer stays outside the network, so the exported model does not carry it.
        """
        if name in self._extras:
            raise ValueError(f"an extra layer named {name!r} is already registered; names: {sorted(self._extras)}")
        plist = self.optimizer._parameter_list
        if plist is None or (plist and isinstance(plist[0], dict)):
            raise TypeError(
                "the optimizer was built with parameter groups (or none); slim_callbacks can only add "
                "parameters to an optimizer built with parameters=network.parameters()"
            )
        known = {id(p) for p in plist}
        for p in layer.parameters():
            if not p.stop_gradient and id(p) not in known:
                plist.append(p)  # in place: Optimizer._param_groups is the same list object
                if self.nranks > 1:
                    # DataParallel averages only the network's gradients; average these too
                    p.register_hook(self._average_gradient)
        self._extras[name] = layer
        if name in self._pending_extras:
            layer.set_state_dict(self._pending_extras.pop(name))
            self._apply_optimizer_state()

    def _average_gradient(self, grad: paddle.Tensor) -> paddle.Tensor:
        grad = grad.clone()
        paddle.distributed.all_reduce(grad)
        return grad / self.nranks

    def all_reduce_mean(self, tensor: paddle.Tensor) -> paddle.Tensor:
        """Mean of ``tensor`` over data-parallel ranks (itself with one rank), in place; for statistics
        that must agree on every rank (activation ranges, importance scores)."""
        if self.nranks > 1:
            paddle.distributed.all_reduce(tensor)
            tensor.set_value(tensor / self.nranks)
        return tensor

    def sync_buffers(self) -> None:
        """Average every floating-point buffer and non-trainable parameter of the network and the extra layers over ranks (BN running statistics,
        quantizer ranges), so statistics gathered from each rank's own batches agree everywhere."""
        if self.nranks > 1:
            # Paddle keeps BN running statistics as non-trainable Parameters, quantizer ranges as buffers
            layers = [self.network, *self._extras.values()]
            for tensor in (t for layer in layers for t in layer.state_dict().values()):
                trainable = isinstance(tensor, paddle.base.framework.EagerParamBase) and not tensor.stop_gradient
                if not trainable and tensor.dtype in (paddle.float32, paddle.float64, paddle.float16, paddle.bfloat16):
                    self.all_reduce_mean(tensor)

    def broadcast(self, tensor: paddle.Tensor, src: int = 0) -> paddle.Tensor:
        """Make ``tensor`` on every rank equal to rank ``src``'s (a decision taken once, e.g. masks)."""
        if self.nranks > 1:
            paddle.distributed.broadcast(tensor, src=src)
        return tensor

    def unregister_layer(self, name: str) -> None:
        layer = self._extras.pop(name, None)
        if layer is None:
            return
        ids = {id(p) for p in layer.parameters()}
        plist = self.optimizer._parameter_list
        plist[:] = [p for p in plist if id(p) not in ids]

    @property
    def extra_layers(self) -> dict[str, paddle.nn.Layer]:
        return dict(self._extras)

    def register_state(self, name: str, get: Callable[[], Any], set: Callable[[Any], None]) -> None:
        """Keep ``get()`` in checkpoints under ``name``; ``set(state)`` restores it (now if already loaded)."""
        self._providers[name] = (get, set)
        if name in self._pending:
            set(self._pending.pop(name))

    def unregister_state(self, name: str) -> None:
        self._providers.pop(name, None)

    def pending_state(self, name: str) -> Any:
        """State loaded from a checkpoint for a provider not registered yet (None if there is none)."""
        return self._pending.get(name)

    # ------------------------------------------------------------------------- hooked methods
    def _run_transforms(self, ctx: StepContext) -> None:
        if not self._transforms:
            return
        ctx.inputs = [x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x) for x in ctx.inputs]
        ctx.labels = [y if isinstance(y, paddle.Tensor) else paddle.to_tensor(y) for y in ctx.labels]
        for t in self._transforms:
            t.fn(ctx)

    def _train_batch(self, inputs: Any, labels: Any = None, update: bool = True) -> Any:
        ctx = StepContext("train", _as_list(inputs), _as_list(labels), bool(update))
        self._run_transforms(ctx)
        self._ctx = ctx
        try:
            result = self._orig["train_batch"](ctx.inputs, ctx.labels, update)
        finally:
            self._ctx = None
        if update:
            self.global_step += 1
            for layer in self._extras.values():  # hapi clears only the network's gradients
                layer.clear_gradients()
            for hook in self._step_hooks:
                hook.fn(ctx)
        return result

    def _eval_batch(self, inputs: Any, labels: Any = None) -> Any:
        self._ctx = StepContext("eval", _as_list(inputs), _as_list(labels))
        try:
            return self._orig["eval_batch"](inputs, labels)
        finally:
            self._ctx = None

    def _loss(self, *args: Any) -> list:
        ctx = self._ctx or StepContext("eval", [], [])
        n_labels = len(ctx.labels)
        outputs = list(args[: len(args) - n_labels]) if n_labels else list(args)
        labels = list(args[len(args) - n_labels :]) if n_labels else []
        ctx.outputs = outputs
        if ctx.mode == "train" and ctx.label_mixture:
            task = None
            for weight, mixed in ctx.label_mixture:
                part = paddle.add_n(_as_list(self._orig_loss(*(outputs + _as_list(mixed)))))
                task = part * weight if task is None else task + part * weight
            ctx.task_loss = [task]
        else:
            ctx.task_loss = _as_list(self._orig_loss(*(outputs + labels)))
        losses = list(ctx.task_loss)
        for term in self._terms:
            if ctx.mode != "train" and not term.in_eval:
                continue
            value = term.fn(ctx)
            if not isinstance(value, paddle.Tensor):
                raise TypeError(f"loss term {term.name!r} returned {type(value).__name__}, expected a scalar Tensor")
            losses.append(value.reshape([]) if value.ndim else value)
        return losses

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything the seam carries beyond the network and optimizer files."""
        return {
            "version": 1,
            "global_step": self.global_step,
            "extras": {name: layer.state_dict() for name, layer in self._extras.items()},
            "state": {name: get() for name, (get, _) in self._providers.items()},
            "architecture": self.architecture,
        }

    def set_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state.get("global_step", 0))
        for name, weights in state.get("extras", {}).items():
            if name in self._extras:
                self._extras[name].set_state_dict(weights)
            else:
                self._pending_extras[name] = weights
        for name, value in state.get("state", {}).items():
            if name in self._providers:
                self._providers[name][1](value)
            else:
                self._pending[name] = value

    def _structured_names(self) -> dict[str, str]:
        """Runtime parameter name (``conv2d_42.w_0``, process-dependent) -> structured name."""
        names = {p.name: n for n, p in self.network.named_parameters()}
        for extra, layer in self._extras.items():
            names.update({p.name: f"extra:{extra}.{n}" for n, p in layer.named_parameters()})
        return names

    @staticmethod
    def _rename_prefixes(state: dict[str, Any], mapping: dict[str, str], keep_unmatched: bool = True) -> dict[str, Any]:
        """Rename optimizer-state keys ``<param>_<accumulator>`` by the longest matching param prefix.

        With ``keep_unmatched=False`` accumulators of parameters that do not exist (yet) are dropped:
        Paddle refuses to create any new accumulator while unclaimed ones wait in its holder.
        """
        ordered = sorted(mapping, key=len, reverse=True)
        out: dict[str, Any] = {}
        for key, value in state.items():
            for old in ordered:
                if key.startswith(old + "_"):
                    out[mapping[old] + key[len(old):]] = value
                    break
            else:
                if keep_unmatched or not isinstance(value, paddle.Tensor):
                    out[key] = value  # LR_Scheduler state, master_weights ...
        return out

    def _save(self, path: str, training: bool = True) -> None:
        if not training:
            return self._orig["save"](path, training)
        if self.rank != 0:
            return None
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp_prefix = tempfile.mkdtemp(prefix=".tmp-save-", dir=directory)
        try:
            tmp = os.path.join(tmp_prefix, "ckpt")
            self._orig["save"](tmp, True)
            if os.path.exists(tmp + ".pdopt"):
                # key optimizer state by structured names, so it loads into a network built anew
                # (runtime names like conv2d_42.w_0 depend on how many layers the process built before)
                opt = self._rename_prefixes(paddle.load(tmp + ".pdopt"), self._structured_names())
                paddle.save({**opt, _STRUCTURED: True}, tmp + ".pdopt")
            paddle.save({**self.state_dict(), MANIFEST_KEY: manifest(tmp)}, tmp + SLIM_SUFFIX)
            commit_set(tmp, path)  # the three files replace the old ones as one set (see ckpt_files)
        finally:
            for name in os.listdir(tmp_prefix):
                os.remove(os.path.join(tmp_prefix, name))
            os.rmdir(tmp_prefix)
        return None

    @staticmethod
    def _prefix(path: str) -> str:
        return os.path.splitext(path)[0] if path.endswith((".pdparams", ".pdopt", SLIM_SUFFIX)) else path

    @staticmethod
    def read_checkpoint_state(path: str) -> dict[str, Any]:
        """The compression state saved beside checkpoint ``path`` (``{}`` when it has none), unapplied."""
        try:
            slim_file = complete_prefix(Seam._prefix(path)) + SLIM_SUFFIX
        except FileNotFoundError:
            return {}
        return paddle.load(slim_file) if os.path.exists(slim_file) else {}

    def _load(self, path: str, skip_mismatch: bool = False, reset_optimizer: bool = False) -> None:
        # the checkpoint's own files, or the complete set an interrupted save left as backup
        prefix = complete_prefix(self._prefix(path))
        if prefix != self._prefix(path):
            warnings.warn(f"checkpoint {self._prefix(path)!r} was torn by an interrupted save; loading the previous "
                          f"complete save of it instead")
        opt_file = prefix + ".pdopt"
        opt = paddle.load(opt_file) if os.path.exists(opt_file) and not reset_optimizer else None
        structured = bool(opt) and bool(opt.pop(_STRUCTURED, False))
        slim_file = prefix + SLIM_SUFFIX
        slim = paddle.load(slim_file) if os.path.exists(slim_file) else {}
        if slim.get("architecture"):
            # channels were removed before this checkpoint: rebuild those shapes before loading weights
            from .prune.shrink import apply_shrunk_architecture

            apply_shrunk_architecture(self.network, slim["architecture"])
            self.network_reshaped()
        try:
            self._orig["load"](prefix, skip_mismatch, reset_optimizer or structured)
        except ValueError as err:
            raise ValueError(
                f"cannot load checkpoint {prefix!r} into {type(self.network).__name__}: {err}. A checkpoint of a "
                f"channel-pruned (shrunk) network loads into a fresh network only with its architecture: "
                f"through this seam with the {SLIM_SUFFIX} file beside it, or with "
                f"slim_callbacks.prune.shrink.load_shrunk") from err
        if slim:
            self.set_state_dict(slim)  # registers nothing new, so names stay valid
        if structured:
            self._pending_opt = opt
            self._apply_optimizer_state()

    def _apply_optimizer_state(self) -> None:
        """Load the structured optimizer state under the current runtime names. Called again when an
        extra layer registers after the load, so its accumulators (Adam moments ...) are restored too."""
        if self._pending_opt is not None:
            current = {v: k for k, v in self._structured_names().items()}
            state = self._rename_prefixes(self._pending_opt, current, keep_unmatched=False)
            # loaded entries still waiting for their accumulator may have been adjusted since the load
            # (sliced by a channel shrink): those win over the file's
            state.update(getattr(self.optimizer, "_accumulators_holder", None) or {})
            self.optimizer.set_state_dict(state)

