"""The pruner tools: ``DataCollector`` → ``MetricsCalculator`` (→ ``SparsityAllocator``).

A :class:`~search.pruning.base.BasicPruner` composes one of each in ``reset_tools()``.
``collect()`` returns ``{module: {target: data}}``; ``calculate_metrics(data)`` returns
``{module: {target: metric}}`` with one value per block of the target's scaling (its
granularity), lower meaning "prune first".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from search.config import ConfigError
from search.pruning.scaling import Scaling

if TYPE_CHECKING:
    from search.pruning.base import Pruner

__all__ = [
    "DataCollector",
    "TargetDataCollector",
    "MetricsCalculator",
    "NormMetricsCalculator",
    "DistMetricsCalculator",
    "IdentityMetricsCalculator",
    "Scalers",
    "resolve_scaling",
]

Data = dict[str, dict[str, Any]]
Scalers = Scaling | Mapping[str, Mapping[str, Scaling]] | Callable[[str, str], Scaling] | None
_IDENTITY = Scaling([1])


def resolve_scaling(scalers: Scalers, module: str, target: str) -> Scaling:
    """The scaling for one target: a Scaling, a nested dict with ``'_default'`` keys, or a callable."""
    if scalers is None:
        return _IDENTITY
    if isinstance(scalers, Scaling):
        return scalers
    if callable(scalers):
        return scalers(module, target)
    per_module = scalers.get(module, scalers.get("_default", {}))
    found = per_module.get(target, per_module.get("_default"))
    return found if found is not None else _IDENTITY


class DataCollector(ABC):
    """Collects what a metric needs (weights, gradients, activations) from the bound model.

    Args:
        compressor: the pruner this collector serves.
    """

    def __init__(self, compressor: Pruner) -> None:
        self.compressor = compressor

    def reset(self) -> None:  # noqa: B027 (optional hook, empty by default)
        """Drop collected state before a new ``collect()`` (called by the pruner)."""

    @abstractmethod
    def collect(self) -> Data:
        """Return ``{module_name: {target_name: data}}`` for the targets that need a metric."""


class TargetDataCollector(DataCollector):
    """The targets themselves (parameters), for magnitude-based metrics."""

    def collect(self) -> Data:
        data: Data = {}
        for module_name, target_name in self.compressor.metric_targets():
            value = getattr(self.compressor.get_module(module_name), target_name, None)
            if not isinstance(value, Tensor):
                setting = self.compressor.get_target_setting(module_name, target_name)
                raise ConfigError(
                    f"config_list[{setting.source}].target_names: {type(self.compressor).__name__} ranks "
                    f"parameters; {module_name}.{target_name} is an activation (use an activation pruner)"
                )
            data.setdefault(module_name, {})[target_name] = value.detach()
        return data


class MetricsCalculator(ABC):
    """Turns collected data into per-block importance (lower is pruned first).

    Args:
        scalers: how each target's elements group into blocks (see :func:`resolve_scaling`).
    """

    def __init__(self, scalers: Scalers = None) -> None:
        self.scalers = scalers

    def scaling(self, module: str, target: str) -> Scaling:
        return resolve_scaling(self.scalers, module, target)

    @abstractmethod
    def calculate_metrics(self, data: Data) -> dict[str, dict[str, Tensor]]:
        """Return ``{module_name: {target_name: metric}}``."""


class IdentityMetricsCalculator(MetricsCalculator):
    """The data is the metric (already one value per element); summed per block."""

    def calculate_metrics(self, data: Data) -> dict[str, dict[str, Tensor]]:
        return {
            m: {t: self.scaling(m, t).shrink(v.float(), "sum") for t, v in targets.items()}
            for m, targets in data.items()
        }


class NormMetricsCalculator(MetricsCalculator):
    """The Lp norm of each block (p=1: L1, p=2: L2); per element it is ``|x|``."""

    def __init__(self, p: float = 1.0, scalers: Scalers = None) -> None:
        super().__init__(scalers)
        if p <= 0:
            raise ValueError(f"p must be positive, got {p}")
        self.p = p

    def calculate_metrics(self, data: Data) -> dict[str, dict[str, Tensor]]:
        metrics: dict[str, dict[str, Tensor]] = {}
        for module, targets in data.items():
            for target, value in targets.items():
                scaling = self.scaling(module, target)
                x = value.detach().float()
                whole = scaling.whole_axes(x.shape)
                if scaling.is_identity(x.shape):
                    metric = x.abs()
                elif whole is not None:  # channel-like blocks: one fused norm per block
                    metric = torch.linalg.vector_norm(x, ord=self.p, dim=whole, keepdim=True)
                    metrics.setdefault(module, {})[target] = metric
                    continue
                elif self.p == 1:
                    metric = scaling.shrink(x.abs(), "sum")
                elif self.p == 2:
                    metric = scaling.shrink(x * x, "sum").sqrt()
                else:
                    metric = scaling.shrink(x.abs().pow(self.p), "sum").pow(1.0 / self.p)
                metrics.setdefault(module, {})[target] = metric
        return metrics


class DistMetricsCalculator(MetricsCalculator):
    """FPGM: a block's summed Lp distance to the other blocks (near the geometric median → low).

    Needs a channel-wise scaling (one block spans every axis but one).
    """

    def __init__(self, p: float = 2.0, scalers: Scalers = None) -> None:
        super().__init__(scalers)
        self.p = p

    def calculate_metrics(self, data: Data) -> dict[str, dict[str, Tensor]]:
        metrics: dict[str, dict[str, Tensor]] = {}
        for module, targets in data.items():
            for target, value in targets.items():
                scaling = self.scaling(module, target)
                x = value.detach().float()
                shrunk = scaling.shrunk_shape(x.shape)
                kept_axes = [i for i, n in enumerate(shrunk) if n != 1]
                if not kept_axes:
                    # A single block (e.g. a layer with one output channel): nothing to rank.
                    metrics.setdefault(module, {})[target] = x.new_zeros(shrunk)
                    continue
                if len(kept_axes) != 1 or shrunk[kept_axes[0]] != x.shape[kept_axes[0]]:
                    raise ConfigError(
                        f"{module}.{target}: FPGM ranks whole channels; granularity must be "
                        f"'out_channel' or 'in_channel' (got blocks {shrunk} for shape {tuple(x.shape)})"
                    )
                axis = kept_axes[0]
                vectors = x.movedim(axis, 0).reshape(x.shape[axis], -1)
                dist = torch.cdist(vectors.unsqueeze(0), vectors.unsqueeze(0), p=self.p).squeeze(0)
                metric = dist.sum(dim=1).reshape(shrunk)
                metrics.setdefault(module, {})[target] = metric
        return metrics
