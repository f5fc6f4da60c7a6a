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

An algorithm whose tasks wait for a decision (NetAdapt's iteration) may hand out tasks *ahead*
of it when a worker would otherwise idle, betting on how the decision will go. Until the decision
such a task is *tentative* (``_tentative``: never the best); if the bet is lost the algorithm
calls :meth:`TaskGenerator.discard`: the task leaves the search (status ``discarded``, not
counted in the budget, a late result ignored) and runners cancel it if it still runs. Each task's
``seed_index`` (what seeds its trial) is its place among the tasks that were not discarded, so a
search reaches the same decisions and scores whether or not anything ran ahead.

With ``refine=R`` the last ``R`` trials of the budget are kept for a *refine phase* after the
search: the best allocation found (its config list) is pruned again from the origin weights,
gradually, by a chain of ``R`` trials that share one pruning schedule (:func:`refine_schedule`:
AGP's cubic shares over the first 3/4 of the ``R`` finetunes, cut during them; each trial goes on
from its parent's weights and masks, so the chain cuts as one finetune of the whole phase would).
A search ranks allocations with short one-shot trials; one-shot pruning at high ratios costs
accuracy that a gradual schedule keeps (see BENCHMARKS.md). The refined model is an ordinary
result: it is the search's best only if it scores better. A refine step's ``params`` hold
``refine`` (its number, from 1), ``steps`` (R) and ``base`` (the task whose allocation it refines).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from search.pruning.gradual import GradualSchedule
from search.scheduling.task import Task, TaskResult, TaskStatus, best_of

__all__ = ["TaskGenerator", "Proposal", "Constraints", "hands_on", "refine_schedule", "scale_config_list"]

logger = logging.getLogger(__name__)

STATE_VERSION = 1


#: the ratio keys of a sub-config that schedules scale (bounds such as ``max_sparse_ratio`` are kept)
_RATIO_KEYS = ("sparse_ratio", "sparsity", "sparsity_per_layer", "total_sparsity")


def scale_config_list(config_list: Sequence[Mapping[str, Any]], fraction: Callable[[float], float]) -> list[dict[str, Any]]:
    """A copy of ``config_list`` with every ratio ``r`` replaced by ``fraction(r)``."""
    out = []
    for sub in config_list:
        new = copy.deepcopy(dict(sub))
        for key in _RATIO_KEYS:
            if key in new and isinstance(new[key], int | float) and not isinstance(new[key], bool):
                new[key] = float(min(max(fraction(float(new[key])), 0.0), 1.0))
        settings = new.get("target_settings")
        if isinstance(settings, dict):
            for target in settings.values():
                if isinstance(target, dict) and isinstance(target.get("sparse_ratio"), int | float):
                    target["sparse_ratio"] = float(min(max(fraction(float(target["sparse_ratio"])), 0.0), 1.0))
        out.append(new)
    return out


def refine_schedule(step: int, steps: int, finetune_steps: int) -> GradualSchedule:
    """The part of the refine phase's pruning schedule that refine step ``step`` of ``steps`` runs.

    One schedule spans the whole phase (``steps`` finetunes of ``finetune_steps`` training steps):
    ``2 * steps`` mask updates (at least 8), AGP's cubic shares, the full ratios after 3/4 of it, the
    rest training at them. Each step runs its own segment and its child goes on from there.
    """
    return GradualSchedule(steps=steps * finetune_steps, updates=max(8, 2 * steps), end=0.75,
                           first=(step - 1) * finetune_steps, span=finetune_steps)


def hands_on(task: Task | Mapping[str, Any]) -> bool:
    """A refine step before the last: its weights go to the next step as they are, the masks kept apart.

    Multiplying the masks in would zero what the next step's importance ranking still reads (a masked
    row of the next layer counts in a channel's group); kept as they are, the chain cuts exactly as
    one finetune of the whole refine phase would. Its ``result.model`` then computes the masked
    function only with the masks applied (speedup applies them; it is never a best result).
    """
    params = task.params if isinstance(task, Task) else task.get("params", {})
    return "refine" in params and int(params["refine"]) < int(params.get("steps", 0))


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
        refine: trials of ``max_trials`` kept for the refine phase (0: none; see the module docstring).
            The search itself gets ``max_trials - refine`` (:attr:`search_trials`).
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
        refine: int = 0,
    ) -> None:
        if best_result_mode not in ("latest", "maximize", "minimize"):
            raise ValueError(f"best_result_mode must be 'latest', 'maximize' or 'minimize', got {best_result_mode!r}")
        if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1):
            raise ValueError(f"max_trials must be a positive int, got {max_trials!r}")
        if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
            raise ValueError(f"refine must be an int >= 0 (trials of the refine phase), got {refine!r}")
        if refine and max_trials is not None and max_trials <= refine:
            raise ValueError(f"refine: {refine} trials leave none of max_trials={max_trials} for the search")
        self.origin_model = origin_model
        self.origin_masks = origin_masks or {}
        self.origin_config_list = [dict(c) for c in (origin_config_list or [])]
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.keep_intermediate_result = keep_intermediate_result
        self.best_result_mode = best_result_mode
        self.max_trials = max_trials
        self.refine = refine
        #: the search's own budget: ``max_trials`` less the refine phase
        self.search_trials = max_trials - refine if max_trials is not None else None
        self.constraints = constraints if isinstance(constraints, Constraints) else Constraints.from_dict(constraints)
        self.seed = seed
        self.rng = random.Random(seed)
        self.tasks: dict[int, Task] = {}
        self.results: dict[int, TaskResult] = {}
        #: task id -> why it was discarded (see :meth:`discard`)
        self.discarded: dict[int, str] = {}
        self._next_id = 0
        self._n_live = 0  # tasks handed out and not discarded: the next task's seed_index
        self._best_written: int | None = None

    # -- the contract -----------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Task]:
        """Up to ``n`` tasks that can run now (``[]``: wait for results, or the search is done)."""
        if n < 1:
            return []
        if not self._search_over():
            if self.search_trials is not None:
                n = min(n, self.search_trials - len(self._search_tasks()))
            return [self._hand_out(p) for p in self._propose(n)[:n]] if n > 0 else []
        proposal = self._refine_proposal()
        return [self._hand_out(proposal)] if proposal is not None else []

    def _hand_out(self, proposal: Proposal) -> Task:
        task = Task(self._next_id, [dict(c) for c in proposal.config_list], proposal.parent_id, dict(proposal.params),
                    seed_index=self._n_live)
        self._n_live += 1
        task.status = TaskStatus.RUNNING
        self.tasks[task.task_id] = task
        self._next_id += 1
        return task

    def tell(self, result: TaskResult) -> None:
        """Record a result (any order)."""
        task = self.tasks.get(result.task_id)
        if task is None:
            raise KeyError(f"no task {result.task_id} was handed out by this generator")
        if task.status is TaskStatus.DISCARDED:
            logger.debug("task %d was discarded; its result is ignored", result.task_id)
            return
        if task.status.is_terminal():
            raise ValueError(f"task {result.task_id} already has a result")
        task.status = TaskStatus.SUCCEEDED if result.ok else TaskStatus.FAILED
        self.results[result.task_id] = result
        if "refine" not in task.params:  # the algorithm sees its own trials only
            self._observe(result)
        self._write_logs(task, result)
        self._release_models()

    def discard(self, task_ids: Sequence[int], reason: str) -> None:
        """Take tasks handed out ahead of a decision out of the search (see the module docstring).

        They no longer count in the budget, are never the best, and a result told for them later
        is ignored; a result they already have is dropped. Runners cancel those still running
        (status ``discarded`` while the runner has them in flight). ``reason`` is kept in
        :attr:`discarded`.
        """
        for task_id in task_ids:
            task = self.tasks[task_id]
            if task.status is TaskStatus.DISCARDED:
                continue
            task.status = TaskStatus.DISCARDED
            self._n_live -= 1
            self.results.pop(task_id, None)
            self.discarded[task_id] = reason
            logger.info("task %d discarded: %s", task_id, reason)
            if self.log_dir is not None and (self.log_dir / str(task_id)).is_dir():
                try:
                    (self.log_dir / str(task_id) / "discarded.json").write_text(json.dumps({"reason": reason}))
                except OSError as exc:
                    logger.warning("could not write logs for task %d: %s", task_id, exc)

    def is_done(self) -> bool:
        """True when nothing runs and nothing more will be proposed."""
        if self.pending():
            return False
        return self._search_over() and self._refine_over()

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
        """The best feasible result (of the refine chain, only its last step counts)."""
        return best_of(list(self.results.values()), self.best_result_mode, self._qualifies)

    def _qualifies(self, result: TaskResult) -> bool:
        """May be the best: feasible; a refine step only as the last of its chain and within the constraints
        (its allocation is the feasible result it refines, whatever else an algorithm's ``feasible`` asks)."""
        task = self.tasks[result.task_id]
        if task.status is TaskStatus.DISCARDED or self._tentative(task):
            return False
        if "refine" not in task.params:
            return self.feasible(result)
        return not hands_on(task) and self.constraints.satisfied(result.metrics)

    # -- the refine phase -------------------------------------------------------------------------
    def _search_tasks(self) -> list[Task]:
        """The search's tasks (not the refine phase's, not discarded ones): what its budget counts."""
        return [t for t in self.tasks.values() if "refine" not in t.params and t.status is not TaskStatus.DISCARDED]

    def _refine_tasks(self) -> list[Task]:
        return sorted((t for t in self.tasks.values() if "refine" in t.params), key=lambda t: t.task_id)

    def _search_over(self) -> bool:
        """The algorithm has stopped (its own rule, or its share of the budget is used up)."""
        if self.search_trials is not None and len(self._search_tasks()) >= self.search_trials:
            return True
        return self._refine_tasks() != [] or self._finished()

    def _budget_used_up(self) -> str:
        """A stop reason: the search's share of the budget is used up."""
        tail = f" (the last {self.refine} kept for the refine phase)" if self.refine else ""
        return f"trial budget max_trials={self.max_trials} used up{tail}"

    def _refine_over(self) -> bool:
        if not self.refine:
            return True
        done = self._refine_tasks()
        last = self.results.get(done[-1].task_id) if done else None
        if done and (len(done) >= done[0].params["steps"] or (last is not None and not last.ok)):
            return True
        if not done and self._refine_base() is None:
            return True  # nothing feasible to refine
        return False

    def _refine_base(self) -> TaskResult | None:
        return best_of([r for t, r in self.results.items() if "refine" not in self.tasks[t].params
                        and not self._tentative(self.tasks[t])], self.best_result_mode, self.feasible)

    def _refine_proposal(self) -> Proposal | None:
        """The next step of the refine chain, once the one before it (or the whole search) has a result."""
        if self.pending() or self._refine_over():
            return None
        done = self._refine_tasks()
        if done:
            base_id = int(done[0].params["base"])
            steps = int(done[0].params["steps"])
        else:
            base = self._refine_base()
            assert base is not None
            base_id, steps = base.task_id, self.refine
        return Proposal(self.tasks[base_id].config_list, done[-1].task_id if done else None,
                        {"refine": len(done) + 1, "steps": steps, "base": base_id, "reset_weight": False})

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

    def _kept(self) -> set[int]:
        """Results whose models stay in memory: the best, the algorithm's, the refine chain's last step."""
        best = self.best_result()
        refine = self._refine_tasks()
        return (set(self._keep_models()) | ({best.task_id} if best else set())
                | ({refine[-1].task_id} if refine else set()))

    def _release_models(self) -> None:
        if self.keep_intermediate_result:
            return
        keep = self._kept()
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

    def _tentative(self, task: Task) -> bool:
        """A task handed out ahead of a decision that has not been made yet (never the best meanwhile)."""
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
            "discarded": {str(k): v for k, v in self.discarded.items()},
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
        self.discarded = {int(k): str(v) for k, v in state.get("discarded", {}).items()}
        self._n_live = sum(1 for t in self.tasks.values() if t.status is not TaskStatus.DISCARDED)
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
            if result.model is not None and (self.keep_intermediate_result or task.task_id in self._kept()):
                # weights of results later tasks start from, so a resumed search can load them
                from search.pruning.io import save_state_dict  # noqa: PLC0415

                save_state_dict(result.model.state_dict(), folder / "model.safetensors")
            if best is not None and best.task_id != self._best_written:
                # (usually this task; or one told earlier: a tentative task whose bet was won)
                self._write_best(self.tasks[best.task_id], best)
        except OSError as exc:  # logs must never stop a search
            logger.warning("could not write logs for task %d: %s", task.task_id, exc)

    def _write_best(self, task: Task, result: TaskResult) -> None:
        assert self.log_dir is not None
        self._best_written = task.task_id
        folder = self.log_dir / "best_result"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config_list.json").write_text(json.dumps(task.config_list, indent=1))
        (folder / "result.json").write_text(json.dumps(result.to_json(), indent=1))
        if result.masks is not None:
            from search.pruning.io import save_masks  # noqa: PLC0415

            save_masks(result.masks, folder / "masks.safetensors")
        else:  # not the masks of an earlier best
            (folder / "masks.safetensors").unlink(missing_ok=True)
