"""A search over per-layer sparsities with Optuna's TPE sampler, under FLOPs / params / latency bounds.

Every task is one Optuna trial: ``suggest_float`` per prunable layer in
``[min_sparse_ratio, max_sparse_ratio]``, rounded to whole channels. Budgets:

* FLOPs and params are predicted before the trial runs (:class:`~search.algorithms._budget.LayerCostModel`).
  With ``repair=True`` (default) a suggestion over budget moves every ratio toward its maximum by the
  least common share that meets the budget, so no trial is wasted; Optuna is told the *suggested*
  values with the score of the repaired config (a fixed function of the suggestion, so TPE still
  models a proper objective). With ``repair=False`` the trial runs as suggested and only the
  constraint tells TPE it was over budget.
* Measured ratios (and ``latency_ratio``, which cannot be predicted) reach the sampler as
  constraints (``Trial.set_constraint``; ``constraints_func`` on Optuna < 5), so TPE prefers
  feasible regions, and infeasible trials are never "best" nor on the Pareto front.

Tasks run in parallel (``ask(n)`` asks the study ``n`` times; TPE's constant liar keeps running
trials apart) and results are told in any order (task id -> trial number).
``multi_objective=True`` maximises the score and minimises the FLOPs (params) ratio;
:meth:`OptunaTaskGenerator.pareto_front` is then the feasible non-dominated set, ``best_result()``
the feasible result with the best score.

Crash-resume: an in-memory study cannot be dumped, so the state holds every finished trial's
``(params, values, state, constraints)``; loading rebuilds the study with ``add_trial`` (finished
trials) and ``enqueue_trial`` + ``ask`` (trials that were still running, in trial-number order,
so numbers match). The sampler's random state cannot be restored through the public API, so each
``ask`` uses a fresh TPE sampler seeded from ``(seed, trial number)``: proposals depend only on
the seed and the history, and a resumed search proposes exactly what the uninterrupted one would.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
    ...                             torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2))
    >>> pruner = OptunaPruner(model, [{'op_types': ['Conv2d']}], torch.randn(1, 1, 8, 8), evaluator=lambda m: 1.0,
    ...                       max_trials=3, constraints={'max_flops_ratio': 0.6}, log_dir=None)
    >>> pruner.compress()
    >>> task_id, compact, masks, score, config_list = pruner.get_best_result()
    >>> pruner.task_generator.results[task_id].metrics['flops_ratio'] <= 0.6
    True
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

from search.algorithms._budget import LayerCostModel, resolve_layers
from search.algorithms.allocation import SearchPruner
from search.pruning import Pruner
from search.scheduling import Constraints, Proposal, PruningScheduler, TaskGenerator, TaskResult

__all__ = ["OptunaTaskGenerator", "OptunaPruner"]

logger = logging.getLogger(__name__)

_BOUNDS = (("max_flops_ratio", "flops_ratio"), ("max_params_ratio", "params_ratio"), ("max_latency_ratio", "latency_ratio"))


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every study creation at INFO and warns about experimental arguments: keep it quiet."""
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="optuna")
            warnings.filterwarnings("ignore", message=".*(experimental|constraints_func).*")
            yield
    finally:
        optuna_logger.setLevel(level)


def _has_set_constraint() -> bool:
    """Optuna >= 5 takes constraints per trial (``Trial.set_constraint``); older ones through ``constraints_func``."""
    import optuna  # noqa: PLC0415

    return hasattr(optuna.trial.Trial, "set_constraint")


def _constraints_from_user_attrs(trial: Any) -> list[float]:
    """``constraints_func`` for Optuna < 5 (no ``Trial.set_constraint``)."""
    return list(trial.user_attrs.get("constraints", {}).values())


class OptunaTaskGenerator(TaskGenerator):
    """TPE over per-layer sparse ratios with budgets; parallel asks, results in any order, resumable.

    Args:
        origin_model: the unpruned model.
        origin_config_list: selects the Conv/Linear layers; ``max_sparse_ratio`` / ``min_sparse_ratio``
            bound each layer's ratio; ``sparse_ratio`` (if given) is the share of the ``target``
            cost to remove, as in AMC.
        dummy_input: an input of the model (costs are predicted from its forward pass).
        max_trials: the trial budget.
        target: ``'flops'`` or ``'params'``: how the config's ``sparse_ratio`` is read, and the second
            objective in multi-objective mode.
        multi_objective: maximise the score and minimise the target ratio (a Pareto front).
        max_sparse_ratio: a layer's largest ratio where the config list gives none.
        n_startup_trials: random trials before TPE models the history.
        repair: move over-budget suggestions onto the budget (see the module docstring).
        origin_masks, log_dir, keep_intermediate_result, best_result_mode, constraints, seed: as in
            :class:`~search.scheduling.TaskGenerator` (``best_result_mode`` 'maximize' or 'minimize').
    """

    def __init__(
        self,
        origin_model: nn.Module,
        origin_config_list: list[dict[str, Any]],
        dummy_input: Any,
        *,
        max_trials: int = 50,
        target: str = "flops",
        multi_objective: bool = False,
        max_sparse_ratio: float = 0.8,
        n_startup_trials: int = 10,
        repair: bool = True,
        **kwargs: Any,
    ) -> None:
        if dummy_input is None:
            raise ValueError("dummy_input is required by the Optuna search (costs come from a forward pass)")
        if isinstance(n_startup_trials, bool) or not isinstance(n_startup_trials, int) or n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be an int >= 0, got {n_startup_trials!r}")
        super().__init__(origin_model, origin_config_list=origin_config_list, max_trials=max_trials, **kwargs)
        if self.best_result_mode == "latest":
            raise ValueError("Optuna search: best_result_mode must be 'maximize' or 'minimize' (it is the study's direction)")
        layers = resolve_layers(origin_model, origin_config_list, self.constraints, target, max_sparse_ratio,
                                who="Optuna search")
        self.constraints = layers.constraints
        self.budgets = layers.budgets
        if not multi_objective and self.constraints == Constraints():
            raise ValueError(
                "Optuna search: a single-objective search needs a budget (a sparse_ratio in the config list or a "
                "constraint), or it would keep every channel; or set multi_objective=True"
            )
        self.target = target
        self.multi_objective = multi_objective
        self.n_startup_trials = n_startup_trials
        self.repair = repair
        self.costs = LayerCostModel(origin_model, dummy_input, layers.names, layers.bounds)
        self.directions: list[Any] = [self.best_result_mode] + (["minimize"] if multi_objective else [])
        self.trials: list[dict[str, Any]] = []  # finished trials: number, task_id, params, values, state, constraints
        self._study: Any = None
        self._live: dict[int, Any] = {}  # trial number -> running optuna Trial
        self._warned_unreachable = False

    # -- the study --------------------------------------------------------------------------------
    @property
    def study(self) -> Any:
        """The Optuna study (built, or rebuilt after ``load_state_dict``, on first use)."""
        if self._study is None:
            self._study = self._build_study()
        return self._study

    def _sampler(self, number: int) -> Any:
        import optuna  # noqa: PLC0415 (heavy; only when a search runs)

        kwargs: dict[str, Any] = {"seed": (self.seed * 1_000_003 + number) % 2**31, "multivariate": True,
                                  "constant_liar": True, "n_startup_trials": self.n_startup_trials}
        if not _has_set_constraint():
            kwargs["constraints_func"] = _constraints_from_user_attrs
        with _quiet_optuna():
            return optuna.samplers.TPESampler(**kwargs)

    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution  # noqa: PLC0415

        return {layer.name: FloatDistribution(layer.min_ratio, layer.max_ratio) for layer in self.costs.layers}

    def _ask(self, study: Any, number: int, fixed: Mapping[str, float] | None = None) -> Any:
        held = len(study.get_trials(deepcopy=False))
        if held != number:
            raise RuntimeError(f"the study holds {held} trials, expected {number} (was it used elsewhere?)")
        with _quiet_optuna():
            study.sampler = self._sampler(number)
            if fixed is not None:
                study.enqueue_trial(dict(fixed))
            trial = study.ask()
            for layer in self.costs.layers:
                trial.suggest_float(layer.name, layer.min_ratio, layer.max_ratio)
        return trial

    def _build_study(self) -> Any:
        import optuna  # noqa: PLC0415

        with _quiet_optuna():
            study = optuna.create_study(directions=list(self.directions), sampler=self._sampler(0))
        finished = {record["number"]: record for record in self.trials}
        running = {t.params["trial_number"]: t for t in self.pending()}
        distributions = self._distributions()
        new_style = "constraints" in inspect.signature(optuna.trial.create_trial).parameters
        for number in range(len(finished) + len(running)):
            if number in finished:
                record = finished[number]
                state = optuna.trial.TrialState[record["state"]]
                kwargs: dict[str, Any] = {}
                if record["constraints"]:
                    if new_style:
                        kwargs["constraints"] = dict(record["constraints"])
                    else:
                        kwargs["system_attrs"] = {"constraints": tuple(record["constraints"].values())}
                        kwargs["user_attrs"] = {"constraints": dict(record["constraints"])}
                with _quiet_optuna():
                    study.add_trial(optuna.trial.create_trial(
                        state=state, params=dict(record["params"]), distributions=distributions,
                        values=record["values"] if state == optuna.trial.TrialState.COMPLETE else None, **kwargs,
                    ))
            elif number in running:
                self._live[number] = self._ask(study, number, running[number].params["suggested"])
            else:
                raise ValueError(f"Optuna search state: trial {number} is neither finished nor running")
        return study

    # -- proposing --------------------------------------------------------------------------------
    def _propose(self, n: int) -> list[Proposal]:
        study = self.study
        proposals = []
        for _ in range(n):
            number = len(study.get_trials(deepcopy=False))
            trial = self._ask(study, number)
            suggested = {layer.name: float(trial.params[layer.name]) for layer in self.costs.layers}
            ratios = [layer.quantize(suggested[layer.name]) for layer in self.costs.layers]
            repaired = False
            if self.repair and self.budgets and not self.costs.feasible(ratios, self.budgets):
                fixed = self.costs.repair(ratios, self.budgets)
                if fixed is None:
                    fixed = self.costs.max_ratios()
                    if not self._warned_unreachable:
                        self._warned_unreachable = True
                        logger.warning("Optuna search: the budget %s cannot be met with every layer at its max ratio",
                                       self.budgets)
                ratios, repaired = fixed, True
            self._live[number] = trial
            params = {"trial_number": number, "suggested": suggested, "repaired": repaired, "decisions": ratios,
                      "ratios": self.costs.per_layer(ratios), "predicted": self.costs.ratios_of(ratios)}
            proposals.append(Proposal(self.costs.config_list(ratios), None, params))
        return proposals

    # -- telling ----------------------------------------------------------------------------------
    def _measured(self, result: TaskResult, metric: str) -> float:
        if metric in result.metrics:
            return float(result.metrics[metric])
        predicted = self.tasks[result.task_id].params["predicted"]
        return float(predicted.get(metric, 1.0))  # latency unknown: as the unpruned model

    def constraint_values(self, result: TaskResult) -> dict[str, float]:
        """``measured ratio - bound`` per bound (feasible when all are <= 0)."""
        return {metric: self._measured(result, metric) - getattr(self.constraints, key)
                for key, metric in _BOUNDS if getattr(self.constraints, key) is not None}

    def _observe(self, result: TaskResult) -> None:
        import optuna  # noqa: PLC0415

        task = self.tasks[result.task_id]
        number = int(task.params["trial_number"])
        score = result.score
        complete = result.ok and score is not None and math.isfinite(score)
        values = [float(score)] if complete and score is not None else None
        if values is not None and self.multi_objective:
            values.append(self._measured(result, f"{self.target}_ratio"))
        constraints = self.constraint_values(result) if complete else {}
        record = {"number": number, "task_id": result.task_id, "params": dict(task.params["suggested"]),
                  "values": values, "state": "COMPLETE" if complete else "FAIL", "constraints": constraints}
        self.trials.append(record)
        trial = self._live.pop(number, None)
        if trial is None:
            self._study = None  # not asked in this process: rebuilt from the records on next use
            return
        with _quiet_optuna():
            if complete:
                if _has_set_constraint():
                    for key, value in constraints.items():
                        trial.set_constraint(key, value)
                else:
                    trial.set_user_attr("constraints", dict(constraints))
                self.study.tell(trial, values=values)
            else:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    # -- results ----------------------------------------------------------------------------------
    def pareto_front(self) -> list[TaskResult]:
        """Feasible results no other feasible result beats in both score and cost ratio (Optuna's ``best_trials``).

        In single-objective mode: the best trial(s).
        """
        task_of = {record["number"]: record["task_id"] for record in self.trials}
        front = [self.results[task_of[t.number]] for t in self.study.best_trials if t.number in task_of]
        return sorted(front, key=lambda r: r.task_id)

    # -- persistence ------------------------------------------------------------------------------
    def _algo_state(self) -> dict[str, Any]:
        return {"decisions": self.costs.names, "directions": list(self.directions), "trials": [dict(r) for r in self.trials]}

    def _load_algo_state(self, state: dict[str, Any]) -> None:
        if state.get("decisions") != self.costs.names or state.get("directions") != self.directions:
            raise ValueError(
                f"Optuna search state is for decisions {state.get('decisions')} / directions {state.get('directions')}, "
                f"this search has {self.costs.names} / {self.directions}"
            )
        self.trials = [dict(r) for r in state["trials"]]
        self._live = {}
        self._study = None


class OptunaPruner(SearchPruner):
    """Per-layer sparsities found by Optuna's TPE, run in-process (same shape as the NNI-style pruners).

    Args:
        model: the model to prune (copied for every trial).
        config_list: e.g. ``[{'op_types': ['Conv2d'], 'max_sparse_ratio': 0.8}]``.
        dummy_input: an input of the model.
        evaluator: ``evaluator(model) -> score`` of each pruned (and finetuned) model.
        pruning_algorithm: the pruner of every trial (a channel pruner: ``'l1'``, ``'l2'``, ``'fpgm'``...).
        max_trials, target, multi_objective, max_sparse_ratio, n_startup_trials, repair: see
            :class:`OptunaTaskGenerator`.
        finetuner: ``finetuner(model)`` after pruning.
        speedup, pruning_params, log_dir, keep_intermediate_result, constraints, seed: as in the
            other pruners.
        gradual: prune during each trial's finetune instead of before it (see
            :class:`~search.scheduling.PruningScheduler`).
        refine: trials of the budget kept for a gradual refine of the best allocation (see
            :class:`~search.scheduling.TaskGenerator`; 0: none).
    """

    task_generator: OptunaTaskGenerator

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        dummy_input: Any,
        evaluator: Callable[[nn.Module], float],
        pruning_algorithm: str | type[Pruner] = "l1",
        max_trials: int = 50,
        target: str = "flops",
        finetuner: Callable[[nn.Module], Any] | None = None,
        *,
        multi_objective: bool = False,
        max_sparse_ratio: float = 0.8,
        n_startup_trials: int = 10,
        repair: bool = True,
        speedup: bool = False,
        pruning_params: Mapping[str, Any] | None = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        constraints: Mapping[str, Any] | Constraints | None = None,
        seed: int = 0,
        gradual: Mapping[str, Any] | None = None,
        refine: int = 0,
    ) -> None:
        self.task_generator = OptunaTaskGenerator(
            model, config_list, dummy_input, max_trials=max_trials, target=target, multi_objective=multi_objective,
            max_sparse_ratio=max_sparse_ratio, n_startup_trials=n_startup_trials, repair=repair, log_dir=log_dir,
            keep_intermediate_result=keep_intermediate_result, constraints=constraints, seed=seed, refine=refine,
        )
        self.scheduler = PruningScheduler(
            pruning_algorithm, self.task_generator, finetuner=finetuner, speedup=speedup, dummy_input=dummy_input,
            evaluator=evaluator, pruner_kwargs=pruning_params, gradual=gradual,
        )

    def pareto_front(self) -> list[TaskResult]:
        """See :meth:`OptunaTaskGenerator.pareto_front`."""
        return self.task_generator.pareto_front()
