"""Magnitude-based one-shot pruners: Level, L1Norm, L2Norm, FPGM.

Example:
    >>> import torch
    >>> from search.pruning import L1NormPruner
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    >>> _, masks = L1NormPruner(model, [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}]).compress()
    >>> int(masks['0']['weight'].sum(dim=(1, 2, 3)).count_nonzero())  # 4 of 8 filters kept
    4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from search.config import ConfigError
from search.pruning.allocator import SparsityAllocator
from search.pruning.base import BasicPruner
from search.pruning.tools import DistMetricsCalculator, NormMetricsCalculator, TargetDataCollector

__all__ = ["LevelPruner", "L1NormPruner", "L2NormPruner", "FPGMPruner", "NormPruner"]


class LevelPruner(BasicPruner):
    """Masks the smallest-magnitude weights element by element (or per block with ``granularity``)."""

    default_granularity = "element"

    def reset_tools(self) -> None:
        self.data_collector = TargetDataCollector(self)
        self.metrics_calculator = NormMetricsCalculator(p=1, scalers=self.target_scaling)
        self.sparsity_allocator = SparsityAllocator(self)


class NormPruner(BasicPruner):
    """Masks the output channels (by default) with the smallest Lp norm."""

    p: float = 1.0

    def reset_tools(self) -> None:
        self.data_collector = TargetDataCollector(self)
        self.metrics_calculator = NormMetricsCalculator(p=self.p, scalers=self.target_scaling)
        self.sparsity_allocator = SparsityAllocator(self)


class L1NormPruner(NormPruner):
    """Masks the output channels with the smallest L1 norm (Li et al., "Pruning Filters for Efficient ConvNets")."""

    p = 1.0


class L2NormPruner(NormPruner):
    """Masks the output channels with the smallest L2 norm."""

    p = 2.0


class FPGMPruner(BasicPruner):
    """Masks the channels nearest the geometric median of their layer (He et al., FPGM, CVPR 2019)."""

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
        super().__init__(model, config_list, **kwargs)
        for name, target in self.metric_targets():
            setting = self.get_target_setting(name, target)
            if setting.granularity not in ("out_channel", "in_channel", "per_channel"):
                raise ConfigError(
                    f"config_list[{setting.source}].granularity: FPGMPruner ranks whole channels; "
                    f"{name}.{target} asks {setting.granularity!r} (use 'out_channel' or 'in_channel')"
                )

    def reset_tools(self) -> None:
        self.data_collector = TargetDataCollector(self)
        self.metrics_calculator = DistMetricsCalculator(p=2, scalers=self.target_scaling)
        self.sparsity_allocator = SparsityAllocator(self)
