"""AutoCompress (Liu et al., AAAI 2020): per iteration, an annealing allocation search, then ADMM.

Iteration ``i`` of ``total_iteration`` asks for ``1 - (1 - target) ** (i / total_iteration)`` of
each sub-config's total ratio (what is pruned stays pruned). It first searches the per-layer
allocation of that ratio by simulated annealing — a few neighbours per temperature, handed out
together, each pruned by a plain magnitude pruner from the previous iteration's model, finetuned
briefly and scored — then prunes the previous model with the best allocation through
:class:`ADMMPruner` (``phase: 'admm'``). That result is the next iteration's parent. With
``max_trials`` the search of each iteration is cut short so that every ADMM step still runs.

:class:`ADMMPruner` trains with the augmented loss ``loss + rho/2 * ||W - Z + U||^2`` (added to
the evaluator's training step via ``patch_loss``), where after every ``training_steps`` steps
``Z`` is the projection of ``W + U`` onto the sparse set (the masks the allocator would give
``W + U``) and ``U += W - Z``; the final masks come from the magnitude of the trained weights.

Example:
    >>> import torch
    >>> from search.algorithms import ADMMPruner
    >>> from search.pruning import TorchEvaluator
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(4)]
    >>> def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
    ...     for b in batches:
    ...         optimizers.zero_grad(); training_step(b, model).backward(); optimizers.step()
    >>> step = lambda b, m: torch.nn.functional.cross_entropy(m(b[0]), b[1])
    >>> evaluator = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.1), step)
    >>> pruner = ADMMPruner(model, [{'op_names': ['0'], 'sparse_ratio': 0.5}], evaluator, iterations=2,
    ...                     training_steps=4, rho=0.1)
    >>> _, masks = pruner.compress()
    >>> float(masks['0']['weight'].mean())
    0.5
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from search.algorithms.allocation import (
    BudgetRepair,
    SearchPruner,
    allocation_layers,
    group_targets,
    over_budget,
    per_layer_config_list,
    require_scores,
    rescale,
    weighted_ratio,
)
from search.algorithms.annealing import Annealer, AnnealingSchedule
from search.pruning import BasicPruner, Evaluator, Pruner, SparsityAllocator, TorchEvaluator
from search.pruning.registry import get_pruner_class, register_pruner
from search.pruning.tools import DataCollector, NormMetricsCalculator, TargetDataCollector
from search.scheduling import Proposal, PruningScheduler, Task, TaskGenerator, TaskResult

__all__ = ["ADMMPruner", "AutoCompressPruner", "AutoCompressTaskGenerator"]

logger = logging.getLogger(__name__)

_GRANULARITIES = {"fine-grained": "element", "coarse-grained": "out_channel"}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _rebind_optimizers(evaluator: Evaluator, model: nn.Module) -> Callable[[], None]:
    """Point a TorchEvaluator's optimizer at ``model``'s parameters (a trial trains a copy).

    Returns the function that restores the evaluator's own optimizers.
    """
    if not isinstance(evaluator, TorchEvaluator):
        return lambda: None
    own = evaluator._optimizers
    held = {id(p) for opt in own for group in opt.param_groups for p in group["params"]}
    if all(id(p) in held for p in model.parameters()):
        return lambda: None
    if len(own) != 1:
        raise ValueError("ADMMPruner: the evaluator's optimizers do not hold this model's parameters and, "
                         "being several, cannot be rebuilt for it; build the evaluator on this model")
    fresh = type(own[0])(model.parameters(), **own[0].defaults)
    saved = (evaluator.optimizers, evaluator._optimizers)
    evaluator.optimizers = fresh if isinstance(saved[0], torch.optim.Optimizer) else [fresh]
    evaluator._optimizers = [fresh]

    def restore() -> None:
        evaluator.optimizers, evaluator._optimizers = saved

    return restore


class _ADMMCollector(DataCollector):
    """Runs the ADMM training, then hands the trained weights to the magnitude metric."""

    def collect(self) -> dict[str, dict[str, Any]]:
        self.compressor._run_admm()  # type: ignore[attr-defined]
        return TargetDataCollector(self.compressor).collect()


class ADMMPruner(BasicPruner):
    """ADMM pruning (Zhang et al. 2018, as in NNI): train towards a sparse projection, then mask.

    Args:
        model: the model to prune.
        config_list: the ratios per layer (any config list the magnitude pruners take).
        evaluator: an :class:`~search.pruning.Evaluator` (e.g. ``TorchEvaluator``) that trains the
            model; a TorchEvaluator's single optimizer is rebuilt (same class and defaults) when
            it does not hold this model's parameters, as when a search trains a copy.
        iterations: ADMM iterations (each: ``training_steps`` steps, then update ``Z`` and ``U``).
        training_steps: optimizer steps per iteration.
        rho: the penalty weight.
        granularity: ``'fine-grained'`` (weights, L1) or ``'coarse-grained'`` (output channels, L2).
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        evaluator: Evaluator,
        iterations: int = 5,
        training_steps: int = 50,
        *,
        rho: float = 1e-4,
        granularity: str = "fine-grained",
        **kwargs: Any,
    ) -> None:
        if not isinstance(evaluator, Evaluator):
            raise TypeError(f"evaluator must be a search.pruning.Evaluator (e.g. TorchEvaluator), got {type(evaluator).__name__}")
        if granularity not in _GRANULARITIES:
            raise ValueError(f"granularity must be 'fine-grained' or 'coarse-grained', got {granularity!r}")
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not rho > 0:
            raise ValueError(f"rho must be a positive number, got {rho!r}")
        self.evaluator = evaluator
        self.iterations = _positive_int("iterations", iterations)
        self.training_steps = _positive_int("training_steps", training_steps)
        self.rho = float(rho)
        self.granularity = granularity
        self.default_granularity = _GRANULARITIES[granularity]
        #: primal residual ``||W - Z||`` after each iteration (how close the weights are to sparse).
        self.residuals: list[float] = []
        super().__init__(model, config_list, **kwargs)

    def reset_tools(self) -> None:
        p = 1.0 if self.granularity == "fine-grained" else 2.0
        self.data_collector = _ADMMCollector(self)
        self.metrics_calculator = NormMetricsCalculator(p=p, scalers=self.target_scaling)
        self.sparsity_allocator = SparsityAllocator(self)

    def _project(self, values: Mapping[tuple[str, str], Tensor]) -> dict[tuple[str, str], Tensor]:
        """``values`` with what the allocator would mask for them set to zero."""
        assert self.metrics_calculator is not None and self.sparsity_allocator is not None
        data: dict[str, dict[str, Any]] = {}
        for (module, target), value in values.items():
            data.setdefault(module, {})[target] = value
        masks = self.sparsity_allocator.generate_sparsity(self.metrics_calculator.calculate_metrics(data))
        return {key: value * masks[key[0]][key[1]].to(value.device, value.dtype) for key, value in values.items()}

    def _run_admm(self) -> None:
        params = {}
        for module, target in self.metric_targets():
            value = getattr(self.get_module(module), target, None)
            if isinstance(value, nn.Parameter):
                params[(module, target)] = value
        with torch.no_grad():
            z = self._project({k: p.detach().clone() for k, p in params.items()})
        u = {k: torch.zeros_like(p) for k, p in params.items()}
        half_rho = self.rho / 2

        def penalty(loss: Tensor, _model: nn.Module) -> Tensor:
            return loss + half_rho * sum(((p - z[k] + u[k]) ** 2).sum() for k, p in params.items())

        self.evaluator.bind_model(self.bound_model)
        restore = _rebind_optimizers(self.evaluator, self.bound_model)
        try:
            self.evaluator.patch_loss(penalty)
            for it in range(self.iterations):
                if self.evaluator.train(max_steps=self.training_steps) == 0:
                    raise RuntimeError("ADMMPruner: the evaluator's training_func took no optimizer step")
                with torch.no_grad():
                    z.update(self._project({k: p.detach() + u[k] for k, p in params.items()}))
                    for k, p in params.items():
                        u[k] += p.detach() - z[k]
                    residual = float(sum(((p.detach() - z[k]) ** 2).sum() for k, p in params.items())) ** 0.5
                self.residuals.append(residual)
                logger.debug("ADMM iteration %d: ||W - Z|| = %.4g", it + 1, residual)
        finally:
            restore()
            self.evaluator.unbind_model()


register_pruner("admm", ADMMPruner, overwrite=True)


class AutoCompressTaskGenerator(TaskGenerator):
    """AutoCompress as an ask/tell search: annealing rounds, then one ADMM task, per iteration.

    Args:
        total_iteration: the iterations (the ratio grows as in LotteryTicket).
        origin_model, origin_masks, origin_config_list, log_dir, keep_intermediate_result,
            best_result_mode: as for :class:`~search.scheduling.TaskGenerator` (the mode must be
            ``'maximize'`` or ``'minimize'``).
        sa_params: the annealing schedule of each iteration's search (see
            :class:`~search.algorithms.annealing.AnnealingSchedule`).
        max_layer_ratio, max_trials, constraints, seed: as for the other searches. The constraints
            bound the final model: in the last iteration a search result over a bound is never
            accepted nor kept as the best allocation.
        refine: the last trials of ``max_trials`` kept for the refine phase after the search (see
            :class:`~search.scheduling.TaskGenerator`; 0: none).
        dummy_input: an input of the model; with a ``max_flops_ratio`` / ``max_params_ratio``
            bound, the last iteration's candidates predicted over it are moved onto it before they
            run (see :class:`~search.algorithms.allocation.BudgetRepair`).

    Task ``params``: ``iteration``, ``phase`` (``'search'`` or ``'admm'``), ``ratios``,
    ``requested_sparsity``; search tasks also ``round``, ``candidate`` and ``temperature``.
    """

    def __init__(
        self,
        total_iteration: int,
        origin_model: nn.Module | None,
        origin_masks: dict[str, dict[str, Tensor]] | None = None,
        origin_config_list: list[dict[str, Any]] | None = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        best_result_mode: str = "maximize",
        *,
        sa_params: Mapping[str, Any] | None = None,
        max_layer_ratio: float = 0.95,
        max_trials: int | None = None,
        constraints: Mapping[str, Any] | None = None,
        seed: int = 0,
        refine: int = 0,
        dummy_input: Any = None,
    ) -> None:
        super().__init__(origin_model, origin_masks, origin_config_list, log_dir, keep_intermediate_result,
                         best_result_mode, max_trials=max_trials, constraints=dict(constraints or {}), seed=seed,
                         refine=refine)
        require_scores(best_result_mode, type(self).__name__)
        self.total_iteration = _positive_int("total_iteration", total_iteration)
        if self.search_trials is not None and self.search_trials < total_iteration:
            raise ValueError(f"max_trials={max_trials} leaves no room for {total_iteration} ADMM steps"
                             + (f" after refine={self.refine}" if self.refine else ""))
        if origin_model is None:
            raise ValueError(f"{type(self).__name__} needs origin_model to find the layers to allocate")
        self.schedule = AnnealingSchedule.from_dict(sa_params)
        self.layers = allocation_layers(origin_model, self.origin_config_list, max_layer_ratio)
        self.repair = BudgetRepair.from_constraints(origin_model, dummy_input, self.layers, self.constraints)
        self.annealer = Annealer(self.layers, self.schedule, 1.0 if best_result_mode == "maximize" else -1.0,
                                 self._project_alloc if self.repair is not None else None)
        self.iteration = 0
        self.phase = "search"
        self.parent_id: int | None = None
        self.base = [layer.lo for layer in self.layers]
        self.admm_proposed = False
        self.done_reason: str | None = None
        self._start_iteration()

    def ratio_at(self, target: float, iteration: int) -> float:
        return 1.0 - (1.0 - target) ** (iteration / self.total_iteration)

    def _project_alloc(self, alloc: list[float]) -> list[float]:
        """The bounds hold for the final model: repair the allocations of the last iteration only."""
        if self.repair is None or self.iteration < self.total_iteration:
            return alloc
        return self.repair(alloc)

    def _start_iteration(self) -> None:
        self.iteration += 1
        i = self.iteration
        targets = group_targets(self.layers, lambda t: self.ratio_at(t, i))
        # Grow the previous allocation (its shape is what the last search found); uniform at first.
        seed = self.base if any(b > 0 for b in self.base) else [targets[layer.group] for layer in self.layers]
        self.annealer.start(rescale(seed, self.layers, targets, self.base), targets, self.base)
        self.phase, self.admm_proposed = "search", False

    def _search_allowance(self) -> int | None:
        """Search trials this iteration may still start, keeping one trial per remaining ADMM step."""
        if self.search_trials is None:
            return None
        return self.search_trials - len(self._search_tasks()) - (self.total_iteration - self.iteration + 1)

    @property
    def stop_reason(self) -> str | None:
        return self.done_reason

    def _params(self, alloc: list[float], **extra: Any) -> dict[str, Any]:
        return {"iteration": self.iteration, **extra,
                "ratios": {layer.name: r for layer, r in zip(self.layers, alloc, strict=True)},
                "requested_sparsity": weighted_ratio(self.layers, alloc)}

    def _propose(self, n: int) -> list[Proposal]:
        a = self.annealer
        if self.phase == "search":
            allowed = self._search_allowance()
            no_room = allowed is not None and allowed <= 0
            if a.round is not None and no_room and len(a.round.told) == a.round.next:
                if a.round.next:  # the budget cut this round short: decide on what ran
                    a.close_round(self.rng)
                else:
                    a.round = None
            if a.round is None and not a.done and not no_room:
                a.open_round(self.rng)
            if a.round is not None:
                k = n if allowed is None else min(n, max(allowed, 0))
                return [Proposal(per_layer_config_list(self.layers, alloc), self.parent_id,
                                 self._params(alloc, phase="search", round=a.round_index, candidate=index,
                                              temperature=a.temperature))
                        for index, alloc in a.round.take(k)]
            self.phase = "admm"
        if self.phase == "admm" and not self.admm_proposed:
            self.admm_proposed = True
            alloc = list(a.best or a.current or self.base)
            return [Proposal(per_layer_config_list(self.layers, alloc), self.parent_id,
                             self._params(alloc, phase="admm", pruner="admm"))]
        return []

    def _observe(self, result: TaskResult) -> None:
        task = self.tasks[result.task_id]
        if task.params.get("iteration") != self.iteration:
            return
        a = self.annealer
        if task.params.get("phase") == "search":
            if a.round is None or task.params.get("round") != a.round_index:
                return
            last = self.iteration >= self.total_iteration
            usable = result.ok and not (last and over_budget(self.constraints, result.metrics))
            a.round.record(int(task.params["candidate"]), result.task_id, result.score if usable else None)
            allowed = self._search_allowance()
            if a.round.complete(allowed is None or allowed > 0):
                a.close_round(self.rng)
            return
        if result.ok:
            self.parent_id = result.task_id
        else:
            fallback = self._best_search_task()
            logger.warning("AutoCompress iteration %d: the ADMM task failed; going on from %s", self.iteration,
                           f"search task {fallback}" if fallback is not None else "the previous model")
            if fallback is not None:
                self.parent_id = fallback
        self.base = [float(task.params["ratios"][layer.name]) for layer in self.layers]
        if self.iteration >= self.total_iteration:
            self.phase, self.done_reason = "done", f"all {self.total_iteration} iterations done"
        else:
            self._start_iteration()

    def _best_search_task(self) -> int | None:
        best: tuple[float, int] | None = None
        for d in self.annealer.decisions:
            if d["score"] is not None and (best is None or self.annealer.sign * (d["score"] - best[0]) > 0):
                best = (d["score"], d["task_id"])
        return best[1] if best is not None else None

    def feasible(self, result: TaskResult) -> bool:
        """Within the constraints and at the final ratio (a task of the last iteration)."""
        task: Task = self.tasks[result.task_id]
        return super().feasible(result) and task.params.get("iteration") == self.total_iteration

    def _finished(self) -> bool:
        return self.phase == "done"

    def _keep_models(self) -> list[int]:
        keep = [self.parent_id] if self.parent_id is not None else []
        return keep + [tid for tid, t in self.tasks.items()
                       if tid in self.results and t.params.get("iteration") == self.iteration]

    def _algo_state(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "phase": self.phase, "parent_id": self.parent_id, "base": list(self.base),
                "admm_proposed": self.admm_proposed, "done_reason": self.done_reason,
                "annealer": self.annealer.state_dict()}

    def _load_algo_state(self, state: dict[str, Any]) -> None:
        self.iteration, self.phase = int(state["iteration"]), str(state["phase"])
        self.parent_id, self.base = state["parent_id"], [float(b) for b in state["base"]]
        self.admm_proposed, self.done_reason = bool(state["admm_proposed"]), state["done_reason"]
        self.annealer.load_state_dict(state["annealer"])


class AutoCompressPruner(SearchPruner):
    """``AutoCompressPruner(model, config_list, total_iteration, admm_params, sa_params, ...)`` as in NNI.

    Args:
        model: the model to prune (not modified: each trial works on a copy).
        config_list: layers and a total ratio per sub-config.
        total_iteration: iterations of search + ADMM.
        admm_params: ``{'evaluator': Evaluator (required), 'iterations': 5, 'training_steps': 50,
            'rho': 1e-4, 'granularity': ...}`` (granularity defaults to the search pruner's kind:
            ``'fine-grained'`` for ``'level'``, else ``'coarse-grained'``).
        sa_params: the annealing schedule (``start_temperature``, ``stop_temperature``,
            ``cool_down_rate``, ``perturbation_magnitude``, ``neighbours_per_temperature``) plus
            ``pruning_algorithm`` (default ``'level'``) and ``pruning_params`` for the search trials.
        log_dir, keep_intermediate_result, finetuner, speedup, dummy_input: as in NNI.
        evaluator: ``evaluator(model) -> score`` (required).
        max_layer_ratio, best_result_mode, max_trials, constraints, seed: as for the generator.
        gradual: prune during each trial's finetune instead of before it (see
            :class:`~search.scheduling.PruningScheduler`).
        refine: trials of the budget kept for a gradual refine of the best allocation (see
            :class:`~search.scheduling.TaskGenerator`; 0: none).
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        total_iteration: int,
        admm_params: Mapping[str, Any],
        sa_params: Mapping[str, Any] | None = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        finetuner: Callable[[nn.Module], Any] | None = None,
        speedup: bool = False,
        dummy_input: Any = None,
        evaluator: Callable[[nn.Module], float] | None = None,
        *,
        max_layer_ratio: float = 0.95,
        best_result_mode: str = "maximize",
        max_trials: int | None = None,
        constraints: Mapping[str, Any] | None = None,
        seed: int = 0,
        gradual: Mapping[str, Any] | None = None,
        refine: int = 0,
    ) -> None:
        if evaluator is None:
            raise ValueError("AutoCompressPruner needs an evaluator: the allocation search compares scores")
        admm = dict(admm_params or {})
        if "evaluator" not in admm:
            raise ValueError("admm_params needs 'evaluator': an Evaluator (e.g. TorchEvaluator) that trains the model")
        sa = copy.copy(dict(sa_params or {}))
        pruning_algorithm = sa.pop("pruning_algorithm", "level")
        pruning_params = sa.pop("pruning_params", None)
        if "granularity" not in admm:
            cls = get_pruner_class(pruning_algorithm) if isinstance(pruning_algorithm, str) else pruning_algorithm
            admm["granularity"] = "fine-grained" if getattr(cls, "default_granularity", "") == "element" else "coarse-grained"
        self.task_generator = AutoCompressTaskGenerator(
            total_iteration, model, None, config_list, log_dir, keep_intermediate_result, best_result_mode,
            sa_params=sa, max_layer_ratio=max_layer_ratio, max_trials=max_trials, constraints=constraints, seed=seed, refine=refine,
            dummy_input=dummy_input,
        )
        pruner: str | type[Pruner] = pruning_algorithm
        self.scheduler = PruningScheduler(
            pruner, self.task_generator, finetuner=finetuner, speedup=speedup, dummy_input=dummy_input,
            evaluator=evaluator, pruner_kwargs=pruning_params, task_pruners={"admm": admm}, gradual=gradual,
        )
