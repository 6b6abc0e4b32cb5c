"""Channel dependency graph of a dygraph network, traced from one forward pass.

Why tracing with hooks and patched tensor ops (and not ``paddle.jit.to_static``)
--------------------------------------------------------------------------------
Removing output channel ``c`` of a convolution is only correct if every tensor that carries that
channel is shrunk the same way: the BN after it, the residual branch it is added to, the slice of a
concatenation it lands in, the input block of the Linear after a flatten. Those couplings are facts of
the *data flow*, so they are found by watching the data flow, never by matching layer names
(Torch-Pruning's DepGraph idea). We run one forward pass in eval mode with

* forward pre/post hooks on every leaf layer (Conv, BN, Linear, activations, pools ...), which see the
  layer object, so every finding is tied to the ``named_sublayers`` name the user knows, and
* the tensor-level ops a ``forward`` method writes by hand (``+ - * /``, ``paddle.add``,
  ``paddle.concat``, ``paddle.flatten``, ``reshape``, ``transpose``, ``mean``, ``squeeze``, the common
  ``paddle.nn.functional`` activations and pools) temporarily wrapped, recording which tensors flow where.

The alternative, ``paddle.jit.to_static``, yields a PIR program whose ops no longer name the Layer
objects that own the parameters, whose format changed between Paddle 2.x and 3.x (PaddleSlim's
program-based pruner breaks on it) and which needs a static-convertible forward. The hook trace works
on any eager forward, maps directly onto the Parameters to slice, and is cheap (one forward).

Safety: every tensor is labelled by the op that produced it. A tensor reaching a layer or recorded op
that no traced op produced (an op the tracer does not know, e.g. ``paddle.split`` or ``x[:, :8]``)
is a *hazard*: pruning is then refused for the whole network, because its channels may be consumed
in ways we did not see. Known-but-unsupported patterns (grouped convs with 1 < groups < channels,
channel-mixing reshape/transpose as in channel shuffle, ``nn.ChannelShuffle``, unknown leaf layers)
*block* only the channel groups they touch; :func:`~slim_callbacks.prune.shrink.prune_channels`
refuses to prune a blocked group with an error naming the op and layer.

Model of channels: each traced tensor with ``ndim >= 2`` (channel axis 1, channels-first) has a
*descriptor*, a tuple of segments ``(atom, length, inner)``: feature ``offset + c * inner + s`` of axis 1
carries channel ``c`` of atom ``atom`` (``inner`` > 1 after ``flatten`` of the spatial dims). Atoms that
must be pruned identically (inputs of an add, a conv's output and its BN ...) are merged with a
union-find; each final set is a :class:`ChannelGroup`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

__all__ = ["ChannelGroup", "DependencyGraph", "Member", "LayerRecord", "build_dependency_graph"]

Segment = tuple  # (atom id, length, inner)

_PASS_THROUGH = tuple(
    getattr(nn, n) for n in (
        "ReLU", "ReLU6", "LeakyReLU", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid", "Swish",
        "Silu", "GELU", "ELU", "SELU", "Mish", "Softplus", "Hardtanh", "Dropout", "Dropout2D", "Dropout3D",
        "AlphaDropout", "Identity", "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D",
        "AvgPool3D", "AdaptiveAvgPool1D", "AdaptiveAvgPool2D", "AdaptiveAvgPool3D", "AdaptiveMaxPool1D",
        "AdaptiveMaxPool2D", "AdaptiveMaxPool3D", "Upsample", "UpsamplingNearest2D", "UpsamplingBilinear2D",
    ) if hasattr(nn, n)
)
_CONVS = (nn.Conv1D, nn.Conv2D, nn.Conv3D)
_NORMS = (nn.layer.norm._BatchNormBase, nn.BatchNorm)  # nn.BatchNorm: legacy class (densenet), own base
_CHANNELS_FIRST = ("NCL", "NCHW", "NCDHW")


@dataclass(frozen=True)
class Member:
    """One place where a group's channels live.

    kind: 'out' (output channels of a Conv/Linear), 'in' (input channels of a dense Conv / input
    features of a Linear), 'depthwise' (a depthwise conv: its input and output channels at once),
    'norm' (a BatchNorm's per-channel parameters and running statistics). Channel ``c`` of the group
    is index ``offset + c * inner + s`` (s < inner) on the member's axis.
    """

    kind: str
    layer: str
    offset: int = 0
    inner: int = 1

    def __str__(self) -> str:
        extra = "" if (self.offset, self.inner) == (0, 1) else f"[offset {self.offset}, x{self.inner}]"
        return f"{self.layer}.{self.kind}{extra}"


@dataclass
class LayerRecord:
    """What the trace learned about one parameterised layer (by ``named_sublayers`` name)."""

    name: str
    layer: nn.Layer
    kind: str  # 'conv', 'depthwise', 'linear', 'norm'
    in_desc: tuple | None = None  # descriptor of its input (conv/depthwise/linear/norm)
    out_atom: int | None = None  # conv/linear: atom of its output channels


@dataclass
class MacCall:
    """One traced Conv/Linear call, for predicting MACs per image after pruning."""

    layer: str
    kind: str  # 'conv', 'depthwise', 'linear', 'fixed'
    positions: int  # output positions per channel per image (H_out * W_out; 1 for Linear)
    kernel: int  # prod(kernel size); 1 for Linear
    fixed_macs: int = 0  # for 'fixed' (layers whose channels cannot change)


@dataclass
class ChannelGroup:
    """Channels that must be removed together (same indices in every member)."""

    index: int
    size: int
    members: list[Member] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)  # e.g. network input/output: never pruned, silently
    blocked: list[tuple[str, str]] = field(default_factory=list)  # (layer/op location, reason): refuse

    @property
    def prunable(self) -> bool:
        return not self.pinned and not self.blocked and any(m.kind in ("out", "depthwise") for m in self.members)

    def layer_names(self) -> list[str]:
        """Names of the layers whose output channels (or per-channel params) this group is."""
        seen: list[str] = []
        for m in self.members:
            if m.kind != "in" and m.layer not in seen:
                seen.append(m.layer)
        return seen

    def __str__(self) -> str:
        state = "prunable" if self.prunable else (
            "pinned: " + "; ".join(self.pinned) if self.pinned else
            "BLOCKED: " + "; ".join(f"{loc}: {why}" for loc, why in self.blocked) if self.blocked else
            "no producer (input channels only)")
        members = ", ".join(str(m) for m in self.members) or "-"
        return f"group {self.index} ({self.size} ch, {state}): {members}"


class DependencyGraph:
    """Groups of coupled channels of ``network``, traced from one forward pass.

    Attributes:
        network: the traced layer.
        groups: list of :class:`ChannelGroup` (printing the graph lists them).
        layers: {layer name: :class:`LayerRecord`} for every traced Conv/BN/Linear.
        hazards: tensors reaching a traced op from an op the tracer does not know; non-empty means
            no pruning is allowed (see the module docstring).
        input_shape: shape of the example input.
    """

    def __init__(self, network: nn.Layer, input_shape: list[int]) -> None:
        self.network = network
        self.input_shape = input_shape
        self.groups: list[ChannelGroup] = []
        self.layers: dict[str, LayerRecord] = {}
        self.hazards: list[str] = []
        self.mac_calls: list[MacCall] = []
        self.outputs: dict[str, tuple] = {}  # layer name -> descriptor of its (first) output tensor
        self._parent: list[int] = []
        self._size: list[int] = []
        self._pinned: list[list[str]] = []
        self._blocked: list[list[tuple[str, str]]] = []
        self._group_of_root: dict[int, ChannelGroup] = {}

    # ---- union-find over atoms -------------------------------------------------------------
    def _new_atom(self, size: int, pinned: str | None = None, blocked: tuple[str, str] | None = None) -> int:
        self._parent.append(len(self._parent))
        self._size.append(int(size))
        self._pinned.append([pinned] if pinned else [])
        self._blocked.append([blocked] if blocked else [])
        return len(self._parent) - 1

    def find(self, atom: int) -> int:
        while self._parent[atom] != atom:
            self._parent[atom] = self._parent[self._parent[atom]]
            atom = self._parent[atom]
        return atom

    def _union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] != self._size[rb]:
            raise RuntimeError(f"{where}: coupled channel sets differ in size ({self._size[ra]} vs {self._size[rb]})")
        self._parent[rb] = ra
        self._pinned[ra] += self._pinned[rb]
        self._blocked[ra] += self._blocked[rb]

    def _union_desc(self, a: tuple, b: tuple, where: str) -> bool:
        """Merge two descriptors segment by segment; False if their segment structures differ."""
        if [(s[1], s[2]) for s in a] != [(s[1], s[2]) for s in b]:
            return False
        for sa, sb in zip(a, b):
            self._union(sa[0], sb[0], where)
        return True

    def _block_desc(self, desc: tuple | None, where: str, why: str) -> None:
        for seg in desc or ():
            self._blocked[self.find(seg[0])].append((where, why))

    def _pin_desc(self, desc: tuple | None, why: str) -> None:
        for seg in desc or ():
            self._pinned[self.find(seg[0])].append(why)

    # ---- results -----------------------------------------------------------------------------
    def _finalize(self) -> None:
        self.hazards = list(dict.fromkeys(self.hazards))
        members: dict[int, list[Member]] = {}
        for rec in self.layers.values():
            if rec.kind in ("conv", "linear"):
                members.setdefault(self.find(rec.out_atom), []).append(Member("out", rec.name))
            kind = {"conv": "in", "linear": "in", "depthwise": "depthwise", "norm": "norm"}[rec.kind]
            offset = 0
            for atom, length, inner in rec.in_desc or ():
                members.setdefault(self.find(atom), []).append(Member(kind, rec.name, offset, inner))
                offset += length * inner
        roots = sorted({self.find(a) for a in range(len(self._parent))})
        self.groups = []
        self._group_of_root = {}
        for root in roots:
            if root not in members and not self._blocked[root]:
                continue
            group = ChannelGroup(len(self.groups), self._size[root], members.get(root, []),
                                 sorted(set(self._pinned[root])), list(dict.fromkeys(self._blocked[root])))
            self.groups.append(group)
            self._group_of_root[root] = group

    def group_of(self, atom: int) -> ChannelGroup | None:
        return self._group_of_root.get(self.find(atom))

    def group_for_layer(self, name: str) -> ChannelGroup:
        """The group holding ``name``'s output channels (Conv/Linear) or per-channel params (BN, depthwise)."""
        rec = self.layers.get(name)
        if rec is None:
            raise KeyError(f"layer {name!r} was not traced as a Conv/BatchNorm/Linear; "
                           f"traced: {', '.join(self.layers)}")
        atom = rec.out_atom if rec.kind in ("conv", "linear") else rec.in_desc[0][0]
        return self.group_of(atom)

    def kept_indices(self, desc: tuple, kept: dict[int, np.ndarray]) -> np.ndarray:
        """Feature indices along a member's axis that survive, given kept channels per group index."""
        parts, offset = [], 0
        for atom, length, inner in desc:
            group = self.group_of(atom)
            chans = kept.get(group.index) if group is not None else None
            chans = np.arange(length) if chans is None else np.asarray(chans)
            parts.append((offset + chans[:, None] * inner + np.arange(inner)[None, :]).reshape(-1))
            offset += length * inner
        return np.concatenate(parts).astype("int64") if parts else np.zeros([0], "int64")

    def kept_count(self, desc: tuple, kept: dict[int, np.ndarray]) -> int:
        total = 0
        for atom, length, inner in desc:
            group = self.group_of(atom)
            n = length if group is None or group.index not in kept else len(kept[group.index])
            total += n * inner
        return total

    def predict_macs(self, kept: dict[int, np.ndarray] | None = None) -> int:
        """Multiply-accumulates per image of Conv and Linear layers if ``kept`` channels were kept.

        ``kept`` maps group index -> kept channel indices (only its length matters); missing groups stay whole.
        """
        kept = kept or {}
        total = 0
        for call in self.mac_calls:
            rec = self.layers.get(call.layer)
            if call.kind == "fixed":
                total += call.fixed_macs
            elif call.kind == "depthwise":
                total += call.positions * self.kept_count(rec.in_desc, kept) * call.kernel
            else:
                out = self.kept_count(((rec.out_atom, self._size[self.find(rec.out_atom)], 1),), kept)
                total += call.positions * out * self.kept_count(rec.in_desc, kept) * call.kernel
        return total

    def output_groups(self, name: str) -> list[ChannelGroup]:
        """The groups carried by the output of layer ``name`` (any sublayer, containers included)."""
        desc = self.outputs.get(name)
        if desc is None:
            known = sorted(n for n in self.outputs if n)
            raise KeyError(f"no traced output of layer {name!r} with a channel axis; layers with one: "
                           f"{', '.join(known[:30])}{' ...' if len(known) > 30 else ''}")
        return [g for g in (self.group_of(seg[0]) for seg in desc) if g is not None]

    def __str__(self) -> str:
        lines = [f"DependencyGraph of {type(self.network).__name__} traced with input {self.input_shape}: "
                 f"{len(self.groups)} groups, {sum(g.prunable for g in self.groups)} prunable"]
        lines += [f"  HAZARD: {h}" for h in self.hazards]
        lines += [f"  {g}" for g in self.groups]
        return "\n".join(lines)

    __repr__ = __str__


# ------------------------------------------------------------------------------------------------
class _Tracer:
    """Installs the hooks/patches for one traced forward and builds the graph from what it sees."""

    def __init__(self, network: nn.Layer, graph: DependencyGraph) -> None:
        self.net = network
        self.g = graph
        self.desc: dict[int, tuple] = {}  # id(tensor) -> descriptor
        self.keep: list[Any] = []  # keeps traced tensors alive so ids stay unique
        self.depth = 0  # > 0 while inside a leaf layer or a wrapped op
        self.where: list[str] = []  # stack of container names being executed
        self.names = {id(layer): name for name, layer in network.named_sublayers(include_self=True)}

    # ---- helpers -------------------------------------------------------------------------------
    def loc(self) -> str:
        return self.where[-1] if self.where else "<root>"

    def set_desc(self, tensor: Any, desc: tuple | None) -> None:
        if isinstance(tensor, paddle.Tensor) and desc is not None:
            self.desc[id(tensor)] = desc
            self.keep.append(tensor)

    def get_desc(self, tensor: Any, consumer: str) -> tuple | None:
        """Descriptor of a traced tensor; None for non-tensors and for tensors without a channel axis."""
        if not isinstance(tensor, paddle.Tensor):
            return None
        d = self.desc.get(id(tensor))
        if d is None:
            if tensor.ndim >= 2 and int(np.prod(tensor.shape)) > 1:
                self.g.hazards.append(
                    f"{consumer} consumes a tensor of shape {list(tensor.shape)} produced by an op the tracer "
                    f"does not know (not a leaf Layer nor a recorded paddle op)")
            return None
        return d

    def fresh(self, tensor: Any, where: str, why: str) -> None:
        """Give an op's output a new blocked atom (its channels cannot be related to its inputs)."""
        for t in _tensors(tensor):
            if t.ndim >= 2:
                self.set_desc(t, ((self.g._new_atom(t.shape[1], blocked=(where, why)), t.shape[1], 1),))

    def opaque(self, inputs: Sequence[Any], output: Any, where: str, why: str) -> None:
        for t in inputs:
            self.g._block_desc(self.get_desc(t, where), where, why)
        self.fresh(output, where, why)

    # ---- leaf layers ---------------------------------------------------------------------------
    def pre_hook(self, layer: nn.Layer, inputs: tuple) -> None:
        if not layer._sub_layers:
            self.depth += 1
        else:
            self.where.append(f"{self.names.get(id(layer)) or '<root>'} ({type(layer).__name__}.forward)")

    def post_hook(self, layer: nn.Layer, inputs: tuple, output: Any) -> None:
        if layer._sub_layers:
            self.where.pop()
        else:
            self.depth -= 1
            if self.depth == 0:
                self.leaf(self.names.get(id(layer), type(layer).__name__), layer, inputs, output)
        if self.depth == 0:
            name = self.names.get(id(layer))
            outs = _tensors(output)
            if name is not None and outs and id(outs[0]) in self.desc:
                self.g.outputs[name] = self.desc[id(outs[0])]

    def bind_input(self, rec: LayerRecord, desc: tuple, where: str) -> bool:
        if rec.in_desc is None:
            rec.in_desc = desc
            return True
        return self.g._union_desc(rec.in_desc, desc, where)

    def leaf(self, name: str, layer: nn.Layer, inputs: tuple, out: Any) -> None:
        where = f"{name} ({type(layer).__name__})"
        x = inputs[0] if inputs else None
        d = self.get_desc(x, where)
        if isinstance(layer, _PASS_THROUGH):
            if d is not None and isinstance(out, paddle.Tensor) and out.ndim == x.ndim and out.shape[1] == x.shape[1]:
                self.set_desc(out, d)
            else:
                self.opaque(inputs, out, where, "changes the channel axis")
            return
        if isinstance(layer, nn.Flatten):
            self.flatten(x, out, layer.start_axis, layer.stop_axis, where)
            return
        if len(inputs) != 1 or d is None or not isinstance(out, paddle.Tensor):
            self.opaque(inputs, out, where, "unsupported inputs/outputs for channel pruning")
            return
        if isinstance(layer, _CONVS):
            self.conv(name, layer, x, d, out, where)
        elif isinstance(layer, nn.Linear):
            self.linear(name, layer, x, d, out, where)
        elif isinstance(layer, _NORMS) and _norm_layout(layer) in _CHANNELS_FIRST + ("NC",):
            rec = self.g.layers.setdefault(name, LayerRecord(name, layer, "norm"))
            if not self.bind_input(rec, d, where):
                self.opaque(inputs, out, where, "shared BatchNorm applied to differently structured inputs")
                return
            self.set_desc(out, d)
        else:
            why = f"layer type {type(layer).__name__} is not known to keep channels apart"
            if isinstance(layer, _NORMS):
                why = f"channels-last BatchNorm (data_format={_norm_layout(layer)})"
            self.opaque(inputs, out, where, why)

    def conv(self, name: str, layer: nn.Layer, x: Any, d: tuple, out: Any, where: str) -> None:
        g, cin, cout = layer._groups, layer._in_channels, layer._out_channels
        kernel = int(np.prod(layer.weight.shape[2:]))
        positions = int(np.prod(out.shape[2:]))
        if layer._data_format not in _CHANNELS_FIRST:
            why = f"channels-last conv (data_format={layer._data_format})"
        elif g == 1 and all(s[2] == 1 for s in d):
            rec = self.g.layers.get(name)
            if rec is None:
                rec = self.g.layers[name] = LayerRecord(name, layer, "conv", out_atom=self.g._new_atom(cout))
            if self.bind_input(rec, d, where):
                self.set_desc(out, ((rec.out_atom, cout, 1),))
                self.g.mac_calls.append(MacCall(name, "conv", positions, kernel))
                return
            why = "shared conv applied to differently structured inputs"
        elif g == cin == cout and all(s[2] == 1 for s in d):
            rec = self.g.layers.setdefault(name, LayerRecord(name, layer, "depthwise"))
            if self.bind_input(rec, d, where):
                self.set_desc(out, d)
                self.g.mac_calls.append(MacCall(name, "depthwise", positions, kernel))
                return
            why = "shared conv applied to differently structured inputs"
        else:
            why = (f"grouped conv (groups={g}, in_channels={cin}, out_channels={cout}); only groups=1 and "
                   f"depthwise (groups == in_channels == out_channels) convs can be pruned")
        self.g.mac_calls.append(MacCall(name, "fixed", positions, kernel,
                                        fixed_macs=positions * cout * (cin // g) * kernel))
        self.opaque([x], out, where, why)

    def linear(self, name: str, layer: nn.Layer, x: Any, d: tuple, out: Any, where: str) -> None:
        fin, fout = layer.weight.shape
        if x.ndim == 2 and sum(s[1] * s[2] for s in d) == fin:
            rec = self.g.layers.get(name)
            if rec is None:
                rec = self.g.layers[name] = LayerRecord(name, layer, "linear", out_atom=self.g._new_atom(fout))
            if self.bind_input(rec, d, where):
                self.set_desc(out, ((rec.out_atom, fout, 1),))
                self.g.mac_calls.append(MacCall(name, "linear", 1, 1))
                return
        rows = int(np.prod(out.shape[1:-1])) if out.ndim > 2 else 1
        self.g.mac_calls.append(MacCall(name, "fixed", 1, 1, fixed_macs=rows * fin * fout))
        self.opaque([x], out, where, f"Linear on a {x.ndim}-D input (only [batch, features] is supported)")

    # ---- tensor ops ------------------------------------------------------------------------------
    def flatten(self, x: Any, out: Any, start: int, stop: int, where: str) -> None:
        d = self.get_desc(x, where)
        if d is None:
            return
        nd = x.ndim
        start, stop = start % nd, stop % nd
        if start >= 2:
            self.set_desc(out, d)  # channel axis untouched
        elif start == 1:
            inner = int(np.prod(x.shape[2:stop + 1]))
            self.set_desc(out, tuple((a, n, i * inner) for a, n, i in d))
        else:
            self.opaque([x], out, where, f"flatten(start_axis={start}) merges the batch and channel axes")

    def op(self, opname: str, args: tuple, kwargs: dict, out: Any) -> None:
        where = f"{opname} in {self.loc()}"
        x = args[0] if args else kwargs.get("x")
        if opname in _BINARY:
            y = args[1] if len(args) > 1 else kwargs.get("y")
            dx, dy = self.get_desc(x, where), self.get_desc(y, where)
            if dx is None or dy is None:  # scalar / broadcast operand: channels pass through
                keep = dx if dx is not None else dy
                big = x if dx is not None else y
                if keep is not None and isinstance(out, paddle.Tensor) and out.shape[1] == big.shape[1]:
                    self.set_desc(out, keep)
                elif keep is not None:
                    self.opaque([x, y], out, where, "broadcast changes the channel axis")
                return
            if x.ndim != y.ndim:
                self.opaque([x, y], out, where, f"broadcast between {x.ndim}-D and {y.ndim}-D feature tensors")
                return
            if x.shape[1] != y.shape[1]:  # one side broadcasts over channels (e.g. a [N,1,H,W] map)
                self.set_desc(out, dx if x.shape[1] == out.shape[1] else dy)
                return
            if not self.g._union_desc(dx, dy, where):
                self.opaque([x, y], out, where, "elementwise op on tensors with different concat structure")
                return
            self.set_desc(out, dx)
        elif opname in _UNARY:
            d = self.get_desc(x, where)
            if d is not None:
                if isinstance(out, paddle.Tensor) and out.ndim == x.ndim and out.shape[1] == x.shape[1]:
                    self.set_desc(out, d)
                else:
                    self.opaque([x], out, where, "changes the channel axis")
        elif opname == "flatten":
            start = args[1] if len(args) > 1 else kwargs.get("start_axis", 0)
            stop = args[2] if len(args) > 2 else kwargs.get("stop_axis", -1)
            self.flatten(x, out, start, stop, where)
        elif opname in ("reshape", "squeeze", "unsqueeze", "transpose", "mean"):
            self.shape_op(opname, x, args, kwargs, out, where)
        elif opname == "concat":
            self.concat(x, args[1] if len(args) > 1 else kwargs.get("axis", 0), out, where)

    def shape_op(self, opname: str, x: Any, args: tuple, kwargs: dict, out: Any, where: str) -> None:
        d = self.get_desc(x, where)
        if d is None or not isinstance(out, paddle.Tensor):
            return
        xs, ys = list(x.shape), list(out.shape)
        if opname == "transpose":
            perm = list(args[1] if len(args) > 1 else kwargs.get("perm"))
            if perm[:2] == [0, 1]:
                self.set_desc(out, d)
            else:
                self.opaque([x], out, where, f"transpose(perm={perm}) moves the channel axis")
            return
        if opname == "mean" and ys[:2] != xs[:2]:
            self.opaque([x], out, where, "reduction over the batch or channel axis")
            return
        if ys[:2] == xs[:2] and len(ys) >= 2:
            self.set_desc(out, d)  # spatial-only reshape / squeeze / mean
        elif len(ys) == 2 and ys[0] == xs[0] and ys[1] == int(np.prod(xs[1:])):
            self.flatten(x, out, 1, -1, where)  # reshape([N, -1]) == flatten(1)
        else:
            self.opaque([x], out, where, f"{opname} {xs} -> {ys} mixes or splits the channel axis")

    def concat(self, xs: Sequence[Any], axis: int, out: Any, where: str) -> None:
        descs = [self.get_desc(t, where) for t in xs]
        if any(d is None for d in descs) or not isinstance(out, paddle.Tensor):
            self.opaque(list(xs), out, where, "concat of untraced tensors")
            return
        axis = int(axis) % out.ndim
        if axis == 1:
            self.set_desc(out, tuple(seg for d in descs for seg in d))
            return
        for d in descs[1:]:
            if not self.g._union_desc(descs[0], d, where):
                self.opaque(list(xs), out, where, f"concat along axis {axis} of differently structured tensors")
                return
        self.set_desc(out, descs[0])


_BINARY = {"add", "subtract", "multiply", "divide", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
           "__rmul__", "__truediv__", "__rtruediv__", "add_", "subtract_", "multiply_"}
_UNARY = {"relu", "relu6", "sigmoid", "hardswish", "hardsigmoid", "swish", "silu", "gelu", "leaky_relu", "elu",
          "tanh", "dropout", "avg_pool1d", "avg_pool2d", "max_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
          "interpolate", "clip", "scale", "__neg__", "relu_", "abs", "square", "sqrt", "exp"}


def _patch_targets() -> list[tuple[Any, str]]:
    targets: list[tuple[Any, str]] = []
    for name in ("add", "subtract", "multiply", "divide", "flatten", "reshape", "squeeze", "unsqueeze",
                 "transpose", "mean", "concat", "tanh", "clip", "scale", "abs", "square", "sqrt", "exp"):
        targets.append((paddle, name))
    for name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
                 "__rtruediv__", "__neg__", "add", "subtract", "multiply", "divide", "add_", "subtract_",
                 "multiply_", "flatten", "reshape", "squeeze", "unsqueeze", "transpose", "mean", "tanh",
                 "clip", "scale", "abs", "square", "sqrt", "exp"):
        targets.append((paddle.Tensor, name))
    for name in ("relu", "relu6", "sigmoid", "hardswish", "hardsigmoid", "swish", "silu", "gelu", "leaky_relu",
                 "elu", "tanh", "dropout", "avg_pool1d", "avg_pool2d", "max_pool2d", "adaptive_avg_pool2d",
                 "adaptive_max_pool2d", "interpolate", "relu_"):
        targets.append((F, name))
    return [(owner, name) for owner, name in targets if hasattr(owner, name)]


@contextlib.contextmanager
def _patched(tracer: _Tracer) -> Iterator[None]:
    originals = []
    handles = []

    def wrap(owner: Any, name: str, orig: Any):
        def wrapper(*args, **kwargs):
            if tracer.depth > 0:
                return orig(*args, **kwargs)
            tracer.depth += 1
            try:
                out = orig(*args, **kwargs)
            finally:
                tracer.depth -= 1
            tracer.op(name, args, kwargs, out)
            return out
        return wrapper

    try:
        for owner, name in _patch_targets():
            orig = getattr(owner, name)
            originals.append((owner, name, orig))
            setattr(owner, name, wrap(owner, name, orig))
        for _, layer in tracer.net.named_sublayers(include_self=True):
            handles.append(layer.register_forward_pre_hook(tracer.pre_hook))
            handles.append(layer.register_forward_post_hook(tracer.post_hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for owner, name, orig in reversed(originals):
            setattr(owner, name, orig)


def _norm_layout(layer: nn.Layer) -> str:
    return getattr(layer, "_data_format", None) or getattr(layer, "_data_layout", "NCHW")


def _tensors(obj: Any) -> list[paddle.Tensor]:
    if isinstance(obj, paddle.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def build_dependency_graph(
    network: nn.Layer,
    example_input: paddle.Tensor | Sequence[paddle.Tensor] | None = None,
    input_shape: Sequence[int] = (1, 3, 32, 32),
) -> DependencyGraph:
    """Trace ``network`` once (eval mode, no_grad) and return its channel :class:`DependencyGraph`.

    Args:
        network: a dygraph ``paddle.nn.Layer`` with channels-first tensors.
        example_input: the tensor (or tuple of tensors) to call ``network`` with; default zeros of
            ``input_shape``.
        input_shape: batch-first shape used when ``example_input`` is None.

    Raises:
        ValueError: a non-leaf layer owns parameters (its forward uses them outside any traced
            layer), naming it.
    """
    for name, layer in network.named_sublayers(include_self=True):
        if layer._sub_layers and any(p is not None for p in layer._parameters.values()):
            raise ValueError(
                f"layer {name or '<root>'} ({type(layer).__name__}) owns parameters "
                f"{list(layer._parameters)} and has sub-layers; channel pruning only understands parameters "
                f"of leaf layers (Conv, BatchNorm, Linear)")
    if example_input is None:
        shape = [int(s) for s in input_shape]
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"input_shape must be batch-first with positive sizes, got {tuple(input_shape)!r}")
        example_input = paddle.zeros(shape, dtype="float32")
    inputs = tuple(example_input) if isinstance(example_input, (list, tuple)) else (example_input,)
    graph = DependencyGraph(network, [list(t.shape) for t in inputs] if len(inputs) > 1 else list(inputs[0].shape))
    tracer = _Tracer(network, graph)
    for t in inputs:
        if isinstance(t, paddle.Tensor) and t.ndim >= 2:
            tracer.set_desc(t, ((graph._new_atom(t.shape[1], pinned="network input"), t.shape[1], 1),))
    flags = [(layer, layer.training) for layer in network.sublayers(include_self=True)]
    try:
        network.eval()
        with paddle.no_grad(), _patched(tracer):
            output = network(*inputs)
    finally:
        for layer, training in flags:
            layer.training = training
    for t in _tensors(output):
        graph._pin_desc(tracer.get_desc(t, "the network output"), "network output")
    graph._finalize()
    return graph
