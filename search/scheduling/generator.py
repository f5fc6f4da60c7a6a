"""TaskGenerator: the ask/tell contract every search algorithm implements.

``ask(n)`` hands out up to ``n`` tasks that can run now (fewer, or none, when the algorithm must
wait for results); ``tell(result)`` takes results in any order. ``state_dict()`` is plain JSON
(versioned, RNG state included), so a search stopped at any point resumes from what was stored
and reaches the same result as an uninterrupted run.

Subclasses implement two hooks:

* ``_propose(n) -> list[Proposal]`` — called by ``ask``; may return fewer than ``n``;
* ``_observe(result)`` — called by ``tell`` after bookkeeping;

and, if they keep state of their own, ``_algo_state()`` / ``_load_algo_state(state)``.
``_finished()`` says when the algorithm has nothing more to try.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from search.scheduling.task import Task, TaskResult, TaskStatus, best_of

__all__ = ["TaskGenerator", "Proposal", "Constraints"]

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class Proposal:
    config_list: list[dict[str, Any]]
    parent_id: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Constraints:
    """Upper bounds on the compact model's cost relative to the origin model (``None``: no bound)."""

    max_flops_ratio: float | None = None
    max_params_ratio: float | None = None
    max_latency_ratio: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Constraints:
        data = dict(data or {})
        unknown = set(data) - {"max_flops_ratio", "max_params_ratio", "max_latency_ratio"}
        if unknown:
            raise ValueError(f"constraints: unknown key {sorted(unknown)[0]!r}; valid: max_flops_ratio, max_params_ratio, max_latency_ratio")
        for key, value in data.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1):
                raise ValueError(f"constraints.{key}: must be a number in (0, 1], got {value!r}")
        return cls(**data)

    def satisfied(self, metrics: dict[str, float]) -> bool:
        for key, metric in (("max_flops_ratio", "flops_ratio"), ("max_params_ratio", "params_ratio"),
                            ("max_latency_ratio", "latency_ratio")):
            bound = getattr(self, key)
            if bound is not None and metrics.get(metric, 1.0) > bound + 1e-9:
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class TaskGenerator:
    """Base of every search algorithm (NNI's ``TaskGenerator`` signature plus a budget).

    Args:
        origin_model: the unpruned model (in-process searches; may be ``None`` for services).
        origin_masks: masks the origin model already has.
        origin_config_list: the user's config list (target ratios relative to the origin model).
        log_dir: where results are written (one folder per task, ``best_result/``); ``None``: nowhere.
        keep_intermediate_result: keep every task's model in memory and on disk.
        best_result_mode: ``'latest'``, ``'maximize'`` or ``'minimize'``.
        max_trials: the trial budget (``None``: the algorithm's own stopping rule).
        constraints: ``{'max_flops_ratio': .., 'max_params_ratio': .., 'max_latency_ratio': ..}``.
        seed: seeds the algorithm's random choices (kept in ``state_dict()``).
    """

    def __init__(
        self,
        origin_model: nn.Module | None = None,
        origin_masks: dict[str, dict[str, Tensor]] | None = None,
        origin_config_list: list[dict[str, Any]] | None = None,
        log_dir: str | os.PathLike[str] | None = ".",
        keep_intermediate_result: bool = False,
        best_result_mode: str = "maximize",
        *,
        max_trials: int | None = None,
        constraints: dict[str, Any] | Constraints | None = None,
        seed: int = 0,
    ) -> None:
        if best_result_mode not in ("latest", "maximize", "minimize"):
            raise ValueError(f"best_result_mode must be 'latest', 'maximize' or 'minimize', got {best_result_mode!r}")
        if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1):
            raise ValueError(f"max_trials must be a positive int, got {max_trials!r}")
        self.origin_model = origin_model
        self.origin_masks = origin_masks or {}
        self.origin_config_list = [dict(c) for c in (origin_config_list or [])]
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.keep_intermediate_result = keep_intermediate_result
        self.best_result_mode = best_result_mode
        self.max_trials = max_trials
        self.constraints = constraints if isinstance(constraints, Constraints) else Constraints.from_dict(constraints)
        self.seed = seed
        self.rng = random.Random(seed)
        self.tasks: dict[int, Task] = {}
        self.results: dict[int, TaskResult] = {}
        self._next_id = 0

    # -- the contract -----------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Task]:
        """Up to ``n`` tasks that can run now (``[]``: wait for results, or the search is done)."""
        if n < 1 or self._finished():
            return []
        if self.max_trials is not None:
            n = min(n, self.max_trials - len(self.tasks))
            if n <= 0:
                return []
        tasks = []
        for proposal in self._propose(n)[:n]:
            task = Task(self._next_id, [dict(c) for c in proposal.config_list], proposal.parent_id, dict(proposal.params))
            task.status = TaskStatus.RUNNING
            self.tasks[task.task_id] = task
            self._next_id += 1
            tasks.append(task)
        return tasks

    def tell(self, result: TaskResult) -> None:
        """Record a result (any order)."""
        task = self.tasks.get(result.task_id)
        if task is None:
            raise KeyError(f"no task {result.task_id} was handed out by this generator")
        if task.status.is_terminal():
            raise ValueError(f"task {result.task_id} already has a result")
        task.status = TaskStatus.SUCCEEDED if result.ok else TaskStatus.FAILED
        self.results[result.task_id] = result
        self._observe(result)
        self._write_logs(task, result)
        self._release_models()

    def is_done(self) -> bool:
        """True when nothing runs and nothing more will be proposed."""
        if self.pending():
            return False
        if self.max_trials is not None and len(self.tasks) >= self.max_trials:
            return True
        return self._finished()

    def pending(self) -> list[Task]:
        """Tasks handed out without a result yet (after a resume: to run again)."""
        return [t for t in self.tasks.values() if not t.status.is_terminal()]

    # NNI 2.x names
    def next(self) -> Task | None:
        tasks = self.ask(1)
        return tasks[0] if tasks else None

    def receive_task_result(self, result: TaskResult) -> None:
        self.tell(result)

    # -- results ----------------------------------------------------------------------------------
    def feasible(self, result: TaskResult) -> bool:
        return self.constraints.satisfied(result.metrics)

    def best_result(self) -> TaskResult | None:
        return best_of(list(self.results.values()), self.best_result_mode, self.feasible)

    def get_best_result(self) -> tuple[int, nn.Module | None, dict[str, dict[str, Tensor]] | None, float | None, list[dict[str, Any]]] | None:
        """``(task_id, compact_model, masks, score, config_list)`` of the best result (NNI's shape)."""
        best = self.best_result()
        if best is None:
            return None
        if best.model is None and best.compact_model is None:  # e.g. the best came before a resume
            logged = self.load_logged_model(best.task_id)
            if logged is not None:
                best.model, best.masks = logged
        model = best.compact_model if best.compact_model is not None else best.model
        return best.task_id, model, best.masks, best.score, self.tasks[best.task_id].config_list

    def load_logged_model(self, task_id: int) -> tuple[nn.Module, dict[str, dict[str, Tensor]]] | None:
        """The masked model and masks task ``task_id`` left in ``log_dir`` (``None``: it left none there)."""
        folder = self.log_dir / str(task_id) if self.log_dir is not None else None
        if folder is None or self.origin_model is None or not (folder / "model.safetensors").exists():
            return None
        from search.pruning.io import load_masks, load_state_dict  # noqa: PLC0415

        model = copy.deepcopy(self.origin_model)
        model.load_state_dict(load_state_dict(folder / "model.safetensors"))
        masks = load_masks(folder / "masks.safetensors") if (folder / "masks.safetensors").exists() else {}
        return model, masks

    def _release_models(self) -> None:
        if self.keep_intermediate_result:
            return
        best = self.best_result()
        keep = set(self._keep_models()) | ({best.task_id} if best else set())
        for task_id, result in self.results.items():
            if task_id not in keep:
                result.model = result.compact_model = None

    def _keep_models(self) -> list[int]:
        """Results whose in-memory models future tasks start from (algorithms override)."""
        return []

    # -- hooks ------------------------------------------------------------------------------------
    def _propose(self, n: int) -> list[Proposal]:
        raise NotImplementedError

    def _observe(self, result: TaskResult) -> None:  # noqa: B027 (optional hook)
        pass

    def _finished(self) -> bool:
        return False

    def _algo_state(self) -> dict[str, Any]:
        return {}

    def _load_algo_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        pass

    # -- persistence ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON data."""
        version, internal, gauss = self.rng.getstate()
        return {
            "version": STATE_VERSION,
            "generator": type(self).__name__,
            "next_id": self._next_id,
            "tasks": [t.to_json() for t in self.tasks.values()],
            "results": [r.to_json() for r in self.results.values()],
            "rng": [version, list(internal), gauss],
            "algo": self._algo_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; tasks that were running are pending again."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported generator state version {state.get('version')!r}")
        if state.get("generator") != type(self).__name__:
            raise ValueError(f"state is for {state.get('generator')}, not {type(self).__name__}")
        json.dumps(state)
        self._next_id = int(state["next_id"])
        self.tasks = {t["task_id"]: Task.from_json(t) for t in state["tasks"]}
        self.results = {r["task_id"]: TaskResult.from_json(r) for r in state["results"]}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self._load_algo_state(state.get("algo", {}))

    # -- logs ---------------------------------------------------------------------------------------
    def _write_logs(self, task: Task, result: TaskResult) -> None:
        if self.log_dir is None:
            return
        try:
            folder = self.log_dir / str(task.task_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config_list.json").write_text(json.dumps(task.config_list, indent=1))
            (folder / "result.json").write_text(json.dumps({**result.to_json(), "params": task.params}, indent=1))
            if result.masks is not None:
                from search.pruning.io import save_masks  # noqa: PLC0415

                save_masks(result.masks, folder / "masks.safetensors")
            best = self.best_result()
            keep = set(self._keep_models()) | ({best.task_id} if best else set())
            if result.model is not None and (self.keep_intermediate_result or task.task_id in keep):
                # weights of results later tasks start from, so a resumed search can load them
                from search.pruning.io import save_state_dict  # noqa: PLC0415

                save_state_dict(result.model.state_dict(), folder / "model.safetensors")
            if best is not None and best.task_id == task.task_id:
                self._write_best(task, result)
        except OSError as exc:  # logs must never stop a search
            logger.warning("could not write logs for task %d: %s", task.task_id, exc)

    def _write_best(self, task: Task, result: TaskResult) -> None:
        assert self.log_dir is not None
        folder = self.log_dir / "best_result"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config_list.json").write_text(json.dumps(task.config_list, indent=1))
        (folder / "result.json").write_text(json.dumps(result.to_json(), indent=1))
        if result.masks is not None:
            from search.pruning.io import save_masks  # noqa: PLC0415

            save_masks(result.masks, folder / "masks.safetensors")
        else:  # not the masks of an earlier best
            (folder / "masks.safetensors").unlink(missing_ok=True)
