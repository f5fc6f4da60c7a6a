"""Find the normalisation layer that directly follows a channel-pruned module and align it.

When ``conv`` loses output channel ``c``, ``conv``'s output at ``c`` becomes 0, but a following
``BatchNorm`` still emits ``bias[c] - mean[c] * weight[c] / std[c]`` there, so the masked model
and the compact model (where channel ``c`` is gone) disagree. Masking the norm's ``weight`` and
``bias`` at ``c`` makes the masked model compute what the compact model will.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from search.config import AlignSetting, TargetSetting, channel_dims

logger = logging.getLogger(__name__)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _channels_out(module: nn.Module) -> int | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 1:
        return None
    out_dim, _ = channel_dims(module)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return weight.shape[1] * module.groups
    return weight.shape[out_dim] if weight.dim() > out_dim else None


def _normalises(norm: nn.Module, channels: int) -> bool:
    if isinstance(norm, _BN):
        return norm.affine and norm.num_features == channels
    if isinstance(norm, nn.LayerNorm):
        return norm.elementwise_affine and tuple(norm.normalized_shape) == (channels,)
    return False


def _pairs_by_fx(model: nn.Module, pruned: set[str]) -> list[tuple[str, str]]:
    graph = torch.fx.Tracer().trace(model)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.op == "call_module" and source.target in pruned:
            pairs.append((str(source.target), str(node.target)))
    return pairs


def _pairs_by_order(model: nn.Module, pruned: set[str]) -> list[tuple[str, str]]:
    names = [n for n, m in model.named_modules() if not list(m.children())]
    return [(a, b) for a, b in zip(names, names[1:], strict=False) if a in pruned]


def add_norm_alignments(
    model: nn.Module,
    configs: dict[str, dict[str, TargetSetting]],
    is_channel_pruned: Callable[[str], bool],
) -> list[tuple[str, str]]:
    """Add ``align`` settings for norms after channel-pruned modules (unless configured already).

    Returns the (pruned module, norm) pairs that were aligned.
    """
    pruned = {name for name in configs if is_channel_pruned(name)}
    modules = dict(model.named_modules())
    if not pruned or not any(isinstance(m, (*_BN, nn.LayerNorm)) for m in modules.values()):
        return []
    try:
        pairs = _pairs_by_fx(model, pruned)
    except Exception as exc:  # untraceable Python: fall back to registration order
        logger.warning("torch.fx could not trace the model (%s); aligning norms by registration order", exc)
        pairs = _pairs_by_order(model, pruned)
    aligned = []
    for source, norm_name in pairs:
        norm = modules.get(norm_name)
        channels = _channels_out(modules[source])
        if norm is None or channels is None or not _normalises(norm, channels) or norm_name in configs:
            continue
        out_dim, _ = channel_dims(modules[source])
        origin = configs[source]["weight"].source
        align = AlignSetting(module_name=source, target_name="weight", dims=(out_dim,))
        configs[norm_name] = {t: TargetSetting(align=align, source=origin) for t in ("weight", "bias")}
        aligned.append((source, norm_name))
    return aligned
