"""Prune while a finetune runs: a trial's masks grow on a schedule instead of all at once.

Cutting most channels of a trained layer in one step throws away what the next layers rely on, and
a short finetune only partly recovers it. Reaching the same masks in several steps *during* the
finetune (Zhu & Gupta's gradual pruning, applied within one trial) lets the weights adapt between
the cuts. :class:`GradualPruning` does this around any finetune it cannot see into (a callable that
trains the model): it counts the model's forward calls in training mode as training steps and
raises the masks' ratios on a schedule, until the task's config list is reached after ``end`` of
the steps.

Example:
    >>> import torch
    >>> from search.pruning import L1NormPruner
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> pruner = L1NormPruner(model, [{'op_names': ['0'], 'sparse_ratio': 0.75}])
    >>> gradual = GradualPruning(pruner, GradualSchedule(steps=8, updates=4, end=0.5))
    >>> gradual.start()  # the first cut, before training
    >>> kept = []
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> for _ in range(8):
    ...     opt.zero_grad(); model(torch.randn(4, 4)).sum().backward(); opt.step()
    ...     kept.append(int(pruner.get_masks()['0']['weight'].sum(1).count_nonzero()))
    >>> _ = gradual.finish()
    >>> kept  # rows of layer 0 kept after each step: updates before steps 1-4 (half of the 8 steps)
    [5, 3, 2, 2, 2, 2, 2, 2]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from search.pruning.base import Pruner

__all__ = ["GradualPruning", "GradualSchedule"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradualSchedule:
    """When the masks grow during a finetune.

    Args:
        steps: the finetune's training steps (forward calls in training mode), e.g. batches x epochs.
        updates: mask updates (the first before training starts, the last puts the full ratios in place).
        end: share of ``steps`` by which the full ratios are in place (the rest trains at them).
        schedule: ``'cubic'`` (large cuts first, as AGP) or ``'linear'`` share of the ratios per update.
        first: the training step this finetune starts at: one segment of a schedule that spans
            several finetunes (a chain of trials, each going on where its parent stopped); the
            updates due before it are the parent's (its masks).
        span: the training steps of this segment (``None``: to the end); the updates due by
            ``first + span`` are in place when it finishes, the later ones are its children's.
    """

    steps: int
    updates: int = 8
    end: float = 0.75
    schedule: str = "cubic"
    first: int = 0
    span: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "updates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.end, bool) or not isinstance(self.end, int | float) or not 0 <= self.end <= 1:
            raise ValueError(f"end must be a number in [0, 1], got {self.end!r}")
        if isinstance(self.first, bool) or not isinstance(self.first, int) or not 0 <= self.first < self.steps:
            raise ValueError(f"first must be an int in [0, steps), got {self.first!r}")
        if self.span is not None and (isinstance(self.span, bool) or not isinstance(self.span, int) or self.span < 1):
            raise ValueError(f"span must be a positive int or None, got {self.span!r}")
        if self.schedule not in ("cubic", "linear"):
            raise ValueError(f"schedule must be 'cubic' or 'linear', got {self.schedule!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | GradualSchedule) -> GradualSchedule:
        if isinstance(data, GradualSchedule):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"gradual must be a dict like {{'steps': 36}}, got {data!r}")
        unknown = set(data) - {"steps", "updates", "end", "schedule", "first", "span"}
        if unknown:
            raise ValueError(f"gradual: unknown key {sorted(unknown)[0]!r}; valid: steps, updates, end, schedule, "
                             "first, span")
        if "steps" not in data:
            raise ValueError("gradual.steps: required (the finetune's training steps)")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "updates": self.updates, "end": self.end, "schedule": self.schedule,
                "first": self.first, "span": self.span}

    def fraction(self, update: int) -> float:
        """Share of the final ratios after update ``update`` (1-based)."""
        t = min(update, self.updates) / self.updates
        return t if self.schedule == "linear" else 1.0 - (1.0 - t) ** 3

    def step_of(self, update: int) -> int:
        """The training step before which update ``update`` (1-based) happens."""
        return math.floor(self.end * self.steps * (update - 1) / self.updates)

    def last_update(self) -> int:
        """The last update of this segment (all of them when it runs to the end)."""
        if self.span is None or self.first + self.span >= self.steps:
            return self.updates
        stop = self.first + self.span
        return max((u for u in range(1, self.updates + 1) if self.step_of(u) < stop), default=0)


class GradualPruning:
    """Raises a wrapped pruner's ratios during training, from the masks it has towards its config list.

    ``start()`` makes the first cut and starts counting the bound model's training-mode forward
    calls; ``finish()`` puts the full ratios in place (whatever the finetune did) and stops
    counting. What is masked stays masked (the allocator keeps earlier masks), so a pruner that
    had masks loaded (a chain's parent) only grows them.

    Args:
        pruner: a wrapped pruner with the task's full config list (its masks, if any, are the start).
        schedule: a :class:`GradualSchedule` (or its dict).
    """

    def __init__(self, pruner: Pruner, schedule: GradualSchedule | Mapping[str, Any]) -> None:
        self.pruner = pruner
        self.schedule = GradualSchedule.from_dict(schedule)
        self.model: nn.Module = pruner.bound_model
        self._full = {m: dict(t) for m, t in pruner.module_configs.items()}
        self.done = 0  # updates applied
        self.step = self.schedule.first  # training forwards seen (of the whole schedule)
        self.last = self.schedule.last_update()
        self._busy = False
        self._handle: Any = None

    def _apply(self, update: int) -> None:
        fraction = self.schedule.fraction(update)
        configs = self.pruner.module_configs
        for module, targets in self._full.items():
            for target, setting in targets.items():
                if setting.sparse_ratio is None or fraction >= 1.0:
                    configs[module][target] = setting
                    continue
                ratio = setting.sparse_ratio * fraction
                low = setting.min_sparse_ratio
                configs[module][target] = setting.with_(sparse_ratio=ratio,
                                                        min_sparse_ratio=None if low is None else min(low, ratio))
        was_training = self.model.training
        self._busy = True  # a data-dependent pruner trains inside compress(): those steps do not count
        try:
            self.pruner.compress()
        finally:
            self._busy = False
            self.model.train(was_training)
        self.done = update
        logger.debug("gradual pruning: update %d/%d at step %d (%.0f%% of the ratios)", update,
                     self.schedule.updates, self.step, 100 * fraction)

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if self._busy or not module.training:
            return
        self._catch_up(self.step)
        self.step += 1

    def _catch_up(self, step: int) -> None:
        """Apply every update of this segment due before training step ``step``, at once (the latest share)."""
        due = self.done
        while due < self.last and self.schedule.step_of(due + 1) <= step:
            due += 1
        if due > self.done:
            self._apply(due)

    def start(self) -> None:
        """The first cut (what is due before this finetune's first step); count training steps from now."""
        self._catch_up(self.schedule.first)
        self._handle = self.model.register_forward_pre_hook(self._before_forward)

    def finish(self) -> Pruner:
        """Stop counting and put this segment's last ratios in place (the full ratios unless a later segment
        follows); returns the pruner (still wrapped)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.done < self.last:
            expected = (self.schedule.span if self.schedule.span is not None else self.schedule.steps - self.schedule.first)
            ran = self.step - self.schedule.first
            if ran:
                logger.info("gradual pruning: the finetune ran %d of %d expected steps; the last %d update(s) "
                            "happen after it", ran, expected, self.last - self.done)
            self._apply(self.last)
        return self.pruner
