"""``auto_set_dependency_group_ids``: find layers whose output channels must be pruned together.

Layers whose outputs meet in an ``add``/``mul`` (residual branches, squeeze-excitation), or that
feed a depthwise convolution channel for channel, can only lose a channel where every one of them
loses it. Giving them one ``dependency_group_id`` makes the pruner mask the same indexes in all
of them, so speedup can remove those channels for real.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from search.config import ConfigWarning, TargetSetting, canonicalize_config_list, channel_dims
from search.speedup.analyze import analyze_model

__all__ = ["auto_set_dependency_group_ids", "channel_groups"]

logger = logging.getLogger(__name__)


def channel_groups(model: nn.Module, dummy_input: Any, module_names: Sequence[str]) -> list[list[str]]:
    """Groups (of two or more) of ``module_names`` whose output channels are coupled index by index."""
    analyzer = analyze_model(model, dummy_input)
    _, labels = analyzer.g.components()
    signature: dict[tuple[int, ...], list[str]] = {}
    for name in module_names:
        pv = analyzer.params.get((name, "weight"))
        if pv is None or pv.ndim == 0:
            continue
        out_dim, _ = channel_dims(analyzer.modules[name])
        out_dim = min(out_dim, pv.ndim - 1)
        key = tuple(int(c) for c in labels[pv.ids(out_dim)])
        signature.setdefault(key, []).append(name)
    return [names for names in signature.values() if len(names) > 1]


def _as_sub_config(module: str, setting: TargetSetting, group: str) -> dict[str, Any]:
    sub: dict[str, Any] = {"op_names": [module], "dependency_group_id": group}
    for key in ("sparse_ratio", "max_sparse_ratio", "min_sparse_ratio", "sparse_threshold", "global_group_id"):
        value = getattr(setting, key)
        if value is not None:
            sub[key] = value
    if setting.granularity != "default":
        gran = setting.granularity
        sub["granularity"] = list(gran) if isinstance(gran, tuple) else gran
    return sub


def auto_set_dependency_group_ids(
    model: nn.Module, config_list: Sequence[Mapping[str, Any]], dummy_input: Any
) -> list[dict[str, Any]]:
    """Return ``config_list`` plus sub-configs that put coupled layers in one dependency group.

    Example:
        >>> import torch
        >>> class Res(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = torch.nn.Conv2d(4, 8, 1), torch.nn.Conv2d(4, 8, 1)
        ...     def forward(self, x):
        ...         return self.a(x) + self.b(x)
        >>> cfg = auto_set_dependency_group_ids(Res(), [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}],
        ...                                     torch.randn(1, 4, 4, 4))
        >>> [c['op_names'] for c in cfg[1:]], cfg[1]['dependency_group_id'] == cfg[2]['dependency_group_id']
        ([['a'], ['b']], True)
    """
    configs = canonicalize_config_list(model, config_list, mode="pruning")
    selected = {name: t["weight"] for name, t in configs.items() if "weight" in t and t["weight"].align is None}
    groups = channel_groups(model, dummy_input, list(selected))
    result = [dict(c) for c in config_list]
    for index, names in enumerate(groups):
        ratios = {selected[n].sparse_ratio for n in names}
        if len(ratios) > 1:
            warnings.warn(
                f"layers {names} share output channels but ask for different ratios {sorted(map(str, ratios))}; "
                f"they all get {selected[names[0]].sparse_ratio}",
                ConfigWarning,
                stacklevel=2,
            )
        group = f"__dependency_{index}"
        first = selected[names[0]]
        for name in names:
            setting = selected[name].with_(sparse_ratio=first.sparse_ratio)
            if setting.global_group_id is not None and first.global_group_id != setting.global_group_id:
                setting = setting.with_(global_group_id=first.global_group_id)
            result.append(_as_sub_config(name, setting, group))
    logger.info("auto_set_dependency_group_ids: %d groups: %s", len(groups), groups)
    return result
