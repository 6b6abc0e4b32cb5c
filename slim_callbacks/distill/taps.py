"""Feature taps: capture the output of a named sublayer on every forward pass.

Why taps are tied to a *name*, not to a layer object: compression swaps layers while training.
QAT (``paddle.quantization.QAT.quantize(..., inplace=True)``) replaces each ``Conv2D``/``Linear`` with a
``Quanted*`` wrapper under the same attribute name, and a forward hook on the replaced leaf stops
firing (measured on Paddle 3.3.1). Hooking the parent container instead would capture the parent's
output, which is a different tensor. So a :class:`FeatureTap` remembers the dotted name
(``'layer2.0.conv1'``) and the root network, and before every forward of the root (a forward *pre*-hook
on the root, which nobody swaps) it re-resolves the name; if the object under that name changed, the
hook moves to the new object. Resolution walks ``_sub_layers`` dicts and costs microseconds.

Channel pruning with masks keeps shapes, so taps are unaffected; a physical shrink that changes the
channel count is caught by the adapter (it names the pair and the shapes).
"""

from __future__ import annotations

import difflib
from typing import Any

import paddle

__all__ = ["FeatureTap", "TapSet", "resolve_layer", "layer_names"]


def layer_names(root: paddle.nn.Layer) -> list[str]:
    """Every dotted sublayer name of ``root`` (what ``named_sublayers`` yields), in definition order."""
    return [name for name, _ in root.named_sublayers()]


def resolve_layer(root: paddle.nn.Layer, name: str, *, what: str = "network") -> paddle.nn.Layer:
    """The sublayer of ``root`` under the dotted ``name``.

    Raises:
        KeyError: naming ``name`` and listing the closest valid names (difflib), or the first few names.
    """
    layer: Any = root
    for part in name.split(".") if name else []:
        sub = getattr(layer, "_sub_layers", {}).get(part) if isinstance(layer, paddle.nn.Layer) else None
        if sub is None:
            layer = None
            break
        layer = sub
    if layer is None or not name:
        names = layer_names(root)
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"closest names: {close}" if close else f"valid names include: {names[:12]}"
        raise KeyError(f"{what} has no layer named {name!r}; {hint}")
    return layer


class FeatureTap:
    """Keeps the latest output of the sublayer named ``name`` inside ``root``.

    Args:
        root: the network that is called (its name space is used; it must not be swapped itself).
        name: dotted sublayer name, e.g. ``'layer1'`` or ``'layer2.0.conv1'``.
        what: a label used in error messages (``'student'``, ``'teacher'``).

    ``output`` holds the tensor from the most recent forward (None until one ran). A tuple/list output
    is reduced to its first element. Call :meth:`remove` to detach every hook.
    """

    def __init__(self, root: paddle.nn.Layer, name: str, *, what: str = "network") -> None:
        self.root = root
        self.name = name
        self.what = what
        self.output: paddle.Tensor | None = None
        self.fired = 0  #: forwards captured so far
        self.reattached = 0  #: times the hook moved to a new object under ``name``
        self._layer = resolve_layer(root, name, what=what)
        self._hook = self._layer.register_forward_post_hook(self._capture)
        self._root_hook = root.register_forward_pre_hook(self._refresh)

    @property
    def layer(self) -> paddle.nn.Layer:
        """The object currently hooked."""
        return self._layer

    def _capture(self, layer: paddle.nn.Layer, inputs: Any, output: Any) -> None:
        if isinstance(output, (list, tuple)):
            output = output[0]
        self.output = output
        self.fired += 1

    def _refresh(self, layer: paddle.nn.Layer, inputs: Any) -> None:
        self.output = None  # a stale tensor from the previous forward must never be read
        self.refresh()

    def refresh(self) -> None:
        """Move the hook if the object under ``name`` changed since the last forward."""
        current = resolve_layer(self.root, self.name, what=self.what)
        if current is not self._layer:
            self._hook.remove()
            self._layer = current
            self._hook = current.register_forward_post_hook(self._capture)
            self.reattached += 1

    def remove(self) -> None:
        """Detach both hooks (the tap is dead afterwards)."""
        self._hook.remove()
        self._root_hook.remove()
        self.output = None


class TapSet:
    """Several taps on one root, read together as a dict ``name -> tensor``."""

    def __init__(self, root: paddle.nn.Layer, names: list[str], *, what: str = "network") -> None:
        self.taps: dict[str, FeatureTap] = {}
        try:
            for name in dict.fromkeys(names):
                self.taps[name] = FeatureTap(root, name, what=what)
        except Exception:
            self.remove()
            raise

    def clear(self) -> None:
        for tap in self.taps.values():
            tap.output = None

    def outputs(self) -> dict[str, paddle.Tensor]:
        """Latest outputs; raises naming the taps that did not fire during the last forward."""
        missing = [name for name, tap in self.taps.items() if tap.output is None]
        if missing:
            raise RuntimeError(
                f"feature tap(s) {missing} did not fire during the forward pass: the layer is not called by "
                "forward() (check the name, or that the layer is used)"
            )
        return {name: tap.output for name, tap in self.taps.items()}

    def remove(self) -> None:
        for tap in self.taps.values():
            tap.remove()
        self.taps = {}
