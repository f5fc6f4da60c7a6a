"""SparsityAllocator: turn metrics into masks that honour every pruning key of the config list.

For each target with a ``sparse_ratio`` or ``sparse_threshold`` the allocator masks the
lowest-metric blocks (a block per metric element, see :class:`~search.pruning.scaling.Scaling`):

* ``sparse_ratio``: the share of the target's elements to mask (rounded to whole blocks);
* ``sparse_threshold``: mask the blocks whose metric is below it;
* ``min_sparse_ratio`` / ``max_sparse_ratio``: bounds on what is masked per target;
* ``global_group_id``: one ratio over all members, spread by ranking their metrics together;
* ``dependency_group_id``: members are masked at the same indexes (their metrics are summed);
* ``align``: a target masked where another target's mask is (e.g. ``bias`` after ``weight``).

With ``continuous_mask=True`` what is masked stays masked: masked blocks rank first and the new
mask is multiplied by the old one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from search.config import ConfigError, TargetSetting, is_io_target
from search.pruning.scaling import Scaling

if TYPE_CHECKING:
    from search.pruning.base import Pruner

__all__ = ["SparsityAllocator", "Masks", "Metrics"]

Masks = dict[str, dict[str, Tensor]]
Metrics = dict[str, dict[str, Tensor]]
_EPS = 1e-9


@dataclass
class _Member:
    module: str
    target: str
    setting: TargetSetting
    scaling: Scaling
    shape: tuple[int, ...]
    shrunk_shape: tuple[int, ...]


@dataclass
class _Unit:
    """One ranking unit: a single target, or a dependency group masked at the same indexes."""

    members: list[_Member]
    metric: Tensor  # flat, one value per block
    counts: Tensor  # flat, elements per block (summed over members)
    setting: TargetSetting
    mask: Tensor | None = field(default=None)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + _EPS))


def _bounds(setting: TargetSetting, n: int) -> tuple[int, int]:
    lo = math.ceil(setting.min_sparse_ratio * n - _EPS) if setting.min_sparse_ratio is not None else 0
    hi = math.floor(setting.max_sparse_ratio * n + _EPS) if setting.max_sparse_ratio is not None else n
    return max(0, min(lo, n)), max(0, min(hi, n))


def _k_for_ratio(metric_order: Tensor | None, counts: Tensor, ratio: float) -> int:
    """Number of lowest blocks whose element count is closest to ``ratio`` of the elements."""
    n = counts.numel()
    if n == 0:
        return 0
    if metric_order is None:
        return _round_half_up(ratio * n)
    cum = torch.cat([counts.new_zeros(1, dtype=torch.float64), counts[metric_order].cumsum(0).double()])
    return int(torch.argmin((cum - ratio * float(cum[-1])).abs()).item())


def _lowest(metric: Tensor, k: int) -> Tensor:
    """A keep-mask (1 keep, 0 masked) over the flat metric with its ``k`` lowest entries masked."""
    mask = torch.ones_like(metric, dtype=torch.float32)
    if k <= 0:
        return mask
    if k >= metric.numel():
        return torch.zeros_like(mask)
    idx = torch.topk(metric, k, largest=False, sorted=False).indices
    mask[idx] = 0.0
    return mask


class SparsityAllocator:
    """Generates masks from metrics for the targets of a pruner.

    Args:
        pruner: the pruner whose targets and settings are allocated.
        scalers: a :class:`Scaling` for all targets, or ``{module: {target: Scaling}}`` with
            optional ``'_default'`` keys; ``None`` derives each target's scaling from its
            ``granularity`` (the usual case).
        continuous_mask: keep what is already masked masked.
    """

    def __init__(
        self,
        pruner: Pruner,
        scalers: Scaling | Mapping[str, Mapping[str, Scaling]] | None = None,
        continuous_mask: bool = True,
    ) -> None:
        self.pruner = pruner
        self.scalers = scalers
        self.continuous_mask = continuous_mask

    # -- scalers ---------------------------------------------------------------------------------
    def _scaling(self, module: str, target: str) -> Scaling:
        scalers = self.scalers
        if isinstance(scalers, Scaling):
            return scalers
        if isinstance(scalers, Mapping):
            per_module = scalers.get(module, scalers.get("_default", {}))
            found = per_module.get(target, per_module.get("_default"))
            if found is not None:
                return found
        return self.pruner.target_scaling(module, target)

    # -- main entry -----------------------------------------------------------------------------
    def generate_sparsity(self, metrics: Metrics) -> Masks:
        """Masks ``{module: {target: mask}}`` for the metric targets and the targets aligned to them."""
        masks = self.common_target_masks_generation(metrics)
        masks = self.special_target_masks_generation(masks)
        if self.continuous_mask:
            for module, targets in masks.items():
                wrapper = self.pruner.get_modules_wrapper().get(module)
                for target, mask in targets.items():
                    old = wrapper.get_mask(target) if wrapper is not None else None
                    if old is not None and old.shape == mask.shape:
                        targets[target] = mask * old.to(mask.device)
        return masks

    def common_target_masks_generation(self, metrics: Metrics) -> Masks:
        units = self._build_units(metrics)
        local = [u for u in units if u.setting.global_group_id is None or u.setting.sparse_threshold is not None]
        groups: dict[Any, list[_Unit]] = {}
        for unit in units:
            if unit not in local:
                groups.setdefault(unit.setting.global_group_id, []).append(unit)
        for unit in local:
            unit.mask = self._local_mask(unit)
        for group_units in groups.values():
            self._global_masks(group_units)
        masks: Masks = {}
        for unit in units:
            assert unit.mask is not None
            for m in unit.members:
                block_mask = unit.mask.view(m.shrunk_shape)
                masks.setdefault(m.module, {})[m.target] = m.scaling.expand(block_mask, m.shape)
        return masks

    def _build_units(self, metrics: Metrics) -> list[_Unit]:
        units: list[_Unit] = []
        dep_units: dict[Any, _Unit] = {}
        wrappers = self.pruner.get_modules_wrapper()
        for module, targets in metrics.items():
            for target, metric in targets.items():
                setting = self.pruner.get_target_setting(module, target)
                if setting.sparse_ratio is None and setting.sparse_threshold is None:
                    continue
                scaling = self._scaling(module, target)
                shape = self.pruner.get_target_shape(module, target, metric)
                shrunk = scaling.shrunk_shape(shape)
                metric = metric.detach().float()
                if tuple(metric.shape) == tuple(shape) and shrunk != tuple(shape):
                    metric = scaling.shrink(metric, "sum")
                if metric.numel() != math.prod(shrunk):
                    raise ValueError(
                        f"{module}.{target}: metric has {metric.numel()} values, expected {math.prod(shrunk)} "
                        f"(one per block of {scaling} on {shape})"
                    )
                metric = metric.reshape(-1).clone()
                old = wrappers[module].get_mask(target) if module in wrappers else None
                if self.continuous_mask and old is not None and tuple(old.shape) == tuple(shape):
                    kept = scaling.shrink(old.to(metric.device), "max").reshape(-1)
                    metric[kept == 0] = -math.inf
                counts = scaling.block_counts(shape, device=metric.device).reshape(-1)
                member = _Member(module, target, setting, scaling, tuple(shape), shrunk)
                dep = setting.dependency_group_id
                if dep is None:
                    units.append(_Unit([member], metric, counts, setting))
                    continue
                unit = dep_units.get(dep)
                if unit is None:
                    dep_units[dep] = unit = _Unit([member], metric, counts, setting)
                    units.append(unit)
                    continue
                if unit.metric.numel() != metric.numel():
                    first = unit.members[0]
                    raise ConfigError(
                        f"config_list[{setting.source}].dependency_group_id: {module}.{target} has "
                        f"{metric.numel()} prunable positions but {first.module}.{first.target} has "
                        f"{unit.metric.numel()} in group {dep!r}; members must prune the same positions"
                    )
                unit.members.append(member)
                unit.metric = unit.metric + metric
                unit.counts = unit.counts + counts
        return units

    def _local_mask(self, unit: _Unit) -> Tensor:
        s = unit.setting
        n = unit.metric.numel()
        lo, hi = _bounds(s, n)
        if s.sparse_threshold is not None:
            k = int((unit.metric < s.sparse_threshold).sum().item())
        else:
            assert s.sparse_ratio is not None
            uniform = bool((unit.counts == unit.counts[0]).all()) if n else True
            order = None if uniform else torch.argsort(unit.metric, stable=True)
            k = _k_for_ratio(order, unit.counts, s.sparse_ratio)
        return _lowest(unit.metric, min(max(k, lo), hi))

    def _global_masks(self, units: list[_Unit]) -> None:
        """Spread one ratio over all units by ranking their metrics together (bounded per unit)."""
        ratio = units[0].setting.sparse_ratio
        assert ratio is not None
        total = float(sum(u.counts.sum().item() for u in units))
        budget = ratio * total
        forced = 0.0
        cand_metric, cand_counts, cand_owner, cand_index = [], [], [], []
        ranks_per_unit = []
        for ui, unit in enumerate(units):
            n = unit.metric.numel()
            lo, hi = _bounds(unit.setting, n)
            if n and float(unit.counts.max()) > 1:
                # Channels/blocks of different layers are not comparable raw (a 9-weight filter's L1
                # norm vs a 576-weight one's): rank by importance relative to the layer's mean, as
                # Torch-Pruning does, so no layer is emptied just for being small.
                finite = unit.metric[torch.isfinite(unit.metric)]
                scale = float(finite.abs().mean()) if finite.numel() else 0.0
                if scale > 0:
                    unit.metric = unit.metric / scale
            order = torch.argsort(unit.metric, stable=True)
            ranks_per_unit.append((order, lo))
            forced += float(unit.counts[order[:lo]].sum().item())
            eligible = order[lo:hi]
            cand_metric.append(unit.metric[eligible])
            cand_counts.append(unit.counts[eligible])
            cand_owner.append(torch.full((eligible.numel(),), ui, dtype=torch.long))
            cand_index.append(eligible)
        metric = torch.cat(cand_metric)
        counts = torch.cat(cand_counts).double()
        owner = torch.cat(cand_owner)
        index = torch.cat(cand_index)
        order = torch.argsort(metric, stable=True)
        cum = counts[order].cumsum(0)
        remaining = budget - forced
        take = 0
        if remaining > 0 and cum.numel():
            take = int(torch.searchsorted(cum, torch.tensor([remaining], dtype=cum.dtype)).item())
            take = min(take, cum.numel())
            # Round to the closest element count: include the block that straddles the goal if closer.
            if take < cum.numel():
                before = float(cum[take - 1]) if take > 0 else 0.0
                if abs(float(cum[take]) - remaining) < abs(before - remaining):
                    take += 1
        chosen = order[:take]
        for ui, unit in enumerate(units):
            mask = torch.ones_like(unit.metric, dtype=torch.float32)
            unit_order, lo = ranks_per_unit[ui]
            mask[unit_order[:lo]] = 0.0
            mine = chosen[owner[chosen] == ui]
            mask[index[mine]] = 0.0
            unit.mask = mask

    # -- aligned targets ---------------------------------------------------------------------------
    def special_target_masks_generation(self, masks: Masks) -> Masks:
        """Masks for targets whose setting has ``align`` (bias after weight, BN after conv...)."""
        wrappers = self.pruner.get_modules_wrapper()
        pending = [
            (module, target, setting)
            for module, targets in self.pruner.module_configs.items()
            for target, setting in targets.items()
            if setting.align is not None
        ]
        # A source may itself be aligned (and come later in module order): repeat until no progress.
        while pending:
            waiting = []
            for module, target, setting in pending:
                align = setting.align
                assert align is not None
                source = masks.get(align.module_name, {}).get(align.target_name)
                if source is None and align.module_name in wrappers:
                    source = wrappers[align.module_name].get_mask(align.target_name)
                if source is None:
                    waiting.append((module, target, setting))
                    continue
                masks.setdefault(module, {})[target] = self._aligned_mask(module, target, setting, source)
            if len(waiting) == len(pending):
                break
            pending = waiting
        return masks

    def _aligned_mask(self, module: str, target: str, setting: TargetSetting, source: Tensor) -> Tensor:
        """``target``'s mask from ``source``: a position is masked when all of it in ``source`` is."""
        align = setting.align
        assert align is not None
        bad = [d for d in align.dims if not -source.dim() <= d < source.dim()]
        if bad:
            raise ConfigError(
                f"config_list[{setting.source}].align.dims: {module}.{target} aligns with dims {list(align.dims)} "
                f"but {align.module_name}.{align.target_name} has {source.dim()} dims {tuple(source.shape)}"
            )
        dims = [d % source.dim() for d in align.dims]
        others = [d for d in range(source.dim()) if d not in dims]
        key = (id(source), tuple(others))
        cache = self.__dict__.setdefault("_reduced_cache", {})
        if key not in cache:  # a BN's weight and bias follow the same reduction of the conv mask
            cache.clear() if len(cache) > 64 else None
            cache[key] = (source, source.amax(dim=others) if others else source)
        reduced = cache[key][1]
        if dims != sorted(dims):
            reduced = reduced.permute([sorted(dims).index(d) for d in dims])
        if is_io_target(target):
            # Activation masks broadcast over the batch axis (and a conv's spatial axes); their
            # shape is unknown until data passes, so it is not needed here.
            return reduced.reshape(list(reduced.shape) + [1] * self.pruner.trailing_axes(module)).to(torch.float32, copy=True)
        shape = self.pruner.get_target_shape(module, target, None)
        if reduced.numel() != math.prod(shape):
            raise ConfigError(
                f"config_list[{setting.source}].align: {module}.{target} {tuple(shape)} cannot follow "
                f"dims {list(align.dims)} of {align.module_name}.{align.target_name} {tuple(source.shape)}"
            )
        return reduced.reshape(shape).to(torch.float32, copy=True)
