"""The compression card: parameters, nonzero parameters, MACs, weight-file size, per-layer sparsity.

Pure functions on a plain ``paddle.nn.Layer`` (no paddle.Model needed).

Parameter counting. Paddle stores BatchNorm running mean/variance and quantizer state (scales,
observer counters) as *non-trainable Parameters*, not as buffers. ``count_parameters`` and
``count_nonzero`` count trainable Parameters only by default (``trainable_only=False`` counts every
Parameter, which is what ``paddle.summary`` reports as "Total params"). Buffers registered with
``register_buffer`` are never counted. Shared Parameters are counted once.

MAC counting (``count_macs``). One forward pass in eval mode under ``no_grad`` with forward hooks on
every sub-layer; each hooked call is measured from the shapes it really saw, so a physically
shrunk network is counted as it is. Which layers count, in this order:

1. A counter registered for the layer's class or one of its base classes (``register_mac_counter``).
   Built in: ``Conv1D/2D/3D`` (incl. groups and depthwise), ``Conv1DTranspose/2DTranspose/3DTranspose``,
   ``Linear``, and paddle.quantization's ``QuantedConv2D`` / ``QuantedLinear``.
2. A class that declares ``mac_counter_like = <registered class>`` uses that class's counter on itself
   (for our own wrappers that own the ``weight`` but do not call the wrapped layer).
3. Inferred wrapper: an unregistered layer that owns a floating ``weight`` Parameter whose shape fits
   the run-time call like a convolution (``weight`` [C_out, C_in/groups, k...], output channel axis 1
   equals C_out, input has C_in channels, same rank) or like a Linear (``weight`` [in, out], last
   input axis == in, last output axis == out) is counted as that.

No double counting: when a counted layer runs inside another counted layer's forward (a wrapper that
calls the conv it wraps), only the innermost counts. A layer called twice counts twice (weight tying).
Normalisation, activations, pooling and element-wise additions are not counted.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import paddle
from paddle import nn

__all__ = [
    "MacCounter",
    "register_mac_counter",
    "mac_counter_for",
    "conv_macs",
    "conv_transpose_macs",
    "linear_macs",
    "count_parameters",
    "count_nonzero",
    "layer_sparsity",
    "count_macs",
    "weights_file_size",
    "CompressionCard",
    "build_card",
    "write_card",
]

MacCounter = Callable[[nn.Layer, tuple, Any], int]
"""``fn(layer, inputs, output) -> int``: multiply-accumulates of one call for the whole batch."""

_MAC_COUNTERS: dict[type, MacCounter] = {}


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(int(d) for d in shape))


def conv_macs(layer: nn.Layer, inputs: tuple, output: Any) -> int:
    """MACs of a (grouped) convolution call: every output element costs C_in/groups * prod(kernel).

    Reads the layer's ``weight`` shape [C_out, C_in/groups, k...] and the real output shape, so
    stride, padding, dilation and groups are all accounted for.
    """
    return _numel(output.shape) * _numel(layer.weight.shape[1:])


def conv_transpose_macs(layer: nn.Layer, inputs: tuple, output: Any) -> int:
    """MACs of a transposed convolution: every input element is scattered over C_out/groups * prod(kernel)."""
    return _numel(inputs[0].shape) * _numel(layer.weight.shape[1:])


def linear_macs(layer: nn.Layer, inputs: tuple, output: Any) -> int:
    """MACs of a Linear call: every output element costs ``in_features`` (weight is [in, out])."""
    return _numel(output.shape) * int(layer.weight.shape[0])


def register_mac_counter(layer_type: type, fn: MacCounter) -> None:
    """Register ``fn(layer, inputs, output) -> int`` (MACs of one call, whole batch) for a layer class.

    Subclasses inherit the counter unless they register their own. Re-registering replaces it.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Layer)):
        raise TypeError(f"layer_type must be a paddle.nn.Layer subclass, got {layer_type!r}")
    if not callable(fn):
        raise TypeError(f"MAC counter for {layer_type.__name__} must be callable, got {fn!r}")
    _MAC_COUNTERS[layer_type] = fn


def mac_counter_for(layer: nn.Layer) -> MacCounter | None:
    """The registered (rule 1) or declared (rule 2) counter for ``layer``, else None."""
    for cls in type(layer).__mro__:
        if cls in _MAC_COUNTERS:
            return _MAC_COUNTERS[cls]
    like = getattr(type(layer), "mac_counter_like", None)
    if isinstance(like, type):
        for cls in like.__mro__:
            if cls in _MAC_COUNTERS:
                return _MAC_COUNTERS[cls]
        raise TypeError(
            f"{type(layer).__name__}.mac_counter_like = {like.__name__}, which has no registered MAC counter; "
            f"registered: {', '.join(sorted(c.__name__ for c in _MAC_COUNTERS))}"
        )
    return None


for _conv in (nn.Conv1D, nn.Conv2D, nn.Conv3D):
    register_mac_counter(_conv, conv_macs)
for _convt in (nn.Conv1DTranspose, nn.Conv2DTranspose, nn.Conv3DTranspose):
    register_mac_counter(_convt, conv_transpose_macs)
register_mac_counter(nn.Linear, linear_macs)
try:  # paddle.quantization QAT wrappers own the weight and call F.conv2d / F.linear themselves
    from paddle.nn.quant.qat import QuantedConv2D as _QuantedConv2D
    from paddle.nn.quant.qat import QuantedLinear as _QuantedLinear

    register_mac_counter(_QuantedConv2D, conv_macs)
    register_mac_counter(_QuantedLinear, linear_macs)
except ImportError:  # pragma: no cover - older/newer paddle layouts
    pass


def _own_weight(layer: nn.Layer) -> paddle.Tensor | None:
    weight = getattr(layer, "weight", None)
    if isinstance(weight, paddle.Tensor) and weight.is_floating_point() and weight.ndim >= 2:
        return weight
    return None


def _inferred_counter(layer: nn.Layer, inputs: tuple, output: Any) -> MacCounter | None:
    """Rule 3: classify an unregistered weight-owning layer from its run-time shapes."""
    if isinstance(layer, nn.Embedding):
        return None
    weight = _own_weight(layer)
    if weight is None or not inputs or not isinstance(inputs[0], paddle.Tensor):
        return None
    x = inputs[0]
    if not isinstance(output, paddle.Tensor) or not x.is_floating_point():
        return None
    w, xs, ys = list(weight.shape), list(x.shape), list(output.shape)
    if weight.ndim >= 3 and len(xs) == len(ys) == len(w) and ys[1] == w[0] and w[1] > 0 and xs[1] % w[1] == 0:
        return conv_macs
    if weight.ndim == 2 and xs[-1] == w[0] and ys[-1] == w[1]:
        return linear_macs
    return None


def _selected_parameters(net: nn.Layer, trainable_only: bool) -> list[tuple[str, paddle.Tensor]]:
    seen: set[int] = set()
    chosen = []
    for name, param in net.named_parameters():
        if id(param) in seen or (trainable_only and not param.trainable):
            continue
        seen.add(id(param))
        chosen.append((name, param))
    return chosen


def count_parameters(net: nn.Layer, trainable_only: bool = True) -> int:
    """Number of parameter values (scalars).

    Args:
        trainable_only: True counts Parameters with ``trainable`` set (BN running statistics and
            quantizer state excluded); False counts every Parameter (``paddle.summary``'s total).
            Buffers never count; a shared Parameter counts once.
    """
    return sum(_numel(p.shape) for _, p in _selected_parameters(net, trainable_only))


def count_nonzero(net: nn.Layer, trainable_only: bool = True) -> int:
    """Number of parameter values that are not exactly 0, read from the current weights.

    Selection as in ``count_parameters``.
    """
    return sum(int(paddle.count_nonzero(p).item()) for _, p in _selected_parameters(net, trainable_only))


def _weight_layers(net: nn.Layer) -> list[tuple[str, nn.Layer]]:
    """Conv/Linear-like layers: every layer owning a floating ``weight`` of rank >= 2, except Embedding."""
    found = []
    for name, layer in net.named_sublayers(include_self=True):
        if isinstance(layer, nn.Embedding) or _own_weight(layer) is None:
            continue
        found.append((name, layer))
    return found


def layer_sparsity(net: nn.Layer) -> dict[str, float]:
    """Fraction of exact zeros in [0, 1] of each Conv/Linear(-like) ``weight``, keyed by parameter name.

    Names are those of ``net.named_parameters()`` (e.g. ``'layer1.0.conv1.weight'``). Layers
    counted: every layer owning a floating ``weight`` Parameter of rank >= 2 (convolutions, Linear and
    wrappers such as QuantedConv2D), except Embedding. Biases and norm weights are not included.
    """
    param_names = {id(p): n for n, p in net.named_parameters()}
    result: dict[str, float] = {}
    for layer_name, layer in _weight_layers(net):
        weight = layer.weight
        name = param_names.get(id(weight), f"{layer_name}.weight" if layer_name else "weight")
        if name in result:
            continue
        total = _numel(weight.shape)
        zeros = total - int(paddle.count_nonzero(weight).item())
        result[name] = zeros / total if total else 0.0
    return result


def count_macs(
    net: nn.Layer, input_shape: Sequence[int] = (1, 3, 32, 32), dtype: str = "float32"
) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates per image: (total, {layer name: MACs}) from one forward pass.

    Runs ``net`` on zeros of ``input_shape`` (batch first) in eval mode under ``no_grad``; the training
    flags of all sub-layers are restored afterwards and hooks are removed even if the forward raises.
    Per-layer keys are ``named_sublayers`` names (``'<root>'`` for ``net`` itself); layers with 0 MACs
    are omitted. See the module docstring for which layers count.
    """
    shape = [int(d) for d in input_shape]
    if not shape or shape[0] < 1 or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be a batch-first shape of positive sizes, got {tuple(input_shape)!r}")
    batch = shape[0]
    named = list(net.named_sublayers(include_self=True))
    flags = [(layer, layer.training) for _, layer in named]
    per_layer: dict[str, int] = {}
    stack: list[list[bool]] = []  # one frame per active call: [inner layer was counted]
    handles = []

    def make_hooks(name: str):
        def pre_hook(layer, inputs):
            stack.append([False])

        def post_hook(layer, inputs, output):
            frame = stack.pop() if stack else [False]
            if frame[0]:  # a layer inside this one was counted: innermost wins
                if stack:
                    stack[-1][0] = True
                return None
            counter = mac_counter_for(layer) or _inferred_counter(layer, inputs, output)
            if counter is None:
                return None
            macs = int(counter(layer, inputs, output))
            per_layer[name] = per_layer.get(name, 0) + macs
            if stack:
                stack[-1][0] = True
            return None

        return pre_hook, post_hook

    try:
        for name, layer in named:
            pre, post = make_hooks(name or "<root>")
            handles.append(layer.register_forward_pre_hook(pre))
            handles.append(layer.register_forward_post_hook(post))
        net.eval()
        with paddle.no_grad():
            net(paddle.zeros(shape, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for layer, was_training in flags:
            layer.training = was_training
    per_image = {name: macs // batch for name, macs in per_layer.items() if macs}
    return sum(per_image.values()), per_image


def weights_file_size(net: nn.Layer) -> dict[str, int]:
    """Bytes of ``paddle.save(net.state_dict())`` and of that file deflate-compressed in a zip.

    Returns ``{'state_dict_bytes': int, 'zip_bytes': int}``; pruned (zeroed) weights compress better,
    which is where unstructured sparsity shows on disk.
    """
    raw = io.BytesIO()
    paddle.save(net.state_dict(), raw)
    data = raw.getvalue()
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("model.pdparams", data)
    return {"state_dict_bytes": len(data), "zip_bytes": len(zipped.getvalue())}


@dataclasses.dataclass
class CompressionCard:
    """Figures describing one (compressed) model.

    Attributes:
        name: model name shown on the card.
        input_shape: the shape MACs were measured with (batch first).
        params: trainable parameter values (``count_parameters``).
        nonzero_params: trainable parameter values that are not exactly 0.
        macs: multiply-accumulates per image.
        state_dict_bytes / zip_bytes: ``weights_file_size`` figures.
        layer_macs: per-layer MACs per image, by layer name.
        layer_sparsity: fraction of zeros per Conv/Linear weight, by parameter name.
        extra: free-form JSON-serialisable figures (e.g. INT8 export results, accuracy).
    """

    name: str
    input_shape: tuple[int, ...]
    params: int
    nonzero_params: int
    macs: int
    state_dict_bytes: int
    zip_bytes: int
    layer_macs: dict[str, int] = dataclasses.field(default_factory=dict)
    layer_sparsity: dict[str, float] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Fraction of trainable parameter values that are exactly 0, in [0, 1]."""
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``CompressionCard.from_dict`` inverts it."""
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompressionCard":
        """Rebuild a card from ``to_dict()`` output (e.g. a loaded card.json)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = sorted(n for n in names if n not in data and n not in ("layer_macs", "layer_sparsity", "extra"))
        if unknown or missing:
            raise ValueError(f"bad compression card dict: unknown keys {unknown}, missing keys {missing}; valid keys: {names}")
        kwargs = dict(data)
        kwargs["input_shape"] = tuple(int(d) for d in data["input_shape"])
        return cls(**kwargs)

    def to_markdown(self) -> str:
        """A readable Markdown card: a summary table, extra figures, and a per-layer table."""
        lines = [
            f"# Compression card: {self.name}",
            "",
            "| figure | value |",
            "|---|---|",
            f"| input shape | {'x'.join(str(d) for d in self.input_shape)} |",
            f"| parameters (trainable) | {self.params:,} |",
            f"| nonzero parameters | {self.nonzero_params:,} |",
            f"| sparsity | {self.sparsity:.2%} |",
            f"| MACs per image | {self.macs:,} ({self.macs / 1e6:.2f}M) |",
            f"| state_dict file | {self.state_dict_bytes:,} bytes |",
            f"| zip-compressed file | {self.zip_bytes:,} bytes |",
        ]
        if self.extra:
            lines += ["", "## Extra", "", "| key | value |", "|---|---|"]
            lines += [f"| {key} | {_cell(value)} |" for key, value in self.extra.items()]
        rows: dict[str, list[str]] = {}
        for layer, macs in self.layer_macs.items():
            rows.setdefault(layer, ["", ""])[0] = f"{macs:,}"
        for param, zeros in self.layer_sparsity.items():
            layer = param[: -len(".weight")] if param.endswith(".weight") else param
            rows.setdefault(layer, ["", ""])[1] = f"{zeros:.2%}"
        if rows:
            lines += ["", "## Layers", "", "| layer | MACs per image | weight sparsity |", "|---|---:|---:|"]
            lines += [f"| {layer} | {macs} | {zeros} |" for layer, (macs, zeros) in rows.items()]
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def build_card(
    net: nn.Layer,
    input_shape: Sequence[int] = (1, 3, 32, 32),
    name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> CompressionCard:
    """Measure ``net`` and return its ``CompressionCard`` (``name`` defaults to the class name)."""
    macs, layer_macs = count_macs(net, input_shape)
    sizes = weights_file_size(net)
    return CompressionCard(
        name=name or type(net).__name__,
        input_shape=tuple(int(d) for d in input_shape),
        params=count_parameters(net),
        nonzero_params=count_nonzero(net),
        macs=macs,
        state_dict_bytes=sizes["state_dict_bytes"],
        zip_bytes=sizes["zip_bytes"],
        layer_macs=layer_macs,
        layer_sparsity=layer_sparsity(net),
        extra=dict(extra or {}),
    )


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_card(card: CompressionCard, directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``card.md`` and ``card.json`` into ``directory`` (created if missing), each atomically.

    Each file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so a reader never sees a half-written card. Returns (markdown path, json path).

    Raises:
        TypeError: a value in ``card.extra`` is not JSON-serialisable (names the key); nothing is written.
        OSError: the directory cannot be created or written (the message names it).
    """
    for key, value in card.extra.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"card.extra[{key!r}] is not JSON-serialisable ({type(value).__name__}): {err}") from err
    payload = json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n"
    markdown = card.to_markdown()
    target = Path(directory)
    md_path, json_path = target / "card.md", target / "card.json"
    try:
        target.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(md_path, markdown)
        _atomic_write_text(json_path, payload)
    except OSError as err:
        raise OSError(err.errno, f"cannot write compression card into directory '{target}': {err.strerror or err}") from err
    return md_path, json_path
