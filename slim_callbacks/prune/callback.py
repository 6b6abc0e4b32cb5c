"""GradualPruneCallback: raise sparsity on a schedule during ``paddle.Model.fit``; masks hold.

The callback only decides *when*; :class:`~slim_callbacks.prune.masks.Masker` does the work:

* set-up (the conductor calls it before the first epoch, see :mod:`slim_callbacks.callback`; priority
  20: after distillation, before quantization): build the Masker on the real network, register the
  masks and schedule position as checkpoint state (``PATH.slim``; resume restores them), register a
  seam step hook, prune to the scheduled sparsity for the current position;
* after every optimizer update (seam step hook): re-apply the masks (so Momentum/Adam never bring a
  pruned weight back) and, with ``frequency=N``, move to the next scheduled sparsity every N updates;
* epoch begin: move to the scheduled sparsity (``frequency=None``: sparsity changes only here);
* epoch end: report overall and per-layer sparsity (scalars) and weight histograms; after the last
  epoch also the final figures (nonzero parameters, dense and zipped weight bytes), while every sink
  still listens;
* train end: strip the masks (pruning becomes permanent); with ``granularity='channel', shrink=...``
  remove the masked channels (see below).

Physical channel removal (``granularity='channel'``, ``shrink=True``/``'end'`` or ``'step'``): the masks
are then :class:`~slim_callbacks.prune.group_masks.GroupMasker` masks over the *coupled channel groups*
of the traced dependency graph (a residual stage is one group), so every masked channel can really be
removed, and removing it changes no output. ``'end'`` removes them at train end; ``'step'`` each time
the schedule moves the sparsity, so training continues (and gets faster) on the smaller network. The
optimizer's accumulators (momentum, Adam moments) are sliced with the parameters, the seam re-wraps a
``paddle.DataParallel`` and writes the new architecture into every later checkpoint, so resume and
``model.load`` rebuild the shapes before loading weights. Channels read by another callback
(distillation feature pairs) stay whole; callbacks that fix the shapes (QAT from its ``start_epoch``,
PTQ at train end) must come after the last removal, which is checked at set-up.

Progress is the seam's optimizer-update counter, so gradient accumulation and resume keep the schedule
right. Constructor arguments are plain values so YAML recipes can give them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


from ..callback import SlimCallback
from ..schedule import SCHEDULES, Schedule, schedule_from_config
from ..seam import Seam, StepContext
from .group_masks import GroupMasker
from .masks import GRANULARITIES, Masker, check_sparsity, select_targets

__all__ = ["GradualPruneCallback"]

_STATE = "prune"
_HOOK = "prune.apply_masks"
_TRACE = "prune.trace_input"


class GradualPruneCallback(SlimCallback):
    """Prune from ``initial_sparsity`` to ``final_sparsity`` between ``start_epoch`` and ``end_epoch``.

    Args:
        final_sparsity: fraction of zeros in [0, 1) of the selected weights at the end of the ramp
            (for ``'channel'``: fraction of output channels of each layer; for ``'nm'``: at most (M-N)/M).
        initial_sparsity: fraction of zeros at ``start_epoch``.
        start_epoch: epoch (0-based, may be fractional) where the ramp starts.
        end_epoch: epoch where ``final_sparsity`` is reached; default None = the last epoch of the fit
            (``epochs - 1``), so the last epoch fine-tunes at the final sparsity.
        schedule: ``'cubic'`` (Zhu & Gupta AGP, default), ``'linear'``, ``'exponential'``, ``'constant'``
            (one-shot: ``final_sparsity`` from ``start_epoch`` on), ``'polynomial'``, a
            :class:`~slim_callbacks.schedule.Schedule`, or a schedule config dict (keys it lacks are filled
            from the arguments above; a Schedule object is used as is).
        frequency: None = change sparsity only at epoch boundaries; N = every N optimizer updates.
        granularity: ``'unstructured'`` (per layer), ``'global'`` (one threshold), ``'nm'``, ``'channel'``.
        n, m: the N:M pattern for ``'nm'`` (default 2:4).
        criterion: channel criterion: ``'l1'``, ``'l2'``, ``'fpgm'`` or ``'bn_scale'``.
        params: regexes (``re.fullmatch``) of parameter names to prune; default ``['.*weight']``.
        layer_types: ``paddle.nn`` class names whose parameters are candidates; default Conv2D, Linear.
        skip_first, skip_last: leave the first / last selected parameter dense (stem conv, classifier).
        strip_at_end: make pruning permanent at train end (masks dropped, zeros kept).
        mask_gradients: also mask gradients (parameter hooks) besides re-applying masks after each step.
            Off by default: re-applying alone is exact and the hooks cost as much again (docs/pruning.md).
        shrink: ``'channel'`` only: False (masks only, per layer), True or ``'end'`` (coupled-group masks,
            channels removed at train end) or ``'step'`` (removed each time the sparsity moves); needs
            ``strip_at_end=True``. ``final_sparsity`` is then the fraction of every prunable group's
            channels removed; ``params``/``layer_types`` do not apply and ``skip_last`` is implied (the
            classifier's outputs are never pruned); see the module docstring.
        round_to: with ``shrink``: kept channel counts are rounded up to a multiple of this (SIMD widths).
        ignored_layers: with ``shrink``: layer names whose coupled channel groups stay whole.
        keep_residual: with ``shrink``: leave residual streams whole, prune only inside blocks (see
            ``slim_callbacks.prune.shrink.prune_channels``).
        input_shape: input shape (batch first) to trace with: the channel dependency graph (``shrink``) or
            which BatchNorm follows which layer (``criterion='bn_scale'``); None traces the first
            training batch instead.
        histograms: report weight histograms of pruned layers at each epoch end.

    After fit, :attr:`summary` holds the final figures (sparsity per layer and overall, nonzero
    parameters, dense and zipped weight bytes) and :attr:`history` the ``(global_step, sparsity)``
    pairs at which masks changed.
    """

    priority = 20  # after distillation taps, before quantization (see slim_callbacks.callback)

    def __init__(
        self,
        final_sparsity: float,
        initial_sparsity: float = 0.0,
        start_epoch: float = 0,
        end_epoch: float | None = None,
        schedule: str | dict | Schedule = "cubic",
        frequency: int | None = None,
        granularity: str = "unstructured",
        n: int = 2,
        m: int = 4,
        criterion: str = "l1",
        params: Sequence[str] | None = None,
        layer_types: Sequence[str] | None = None,
        skip_first: bool = False,
        skip_last: bool = False,
        strip_at_end: bool = True,
        mask_gradients: bool = False,
        shrink: bool | str = False,
        round_to: int = 1,
        ignored_layers: Sequence[str] | None = None,
        keep_residual: bool = False,
        input_shape: Sequence[int] | None = None,
        histograms: bool = True,
    ) -> None:
        super().__init__()
        self.final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        if end_epoch is not None and end_epoch < start_epoch:
            raise ValueError(f"end_epoch ({end_epoch}) is before start_epoch ({start_epoch}); the ramp must end after it starts")
        if frequency is not None and (not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1):
            raise ValueError(f"frequency must be None (epoch boundaries) or a whole number of optimizer steps >= 1, got {frequency!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; valid: {list(GRANULARITIES)}")
        if shrink not in (False, None, True, "end", "step"):
            raise ValueError(f"shrink must be False, True / 'end' (remove the masked channels at train end) or 'step' "
                             f"(remove them each time the sparsity moves), got {shrink!r}")
        self.shrink: str | None = None if shrink in (False, None) else ("end" if shrink is True else str(shrink))
        if self.shrink and granularity != "channel":
            raise ValueError(f"shrink={shrink!r} removes channels and needs granularity='channel', got {granularity!r}")
        if self.shrink and not strip_at_end:
            raise ValueError(f"shrink={shrink!r} removes the masked channels and needs strip_at_end=True")
        if self.shrink and (params is not None or layer_types is not None):
            raise ValueError("shrink prunes whole coupled channel groups of the traced network; params and layer_types "
                             "do not apply (use ignored_layers to keep groups whole)")
        if not self.shrink and (round_to != 1 or ignored_layers or keep_residual):
            raise ValueError("round_to, ignored_layers and keep_residual apply to channel-group pruning "
                             "(shrink=True/'end'/'step')")
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid: {sorted(SCHEDULES)}, a Schedule or a config dict")
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.schedule_spec = schedule
        self.frequency = frequency
        self.masker_args: dict[str, Any] = dict(
            params=list(params) if params is not None else None,
            layer_types=list(layer_types) if layer_types is not None else None,
            skip_first=skip_first,
            skip_last=skip_last,
            granularity=granularity,
            n=n,
            m=m,
            criterion=criterion,
            mask_gradients=mask_gradients,
        )
        self.strip_at_end = strip_at_end
        self.round_to = round_to
        self.ignored_layers = list(ignored_layers or [])
        self.keep_residual = keep_residual
        self.shrinks: list[dict[str, Any]] = []  #: one entry per physical removal (step, MACs, parameters)
        self.input_shape = list(input_shape) if input_shape is not None else None
        self.histograms = histograms
        self.masker: Masker | GroupMasker | None = None
        self.schedule: Schedule | None = None
        self.history: list[tuple[int, float]] = []
        self.summary: dict[str, Any] = {}
        self._traced_now = False
        self._seen_input_shape: list[int] | None = None
        if not isinstance(schedule, (str, dict, Schedule)):
            raise TypeError(f"schedule must be a name, a config dict or a Schedule, got {type(schedule).__name__}")
        if not isinstance(schedule, dict) or end_epoch is not None:
            self.schedule = self._build_schedule(end_epoch if end_epoch is not None else start_epoch)

    # ----------------------------------------------------------------------------- schedule
    def _build_schedule(self, end_epoch: float) -> Schedule:
        spec = self.schedule_spec
        if isinstance(spec, Schedule):
            schedule = spec
        else:
            config: dict[str, Any] = {
                "kind": spec if isinstance(spec, str) else "cubic",
                "initial": self.initial_sparsity,
                "final": self.final_sparsity,
                "start": self.start_epoch,
                "end": end_epoch,
                "unit": "epoch",
                "frequency": self.frequency or 0,
            }
            if isinstance(spec, dict):
                config.update(spec)
            schedule = schedule_from_config(config)
        for what in ("initial", "final"):
            check_sparsity(getattr(schedule, what), f"schedule {what}")
        return schedule

    def sparsity_at(self, step: int, steps_per_epoch: int | None) -> float:
        """The scheduled sparsity after ``step`` optimizer updates."""
        assert self.schedule is not None
        return check_sparsity(self.schedule.value_at(step, steps_per_epoch), "scheduled sparsity")

    # ---------------------------------------------------------------------------- life cycle
    def setup(self, seam: Seam) -> None:
        if self.end_epoch is None and (self.schedule is None or not isinstance(self.schedule_spec, Schedule)):
            epochs = self.total_epochs or 1
            self.schedule = self._build_schedule(max(self.start_epoch, epochs - 1))
        network = seam.network
        if self.masker is None or self.masker.net is not network:
            example = None
            if self.input_shape is not None:
                import paddle

                example = paddle.zeros(self.input_shape, dtype="float32")
            self.masker = self._build_masker(seam, example)
        seam.register_state(_STATE, self._get_state, self._set_state)
        seam.add_step_hook(_HOOK, self._after_step, priority=self.priority)
        if self.masker.needs_trace:
            # before QATCallback's swap (priority 1000): the trace hooks the original layers
            seam.add_batch_transform(_TRACE, self._trace_from_batch, priority=self.priority)
        self._sync()

    def teardown(self, seam: Seam) -> None:
        seam.remove_step_hook(_HOOK)
        seam.remove_batch_transform(_TRACE)
        seam.unregister_state(_STATE)
        if self.masker is None:
            return
        shrunk = False
        if self.strip_at_end:
            self.masker.strip()
            if isinstance(self.masker, GroupMasker) and self.masker.kept:
                self._shrink_now(seam)
                shrunk = True
        # the last epoch end already reported the figures (stripping keeps every zero); after a shrink
        # they changed, so they go out again (sinks still listening at teardown receive them)
        self._final_figures(seam.network, seam.reporter if shrunk else None)

    def _final_figures(self, network: Any, reporter: Any) -> None:
        """Fill :attr:`summary` from the current weights; report it when ``reporter`` is given."""
        from ..report import weights_file_size

        assert self.masker is not None
        report = self.masker.sparsity_report()
        sizes = weights_file_size(network)
        self.summary = {
            "sparsity": report.overall,
            "network_sparsity": report.network,
            "per_layer": dict(report.per_layer),
            "nonzero_params": report.nonzero,
            "params": report.network_total,
            **sizes,
        }
        if self.shrinks:
            self.summary["macs_per_image"] = [self.shrinks[0]["macs"][0], self.shrinks[-1]["macs"][1]]
            self.summary["param_count"] = [self.shrinks[0]["params"][0], self.shrinks[-1]["params"][1]]
        if reporter is None:
            return
        reporter.scalar("prune/final/sparsity", report.overall)
        reporter.scalar("prune/final/nonzero_params", report.nonzero)
        reporter.scalar("prune/final/state_dict_bytes", sizes["state_dict_bytes"])
        reporter.scalar("prune/final/zip_bytes", sizes["zip_bytes"])
        reporter.text(
            "prune/final",
            f"sparsity {report.overall:.4f} of pruned weights ({report.network:.4f} of all parameters); "
            f"nonzero parameters {report.nonzero} of {report.network_total}; weights "
            f"{sizes['state_dict_bytes']} bytes dense, {sizes['zip_bytes']} bytes zipped",
        )

    # -------------------------------------------------------------------------------- events
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.seam is not None:
            self._sync()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.seam is None or self.masker is None:
            return
        report = self.masker.sparsity_report()
        self.report_scalar("prune/sparsity", report.overall)
        self.report_scalar("prune/network_sparsity", report.network)
        for name, value in report.per_layer.items():
            self.report_scalar(f"prune/layer/{name}", value)
        if self.histograms and self.seam.reporter.active:
            for t in self.masker.targets:
                values = t.param.numpy().ravel()
                self.report_histogram(f"prune/weights/{t.name}", values[values != 0])
        if epoch + 1 == self.total_epochs:
            # the final figures go out here, while every sink (SlimVisualDL) still listens
            self._final_figures(self.seam.network, self.seam.reporter)

    def _after_step(self, ctx: StepContext) -> None:
        assert self.masker is not None
        self.masker.apply()
        if self._seen_input_shape is None and ctx.inputs:
            self._seen_input_shape = [1] + list(ctx.inputs[0].shape[1:])
        if self._traced_now and self.seam is not None:
            # removed here, not inside the transform, so the seam's transform loop is never mutated
            self.seam.remove_batch_transform(_TRACE)
            self._traced_now = False
        if self.frequency is not None:
            self._sync()

    def _trace_from_batch(self, ctx: StepContext) -> None:
        assert self.masker is not None
        if self.masker.needs_trace:
            self.masker.trace([x[:1] for x in ctx.inputs])
            self._traced_now = True
            self._sync()

    # ------------------------------------------------------------------------------- helpers
    def _build_masker(self, seam: Seam, example: Any) -> Masker | GroupMasker:
        if not self.shrink:
            return Masker(seam.network, example_input=example, **self.masker_args)
        self._check_shrink_order(seam)
        ignored = list(self.ignored_layers)
        if self.masker_args["skip_first"]:
            ignored.append(select_targets(seam.network)[0].layer_name)
        readers: dict[str, str] = {}
        for member in seam.conductor.members if seam.conductor is not None else []:
            readers.update(member.channel_readers())
        return GroupMasker(seam.network, criterion=self.masker_args["criterion"], round_to=self.round_to,
                           ignored_layers=ignored, keep_residual=self.keep_residual, keep_outputs=readers,
                           example_input=example)

    def _ramp_end_epoch(self) -> float:
        """Epoch where the schedule reaches its final value (inf when it cannot be known)."""
        spe = self.steps_per_epoch
        if self.schedule is None or self.schedule.kind == "callable" or not spe:
            return math.inf
        return self.schedule._to_steps(self.schedule.end, spe) / spe

    def _check_shrink_order(self, seam: Seam) -> None:
        """Refuse (before training) a removal that would come after another callback fixed the shapes."""
        last = math.inf if self.shrink == "end" else self._ramp_end_epoch()
        for member in seam.conductor.members if seam.conductor is not None else []:
            fixed = member.shapes_fixed_from()
            if fixed is not None and (self.shrink == "end" or fixed < last):
                when = "at train end" if self.shrink == "end" else f"until epoch {last:g} (the end of the sparsity ramp)"
                raise ValueError(
                    f"GradualPruneCallback(shrink={self.shrink!r}) removes channels {when}, but "
                    f"{type(member).__name__} fixes the network's shapes from epoch {fixed:g}. Use shrink='step' "
                    f"with the ramp ending (end_epoch) at or before epoch {fixed:g}, or start "
                    f"{type(member).__name__} later (e.g. QATCallback(start_epoch=...) at or after the ramp end)")

    def _sync(self) -> None:
        """Move the masks to the scheduled sparsity for the current optimizer-update count."""
        if self.masker is None or self.seam is None or self.masker.needs_trace:
            return
        target = self.sparsity_at(self.global_step, self.steps_per_epoch)
        if self.masker.at_level(target):
            return
        self.masker.update(target)
        self.history.append((self.global_step, target))
        self.report_scalar("prune/target", target)
        if self.shrink == "step" and isinstance(self.masker, GroupMasker) and self.masker.kept:
            self._shrink_now(self.seam)

    def _shrink_now(self, seam: Seam) -> None:
        """Remove the masked channel groups; slice the optimizer state; tell the seam (DataParallel, checkpoints)."""
        assert isinstance(self.masker, GroupMasker)
        result = self.masker.shrink(seam.optimizer)
        seam.network_reshaped()
        self.masker.refresh_targets()  # the seam may have replaced the Parameter objects (DataParallel)
        entry = {"global_step": seam.global_step, "macs": [result.macs_before, result.macs_after],
                 "params": [result.params_before, result.params_after]}
        self.shrinks.append(entry)
        self.report_scalar("prune/macs_per_image", result.macs_after)
        self.report_scalar("prune/param_count", result.params_after)
        self.report_text("prune/shrink", f"removed channels at optimizer step {seam.global_step}: MACs/image "
                         f"{result.macs_before:,} -> {result.macs_after:,}, parameters {result.params_before:,} -> "
                         f"{result.params_after:,}")

    def _get_state(self) -> dict[str, Any]:
        assert self.masker is not None
        config = None
        if self.schedule is not None and self.schedule.kind != "callable":
            config = self.schedule.get_config()
        return {"masker": self.masker.state_dict(), "schedule": config, "history": list(self.history),
                "shrinks": list(self.shrinks)}

    def _set_state(self, state: dict[str, Any]) -> None:
        assert self.masker is not None
        self.masker.set_state_dict(state.get("masker", {}))
        self.history = [tuple(h) for h in state.get("history", [])]  # type: ignore[misc]
        self.shrinks = list(state.get("shrinks", []))
