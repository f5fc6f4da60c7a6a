"""Iterative pruning search: tasks, the ask/tell TaskGenerator contract, and the in-process scheduler."""

from __future__ import annotations

from search.scheduling.generator import Constraints, Proposal, TaskGenerator
from search.scheduling.scheduler import BasePruningScheduler, PruningScheduler, achieved_sparsity
from search.scheduling.task import Task, TaskResult, TaskStatus, best_of

__all__ = [
    "BasePruningScheduler",
    "Constraints",
    "Proposal",
    "PruningScheduler",
    "Task",
    "TaskGenerator",
    "TaskResult",
    "TaskStatus",
    "achieved_sparsity",
    "best_of",
]
