"""Simulated annealing over per-layer sparsity allocations (NNI's ``SimulatedAnnealingPruner``).

The config list names the layers and a total ratio per sub-config (``sparse_ratio``,
``total_sparsity``...). A *solution* is one ratio per layer whose average weighted by the layers'
weight sizes equals the sub-config's ratio. The search starts from the uniform allocation and, at
each temperature, hands out one round of ``neighbours_per_temperature`` candidates at once (they
run in parallel): round 0 is the uniform allocation itself plus ``neighbours_per_temperature - 1``
perturbations of it (drawing a neighbour needs no score, only accepting one does), every later
round that many perturbations of the current solution. When all of a round's candidates are told,
each is accepted or rejected by the Metropolis rule in candidate order (so the order results
arrive in does not matter) and the temperature cools. Cooling happens on every round that holds a
neighbour, so the search ends: at ``stop_temperature`` or when ``max_trials`` is used up. Every
candidate starts from the origin model.

Cost bounds: a result over a ``max_flops_ratio`` / ``max_params_ratio`` / ``max_latency_ratio``
constraint (as measured) is never accepted as the current solution nor kept as the best, so the
walk stays where the constraints hold. With a ``dummy_input`` the FLOPs and params of a candidate
are also predicted before it runs (:class:`BudgetRepair`): one predicted over a bound is moved
onto it (every ratio toward its maximum by the least shared share, as the Optuna search repairs),
so no trial is spent on an allocation that cannot be the result.

The per-layer helpers here (:func:`allocation_layers`, :func:`per_layer_config_list`,
:func:`rescale`) are shared with NetAdapt and AutoCompress.

Example:
    >>> import torch
    >>> from search.algorithms import SimulatedAnnealingPruner
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> pruner = SimulatedAnnealingPruner(model, [{'op_types': ['Linear'], 'total_sparsity': 0.5}],
    ...     evaluator=lambda m: -float(m[0].weight.detach().abs().sum()), start_temperature=1.0, stop_temperature=0.4,
    ...     cool_down_rate=0.5, neighbours_per_temperature=2, log_dir=None)
    >>> pruner.compress()
    >>> len(pruner.task_generator.tasks), pruner.task_generator.stop_reason.startswith('temperature')
    (4, True)
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from search.algorithms.allocation import (
    BudgetRepair,
    CandidateRound,
    LayerSpec,
    SearchPruner,
    allocation_layers,
    better,
    group_targets,
    over_budget,
    per_layer_config_list,
    require_scores,
    rescale,
    weighted_ratio,
)
from search.pruning import Pruner
from search.scheduling import Proposal, PruningScheduler, TaskGenerator, TaskResult

__all__ = ["Annealer", "AnnealingSchedule", "SimulatedAnnealingPruner", "SimulatedAnnealingTaskGenerator"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class AnnealingSchedule:
    """Temperatures and neighbourhood of a simulated annealing search (NNI's defaults).

    The perturbation magnitude shrinks with the temperature:
    ``perturbation_magnitude * T / start_temperature`` per layer, uniform in ``[-m, m]``.
    """

    start_temperature: float = 100.0
    stop_temperature: float = 20.0
    cool_down_rate: float = 0.9
    perturbation_magnitude: float = 0.35
    neighbours_per_temperature: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.stop_temperature < self.start_temperature:
            raise ValueError(f"need 0 < stop_temperature < start_temperature, got {self.stop_temperature!r} "
                             f"and {self.start_temperature!r}")
        if not 0 < self.cool_down_rate < 1:
            raise ValueError(f"cool_down_rate must be in (0, 1), got {self.cool_down_rate!r}")
        if not 0 < self.perturbation_magnitude <= 1:
            raise ValueError(f"perturbation_magnitude must be in (0, 1], got {self.perturbation_magnitude!r}")
        n = self.neighbours_per_temperature
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"neighbours_per_temperature must be a positive int, got {n!r}")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> AnnealingSchedule:
        params = dict(params or {})
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"sa_params: unknown key {sorted(unknown)[0]!r}; valid: {', '.join(cls.__dataclass_fields__)}")
        return cls(**params)

    def rounds(self) -> int:
        """Rounds that cool until the temperature falls to ``stop_temperature``.

        Every round holding a neighbour cools: with ``neighbours_per_temperature > 1`` that is
        every round, round 0 included (a full search is ``rounds() * neighbours_per_temperature``
        trials); with 1, round 0 holds only the initial allocation and does not cool.
        """
        return math.ceil(math.log(self.stop_temperature / self.start_temperature) / math.log(self.cool_down_rate) - 1e-9)


class Annealer:
    """Metropolis search over allocations of ``layers``; its state is plain JSON.

    Every round holds ``neighbours_per_temperature`` candidates drawn at the current temperature:
    round 0 the initial allocation (candidate 0) plus that many minus one of its neighbours,
    every later round neighbours of the current allocation. A neighbour needs only the allocation
    it perturbs, not its score, so round 0 is as wide (as parallel) as the others. Once a round is
    told, its candidates are decided in candidate order by the Metropolis rule against the current
    score, which the accepted ones update as they go; a usable initial allocation is accepted
    unconditionally (there is no score to compare it with). Then the temperature cools, unless the
    round held no neighbour (round 0 with ``neighbours_per_temperature == 1``): the first
    neighbours are drawn at ``start_temperature`` either way.

    A candidate without a score (failed, over a cost bound) is never accepted. If that is the
    initial allocation, the walk still starts from it with no current score, so the first usable
    candidate after it, in round 0 or later, becomes the current solution.
    """

    def __init__(self, layers: Sequence[LayerSpec], schedule: AnnealingSchedule, sign: float,
                 project: Callable[[list[float]], list[float]] | None = None) -> None:
        self.layers = list(layers)
        self.schedule = schedule
        self.sign = sign
        #: applied to every allocation before it is handed out (e.g. a :class:`BudgetRepair`)
        self.project = project
        self._reset()

    def _projected(self, alloc: list[float]) -> list[float]:
        return list(self.project(alloc)) if self.project is not None else alloc

    def _reset(self) -> None:
        self.targets: dict[int, float] = {}
        self.lower: list[float] = [0.0] * len(self.layers)
        self.temperature = self.schedule.start_temperature
        self.round_index = -1
        self.round: CandidateRound | None = None
        self.current: list[float] | None = None
        self.current_score: float | None = None
        self.best: list[float] | None = None
        self.best_score: float | None = None
        self.done = False
        self.decisions: list[dict[str, Any]] = []

    def start(self, initial: Sequence[float], targets: Mapping[int, float], lower: Sequence[float] | None = None) -> None:
        """Begin a new search at ``initial``; the first :meth:`open_round` hands it out with its neighbours."""
        self._reset()
        self.targets = dict(targets)
        self.lower = list(lower) if lower is not None else [0.0] * len(self.layers)
        self.current = self._projected(list(initial))

    def open_round(self, rng: random.Random) -> None:
        """Open the next round: ``neighbours_per_temperature`` candidates at the current temperature.

        The first round is the initial allocation and neighbours of it, the others neighbours of
        the current allocation (see the class docstring).
        """
        assert self.current is not None
        magnitude = self.schedule.perturbation_magnitude * self.temperature / self.schedule.start_temperature
        items = [list(self.current)] if self.round_index < 0 else []
        while len(items) < self.schedule.neighbours_per_temperature:
            moved = [r + rng.uniform(-magnitude, magnitude) for r in self.current]
            items.append(self._projected(rescale(moved, self.layers, self.targets, self.lower)))
        self.round_index += 1
        self.round = CandidateRound(items)

    def close_round(self, rng: random.Random) -> None:
        """Accept or reject each told candidate (Metropolis, in candidate order), then cool."""
        assert self.round is not None
        for index, alloc, task_id, score in self.round.outcomes():
            if score is None:
                accepted = False
            elif self.current_score is None or self.sign * (score - self.current_score) > 0:
                # no current score yet: the usable initial allocation, or the first usable
                # candidate after an unusable one
                accepted = True
            else:
                delta = self.sign * (score - self.current_score)
                accepted = rng.random() < math.exp(delta / self.temperature)
            if accepted:
                self.current, self.current_score = list(alloc), score
            if self.best is None or better(score, self.best_score, self.sign):
                self.best, self.best_score = list(alloc), score
            self.decisions.append({"task_id": task_id, "round": self.round_index, "candidate": index,
                                   "score": score, "accepted": accepted, "temperature": self.temperature})
        if self.round_index > 0 or len(self.round.items) > 1:  # the round drew neighbours at this temperature
            self.temperature *= self.schedule.cool_down_rate
            if self.temperature <= self.schedule.stop_temperature * (1 + 1e-12):
                self.done = True
        self.round = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "targets": {str(g): t for g, t in self.targets.items()}, "lower": list(self.lower),
            "temperature": self.temperature, "round_index": self.round_index,
            "round": self.round.to_json() if self.round is not None else None,
            "current": self.current, "current_score": self.current_score,
            "best": self.best, "best_score": self.best_score, "done": self.done,
            "decisions": copy.deepcopy(self.decisions),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.targets = {int(g): float(t) for g, t in state["targets"].items()}
        self.lower = [float(x) for x in state["lower"]]
        self.temperature = float(state["temperature"])
        self.round_index = int(state["round_index"])
        self.round = CandidateRound.from_json(state["round"]) if state["round"] is not None else None
        self.current, self.current_score = state["current"], state["current_score"]
        self.best, self.best_score = state["best"], state["best_score"]
        self.done = bool(state["done"])
        self.decisions = copy.deepcopy(list(state["decisions"]))


# -- the task generator ------------------------------------------------------------------------------
class SimulatedAnnealingTaskGenerator(TaskGenerator):
    """Simulated annealing over per-layer ratios with a total ratio per sub-config.

    Args:
        origin_model, origin_masks, origin_config_list, log_dir, keep_intermediate_result,
            best_result_mode: as for :class:`~search.scheduling.TaskGenerator` (the mode must be
            ``'maximize'`` or ``'minimize'``: annealing compares scores).
        start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude: NNI's
            schedule; the temperature is multiplied by ``cool_down_rate`` after every round that
            holds a neighbour (every round, except round 0 when ``neighbours_per_temperature`` is 1).
        neighbours_per_temperature: candidates per round, handed out together: round 0 is the
            uniform allocation plus ``neighbours_per_temperature - 1`` neighbours of it, every
            later round that many neighbours of the current solution (see :class:`Annealer`).
            A ``max_trials`` smaller than a round cuts it short; what ran is decided on.
        max_layer_ratio: the highest ratio a layer may get (unless its ``max_sparse_ratio`` is lower).
        max_trials, constraints, seed: the budget, cost bounds and random seed. A result over a
            bound is never accepted (see the module docstring).
        refine: the last trials of ``max_trials`` kept for the refine phase after the search (see
            :class:`~search.scheduling.TaskGenerator`; 0: none).
        dummy_input: an input of the model; with a ``max_flops_ratio`` / ``max_params_ratio``
            bound, candidates predicted over it are moved onto it before they run.

    Each task's ``params`` hold ``round``, ``candidate``, ``temperature``, the requested
    ``ratios`` per layer and their weighted ``requested_sparsity``; ``result.sparsity`` is what
    the pruner achieved.
    """

    def __init__(
        self,
        origin_model: nn.Module | None,
        origin_masks: dict[str, dict[str, Tensor]] | None = None,
        origin_config_list: list[dict[str, Any]] | None = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        best_result_mode: str = "maximize",
        *,
        start_temperature: float = 100.0,
        stop_temperature: float = 20.0,
        cool_down_rate: float = 0.9,
        perturbation_magnitude: float = 0.35,
        neighbours_per_temperature: int = 4,
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
        if origin_model is None:
            raise ValueError(f"{type(self).__name__} needs origin_model to find the layers to allocate")
        self.schedule = AnnealingSchedule(start_temperature, stop_temperature, cool_down_rate,
                                          perturbation_magnitude, neighbours_per_temperature)
        self.layers = allocation_layers(origin_model, self.origin_config_list, max_layer_ratio)
        targets = group_targets(self.layers)
        self.repair = BudgetRepair.from_constraints(origin_model, dummy_input, self.layers, self.constraints)
        self.annealer = Annealer(self.layers, self.schedule, 1.0 if best_result_mode == "maximize" else -1.0,
                                 self.repair)
        self.annealer.start(rescale([targets[layer.group] for layer in self.layers], self.layers, targets), targets)

    @property
    def stop_reason(self) -> str | None:
        """Why the search ended (``None`` while it goes on)."""
        a = self.annealer
        if a.done:
            return (f"temperature {a.temperature:.4g} fell to stop_temperature {self.schedule.stop_temperature:g} "
                    f"after {a.round_index + 1} rounds")
        if not self._budget_left() and not self.pending():
            return self._budget_used_up()
        return None

    def _budget_left(self) -> bool:
        return self.search_trials is None or len(self._search_tasks()) < self.search_trials

    def _propose(self, n: int) -> list[Proposal]:
        a = self.annealer
        if a.done:
            return []
        if a.round is None:
            a.open_round(self.rng)
        assert a.round is not None
        return [self._proposal(a.round_index, index, alloc) for index, alloc in a.round.take(n)]

    def _proposal(self, round_index: int, index: int, alloc: list[float]) -> Proposal:
        return Proposal(per_layer_config_list(self.layers, alloc), None, {
            "round": round_index, "candidate": index, "temperature": self.annealer.temperature,
            "ratios": {layer.name: r for layer, r in zip(self.layers, alloc, strict=True)},
            "requested_sparsity": weighted_ratio(self.layers, alloc),
        })

    def _observe(self, result: TaskResult) -> None:
        a = self.annealer
        params = self.tasks[result.task_id].params
        if a.round is None or params.get("round") != a.round_index:
            return
        usable = result.ok and not over_budget(self.constraints, result.metrics)
        a.round.record(int(params["candidate"]), result.task_id, result.score if usable else None)
        if a.round.complete(self._budget_left()):
            a.close_round(self.rng)

    def _finished(self) -> bool:
        return self.annealer.done

    def _algo_state(self) -> dict[str, Any]:
        return {"annealer": self.annealer.state_dict()}

    def _load_algo_state(self, state: dict[str, Any]) -> None:
        self.annealer.load_state_dict(state["annealer"])


# -- pruner classes ----------------------------------------------------------------------------------
class SimulatedAnnealingPruner(SearchPruner):
    """``SimulatedAnnealingPruner(model, config_list, evaluator, ...)`` with NNI's arguments.

    Args:
        model: the model to prune (not modified: each trial works on a copy).
        config_list: layers and a total ratio per sub-config.
        evaluator: ``evaluator(model) -> score`` (required: annealing compares scores).
        start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude: the schedule
            (rounds of ``neighbours_per_temperature`` parallel trials, the first holding the
            uniform allocation; see :class:`SimulatedAnnealingTaskGenerator`).
        pruning_algorithm: the pruner each trial runs (a registered name or class).
        pruning_params: extra arguments for that pruner.
        log_dir, keep_intermediate_result, finetuner, speedup, dummy_input: as in NNI.
        neighbours_per_temperature, max_layer_ratio, best_result_mode, max_trials, constraints,
            seed: see :class:`SimulatedAnnealingTaskGenerator`.
        gradual: prune during each trial's finetune instead of before it (see
            :class:`~search.scheduling.PruningScheduler`).
        refine: trials of the budget kept for a gradual refine of the best allocation (see
            :class:`~search.scheduling.TaskGenerator`; 0: none).
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        evaluator: Callable[[nn.Module], float],
        start_temperature: float = 100.0,
        stop_temperature: float = 20.0,
        cool_down_rate: float = 0.9,
        perturbation_magnitude: float = 0.35,
        pruning_algorithm: str | type[Pruner] = "level",
        pruning_params: Mapping[str, Any] | None = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        finetuner: Callable[[nn.Module], Any] | None = None,
        speedup: bool = False,
        dummy_input: Any = None,
        *,
        neighbours_per_temperature: int = 4,
        max_layer_ratio: float = 0.95,
        best_result_mode: str = "maximize",
        max_trials: int | None = None,
        constraints: Mapping[str, Any] | None = None,
        seed: int = 0,
        gradual: Mapping[str, Any] | None = None,
        refine: int = 0,
    ) -> None:
        if evaluator is None:
            raise ValueError("SimulatedAnnealingPruner needs an evaluator: annealing compares scores")
        self.task_generator = SimulatedAnnealingTaskGenerator(
            model, None, config_list, log_dir, keep_intermediate_result, best_result_mode,
            start_temperature=start_temperature, stop_temperature=stop_temperature, cool_down_rate=cool_down_rate,
            perturbation_magnitude=perturbation_magnitude, neighbours_per_temperature=neighbours_per_temperature,
            max_layer_ratio=max_layer_ratio, max_trials=max_trials, constraints=constraints, seed=seed, refine=refine,
            dummy_input=dummy_input,
        )
        self.scheduler = PruningScheduler(pruning_algorithm, self.task_generator, finetuner=finetuner, speedup=speedup,
                                          dummy_input=dummy_input, evaluator=evaluator, pruner_kwargs=pruning_params,
                                          gradual=gradual)
