"""``Pruner`` and ``BasicPruner``: wrap the selected modules, compute masks, report, export."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from search.config import TargetSetting, canonicalize_config_list, channel_dims, is_io_target
from search.pruning._norm_align import add_norm_alignments
from search.pruning.allocator import Masks, SparsityAllocator
from search.pruning.io import save_masks, save_state_dict
from search.pruning.report import SparsityReport, build_report
from search.pruning.scaling import Scaling
from search.pruning.tools import DataCollector, MetricsCalculator
from search.wrapper import ModuleWrapper

__all__ = ["Pruner", "BasicPruner"]

logger = logging.getLogger(__name__)


class Pruner:
    """Base of every pruner: owns the config, the module wrappers and the masks.

    Creating a pruner wraps the selected modules of ``model`` in place (forward patched, names
    unchanged). ``compress()`` computes and applies masks and returns ``(model, masks)`` with
    masks as ``{module_name: {target_name: 0/1 tensor of the target's shape}}``.

    Args:
        model: the model to prune.
        config_list: the config list (see :mod:`search.config`).
        align_norms: also mask the BatchNorm/LayerNorm that normalises a pruned output channel
            (found by tracing the model with torch.fx), so the masked model computes what the
            compact model will.
    """

    #: granularity that ``'default'`` means for parameter targets of this pruner.
    default_granularity: str = "out_channel"

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]], *, align_norms: bool = True) -> None:
        self.bound_model = model
        configs = canonicalize_config_list(model, config_list, mode="pruning")
        self.config_list = [dict(c) for c in config_list]
        self.module_configs: dict[str, dict[str, TargetSetting]] = self._resolve_defaults(configs)
        if align_norms:
            add_norm_alignments(model, self.module_configs, self.is_channel_pruned)
        self._modules: dict[str, nn.Module] = dict(model.named_modules())
        # Aligned norms are appended; keep wrappers, masks and reports in the model's module order.
        order = {name: i for i, name in enumerate(self._modules)}
        self.module_configs = dict(sorted(self.module_configs.items(), key=lambda kv: order[kv[0]]))
        self._wrappers: OrderedDict[str, ModuleWrapper] = OrderedDict()
        self._masks: Masks = {}
        self._io_shapes: dict[tuple[str, str], tuple[int, ...]] = {}
        self._collectors: dict[int, tuple[dict[str, list[Any]], list[Any]]] = {}
        self._collector_id = 0
        self._wrapped = False
        self.wrap_model()

    # -- config helpers ----------------------------------------------------------------------------
    def _resolve_defaults(self, configs: dict[str, dict[str, TargetSetting]]) -> dict[str, dict[str, TargetSetting]]:
        for targets in configs.values():
            for target, setting in list(targets.items()):
                if setting.granularity == "default":
                    gran = "per_channel" if is_io_target(target) and self.default_granularity != "element" else self.default_granularity
                    targets[target] = setting.with_(granularity=gran)
        return configs

    def get_target_setting(self, module_name: str, target_name: str) -> TargetSetting:
        return self.module_configs[module_name][target_name]

    def get_module(self, module_name: str) -> nn.Module:
        return self._modules[module_name]

    def metric_targets(self) -> Iterator[tuple[str, str]]:
        """(module, target) pairs whose masks come from a metric (a ratio or a threshold)."""
        for module_name, targets in self.module_configs.items():
            for target, setting in targets.items():
                if setting.align is None and (setting.sparse_ratio is not None or setting.sparse_threshold is not None):
                    yield module_name, target

    def is_channel_pruned(self, module_name: str) -> bool:
        setting = self.module_configs.get(module_name, {}).get("weight")
        return setting is not None and setting.granularity in ("out_channel", "per_channel")

    def target_scaling(self, module_name: str, target_name: str) -> Scaling:
        """The block structure a target's granularity implies."""
        setting = self.get_target_setting(module_name, target_name)
        gran = setting.granularity
        module = self._modules[module_name]
        shape = self.get_target_shape(module_name, target_name, None)
        ndim = len(shape)
        if isinstance(gran, tuple):
            return Scaling(list(gran))
        if gran == "element" or ndim == 0:
            return Scaling([1])
        if is_io_target(target_name):
            axis = 0 if self.trailing_axes(module_name) and ndim > 1 else ndim - 1
            return Scaling([1 if i == axis else -1 for i in range(ndim)])
        out_dim, in_dim = channel_dims(module)
        axis = in_dim if gran == "in_channel" else out_dim
        if ndim == 1:
            return Scaling([1])
        return Scaling([1 if i == axis else -1 for i in range(ndim)])

    def trailing_axes(self, module_name: str) -> int:
        """Spatial axes after the channel axis in this module's activations (Conv2d: 2)."""
        name = type(self._modules[module_name]).__name__
        for n in (1, 2, 3):
            if name.endswith(f"{n}d") and ("Conv" in name or "Norm" in name or "Pool" in name):
                return n
        return 0

    def get_target_shape(self, module_name: str, target_name: str, metric: Tensor | None) -> tuple[int, ...]:
        if is_io_target(target_name):
            shape = self._io_shapes.get((module_name, target_name))
            if shape is None and metric is not None:
                shape = tuple(metric.shape)
            if shape is None:
                raise ValueError(f"{module_name}.{target_name}: shape unknown until data passes through the module")
            return shape
        value = getattr(self._modules[module_name], target_name)
        return tuple(value.shape)

    def record_io_shape(self, module_name: str, target_name: str, shape: Sequence[int]) -> None:
        self._io_shapes[(module_name, target_name)] = tuple(shape)

    # -- wrapping ----------------------------------------------------------------------------------
    def wrap_model(self) -> None:
        """Wrap every configured module (idempotent); re-applies masks kept while unwrapped."""
        for name, targets in self.module_configs.items():
            if name in self._wrappers:
                continue
            self._wrappers[name] = ModuleWrapper(self._modules[name], name, targets)
            for target, mask in self._masks.get(name, {}).items():
                self._wrappers[name].set_mask(target, mask)
        self._wrapped = True

    def unwrap_model(self) -> None:
        """Restore every module's own forward; masks are kept by the pruner (see ``get_masks``)."""
        self._masks = self.get_masks()
        for wrapper in self._wrappers.values():
            wrapper.unwrap()
        self._wrappers.clear()
        self._wrapped = False

    _unwrap_model = unwrap_model
    _wrap_model = wrap_model

    def get_modules_wrapper(self) -> OrderedDict[str, ModuleWrapper]:
        """``{module_name: wrapper}`` for the wrapped modules."""
        return self._wrappers

    def get_origin2wrapped_parameter_name_map(self) -> dict[str, str]:
        """Parameter names before → after wrapping. Wrapping is in place, so this is the identity."""
        return {name: name for name, _ in self.bound_model.named_parameters()}

    # -- activation collectors ---------------------------------------------------------------------
    def add_activation_collector(
        self, collector: Callable[[list[Any]], Callable[[nn.Module, Any, Any], None]]
    ) -> int:
        """Register ``collector(buffer) -> hook(module, inputs, output)`` on every wrapped module.

        Each module gets its own buffer (a list the hook appends to); returns an id for
        :meth:`get_activation_buffers` and :meth:`remove_activation_collector`.
        """
        self._collector_id += 1
        buffers: dict[str, list[Any]] = {}
        handles = []
        for name, wrapper in self._wrappers.items():
            buffers[name] = []
            handles.append(wrapper.module.register_forward_hook(collector(buffers[name])))
        self._collectors[self._collector_id] = (buffers, handles)
        return self._collector_id

    def get_activation_buffers(self, collector_id: int) -> dict[str, list[Any]]:
        return self._collectors[collector_id][0]

    def remove_activation_collector(self, collector_id: int) -> dict[str, list[Any]]:
        """Remove a collector's hooks; returns its buffers."""
        buffers, handles = self._collectors.pop(collector_id)
        for h in handles:
            h.remove()
        return buffers

    # -- masks -------------------------------------------------------------------------------------
    def load_masks(self, masks: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Apply masks (e.g. from an earlier run); unknown modules or shape mismatches raise.

        While the model is unwrapped (after :meth:`unwrap_model`) the masks are only kept, next to
        the other kept masks, and :meth:`wrap_model` applies them.
        """
        for module_name, targets in masks.items():
            if module_name not in self._modules:
                raise ValueError(f"masks name a module {module_name!r} that is not in the model")
            config = self.module_configs.setdefault(module_name, {t: TargetSetting(source=-1) for t in targets})
            if not self._wrapped:
                for target, mask in targets.items():
                    value = getattr(self._modules[module_name], target, None)
                    if not is_io_target(target) and (not isinstance(value, Tensor) or value.shape != mask.shape):
                        shape = tuple(value.shape) if isinstance(value, Tensor) else None
                        raise ValueError(
                            f"{module_name}.{target}: mask shape {tuple(mask.shape)} != target shape {shape}"
                        )
                    self._masks.setdefault(module_name, {})[target] = mask.detach().float()
                continue
            if module_name not in self._wrappers:
                self._wrappers[module_name] = ModuleWrapper(self._modules[module_name], module_name, config)
            for target, mask in targets.items():
                self._wrappers[module_name].set_mask(target, mask)
        if self._wrapped:
            self._masks = self.get_masks()

    def get_masks(self) -> Masks:
        if not self._wrapped:
            return {m: dict(t) for m, t in self._masks.items()}
        return {name: w.masks for name, w in self._wrappers.items() if w.masks}

    def compress(self) -> tuple[nn.Module, Masks]:
        """Compute and apply masks; return ``(model, masks)``."""
        raise NotImplementedError

    # -- reporting and export ----------------------------------------------------------------------
    def sparsity_report(self) -> SparsityReport:
        """Requested vs achieved sparsity per module and target (and per global group)."""
        return build_report(self.module_configs, self.get_masks(), self._modules)

    def export_model(self, model_path: str | os.PathLike[str], mask_path: str | os.PathLike[str] | None = None) -> None:
        """Save the weights with masks multiplied in (safetensors), and the masks if ``mask_path``."""
        masks = self.get_masks()
        state = {}
        for key, value in self.bound_model.state_dict().items():
            module_name, _, target = key.rpartition(".")
            mask = masks.get(module_name, {}).get(target)
            state[key] = value * mask.to(value.device, value.dtype) if mask is not None else value
        save_state_dict(state, model_path)
        if mask_path is not None:
            save_masks(masks, mask_path)
        logger.info("exported pruned weights to %s%s", model_path, f" and masks to {mask_path}" if mask_path else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.module_configs)} modules)"


class BasicPruner(Pruner):
    """A pruner built from a DataCollector, a MetricsCalculator and a SparsityAllocator.

    Subclasses implement :meth:`reset_tools` to set ``self.data_collector``,
    ``self.metrics_calculator`` and ``self.sparsity_allocator``.
    """

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
        super().__init__(model, config_list, **kwargs)
        self.data_collector: DataCollector | None = None
        self.metrics_calculator: MetricsCalculator | None = None
        self.sparsity_allocator: SparsityAllocator | None = None
        self.reset_tools()

    def reset_tools(self) -> None:
        raise NotImplementedError

    def compress(self) -> tuple[nn.Module, Masks]:
        if self.data_collector is None or self.metrics_calculator is None or self.sparsity_allocator is None:
            raise RuntimeError(f"{type(self).__name__}.reset_tools() must set the three tools")
        self.data_collector.reset()
        data = self.data_collector.collect()
        with torch.no_grad():
            metrics = self.metrics_calculator.calculate_metrics(data)
            masks = self.sparsity_allocator.generate_sparsity(metrics)
        self.load_masks(masks)
        logger.debug("%s: masked %d modules", type(self).__name__, len(masks))
        return self.bound_model, self.get_masks()
