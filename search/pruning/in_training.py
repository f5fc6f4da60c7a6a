"""Pruning during training: masks recomputed on ``optimizer.step()`` on a schedule.

Like EasyCompression's ``Pruner(PrunerConfig(compression_ratio, step_interval, num_trials,
prune_sort_range, ema_alpha))``: every ``step_interval`` optimizer steps one *trial* raises
the sparsity, reaching the config list's ratios after ``num_trials`` trials; what is pruned
stays pruned. ``sort_range='global'`` ranks all selected weights together (layers end up with
different ratios), ``'local'`` gives every layer its own ratio.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> pruner = InTrainingPruner(model, [{'op_types': ['Linear'], 'sparse_ratio': 0.5}], opt,
    ...                           step_interval=2, num_trials=2, criterion='level')
    >>> for _ in range(4):
    ...     opt.zero_grad(); model(torch.randn(4, 8)).sum().backward(); opt.step()
    >>> pruner.trials_done, round(pruner.sparsity_report().total(), 2)
    (2, 0.5)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from search.config import TargetSetting
from search.pruning.allocator import SparsityAllocator
from search.pruning.base import BasicPruner
from search.pruning.tools import (
    DataCollector,
    DistMetricsCalculator,
    IdentityMetricsCalculator,
    NormMetricsCalculator,
)

__all__ = ["InTrainingPruner"]

logger = logging.getLogger(__name__)

_CRITERIA = ("level", "l1", "l2", "fpgm", "taylor")
_SCHEDULES = ("linear", "cubic")


class _ScoreCollector(DataCollector):
    def collect(self) -> dict[str, dict[str, Any]]:
        return self.compressor._scores()  # type: ignore[attr-defined]


class InTrainingPruner(BasicPruner):
    """Prunes while the model trains, hooked on ``optimizer.step()``.

    Args:
        model: the model being trained.
        config_list: final ratios (``sparse_ratio`` per sub-config).
        optimizer: the training optimizer; masks are updated after its steps.
        step_interval: optimizer steps between two trials.
        num_trials: trials to reach the final ratios.
        sort_range: ``'global'`` (rank all targets together per ratio) or ``'local'``.
        criterion: ``'level'`` (weights), ``'l1'``/``'l2'``/``'fpgm'`` (output channels) or
            ``'taylor'`` (``(w*grad)^2``, output channels).
        schedule: ``'linear'`` or ``'cubic'`` (AGP: fast first, then gently) ratio increase.
        ema_alpha: if set, importance is an exponential moving average over steps
            (``score = alpha * score + (1 - alpha) * current``), as EasyCompression does.
        start_step: optimizer steps before the first trial counts.
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[Mapping[str, Any]],
        optimizer: torch.optim.Optimizer,
        *,
        step_interval: int = 1,
        num_trials: int = 1,
        sort_range: str = "global",
        criterion: str = "l1",
        schedule: str = "linear",
        ema_alpha: float | None = None,
        start_step: int = 0,
        **kwargs: Any,
    ) -> None:
        if criterion not in _CRITERIA:
            raise ValueError(f"criterion must be one of {list(_CRITERIA)}, got {criterion!r}")
        if sort_range not in ("global", "local"):
            raise ValueError(f"sort_range must be 'global' or 'local', got {sort_range!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {list(_SCHEDULES)}, got {schedule!r}")
        for name, value in (("step_interval", step_interval), ("num_trials", num_trials)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if ema_alpha is not None and (
            isinstance(ema_alpha, bool) or not isinstance(ema_alpha, int | float) or not 0 <= ema_alpha < 1
        ):
            raise ValueError(f"ema_alpha must be a number in [0, 1) or None, got {ema_alpha!r}")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be a non-negative int, got {start_step!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.default_granularity = "element" if criterion == "level" else "out_channel"
        self.criterion = criterion
        self.sort_range = sort_range
        self.step_interval = step_interval
        self.num_trials = num_trials
        self.schedule = schedule
        self.ema_alpha = ema_alpha
        self.start_step = start_step
        self.optimizer = optimizer
        self.steps = 0
        self.trials_done = 0
        self._fraction = 1.0
        self._ema: dict[tuple[str, str], Tensor] = {}
        super().__init__(model, config_list, **kwargs)
        if sort_range == "global":
            self._make_global()
        self._handles = [optimizer.register_step_pre_hook(self._before_step), optimizer.register_step_post_hook(self._after_step)]

    def _make_global(self) -> None:
        for name, target in list(self.metric_targets()):
            setting = self.module_configs[name][target]
            if setting.global_group_id is None and setting.dependency_group_id is None and setting.sparse_ratio is not None:
                group = f"__in_training_{setting.sparse_ratio}"
                self.module_configs[name][target] = setting.with_(global_group_id=group)

    # -- schedule --------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.trials_done >= self.num_trials

    def current_fraction(self, trial: int | None = None) -> float:
        """Share of the final ratio reached after ``trial`` trials."""
        t = (self.trials_done if trial is None else trial) / self.num_trials
        return t if self.schedule == "linear" else 1.0 - (1.0 - t) ** 3

    def get_target_setting(self, module_name: str, target_name: str) -> TargetSetting:
        setting = self.module_configs[module_name][target_name]
        if setting.sparse_ratio is None or self._fraction >= 1.0:
            return setting
        ratio = setting.sparse_ratio * self._fraction
        lo = setting.min_sparse_ratio
        return setting.with_(sparse_ratio=ratio, min_sparse_ratio=None if lo is None else min(lo, ratio))

    # -- hooks -----------------------------------------------------------------------------------
    def _needs_scores_every_step(self) -> bool:
        return self.criterion == "taylor" or self.ema_alpha is not None

    def _current_scores(self) -> dict[tuple[str, str], Tensor]:
        scores = {}
        for name, target in self.metric_targets():
            param = getattr(self.get_module(name), target)
            if self.criterion == "taylor":
                if param.grad is None:
                    continue
                scores[(name, target)] = (param.detach() * param.grad.detach()).pow(2)
            else:
                scores[(name, target)] = param.detach().clone()
        return scores

    def _element_importance(self, score: Tensor) -> Tensor:
        """Per-element importance whose block sums rank like the criterion (for EMA/accumulation).

        ``l1``/``level``: ``|w|``; ``l2``: ``w**2`` (its block sum ranks as the L2 norm does);
        ``fpgm``: ``w`` itself (distances need the signs); ``taylor``: already ``(w*grad)**2``.
        """
        if self.criterion in ("taylor", "fpgm"):
            return score
        if self.criterion == "l2":
            return score * score
        return score.abs()

    def _before_step(self, *_: Any) -> None:
        if not self._needs_scores_every_step() or self.finished:
            return
        alpha = self.ema_alpha if self.ema_alpha is not None else 0.0
        for key, score in self._current_scores().items():
            score = self._element_importance(score)
            if self.criterion == "taylor" and self.ema_alpha is None:
                self._ema[key] = self._ema[key] + score if key in self._ema else score
            elif key in self._ema:
                self._ema[key] = alpha * self._ema[key] + (1 - alpha) * score
            else:
                self._ema[key] = score

    def _after_step(self, *_: Any) -> None:
        self.steps += 1
        done = self.steps - self.start_step
        if self.finished or done <= 0 or done % self.step_interval:
            return
        self.trials_done += 1
        self._fraction = self.current_fraction()
        try:
            self.compress()
        finally:
            self._fraction = 1.0
        logger.info("in-training pruning trial %d/%d at step %d", self.trials_done, self.num_trials, self.steps)
        if self.criterion == "taylor":
            self._ema.clear()

    def _scores(self) -> dict[str, dict[str, Any]]:
        if self._needs_scores_every_step():
            scores = dict(self._ema) or {k: self._element_importance(v) for k, v in self._current_scores().items()}
        else:
            scores = self._current_scores()
        data: dict[str, dict[str, Any]] = {}
        for (name, target), value in scores.items():
            data.setdefault(name, {})[target] = value
        return data

    def reset_tools(self) -> None:
        self.data_collector = _ScoreCollector(self)
        if self.criterion == "fpgm":
            self.metrics_calculator = DistMetricsCalculator(p=2, scalers=self.target_scaling)
        elif self.criterion == "taylor" or self.ema_alpha is not None:
            self.metrics_calculator = IdentityMetricsCalculator(scalers=self.target_scaling)
        else:
            p = 2.0 if self.criterion == "l2" else 1.0
            self.metrics_calculator = NormMetricsCalculator(p=p, scalers=self.target_scaling)
        self.sparsity_allocator = SparsityAllocator(self, continuous_mask=True)

    def detach(self) -> None:
        """Stop reacting to optimizer steps (masks stay applied)."""
        for h in self._handles:
            h.remove()
        self._handles = []
