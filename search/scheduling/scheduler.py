"""Run a search in-process: ``PruningScheduler`` (NNI's names and arguments).

Each task copies the model it starts from (the origin model, or its parent task's finetuned
masked model), loads the parent's masks, prunes with the task's config list (what is masked
stays masked), finetunes, evaluates, and measures the compact model (speedup on a copy).

Example:
    >>> import torch
    >>> from search.scheduling import PruningScheduler
    >>> from search.algorithms import LinearTaskGenerator
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> gen = LinearTaskGenerator(3, model, origin_config_list=[{'op_names': ['0'], 'sparse_ratio': 0.75}],
    ...                           log_dir=None, best_result_mode='latest')
    >>> scheduler = PruningScheduler('l1', gen, dummy_input=torch.randn(1, 8))
    >>> scheduler.compress()
    >>> task_id, compact, masks, score, config_list = scheduler.get_best_result()
    >>> task_id, compact[0].out_features
    (2, 4)
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from search.metrics import measure_latency, model_cost
from search.pruning import GradualPruning, GradualSchedule, Pruner
from search.pruning.registry import get_pruner_class, make_pruner
from search.scheduling.generator import TaskGenerator, hands_on, refine_schedule
from search.scheduling.task import Task, TaskResult

__all__ = ["BasePruningScheduler", "PruningScheduler", "achieved_sparsity"]

logger = logging.getLogger(__name__)

Masks = dict[str, dict[str, Tensor]]


def _accepts(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def achieved_sparsity(masks: Mapping[str, Mapping[str, Tensor]]) -> dict[str, float]:
    """Share of masked weight elements per module."""
    out = {}
    for module, targets in masks.items():
        mask = targets.get("weight")
        if mask is not None and mask.numel():
            out[module] = float((mask == 0).sum()) / mask.numel()
    return out


class _TrainingSteps:
    """Counts a model's forward calls in training mode (a finetune's steps) until closed."""

    def __init__(self, model: nn.Module) -> None:
        self.count = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self.count += 1

    def close(self) -> None:
        self._handle.remove()


class BasePruningScheduler:
    """The loop: ask the generator, run each task, tell it the result, until it is done."""

    task_generator: TaskGenerator

    def generate_task(self) -> Task | None:
        return self.task_generator.next()

    def record_task_result(self, result: TaskResult) -> None:
        self.task_generator.receive_task_result(result)

    def pruning_one_step(self, task: Task) -> TaskResult:
        raise NotImplementedError

    def compress(self) -> None:
        while not self.task_generator.is_done():
            tasks = self.task_generator.pending() or self.task_generator.ask(1)
            if not tasks:
                break
            for task in tasks:
                self.record_task_result(self.pruning_one_step(task))

    def get_best_result(self) -> tuple[int, nn.Module | None, Masks | None, float | None, list[dict[str, Any]]] | None:
        return self.task_generator.get_best_result()


class PruningScheduler(BasePruningScheduler):
    """Runs every task of ``task_generator`` in this process.

    Args:
        pruner: a pruner class, a registered name (``'l1'``, ``'level'``, ``'fpgm'``...) or an instance
            (its class is reused with ``pruner_kwargs``).
        task_generator: the search algorithm.
        finetuner: ``finetuner(model)`` trains the (wrapped, masked) model in place.
        speedup: keep the compact model of each result (FLOPs/params are measured either way).
        dummy_input: an input for speedup and cost measurement; also handed to pruners that take
            a ``dummy_input`` (``group_l1`` traces the model with it) unless their kwargs set one.
        evaluator: ``evaluator(model) -> score``.
        reset_weight: start each task from the origin weights (lottery ticket rewinding), unless
            the task's ``params['reset_weight']`` is false.
        pruner_kwargs: extra arguments for the pruner (evaluator, training_steps...).
        task_pruners: ``{name: kwargs}`` for tasks that ask for another pruner through
            ``task.params['pruner']`` (e.g. AutoCompress's ADMM step).
        gradual: prune during the finetune instead of before it: a
            :class:`~search.pruning.GradualSchedule` or its dict (``{'steps': finetune steps,
            'updates': 8, 'end': 0.75}``); the masks reach the task's ratios after ``end`` of the
            steps. Tasks that prune with a task pruner, or rewind weights, prune before the finetune.
            A refine step (``params['refine']``, see :class:`TaskGenerator`) prunes during its finetune
            even without it: its segment of the refine phase's schedule, in units of the finetune's
            steps (``gradual['steps']``, else counted: every result's ``metrics['finetune_steps']``).
    """

    def __init__(
        self,
        pruner: str | type[Pruner] | Pruner,
        task_generator: TaskGenerator,
        finetuner: Callable[[nn.Module], Any] | None = None,
        speedup: bool = False,
        dummy_input: Any = None,
        evaluator: Callable[[nn.Module], float] | None = None,
        reset_weight: bool = False,
        *,
        pruner_kwargs: Mapping[str, Any] | None = None,
        task_pruners: Mapping[str, Mapping[str, Any]] | None = None,
        gradual: GradualSchedule | Mapping[str, Any] | None = None,
    ) -> None:
        if task_generator.origin_model is None:
            raise ValueError("the task generator needs origin_model for an in-process search")
        bounds = task_generator.constraints.to_json()
        if bounds and dummy_input is None:
            # without costs every result would count as unpruned (ratio 1.0), so none is feasible
            raise ValueError(f"dummy_input: needed to measure the constraints {sorted(bounds)}")
        self.pruner = pruner
        self.task_generator = task_generator
        self.finetuner = finetuner
        self.speedup = speedup
        self.dummy_input = dummy_input
        self.evaluator = evaluator
        self.reset_weight = reset_weight
        self.pruner_kwargs = dict(pruner_kwargs or {})
        self.task_pruners = {k: dict(v) for k, v in (task_pruners or {}).items()}
        self.gradual = GradualSchedule.from_dict(gradual) if gradual is not None else None
        self._origin_state = {k: v.detach().clone() for k, v in task_generator.origin_model.state_dict().items()}
        self._origin_cost = model_cost(task_generator.origin_model, dummy_input) if dummy_input is not None else None
        self._measure_latency = dummy_input is not None and task_generator.constraints.max_latency_ratio is not None
        self._origin_latency = (
            measure_latency(task_generator.origin_model, dummy_input, runs=20, warmup=3).median_ms
            if self._measure_latency
            else None
        )

    def _start_model(self, task: Task) -> tuple[nn.Module, Masks]:
        gen = self.task_generator
        if task.parent_id is None:
            return copy.deepcopy(gen.origin_model), dict(gen.origin_masks)
        parent = gen.results.get(task.parent_id)
        if parent is None:
            raise RuntimeError(f"task {task.task_id} starts from task {task.parent_id}, which has no result")
        if parent.model is not None:
            return copy.deepcopy(parent.model), dict(parent.masks or {})
        return self._load_from_logs(task.parent_id)

    def _gradual_schedule(self, task: Task) -> GradualSchedule | None:
        """The task's in-finetune schedule: the scheduler's ``gradual``, or a refine step's part of the refine phase's."""
        if "refine" not in task.params:
            return self.gradual
        if self.gradual is not None:
            steps = self.gradual.steps
        else:
            counted = [r.metrics["finetune_steps"] for _, r in sorted(self.task_generator.results.items())
                       if r.metrics.get("finetune_steps")]
            if not counted:
                logger.info("task %d: no finetune counted yet, so it prunes before its finetune", task.task_id)
                return None
            steps = int(counted[-1])
        return refine_schedule(int(task.params["refine"]), int(task.params["steps"]), steps)

    def _load_from_logs(self, task_id: int) -> tuple[nn.Module, Masks]:
        """A parent whose model is not in memory (e.g. after a resume), from the generator's log_dir."""
        logged = self.task_generator.load_logged_model(task_id)
        if logged is None:
            raise RuntimeError(f"the model of task {task_id} is neither in memory nor in the log directory")
        return logged

    def pruning_one_step(self, task: Task) -> TaskResult:
        start = time.perf_counter()
        try:
            return self._run(task, start)
        except Exception as exc:
            logger.warning("task %d failed: %s", task.task_id, exc)
            return TaskResult(task.task_id, error="".join(traceback.format_exception(exc)))

    def _run(self, task: Task, start: float) -> TaskResult:
        model, masks = self._start_model(task)
        pruner_name = task.params.get("pruner")
        if pruner_name is not None:
            kind: str | type[Pruner] | Pruner = pruner_name
            kwargs = dict(self.task_pruners.get(pruner_name, {}))
        else:
            kind, kwargs = self.pruner, dict(self.pruner_kwargs)
        cls = get_pruner_class(kind) if isinstance(kind, str) else (type(kind) if isinstance(kind, Pruner) else kind)
        if "dummy_input" not in kwargs and self.dummy_input is not None and _accepts(cls, "dummy_input"):
            kwargs["dummy_input"] = self.dummy_input  # pruners that trace the model (group importance)
        pruner = make_pruner(cls, model, task.config_list, **kwargs)
        if masks:
            pruner.load_masks(masks)
        rewind = self.reset_weight and task.parent_id is not None and task.params.get("reset_weight", True)
        # Gradual: the task's own pruner cuts during the finetune; a task pruner (ADMM) or a rewinding
        # task (the lottery ranks trained weights before it rewinds them) prunes first, as usual.
        schedule = self._gradual_schedule(task)
        gradual = (GradualPruning(pruner, schedule) if schedule is not None and task.config_list
                   and pruner_name is None and not rewind and self.finetuner is not None else None)
        if gradual is None and task.config_list:
            pruner.compress()
        if rewind:
            # lottery ticket: the trained weights were ranked; rewind them (masks stay), then train
            with torch.no_grad():
                own = model.state_dict(keep_vars=True)
                for key, value in self._origin_state.items():
                    if key in own:
                        own[key].copy_(value.to(own[key].device))
        if gradual is not None:
            gradual.start()
        steps = _TrainingSteps(model) if gradual is None and self.finetuner is not None else None
        try:
            if self.finetuner is not None:
                self.finetuner(model)
        finally:
            if steps is not None:
                steps.close()
            if gradual is not None:
                gradual.finish()
        masks = pruner.get_masks()
        score = float(self.evaluator(model)) if self.evaluator is not None else None
        pruner.unwrap_model()
        if not hands_on(task):
            with torch.no_grad():
                for name, targets in masks.items():
                    module = model.get_submodule(name)
                    for target, mask in targets.items():
                        if not target.startswith("_"):
                            getattr(module, target).mul_(mask.to(getattr(module, target).device))
        metrics: dict[str, float] = {"seconds": 0.0}
        if self.finetuner is not None:
            ran = gradual.step - gradual.schedule.first if gradual is not None else steps.count  # type: ignore[union-attr]
            metrics["finetune_steps"] = float(ran)
        compact = None
        if self.dummy_input is not None and self._origin_cost is not None:
            from search.speedup import ModelSpeedup  # noqa: PLC0415

            compact = copy.deepcopy(model)
            try:
                ModelSpeedup(compact, self.dummy_input, masks).speedup_model()
            except Exception as exc:  # measured on the masked model instead
                logger.warning("task %d: speedup failed (%s); costs measured on the masked model", task.task_id, exc)
                compact = model
            cost = model_cost(compact, self.dummy_input)
            metrics.update(
                flops=float(cost.flops),
                params=float(cost.params),
                flops_ratio=cost.flops / max(self._origin_cost.flops, 1),
                params_ratio=cost.params / max(self._origin_cost.params, 1),
            )
            if self._measure_latency and self._origin_latency:
                latency = measure_latency(compact, self.dummy_input, runs=20, warmup=3).median_ms
                metrics.update(latency_ms=latency, latency_ratio=latency / self._origin_latency)
        if score is not None:
            metrics["score"] = score
        metrics["seconds"] = time.perf_counter() - start
        return TaskResult(
            task.task_id,
            score=score,
            metrics=metrics,
            sparsity=achieved_sparsity(masks),
            model=model,
            masks=masks,
            compact_model=compact if self.speedup or compact is not None else None,
        )
