"""Data-dependent one-shot pruners: Slim, TaylorFOWeight, ActivationAPoZRank, ActivationMeanRank.

Each runs ``training_steps`` optimizer steps of the user's training through an
:class:`~search.pruning.evaluator.Evaluator` while it collects what its metric needs.

Example:
    >>> import torch
    >>> from search.pruning import TaylorFOWeightPruner, TorchEvaluator
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(4)]
    >>> def step(batch, model):
    ...     return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
    >>> def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
    ...     for b in batches:
    ...         optimizers.zero_grad(); training_step(b, model).backward(); optimizers.step()
    >>> pruner = TaylorFOWeightPruner(model, [{'op_names': ['0'], 'sparse_ratio': 0.5}],
    ...                               TorchEvaluator(loop, opt, step), training_steps=4)
    >>> _, masks = pruner.compress()
    >>> int(masks['0']['weight'].sum(dim=1).count_nonzero())
    4
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from search.config import ConfigError
from search.pruning.allocator import SparsityAllocator
from search.pruning.base import BasicPruner
from search.pruning.evaluator import Evaluator
from search.pruning.tools import DataCollector, IdentityMetricsCalculator, MetricsCalculator

__all__ = [
    "SlimPruner",
    "TaylorFOWeightPruner",
    "TaylorPruner",
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "relu6": lambda x: torch.clamp(x, 0, 6),
    "identity": lambda x: x,
}


def _check_steps(training_steps: int) -> int:
    if isinstance(training_steps, bool) or not isinstance(training_steps, int) or training_steps < 1:
        raise ValueError(f"training_steps must be a positive int, got {training_steps!r}")
    return training_steps


class _EvaluatorPruner(BasicPruner):
    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[Mapping[str, Any]],
        evaluator: Evaluator,
        training_steps: int,
        **kwargs: Any,
    ) -> None:
        if not isinstance(evaluator, Evaluator):
            raise TypeError(f"evaluator must be a search.pruning.Evaluator (e.g. TorchEvaluator), got {type(evaluator).__name__}")
        self.evaluator = evaluator
        self.training_steps = _check_steps(training_steps)
        super().__init__(model, config_list, **kwargs)

    def _run_training(self) -> int:
        self.evaluator.bind_model(self.bound_model)
        try:
            steps = self.evaluator.train(max_steps=self.training_steps)
        finally:
            self.evaluator.unbind_model()
        if steps == 0:
            raise RuntimeError(f"{type(self).__name__}: the evaluator's training_func took no optimizer step")
        return steps


class _TrainingCollector(DataCollector):
    """Runs the pruner's training and returns what its ``setup`` hook gathered."""

    def __init__(self, compressor: _EvaluatorPruner, setup: Callable[[], Callable[[], dict[str, dict[str, Any]]]]):
        super().__init__(compressor)
        self.setup = setup

    def collect(self) -> dict[str, dict[str, Any]]:
        finish = self.setup()
        self.compressor._run_training()  # type: ignore[attr-defined]
        return finish()


class SlimPruner(_EvaluatorPruner):
    """Network Slimming: train with an L1 penalty on BatchNorm scales, then mask the smallest.

    Select the BatchNorm layers in ``config_list`` (usually with one global ratio, e.g.
    ``{'op_types': ['BatchNorm2d'], 'total_sparsity': 0.5}``).

    Args:
        regular_scale: weight of ``sum(|gamma|)`` added to the loss during ``training_steps``.
    """

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]], evaluator: Evaluator,
                 training_steps: int, regular_scale: float = 1.0, **kwargs: Any) -> None:
        if (
            isinstance(regular_scale, bool)
            or not isinstance(regular_scale, int | float)
            or not math.isfinite(regular_scale)
            or regular_scale < 0
        ):
            raise ValueError(f"regular_scale must be a finite number >= 0, got {regular_scale!r}")
        self.regular_scale = regular_scale
        super().__init__(model, config_list, evaluator, training_steps, **kwargs)
        for name, target in self.metric_targets():
            if target != "weight" or not isinstance(self.get_module(name), nn.modules.batchnorm._NormBase):
                setting = self.get_target_setting(name, target)
                raise ConfigError(
                    f"config_list[{setting.source}].op_types: SlimPruner ranks BatchNorm scales; "
                    f"{name} ({type(self.get_module(name)).__name__}).{target} is not one"
                )

    def _setup(self) -> Callable[[], dict[str, dict[str, Any]]]:
        scales = [getattr(self.get_module(n), t) for n, t in self.metric_targets()]
        scale = self.regular_scale
        self.evaluator.patch_loss(lambda loss, _model: loss + scale * sum(s.abs().sum() for s in scales))

        def finish() -> dict[str, dict[str, Any]]:
            return {n: {t: getattr(self.get_module(n), t).detach().abs()} for n, t in self.metric_targets()}

        return finish

    def reset_tools(self) -> None:
        self.data_collector = _TrainingCollector(self, self._setup)
        self.metrics_calculator = IdentityMetricsCalculator(scalers=self.target_scaling)
        self.sparsity_allocator = SparsityAllocator(self)


class TaylorFOWeightPruner(_EvaluatorPruner):
    """First-order Taylor importance: ``sum((w * dL/dw)^2)`` per block, summed over the steps.

    Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019.
    """

    def _setup(self) -> Callable[[], dict[str, dict[str, Any]]]:
        targets = list(self.metric_targets())
        acc: dict[tuple[str, str], Tensor] = {}

        def before_step() -> None:
            for name, target in targets:
                param = getattr(self.get_module(name), target)
                if param.grad is None:
                    continue
                contrib = (param.detach() * param.grad.detach()).pow(2)
                key = (name, target)
                acc[key] = acc[key] + contrib if key in acc else contrib

        self.evaluator.on_before_step(before_step)

        def finish() -> dict[str, dict[str, Any]]:
            data: dict[str, dict[str, Any]] = {}
            for name, target in targets:
                if (name, target) not in acc:
                    raise RuntimeError(f"TaylorFOWeightPruner: {name}.{target} got no gradient during training")
                data.setdefault(name, {})[target] = acc[(name, target)]
            return data

        return finish

    def reset_tools(self) -> None:
        self.data_collector = _TrainingCollector(self, self._setup)
        self.metrics_calculator = IdentityMetricsCalculator(scalers=self.target_scaling)
        self.sparsity_allocator = SparsityAllocator(self)


TaylorPruner = TaylorFOWeightPruner  # NNI 3.0's name


class _ActivationPruner(_EvaluatorPruner):
    """Ranks a module's output channels by a statistic of its (activated) outputs."""

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]], evaluator: Evaluator,
                 training_steps: int, activation: str = "relu", **kwargs: Any) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.activation = _ACTIVATIONS[activation]
        super().__init__(model, config_list, evaluator, training_steps, **kwargs)
        for name, target in self.metric_targets():
            setting = self.get_target_setting(name, target)
            if target != "weight" or setting.granularity not in ("out_channel", "per_channel"):
                raise ConfigError(
                    f"config_list[{setting.source}].granularity: {type(self).__name__} ranks output channels; "
                    f"{name}.{target} must be a weight with 'out_channel' granularity"
                )

    def _statistic(self, activated: Tensor, channel_axis: int) -> tuple[Tensor, int]:
        raise NotImplementedError

    def _setup(self) -> Callable[[], dict[str, dict[str, Any]]]:
        targets = dict(self.metric_targets())
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}

        def collector(buffer: list[Any]) -> Callable[[nn.Module, Any, Any], None]:
            def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
                if isinstance(output, Tensor):
                    axis = 1 if output.dim() > 2 and self._is_channel_first(module) else output.dim() - 1
                    stat, n = self._statistic(self.activation(output.detach()), axis)
                    buffer.append((stat, n))
            return hook

        collector_id = self.add_activation_collector(collector)

        def finish() -> dict[str, dict[str, Any]]:
            buffers = self.remove_activation_collector(collector_id)
            data: dict[str, dict[str, Any]] = {}
            for name in targets:
                items = buffers.get(name) or []
                if not items:
                    raise RuntimeError(f"{type(self).__name__}: module {name!r} saw no forward pass during training")
                sums[name] = torch.stack([s for s, _ in items]).sum(0)
                counts[name] = sum(n for _, n in items)
                shrunk = self.target_scaling(name, "weight").shrunk_shape(self.get_target_shape(name, "weight", None))
                data[name] = {"weight": (sums[name] / counts[name]).reshape(shrunk)}
            return data

        return finish

    @staticmethod
    def _is_channel_first(module: nn.Module) -> bool:
        return isinstance(module, nn.modules.conv._ConvNd | nn.modules.batchnorm._NormBase)

    def reset_tools(self) -> None:
        self.data_collector = _TrainingCollector(self, self._setup)
        self.metrics_calculator: MetricsCalculator = _PassThrough()
        self.sparsity_allocator = SparsityAllocator(self)


class _PassThrough(MetricsCalculator):
    def calculate_metrics(self, data: dict[str, dict[str, Any]]) -> dict[str, dict[str, Tensor]]:
        return data


class ActivationAPoZRankPruner(_ActivationPruner):
    """Masks channels whose activated outputs are most often zero (Hu et al., APoZ, 2016)."""

    def _statistic(self, activated: Tensor, channel_axis: int) -> tuple[Tensor, int]:
        dims = [d for d in range(activated.dim()) if d != channel_axis]
        nonzero = (activated != 0).float().sum(dim=dims)
        per_channel = activated.numel() // activated.shape[channel_axis]
        return nonzero, per_channel  # importance = 1 - APoZ


class ActivationMeanRankPruner(_ActivationPruner):
    """Masks channels with the smallest mean activated output (Molchanov et al., 2017)."""

    def _statistic(self, activated: Tensor, channel_axis: int) -> tuple[Tensor, int]:
        dims = [d for d in range(activated.dim()) if d != channel_axis]
        per_channel = activated.numel() // activated.shape[channel_axis]
        return activated.float().sum(dim=dims), per_channel

