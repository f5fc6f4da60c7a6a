"""Tasks and results of an iterative pruning search.

A :class:`Task` is one step of a search: a config list (ratios relative to the *origin* model),
the task it starts from (its weights and masks; ``None`` is the origin model) and any
algorithm-specific parameters. A :class:`TaskResult` is what running it produced: a score,
metrics, achieved sparsity and references to the model and masks. Both are plain data
(``to_json``/``from_json``) so they can travel to workers and into SQL.
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = ["Task", "TaskResult", "TaskStatus", "best_of"]


class TaskStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: handed out ahead of a decision that went the other way: not part of the search (see
    #: :meth:`~search.scheduling.TaskGenerator.discard`); its result, if one comes, is ignored.
    DISCARDED = "discarded"

    def is_terminal(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DISCARDED)


@dataclass
class Task:
    """One trial to run.

    Attributes:
        task_id: unique within the search, increasing in creation order.
        config_list: the pruner's config list for this step (relative to the origin model).
        parent_id: the task whose finetuned weights and masks this one starts from.
        params: algorithm-specific data (iteration, per-layer ratios, a rewind flag...).
        seed_index: what seeds the trial's training: the task's place among the search's tasks
            as if no task handed out ahead of a decision had been discarded (``None``: the
            ``task_id``). A task the algorithm hands out early gets the index it would have had
            if handed out after the decision, so its result does not depend on the timing.
    """

    task_id: int
    config_list: list[dict[str, Any]]
    parent_id: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    status: TaskStatus = TaskStatus.PENDING
    seed_index: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "config_list": copy.deepcopy(self.config_list),
            "parent_id": self.parent_id,
            "params": copy.deepcopy(self.params),
            "status": self.status.value,
            "seed_index": self.seed_index,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        seed_index = data.get("seed_index")
        return cls(
            task_id=int(data["task_id"]),
            config_list=list(data["config_list"]),
            parent_id=data.get("parent_id"),
            params=dict(data.get("params", {})),
            status=TaskStatus(data.get("status", "pending")),
            seed_index=int(seed_index) if seed_index is not None else None,
        )


@dataclass
class TaskResult:
    """What running a task produced.

    Attributes:
        task_id: the task.
        score: the objective (e.g. accuracy); ``None`` if the trial did not evaluate.
        metrics: accuracy, loss, flops, params, latency_ms, flops_ratio, params_ratio, ...
        sparsity: achieved sparsity per module (share of masked weight elements).
        model: in-process only: the finetuned (masked) model.
        masks: in-process only: its masks.
        artifact: where the trial wrote its weights, masks and compact model (if anywhere).
        error: why the trial failed (its traceback), if it did.
    """

    task_id: int
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    sparsity: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = None
    masks: dict[str, dict[str, Tensor]] | None = None
    compact_model: nn.Module | None = None
    artifact: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "score": self.score,
            "metrics": dict(self.metrics),
            "sparsity": dict(self.sparsity),
            "artifact": self.artifact,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        return cls(
            task_id=int(data["task_id"]),
            score=data.get("score"),
            metrics=dict(data.get("metrics", {})),
            sparsity=dict(data.get("sparsity", {})),
            artifact=data.get("artifact"),
            error=data.get("error"),
        )


def best_of(results: list[TaskResult], mode: str, feasible: Any = None) -> TaskResult | None:
    """The best result by ``mode`` (``latest``, ``maximize``, ``minimize``) among the feasible ones.

    Results without a score count only under ``latest`` (as NNI falls back to ``latest``). Equal
    scores (an accuracy on a test split is a multiple of 1/N, so ties are common) go to the smaller
    model: lower FLOPs ratio, then lower params ratio, then the earlier task.
    """
    candidates = [r for r in results if r.ok and (feasible is None or feasible(r))]
    if not candidates:
        return None
    scored = [r for r in candidates if r.score is not None and not math.isnan(r.score)]
    if mode == "latest" or not scored:
        return max(candidates, key=lambda r: r.task_id)
    if mode == "maximize":
        return min(scored, key=lambda r: (-r.score, *_cost(r), r.task_id))  # type: ignore[operator]
    if mode == "minimize":
        return min(scored, key=lambda r: (r.score, *_cost(r), r.task_id))
    raise ValueError(f"best_result_mode must be 'latest', 'maximize' or 'minimize', got {mode!r}")


def _cost(r: TaskResult) -> tuple[float, float]:
    """(FLOPs ratio, params ratio) of a result; a missing or NaN one sorts last."""

    def ratio(key: str) -> float:
        value = r.metrics.get(key)
        return float(value) if isinstance(value, int | float) and not math.isnan(value) else math.inf

    return ratio("flops_ratio"), ratio("params_ratio")
