"""Chains: Linear, AGP and LotteryTicket — each iteration prunes the previous one's result further.

Iteration ``i`` of ``total_iteration`` asks for ``schedule(i / total_iteration)`` of every ratio
in the config list (relative to the origin model); it starts from iteration ``i - 1``'s
finetuned masked model, so what is pruned stays pruned. A failed iteration is recorded and the
chain goes on from the last successful one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from search.config import canonicalize_config_list
from search.pruning import Pruner
from search.scheduling import Proposal, PruningScheduler, TaskGenerator, TaskResult
from search.scheduling.generator import scale_config_list

__all__ = [
    "FunctionBasedTaskGenerator",
    "LinearTaskGenerator",
    "AGPTaskGenerator",
    "LotteryTicketTaskGenerator",
    "LinearPruner",
    "AGPPruner",
    "LotteryTicketPruner",
    "scale_config_list",
]

class FunctionBasedTaskGenerator(TaskGenerator):
    """A chain of ``total_iteration`` tasks; subclasses define :meth:`ratio_at`.

    ``max_trials`` defaults to ``total_iteration`` plus ``refine`` (the refine phase's trials, see
    :class:`~search.scheduling.TaskGenerator`).
    """

    def __init__(self, total_iteration: int, origin_model: nn.Module | None = None, *args: Any, **kwargs: Any) -> None:
        if isinstance(total_iteration, bool) or not isinstance(total_iteration, int) or total_iteration < 1:
            raise ValueError(f"total_iteration must be a positive int, got {total_iteration!r}")
        kwargs.setdefault("max_trials", total_iteration + kwargs.get("refine", 0))
        super().__init__(origin_model, *args, **kwargs)
        if origin_model is not None:
            # A bad config list fails here, not at the iteration whose ratio first trips it.
            canonicalize_config_list(origin_model, self.origin_config_list, mode="pruning")
        self.total_iteration = total_iteration
        self.iteration = 0
        self.last_good: int | None = None

    def ratio_at(self, target: float, iteration: int) -> float:
        raise NotImplementedError

    def _propose(self, n: int) -> list[Proposal]:
        if self.pending() or self.iteration >= self.total_iteration:
            return []
        self.iteration += 1
        i = self.iteration
        config = scale_config_list(self.origin_config_list, lambda r: self.ratio_at(r, i))
        return [Proposal(config, self.last_good, {"iteration": i})]

    def _observe(self, result: TaskResult) -> None:
        if result.ok:
            self.last_good = result.task_id

    def _finished(self) -> bool:
        return self.iteration >= self.total_iteration and not self.pending()

    def _keep_models(self) -> list[int]:
        return [self.last_good] if self.last_good is not None else []

    def _algo_state(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "last_good": self.last_good}

    def _load_algo_state(self, state: dict[str, Any]) -> None:
        self.iteration = int(state.get("iteration", 0))
        self.last_good = state.get("last_good")


class LinearTaskGenerator(FunctionBasedTaskGenerator):
    """Ratios grow linearly: ``target * i / T``."""

    def ratio_at(self, target: float, iteration: int) -> float:
        return target * iteration / self.total_iteration


class AGPTaskGenerator(FunctionBasedTaskGenerator):
    """Automated gradual pruning (Zhu & Gupta 2017): ``target * (1 - (1 - i / T) ** 3)``."""

    def ratio_at(self, target: float, iteration: int) -> float:
        return target * (1.0 - (1.0 - iteration / self.total_iteration) ** 3)


class LotteryTicketTaskGenerator(FunctionBasedTaskGenerator):
    """Iterative magnitude pruning (Frankle & Carbin 2019): keep ``(1 - target) ** (i / T)`` each step.

    Each iteration ranks its parent's trained weights; with ``reset_weight=True`` (default, as in
    NNI) the weights are then rewound to the origin model's before the finetune. With
    ``reset_weight=False`` they are kept and only the finetune's schedule starts over ("learning-rate
    rewinding", Renda et al., ICLR 2020), which trains the surviving weights across iterations.
    Every task says which in ``params['reset_weight']``; whoever runs the tasks rewinds only then.

    Example:
        >>> import torch
        >>> gen = LotteryTicketTaskGenerator(2, torch.nn.Linear(4, 4), origin_config_list=[{'op_types': ['Linear'], 'sparse_ratio': 0.75}],
        ...                                  log_dir=None, best_result_mode='latest', reset_weight=False)
        >>> task = gen.ask(1)[0]
        >>> task.config_list[0]['sparse_ratio'], task.params['reset_weight']
        (0.5, False)
    """

    def __init__(self, total_iteration: int, origin_model: nn.Module | None = None, *args: Any,
                 reset_weight: bool = True, **kwargs: Any) -> None:
        if not isinstance(reset_weight, bool):
            raise ValueError(f"reset_weight must be true or false, got {reset_weight!r}")
        super().__init__(total_iteration, origin_model, *args, **kwargs)
        self.reset_weight = reset_weight

    def ratio_at(self, target: float, iteration: int) -> float:
        return 1.0 - (1.0 - target) ** (iteration / self.total_iteration)

    def _propose(self, n: int) -> list[Proposal]:
        proposals = super()._propose(n)
        for proposal in proposals:
            proposal.params["reset_weight"] = self.reset_weight
        return proposals


class _ChainPruner:
    """The NNI-named chain pruners: a chain generator run in-process by a :class:`PruningScheduler`.

    The arguments are NNI's; besides them ``best_result_mode``, ``constraints`` and ``gradual``
    (prune during each iteration's finetune instead of before it, see ``PruningScheduler``).
    """

    generator_class: type[FunctionBasedTaskGenerator]
    reset_weight = False

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        pruning_algorithm: str | type[Pruner] = "l1",
        total_iteration: int = 10,
        finetuner: Callable[[nn.Module], Any] | None = None,
        speedup: bool = False,
        dummy_input: Any = None,
        pruning_params: Mapping[str, Any] | None = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        evaluator: Callable[[nn.Module], float] | None = None,
        *,
        best_result_mode: str | None = None,
        constraints: Mapping[str, Any] | None = None,
        gradual: Mapping[str, Any] | None = None,
        **generator_params: Any,
    ) -> None:
        mode = best_result_mode or ("maximize" if evaluator is not None else "latest")
        self.task_generator = self.generator_class(
            total_iteration, model, origin_config_list=config_list, log_dir=log_dir,
            keep_intermediate_result=keep_intermediate_result, best_result_mode=mode, constraints=dict(constraints or {}),
            **generator_params,
        )
        self.scheduler = PruningScheduler(
            pruning_algorithm, self.task_generator, finetuner=finetuner, speedup=speedup, dummy_input=dummy_input,
            evaluator=evaluator, reset_weight=self.reset_weight, pruner_kwargs=pruning_params, gradual=gradual,
        )

    def compress(self) -> None:
        self.scheduler.compress()

    def get_best_result(self) -> Any:
        return self.scheduler.get_best_result()


class LinearPruner(_ChainPruner):
    """``LinearPruner(model, config_list, pruning_algorithm, total_iteration, finetuner, ...)`` as in NNI."""

    generator_class = LinearTaskGenerator


class AGPPruner(_ChainPruner):
    """``AGPPruner(model, config_list, pruning_algorithm, total_iteration, finetuner, ...)`` as in NNI."""

    generator_class = AGPTaskGenerator


class LotteryTicketPruner(_ChainPruner):
    """Iterative magnitude pruning that rewinds to the origin weights before each finetune.

    ``reset_weight=False`` (NNI's argument) keeps the trained weights instead: learning-rate
    rewinding, see :class:`LotteryTicketTaskGenerator`.
    """

    generator_class = LotteryTicketTaskGenerator
    reset_weight = True

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], pruning_algorithm: str | type[Pruner] = "l1",
                 total_iteration: int = 10, *args: Any, reset_weight: bool = True, **kwargs: Any) -> None:
        super().__init__(model, config_list, pruning_algorithm, total_iteration, *args, reset_weight=reset_weight, **kwargs)
