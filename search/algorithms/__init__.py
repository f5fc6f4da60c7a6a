"""Search algorithms: each a TaskGenerator plus a pruner class with NNI's familiar name."""

from __future__ import annotations

from search.algorithms.amc import AMCPruner, AMCTaskGenerator, DDPGConfig
from search.algorithms.annealing import (
    AnnealingSchedule,
    SimulatedAnnealingPruner,
    SimulatedAnnealingTaskGenerator,
)
from search.algorithms.autocompress import ADMMPruner, AutoCompressPruner, AutoCompressTaskGenerator
from search.algorithms.chain import (
    AGPPruner,
    AGPTaskGenerator,
    FunctionBasedTaskGenerator,
    LinearPruner,
    LinearTaskGenerator,
    LotteryTicketPruner,
    LotteryTicketTaskGenerator,
    scale_config_list,
)
from search.algorithms.netadapt import CostModel, NetAdaptPruner, NetAdaptTaskGenerator
from search.algorithms.optuna_search import OptunaPruner, OptunaTaskGenerator

__all__ = [
    "ADMMPruner",
    "AGPPruner",
    "AGPTaskGenerator",
    "AMCPruner",
    "AMCTaskGenerator",
    "AnnealingSchedule",
    "AutoCompressPruner",
    "AutoCompressTaskGenerator",
    "CostModel",
    "DDPGConfig",
    "FunctionBasedTaskGenerator",
    "LinearPruner",
    "LinearTaskGenerator",
    "LotteryTicketPruner",
    "LotteryTicketTaskGenerator",
    "NetAdaptPruner",
    "NetAdaptTaskGenerator",
    "OptunaPruner",
    "OptunaTaskGenerator",
    "SimulatedAnnealingPruner",
    "SimulatedAnnealingTaskGenerator",
    "scale_config_list",
]
