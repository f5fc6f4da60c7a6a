"""Pruners with NNI's names and semantics, and the tools to build more.

Example:
    >>> import torch
    >>> from search.pruning import L1NormPruner
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> pruner = L1NormPruner(model, [{'op_names': ['0'], 'sparse_ratio': 0.25}])
    >>> model, masks = pruner.compress()
    >>> pruner.sparsity_report().row('0').achieved
    0.25
"""

from __future__ import annotations

from search.config import ConfigError, ConfigWarning
from search.pruning.allocator import SparsityAllocator
from search.pruning.base import BasicPruner, Pruner
from search.pruning.data_pruners import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    SlimPruner,
    TaylorFOWeightPruner,
    TaylorPruner,
)
from search.pruning.evaluator import Evaluator, TorchEvaluator
from search.pruning.gradual import GradualPruning, GradualSchedule
from search.pruning.group import GroupL1NormPruner, GroupL2NormPruner, GroupNormPruner
from search.pruning.in_training import InTrainingPruner
from search.pruning.io import load_masks, load_state_dict, save_masks, save_state_dict
from search.pruning.pruners import FPGMPruner, L1NormPruner, L2NormPruner, LevelPruner, NormPruner
from search.pruning.report import SparsityReport, SparsityRow
from search.pruning.scaling import Scaling
from search.pruning.tools import (
    DataCollector,
    DistMetricsCalculator,
    MetricsCalculator,
    NormMetricsCalculator,
    TargetDataCollector,
)

__all__ = [
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
    "Evaluator",
    "InTrainingPruner",
    "SlimPruner",
    "TaylorFOWeightPruner",
    "TaylorPruner",
    "TorchEvaluator",
    "BasicPruner",
    "ConfigError",
    "ConfigWarning",
    "DataCollector",
    "DistMetricsCalculator",
    "FPGMPruner",
    "GradualPruning",
    "GradualSchedule",
    "GroupL1NormPruner",
    "GroupL2NormPruner",
    "GroupNormPruner",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "MetricsCalculator",
    "NormMetricsCalculator",
    "NormPruner",
    "Pruner",
    "Scaling",
    "SparsityAllocator",
    "SparsityReport",
    "SparsityRow",
    "TargetDataCollector",
    "load_masks",
    "load_state_dict",
    "save_masks",
    "save_state_dict",
]
