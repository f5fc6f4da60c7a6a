"""Search algorithms: each a TaskGenerator plus a pruner class with NNI's familiar name."""

from __future__ import annotations

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

__all__ = [
    "AGPPruner",
    "AGPTaskGenerator",
    "FunctionBasedTaskGenerator",
    "LinearPruner",
    "LinearTaskGenerator",
    "LotteryTicketPruner",
    "LotteryTicketTaskGenerator",
    "scale_config_list",
]
