"""Group-aware channel importance: a channel is worth what its removal takes away.

Removing output channel ``c`` of a conv removes more than the conv's filter ``c``: the BatchNorm
scale at ``c``, the input columns ``c`` of every layer that consumes it (the next conv, or the
``H*W`` columns of a linear layer after a flatten), and the same channel of every layer coupled
to it (residual adds). Filter L1 (``L1NormPruner``) looks only at the filter; the group
importance here sums ``|w|^p`` over every weight removed with the channel, as Torch-Pruning's
``MagnitudeImportance`` does, which keeps channels that the next layer relies on.

What is removed with a channel is read from the channel graph of :mod:`search.speedup` (the same
analysis that later removes the channels), so it covers whatever that analysis understands:
flatten/reshape, concatenation, residual adds, depthwise convolutions. Tracing needs an example
input: ``dummy_input=`` (or an ``evaluator`` that has one, as workers pass to their pruners).

Example:
    >>> import torch
    >>> from search.pruning import GroupL1NormPruner
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.fill_(1.0)  # every filter has the same L1 norm ...
    ...     _ = model[2].weight.zero_()
    ...     model[2].weight[:, 1:3] = 1.0  # ... but the next conv reads only channels 1 and 2
    >>> pruner = GroupL1NormPruner(model, [{'op_names': ['0'], 'sparse_ratio': 0.5}],
    ...                            dummy_input=torch.randn(1, 1, 8, 8))
    >>> _, masks = pruner.compress()
    >>> masks['0']['weight'].flatten(1).amax(1).tolist()
    [0.0, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from search.config import ConfigError, channel_dims
from search.pruning.allocator import SparsityAllocator
from search.pruning.base import BasicPruner
from search.pruning.tools import Data, DataCollector, MetricsCalculator, NormMetricsCalculator, Scalers

__all__ = ["ChannelPart", "GroupL1NormPruner", "GroupL2NormPruner", "GroupNormPruner", "channel_parts"]

logger = logging.getLogger(__name__)

_CHANNEL_GRANULARITIES = ("out_channel", "per_channel")


@dataclass(frozen=True)
class ChannelPart:
    """Slices of one parameter that go when output channels of a pruned layer go.

    ``positions[j]`` (an index on ``axis`` of ``module.target``) is removed with channel ``channels[j]``
    of the pruned layer; one part per (parameter, axis) touched.
    """

    module: str
    target: str
    axis: int
    positions: Tensor
    channels: Tensor


def channel_parts(
    model: nn.Module, dummy_input: Any, layers: Sequence[str], *, include_bias: bool = False
) -> dict[str, list[ChannelPart]]:
    """For each layer in ``layers``: the parameter slices removed with each of its output channels.

    The layer's own filter is one of the parts. Parameters named ``bias`` (conv/linear biases,
    norm shifts) are left out unless ``include_bias``; buffers (running statistics) always are.
    Layers the trace does not reach get no entry.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 3))
        >>> parts = channel_parts(model, torch.randn(1, 1, 8, 8), ['0'])
        >>> [(p.module, p.target, p.axis) for p in parts['0']]
        [('0', 'weight', 0), ('1', 'weight', 0), ('2', 'weight', 1)]
    """
    from search.speedup.analyze import analyze_model  # noqa: PLC0415 (speedup imports pruning)

    analyzer = analyze_model(model, dummy_input)
    _, labels = analyzer.g.components()
    modules = dict(model.named_modules())
    # component label -> (layer, channel) pairs it removes
    owner_of: dict[int, list[tuple[str, int]]] = {}
    for name in layers:
        value = analyzer.params.get((name, "weight"))
        if value is None or value.ndim == 0:
            continue
        out_dim = min(channel_dims(modules[name])[0], value.ndim - 1)
        for channel, label in enumerate(labels[value.ids(out_dim)].tolist()):
            owner_of.setdefault(int(label), []).append((name, channel))
    if not owner_of:
        return {}
    wanted = np.fromiter(owner_of, dtype=np.int64)
    parts: dict[str, list[ChannelPart]] = {}
    seen: set[str] = set()
    for (module, attr), value in analyzer.params.items():
        if value.key in seen:  # tied weights: one tensor, counted once
            continue
        seen.add(value.key)
        tensor = getattr(modules.get(module), attr, None)
        if not isinstance(tensor, nn.Parameter) or (attr == "bias" and not include_bias):
            continue
        for axis in range(value.ndim):
            axis_labels = labels[value.ids(axis)]
            hit = np.nonzero(np.isin(axis_labels, wanted))[0]
            per_layer: dict[str, tuple[list[int], list[int]]] = {}
            for position in hit.tolist():
                for layer, channel in owner_of[int(axis_labels[position])]:
                    pos, chan = per_layer.setdefault(layer, ([], []))
                    pos.append(position)
                    chan.append(channel)
            for layer, (pos, chan) in per_layer.items():
                parts.setdefault(layer, []).append(
                    ChannelPart(module, attr, axis, torch.tensor(pos, dtype=torch.long), torch.tensor(chan, dtype=torch.long))
                )
    return parts


class _GroupCollector(DataCollector):
    """The metric targets' parameters, and for channel targets the group parts (traced once)."""

    def collect(self) -> Data:
        pruner = self.compressor
        assert isinstance(pruner, GroupNormPruner)
        data: Data = {}
        for module_name, target_name in pruner.metric_targets():
            value = getattr(pruner.get_module(module_name), target_name, None)
            if not isinstance(value, Tensor):
                setting = pruner.get_target_setting(module_name, target_name)
                raise ConfigError(
                    f"config_list[{setting.source}].target_names: {type(pruner).__name__} ranks parameters; "
                    f"{module_name}.{target_name} is an activation (use an activation pruner)"
                )
            parts = pruner.group_parts().get(module_name) if pruner.is_group_target(module_name, target_name) else None
            if parts:
                data.setdefault(module_name, {})[target_name] = [
                    (getattr(pruner.get_module(p.module), p.target).detach(), p) for p in parts
                ]
            else:
                data.setdefault(module_name, {})[target_name] = value.detach()
        return data


class GroupNormMetricsCalculator(MetricsCalculator):
    """Per output channel, ``sum |w|^p`` over every parameter slice removed with it.

    Targets collected as plain tensors (not channel targets, or not reached by the trace) get the
    ordinary block norm of :class:`~search.pruning.tools.NormMetricsCalculator`.
    """

    def __init__(self, p: float = 1.0, scalers: Scalers = None) -> None:
        super().__init__(scalers)
        self.p = p
        self._plain = NormMetricsCalculator(p=p, scalers=scalers)

    def calculate_metrics(self, data: Data) -> dict[str, dict[str, Tensor]]:
        plain = {m: {t: v for t, v in ts.items() if isinstance(v, Tensor)} for m, ts in data.items()}
        metrics = self._plain.calculate_metrics({m: ts for m, ts in plain.items() if ts})
        for module, targets in data.items():
            for target, value in targets.items():
                if isinstance(value, Tensor):
                    continue
                own = next(t for t, p in value if p.module == module and p.target == target)
                scaling = self.scaling(module, target)
                shrunk = scaling.shrunk_shape(tuple(own.shape))
                channels = max(shrunk)
                score = torch.zeros(channels, dtype=torch.float32, device=own.device)
                for tensor, part in value:
                    x = tensor.float()
                    per_slice = x.abs().pow(self.p) if self.p != 1 else x.abs()
                    per_slice = per_slice.movedim(part.axis, 0).reshape(x.shape[part.axis], -1).sum(1)
                    score.index_add_(0, part.channels.to(score.device), per_slice[part.positions.to(score.device)])
                metrics.setdefault(module, {})[target] = score.reshape(shrunk)
        return metrics


class GroupNormPruner(BasicPruner):
    """Masks the output channels whose group (everything removed with them) has the smallest norm.

    A channel's importance is ``sum |w|^p`` over its filter, its normalisation scale and the input
    columns of every layer that consumes it (see :func:`channel_parts`); per layer that is the
    ranking of Torch-Pruning's ``MagnitudeImportance(p)`` (group reduction ``'mean'`` divides every
    channel of a layer by the same count, and our global ranking normalises per layer anyway).
    Targets that are not output channels of a weight (``element``/block granularity, activations)
    are ranked by their own norm, as :class:`~search.pruning.L1NormPruner` does.

    Args:
        model: the model to prune.
        config_list: the config list (see :mod:`search.config`).
        dummy_input: an example input, to trace which parameters each channel reaches.
        evaluator: only its ``dummy_input`` is used when ``dummy_input`` is not given (workers
            hand every pruner that takes an evaluator one).
        include_bias: count biases and norm shifts too (default: weights and norm scales only).
        align_norms: as for :class:`~search.pruning.base.Pruner`.

    Example:
        >>> import torch
        >>> from search.zoo import digits_cnn, get_dummy_input
        >>> model = digits_cnn()
        >>> pruner = GroupL1NormPruner(model, [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}],
        ...                            dummy_input=get_dummy_input('digits_cnn'))
        >>> _, masks = pruner.compress()
        >>> int(masks['conv3']['weight'].flatten(1).amax(1).sum())  # 32 of 64 conv3 channels kept
        32
    """

    p: float = 1.0

    def __init__(
        self,
        model: nn.Module,
        config_list: Sequence[Mapping[str, Any]],
        *,
        dummy_input: Any = None,
        evaluator: Any = None,
        include_bias: bool = False,
        align_norms: bool = True,
    ) -> None:
        if dummy_input is None and evaluator is not None:
            dummy_input = evaluator.get_dummy_input() if hasattr(evaluator, "get_dummy_input") else None
        if dummy_input is None:
            raise ConfigError(
                f"dummy_input: {type(self).__name__} traces the model to find what each channel removes; "
                "pass dummy_input= (or an evaluator that has one)"
            )
        self.dummy_input = dummy_input
        self.include_bias = include_bias
        # Trace before the modules are wrapped: the structure does not depend on the masks.
        self._parts = self._trace(model, config_list)
        super().__init__(model, config_list, align_norms=align_norms)

    def _trace(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]]) -> dict[str, list[ChannelPart]]:
        from search.config import canonicalize_config_list  # noqa: PLC0415

        layers = [name for name, targets in canonicalize_config_list(model, config_list, mode="pruning").items()
                  if "weight" in targets]
        try:
            return channel_parts(model, self.dummy_input, layers, include_bias=self.include_bias)
        except Exception as exc:  # untraceable model: rank by the filters alone, and say so
            warnings.warn(f"{type(self).__name__}: tracing failed ({type(exc).__name__}: {exc}); ranking channels by "
                          "their own filter norm only", RuntimeWarning, stacklevel=3)
            return {}

    def group_parts(self) -> dict[str, list[ChannelPart]]:
        """``{layer: [ChannelPart, ...]}``: what each configured layer's output channels remove."""
        return self._parts

    def is_group_target(self, module_name: str, target_name: str) -> bool:
        setting = self.get_target_setting(module_name, target_name)
        return target_name == "weight" and setting.granularity in _CHANNEL_GRANULARITIES

    def reset_tools(self) -> None:
        self.data_collector = _GroupCollector(self)
        self.metrics_calculator = GroupNormMetricsCalculator(p=self.p, scalers=self.target_scaling)
        self.sparsity_allocator = SparsityAllocator(self)


class GroupL1NormPruner(GroupNormPruner):
    """Group L1: ``sum |w|`` over everything removed with an output channel (registry name ``'group_l1'``)."""

    p = 1.0


class GroupL2NormPruner(GroupNormPruner):
    """Group L2 (squared): ``sum w^2`` over everything removed with an output channel (``'group_l2'``)."""

    p = 2.0
