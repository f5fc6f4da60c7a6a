"""Per-layer allocations shared by the searches that choose a ratio per layer.

Simulated annealing, NetAdapt and AutoCompress describe a *solution* as one ratio per layer
(:class:`LayerSpec`), built from the user's config list; the ratios of a sub-config average, weighted
by the layers' weight sizes, to its total (:func:`rescale`); a :class:`BudgetRepair` moves an
allocation onto a FLOPs / params budget before it runs; a :class:`CandidateRound` holds the
candidates a search hands out together. :class:`SearchPruner` is the NNI-style pruner facade of
every search.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from search.algorithms._budget import LayerCostModel, channels_removed
from search.config import ConfigError, canonicalize_config_list, channel_dims
from search.scheduling import PruningScheduler, TaskGenerator

logger = logging.getLogger(__name__)

__all__ = [
    "BudgetRepair",
    "CandidateRound",
    "LayerSpec",
    "SearchPruner",
    "allocation_layers",
    "better",
    "group_targets",
    "over_budget",
    "per_layer_config_list",
    "require_scores",
    "rescale",
    "weighted_ratio",
]
#: keys of the user's sub-config a per-layer sub-config keeps (the ratio keys are replaced).
_CARRIED_KEYS = ("granularity", "target_names", "apply_method")


# -- per-layer allocation helpers ------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One layer whose ratio a search allocates.

    Attributes:
        name: the module's name.
        numel: elements of its weight (the weight of its ratio in the total).
        out_channels: size of the weight's output-channel axis.
        target: the ratio the user's config list asks for (a total over the sub-config's layers).
        lo, hi: the bounds of the layer's ratio (``min_sparse_ratio``; ``max_sparse_ratio`` or the
            search's ``max_layer_ratio``).
        group: the index of the sub-config that selects the layer (one total ratio per group).
        extra: keys of that sub-config the per-layer sub-config keeps (``granularity``...).
    """

    name: str
    numel: int
    out_channels: int
    target: float
    lo: float
    hi: float
    group: int
    extra: dict[str, Any] = field(default_factory=dict)


def allocation_layers(
    model: nn.Module, config_list: Sequence[Mapping[str, Any]], max_layer_ratio: float = 0.95
) -> list[LayerSpec]:
    """The layers whose ``weight`` has a ratio in ``config_list``, in model order."""
    if not 0 < max_layer_ratio <= 1:
        raise ValueError(f"max_layer_ratio must be in (0, 1], got {max_layer_ratio!r}")
    layers = []
    for name, targets in canonicalize_config_list(model, config_list, mode="pruning").items():
        setting = targets.get("weight")
        if setting is None or setting.sparse_ratio is None or setting.align is not None:
            continue
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or weight.ndim == 0:
            continue
        out_dim, _ = channel_dims(module)
        hi = min(setting.max_sparse_ratio if setting.max_sparse_ratio is not None else 1.0, max_layer_ratio)
        lo = min(setting.min_sparse_ratio or 0.0, hi)
        raw = config_list[setting.source] if 0 <= setting.source < len(config_list) else {}
        extra = {k: copy.deepcopy(raw[k]) for k in _CARRIED_KEYS if k in raw}
        layers.append(LayerSpec(name, weight.numel(), int(weight.shape[min(out_dim, weight.ndim - 1)]),
                                float(setting.sparse_ratio), lo, hi, setting.source, extra))
    if not layers:
        raise ConfigError("config_list: selects no layer with a 'weight' ratio for the search to allocate")
    return layers


def per_layer_config_list(layers: Sequence[LayerSpec], ratios: Sequence[float]) -> list[dict[str, Any]]:
    """One sub-config per layer: ``{'op_names': [name], 'sparse_ratio': r, ...}``."""
    return [{"op_names": [layer.name], "sparse_ratio": float(r), **copy.deepcopy(layer.extra)}
            for layer, r in zip(layers, ratios, strict=True)]


def weighted_ratio(layers: Sequence[LayerSpec], ratios: Sequence[float]) -> float:
    """The ratios' average weighted by the layers' weight sizes."""
    total = sum(layer.numel for layer in layers)
    return sum(layer.numel * r for layer, r in zip(layers, ratios, strict=True)) / max(total, 1)


def group_targets(layers: Sequence[LayerSpec], fraction: Callable[[float], float] = lambda r: r) -> dict[int, float]:
    """``{group: fraction(target)}``: the total ratio each sub-config asks for."""
    return {layer.group: fraction(layer.target) for layer in layers}


def _clipped_sum(s: float, w: list[float], x: list[float], lo: list[float], hi: list[float]) -> float:
    return sum(wk * min(max(s * xk, lk), hk) for wk, xk, lk, hk in zip(w, x, lo, hi, strict=True))


def rescale(
    values: Sequence[float],
    layers: Sequence[LayerSpec],
    targets: Mapping[int, float],
    lower: Sequence[float] | None = None,
) -> list[float]:
    """Scale ``values`` per group so that each group's weighted average equals its target.

    Every ratio stays in ``[max(lower, layer.lo), layer.hi]``; a scale factor per group is found
    by bisection (the clipped weighted average grows with it). A target out of reach ends at the
    nearest bound.
    """
    lower = list(lower) if lower is not None else [0.0] * len(layers)
    out = [0.0] * len(layers)
    for group, target in targets.items():
        idx = [i for i, layer in enumerate(layers) if layer.group == group]
        lo = [min(max(lower[i], layers[i].lo), layers[i].hi) for i in idx]
        hi = [layers[i].hi for i in idx]
        w = [float(layers[i].numel) for i in idx]
        x = [max(float(values[i]), 1e-6) for i in idx]
        want = target * sum(w)
        s_lo, s_hi = 0.0, max(h / xk for h, xk in zip(hi, x, strict=True))
        if _clipped_sum(s_hi, w, x, lo, hi) <= want:
            s = s_hi
        elif _clipped_sum(s_lo, w, x, lo, hi) >= want:
            s = s_lo
        else:
            for _ in range(100):
                mid = (s_lo + s_hi) / 2
                s_lo, s_hi = (mid, s_hi) if _clipped_sum(mid, w, x, lo, hi) < want else (s_lo, mid)
            s = (s_lo + s_hi) / 2
        for j, i in enumerate(idx):
            out[i] = round(min(max(s * x[j], lo[j]), hi[j]), 9)
    return out


def require_scores(best_result_mode: str, algorithm: str) -> None:
    if best_result_mode not in ("maximize", "minimize"):
        raise ValueError(f"{algorithm} compares scores: best_result_mode must be 'maximize' or 'minimize', "
                         f"got {best_result_mode!r} (give the pruner an evaluator)")


def over_budget(constraints: Any, metrics: Mapping[str, float]) -> bool:
    """A measured cost ratio in ``metrics`` exceeds its bound (a metric that was not measured does not count)."""
    for key, metric in (("max_flops_ratio", "flops_ratio"), ("max_params_ratio", "params_ratio"),
                        ("max_latency_ratio", "latency_ratio")):
        bound = getattr(constraints, key, None)
        if bound is not None and metric in metrics and float(metrics[metric]) > bound + 1e-9:
            return True
    return False


class BudgetRepair:
    """Moves an allocation predicted over a FLOPs / params bound onto the bound.

    The prediction is :class:`~search.algorithms._budget.LayerCostModel`'s (one forward pass of
    ``dummy_input`` and the speedup channel graph; ratios rounded to whole channels as the pruners
    round them). An allocation within the bounds is returned unchanged; one over them becomes
    ``r + s * (hi - r)`` per layer for the smallest shared ``s`` in [0, 1] that meets them (whole
    channels). Layers whose output channels are coupled (residual adds) keep the union of their
    kept channels after speedup, so they are priced at the smallest ratio among them.

    Args:
        model: the origin model.
        dummy_input: an input of the model.
        layers: the allocated layers (their ``hi`` is the ceiling of the move).
        budgets: ``{'flops': max ratio, 'params': max ratio}`` (either may be absent).
    """

    def __init__(self, model: nn.Module, dummy_input: Any, layers: Sequence[LayerSpec],
                 budgets: Mapping[str, float]) -> None:
        self.layers = list(layers)
        self.budgets = dict(budgets)
        self.costs = LayerCostModel(model, dummy_input, [layer.name for layer in self.layers])
        index = {layer.name: i for i, layer in enumerate(self.layers)}
        self.members = [[index[m] for m in decision.members] for decision in self.costs.layers]
        self._warned = False

    @classmethod
    def from_constraints(cls, model: nn.Module | None, dummy_input: Any, layers: Sequence[LayerSpec],
                         constraints: Any) -> BudgetRepair | None:
        """A repair for the FLOPs / params bounds of ``constraints``; ``None`` without a bound or an input."""
        budgets = {metric: bound for metric, bound in (("flops", getattr(constraints, "max_flops_ratio", None)),
                                                       ("params", getattr(constraints, "max_params_ratio", None)))
                   if bound is not None}
        if model is None or dummy_input is None or not budgets:
            return None
        try:
            return cls(model, dummy_input, layers, budgets)
        except ValueError as exc:  # no layer can be priced: the bounds are then only checked on results
            logger.warning("cannot predict the cost of allocations (%s); bounds are checked on results only", exc)
            return None

    def _quantize(self, i: int, ratio: float) -> float:
        layer = self.layers[i]
        n = max(layer.out_channels, 1)
        top = math.floor(layer.hi * n + 1e-9)
        return min(channels_removed(ratio, n), top) / n

    def predicted(self, ratios: Sequence[float]) -> dict[str, float]:
        """``{'flops_ratio': .., 'params_ratio': ..}`` of the compact model ``ratios`` give."""
        decisions = [min(ratios[i] for i in members) for members in self.members]
        return self.costs.ratios_of(decisions)

    def feasible(self, ratios: Sequence[float]) -> bool:
        predicted = self.predicted(ratios)
        return all(predicted[f"{metric}_ratio"] <= bound + 1e-9 for metric, bound in self.budgets.items())

    def __call__(self, ratios: Sequence[float]) -> list[float]:
        ratios = [float(r) for r in ratios]
        if self.feasible(ratios):
            return ratios
        top = [layer.hi for layer in self.layers]

        def at(s: float) -> list[float]:
            return [max(r, self._quantize(i, r + s * (h - r))) for i, (r, h) in enumerate(zip(ratios, top, strict=True))]

        if not self.feasible(at(1.0)):
            if not self._warned:
                self._warned = True
                logger.warning("the cost bounds %s cannot be met with every layer at its max ratio", self.budgets)
            return at(1.0)
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.feasible(at(mid)):
                hi = mid
            else:
                lo = mid
        return at(hi)


# -- rounds of parallel candidates -----------------------------------------------------------------
class CandidateRound:
    """Candidates handed out together and decided on together once all of them are told.

    ``items`` are JSON data (an allocation, a layer index...). Results are stored by candidate
    index, so the decision does not depend on the order they arrive in.
    """

    def __init__(self, items: Sequence[Any] = ()) -> None:
        self.items: list[Any] = list(items)
        self.next = 0
        self.told: dict[int, tuple[int, float | None]] = {}

    def take(self, n: int) -> list[tuple[int, Any]]:
        out = [(i, self.items[i]) for i in range(self.next, min(self.next + n, len(self.items)))]
        self.next += len(out)
        return out

    def record(self, index: int, task_id: int, score: float | None) -> None:
        self.told[index] = (task_id, score)

    def complete(self, more_allowed: bool) -> bool:
        """All handed-out candidates told, and nothing left to hand out (or no budget for it)."""
        return len(self.told) == self.next and (self.next == len(self.items) or not more_allowed) and self.next > 0

    def outcomes(self) -> list[tuple[int, Any, int, float | None]]:
        """``(index, item, task_id, score)`` of the told candidates in index order."""
        return [(i, self.items[i], *self.told[i]) for i in sorted(self.told)]

    def to_json(self) -> dict[str, Any]:
        return {"items": copy.deepcopy(self.items), "next": self.next,
                "told": {str(i): [t, s] for i, (t, s) in self.told.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CandidateRound:
        r = cls(data["items"])
        r.next = int(data["next"])
        r.told = {int(i): (int(t), s) for i, (t, s) in data["told"].items()}
        return r


def better(a: float | None, b: float | None, sign: float) -> bool:
    """``a`` beats ``b`` (``None``: no score, beaten by any score)."""
    return a is not None and (b is None or sign * (a - b) > 0)


# -- the annealer ------------------------------------------------------------------------------------


class SearchPruner:
    """What the search pruners share: a generator driven by a :class:`PruningScheduler`."""

    task_generator: TaskGenerator
    scheduler: PruningScheduler

    def compress(self) -> None:
        """Run the search to its end."""
        self.scheduler.compress()

    def get_best_result(self) -> Any:
        """``(task_id, compact_model, masks, score, config_list)`` of the best feasible result, or ``None``."""
        return self.scheduler.get_best_result()
