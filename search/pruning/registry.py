"""Pruners by name: the registry that specs, the scheduler and the service resolve through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from search.pruning.base import Pruner
from search.pruning.data_pruners import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    SlimPruner,
    TaylorFOWeightPruner,
)
from search.pruning.group import GroupL1NormPruner, GroupL2NormPruner
from search.pruning.pruners import FPGMPruner, L1NormPruner, L2NormPruner, LevelPruner

__all__ = ["PRUNERS", "register_pruner", "get_pruner_class", "make_pruner"]

PRUNERS: dict[str, type[Pruner]] = {
    "level": LevelPruner,
    "l1": L1NormPruner,
    "l2": L2NormPruner,
    "fpgm": FPGMPruner,
    "group_l1": GroupL1NormPruner,
    "group_l2": GroupL2NormPruner,
    "slim": SlimPruner,
    "taylor": TaylorFOWeightPruner,
    "apoz": ActivationAPoZRankPruner,
    "mean_activation": ActivationMeanRankPruner,
}


# Pruners defined outside search.pruning, imported when first asked for.
_LAZY: dict[str, str] = {"admm": "search.algorithms.autocompress:ADMMPruner"}


def register_pruner(name: str, cls: type[Pruner], *, overwrite: bool = False) -> None:
    if name in PRUNERS and not overwrite:
        raise ValueError(f"a pruner named {name!r} is registered already")
    if not (isinstance(cls, type) and issubclass(cls, Pruner)):
        raise TypeError(f"{cls!r} is not a Pruner subclass")
    PRUNERS[name] = cls


def get_pruner_class(name: str) -> type[Pruner]:
    """The pruner class for a registered name (also accepts class names like ``'L1NormPruner'``)."""
    if name in PRUNERS:
        return PRUNERS[name]
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        module, _, attr = _LAZY[name].partition(":")
        PRUNERS[name] = getattr(importlib.import_module(module), attr)
        return PRUNERS[name]
    for cls in PRUNERS.values():
        if cls.__name__ == name:
            return cls
    raise KeyError(f"unknown pruner {name!r}; valid: {', '.join(sorted(set(PRUNERS) | set(_LAZY)))}")


def make_pruner(
    pruner: str | type[Pruner] | Pruner, model: nn.Module, config_list: Sequence[Mapping[str, Any]], **kwargs: Any
) -> Pruner:
    """A fresh pruner of the given kind bound to ``model``."""
    if isinstance(pruner, str):
        cls = get_pruner_class(pruner)
    elif isinstance(pruner, Pruner):
        cls = type(pruner)
    elif isinstance(pruner, type) and issubclass(pruner, Pruner):
        cls = pruner
    else:
        raise TypeError(f"pruner must be a name, a Pruner class or instance, got {type(pruner).__name__}")
    return cls(model, list(config_list), **kwargs)
