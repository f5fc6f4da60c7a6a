"""Evaluators: how a data-dependent pruner runs the user's training steps and forward passes.

The shape follows NNI 3.0's ``TorchEvaluator``: you hand over a training loop, the optimizer(s)
and a training step; the pruner calls :meth:`TorchEvaluator.train` to run a bounded number of
steps while it collects gradients or activations, or adds a loss term (Slim).

Because wrapping is in place, the optimizer you built on ``model.parameters()`` stays valid;
there is no need for NNI's ``nni.trace`` around the optimizer class.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    >>> def training_step(batch, model):
    ...     x, y = batch
    ...     return torch.nn.functional.cross_entropy(model(x), y)
    >>> def training_func(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
    ...     for batch in data:
    ...         optimizers.zero_grad(); training_step(batch, model).backward(); optimizers.step()
    >>> evaluator = TorchEvaluator(training_func, opt, training_step)
    >>> evaluator.bind_model(model)
    >>> evaluator.train(max_steps=2)
    2
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Evaluator", "TorchEvaluator", "StopTraining"]

logger = logging.getLogger(__name__)

LossPatch = Callable[[Tensor, nn.Module], Tensor]
StepHook = Callable[[], None]


class StopTraining(Exception):
    """Raised from an optimizer hook to end a training loop that ignores ``max_steps``."""


class Evaluator:
    """What a data-dependent pruner needs from training: bounded training and evaluation.

    Hooks a pruner may register (all removed by :meth:`unbind_model`):
    ``patch_loss(fn)`` adds ``fn(loss, model)`` to every training-step loss;
    ``on_before_step(fn)`` / ``on_after_step(fn)`` run around every optimizer step
    (gradients are populated in ``on_before_step``).
    """

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self._loss_patches: list[LossPatch] = []
        self._before: list[StepHook] = []
        self._after: list[StepHook] = []

    def bind_model(self, model: nn.Module) -> None:
        self.model = model

    def unbind_model(self) -> None:
        self._loss_patches.clear()
        self._before.clear()
        self._after.clear()
        self.model = None

    def patch_loss(self, fn: LossPatch) -> None:
        self._loss_patches.append(fn)

    def on_before_step(self, fn: StepHook) -> None:
        self._before.append(fn)

    def on_after_step(self, fn: StepHook) -> None:
        self._after.append(fn)

    def clear_hooks(self) -> None:
        self._loss_patches.clear()
        self._before.clear()
        self._after.clear()

    def train(self, max_steps: int | None = None, max_epochs: int | None = None) -> int:
        """Run training; returns the number of optimizer steps taken."""
        raise NotImplementedError

    def evaluate(self) -> Any:
        raise NotImplementedError

    def get_dummy_input(self) -> Any:
        raise NotImplementedError


class TorchEvaluator(Evaluator):
    """Runs a user's PyTorch training loop with pruner hooks around loss and optimizer steps.

    Args:
        training_func: ``training_func(model, optimizers, training_step, lr_schedulers,
            max_steps, max_epochs)``; it should stop after ``max_steps`` optimizer steps (if it
            does not, the evaluator stops it).
        optimizers: an optimizer or a list of them, over the model's parameters.
        training_step: ``training_step(batch, model) -> loss``.
        lr_schedulers: optional scheduler(s), passed through.
        dummy_input: an input for tracing (speedup, norm alignment).
        evaluating_func: ``evaluating_func(model) -> score or dict``.
    """

    def __init__(
        self,
        training_func: Callable[..., Any],
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        training_step: Callable[[Any, nn.Module], Tensor],
        lr_schedulers: Any = None,
        dummy_input: Any = None,
        evaluating_func: Callable[[nn.Module], Any] | None = None,
    ) -> None:
        super().__init__()
        self.training_func = training_func
        self.optimizers = optimizers
        opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        if not opts or not all(isinstance(o, torch.optim.Optimizer) for o in opts):
            raise TypeError("optimizers must be a torch.optim.Optimizer or a list of them")
        self._optimizers = opts
        self.training_step = training_step
        self.lr_schedulers = lr_schedulers
        self.dummy_input = dummy_input
        self.evaluating_func = evaluating_func

    def bind_model(self, model: nn.Module) -> None:
        """Bind ``model``; optimizers built over another model (e.g. the one this model was copied
        from) are rebuilt over ``model`` with the same class and hyper-parameters (fresh state)."""
        super().bind_model(model)
        own = {id(p) for p in model.parameters()}
        self._bound_optimizers = []
        for opt in self._optimizers:
            params = [p for group in opt.param_groups for p in group["params"]]
            if params and all(id(p) in own for p in params):
                self._bound_optimizers.append(opt)
                continue
            settings = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
            self._bound_optimizers.append(type(opt)(model.parameters(), **settings))

    def unbind_model(self) -> None:
        super().unbind_model()
        self._bound_optimizers = []

    def _active_optimizers(self) -> list[torch.optim.Optimizer]:
        return getattr(self, "_bound_optimizers", None) or self._optimizers

    def _patched_step(self, batch: Any, model: nn.Module) -> Tensor:
        loss = self.training_step(batch, model)
        for patch in self._loss_patches:
            loss = patch(loss, model)
        return loss

    def train(self, max_steps: int | None = None, max_epochs: int | None = None) -> int:
        if self.model is None:
            raise RuntimeError("bind_model(model) before train()")
        steps = 0

        def before(_opt: Any, _args: Any, _kwargs: Any) -> None:
            if max_steps is not None and steps >= max_steps:
                raise StopTraining
            for fn in self._before:
                fn()

        def after(_opt: Any, _args: Any, _kwargs: Any) -> None:
            nonlocal steps
            steps += 1
            for fn in self._after:
                fn()

        optimizers = self._active_optimizers()
        # Hook only the first optimizer for counting (several optimizers step together).
        handles = [optimizers[0].register_step_pre_hook(before), optimizers[0].register_step_post_hook(after)]
        passed: Any = optimizers[0] if isinstance(self.optimizers, torch.optim.Optimizer) else optimizers
        try:
            self.training_func(self.model, passed, self._patched_step, self.lr_schedulers, max_steps, max_epochs)
        except StopTraining:
            logger.debug("training stopped after %d steps", steps)
        finally:
            for h in handles:
                h.remove()
        return steps

    def evaluate(self) -> Any:
        if self.evaluating_func is None:
            raise RuntimeError("this TorchEvaluator has no evaluating_func")
        if self.model is None:
            raise RuntimeError("bind_model(model) before evaluate()")
        return self.evaluating_func(self.model)

    def get_dummy_input(self) -> Any:
        return self.dummy_input
