"""Trials and the executors that run them.

* :func:`run_trial` (``workers.trial``): one trial (prune → finetune → evaluate → speed up →
  measure → artifacts) as a pure function of a :class:`TrialSpec`.
* :class:`LocalExecutor`, :class:`RayExecutor` (``workers.executors``): where trials run.
* :func:`run_search` (``workers.local``): a whole search from an :class:`ExperimentSpec`,
  resumable from its output directory.
* ``workers.cli``: the ``prunesearch`` command.

Names are imported on first use, so importing :mod:`workers` (or running ``prunesearch --help``)
imports neither torch nor ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AlgorithmSpec",
    "Constraints",
    "DataSpec",
    "Executor",
    "ExecutorError",
    "ExperimentSpec",
    "LocalExecutor",
    "ModelSpec",
    "Objective",
    "PrunerSpec",
    "RayExecutor",
    "Resources",
    "SearchError",
    "SearchOutcome",
    "SpecError",
    "TrialHandle",
    "TrialResult",
    "TrialSettings",
    "TrialSpec",
    "load_spec_file",
    "run_search",
    "run_trial",
]

_WHERE = {
    **dict.fromkeys(["AlgorithmSpec", "Constraints", "DataSpec", "ExperimentSpec", "ModelSpec", "Objective", "PrunerSpec",
                     "Resources", "SpecError", "TrialSettings", "TrialSpec", "load_spec_file"], "workers.spec"),
    **dict.fromkeys(["Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "TrialHandle"], "workers.executors"),
    **dict.fromkeys(["TrialResult", "run_trial"], "workers.trial"),
    **dict.fromkeys(["SearchError", "SearchOutcome", "run_search"], "workers.local"),
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
