"""YAML recipes: what to train and which compression callbacks to run, validated with errors that
name the file, the bad key and the valid ones.

A recipe is a mapping::

    model: resnet20          # trainers.models.MODELS
    dataset: sample          # trainers.data.DATASETS
    epochs: 4
    lr: 0.1
    callbacks:               # in this order; each entry: type + the callback's constructor arguments
      - type: GradualPruneCallback
        final_sparsity: 0.8
        end_epoch: 3

Every top-level key is optional; command-line flags override the recipe, which overrides the
defaults. Callbacks are looked up by class name in :data:`CALLBACKS` and imported lazily, so a recipe
that does not use a technique never imports it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from .trainer import TrainConfig

__all__ = ["Recipe", "RecipeError", "load_recipe", "parse_recipe", "build_callbacks", "CALLBACKS", "TOP_LEVEL_KEYS"]

#: callback class name -> "module:attribute"
CALLBACKS: dict[str, str] = {
    "QATCallback": "slim_callbacks.quant:QATCallback",
    "PTQCallback": "slim_callbacks.quant:PTQCallback",
    "GradualPruneCallback": "slim_callbacks.prune:GradualPruneCallback",
    "DistillCallback": "slim_callbacks.distill:DistillCallback",
    "MixingCallback": "slim_callbacks.distill:MixingCallback",
}

_TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
_RUN_KEYS = {"model", "width", "dataset", "data_file", "data_dir", "train_subset", "teacher", "callbacks", "export"}
TOP_LEVEL_KEYS = sorted(_TRAIN_KEYS | _RUN_KEYS)


class RecipeError(ValueError):
    """A recipe problem; the message names the file and the offending key."""


class Recipe(dict):
    """A validated recipe (a dict of top-level keys) remembering where it came from."""

    source: str = "<recipe>"


def _where(source: str, key: str) -> str:
    return f"recipe {source}: {key}"


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping (already parsed from YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {source} must be a mapping of keys to values, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise RecipeError(f"recipe {source}: unknown key(s) {unknown}; valid keys: {TOP_LEVEL_KEYS}")
    callbacks = data.get("callbacks") or []
    if not isinstance(callbacks, list):
        raise RecipeError(f"{_where(source, 'callbacks')} must be a list of {{type: ..., ...}} entries")
    for i, entry in enumerate(callbacks):
        where = _where(source, f"callbacks[{i}]")
        if not isinstance(entry, dict) or "type" not in entry:
            raise RecipeError(f"{where} must be a mapping with a 'type' key; valid types: {sorted(CALLBACKS)}")
        if entry["type"] not in CALLBACKS:
            raise RecipeError(f"{where}: unknown callback type {entry['type']!r}; valid types: {sorted(CALLBACKS)}")
    train = {k: v for k, v in data.items() if k in _TRAIN_KEYS}
    try:
        TrainConfig(**train)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"recipe {source}: {err}") from err
    recipe = Recipe(data)
    recipe.source = source
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from err
    return parse_recipe(data, str(path))


def _resolve(type_name: str) -> type:
    module_name, attr = CALLBACKS[type_name].split(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as err:
        raise RecipeError(f"callback {type_name!r} is not available in this installation ({err})") from err


def build_callbacks(recipe: Recipe, context: dict[str, Any] | None = None) -> list:
    """Instantiate the recipe's callbacks in order.

    ``context`` supplies run-time objects a callback may need but a YAML file cannot hold (for
    example ``teacher``: a built teacher network); they are passed only to callbacks whose constructor
    takes that argument and whose recipe entry did not set it.
    """
    context = context or {}
    built = []
    for i, entry in enumerate(recipe.get("callbacks") or []):
        where = _where(recipe.source, f"callbacks[{i}] ({entry['type']})")
        cls = _resolve(entry["type"])
        params = inspect.signature(cls.__init__).parameters
        valid = sorted(n for n in params if n not in ("self", "args", "kwargs"))
        kwargs = {k: v for k, v in entry.items() if k != "type"}
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
        for name, value in context.items():
            if name in params and name not in kwargs:
                kwargs[name] = value
        try:
            built.append(cls(**kwargs))
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{where}: {err}") from err
    return built
