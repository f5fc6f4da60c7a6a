"""Slice parameters and buffers to the kept positions, and update module attributes to match."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from search.speedup.analyze import Fold
from search.speedup.graph import Value

__all__ = ["Change", "SpeedupPlan", "apply_plan", "apply_removal", "rollback"]


@dataclass
class SpeedupPlan:
    """What speedup removed, replayable on a fresh model of the same architecture.

    ``keep[(module, attr)][axis]`` lists the kept indexes; ``bias_created`` lists modules that got
    a bias from constant folding (its values come with the weights).
    """

    keep: dict[tuple[str, str], dict[int, list[int]]] = field(default_factory=dict)
    bias_created: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "keep": {f"{m}::{a}": {str(ax): idx for ax, idx in axes.items()} for (m, a), axes in self.keep.items()},
            "bias_created": list(self.bias_created),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpeedupPlan:
        if data.get("version") != 1:
            raise ValueError(f"unsupported speedup plan version {data.get('version')!r}")
        keep: dict[tuple[str, str], dict[int, list[int]]] = {}
        for key, axes in data["keep"].items():
            module, _, attr = key.partition("::")
            keep[(module, attr)] = {int(ax): [int(i) for i in idx] for ax, idx in axes.items()}
        return cls(keep=keep, bias_created=list(data.get("bias_created", [])))


@dataclass
class Change:
    """What one module looked like before speedup (for rollback and the report)."""

    module_name: str
    module: nn.Module
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


_ATTRS = (
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features", "normalized_shape",
    "num_channels", "embedding_dim", "num_parameters", "input_size",
)


def _set_tensor(module: nn.Module, attr: str, new: torch.Tensor) -> None:
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    elif attr in module._buffers:
        module._buffers[attr] = new
    else:
        setattr(module, attr, new)


def _change(changes: dict[str, Change], module_name: str, module: nn.Module) -> Change:
    change = changes.get(module_name)
    if change is None:
        # these size attributes are plain instance attributes (nn.Module.__getattr__ only finds tensors and modules)
        own = module.__dict__
        change = changes[module_name] = Change(module_name, module, attrs={a: own[a] for a in _ATTRS if a in own})
    return change


def apply_folds(
    modules: dict[str, nn.Module], folds: list[Fold], removable: np.ndarray, changes: dict[str, Change]
) -> set[str]:
    """Add removed constant input slices into the consumer's bias (before any slicing)."""
    created: set[str] = set()
    for fold in folds:
        c = fold.value.constants(fold.axis)
        selected = removable[fold.value.ids(fold.axis)] & ~np.isnan(c) & (c != 0)
        if not selected.any():
            continue
        module = modules[fold.module_name]
        weight = module.weight.detach()
        idx = torch.as_tensor(np.nonzero(selected)[0], device=weight.device)
        values = torch.as_tensor(c[selected], dtype=weight.dtype, device=weight.device)
        cols = weight.index_select(1, idx)
        contrib = (cols.flatten(2).sum(dim=2) if cols.dim() > 2 else cols) @ values
        change = _change(changes, fold.module_name, module)
        bias = module.bias
        change.tensors.setdefault("bias", bias)
        if bias is None:
            created.add(fold.module_name)
            module.bias = nn.Parameter(contrib.clone(), requires_grad=weight.requires_grad)
        else:
            module.bias = nn.Parameter(bias.detach() + contrib, requires_grad=bias.requires_grad)
    return created


def apply_removal(
    modules: dict[str, nn.Module],
    params: dict[tuple[str, str], Value],
    removable: np.ndarray,
    folds: list[Fold] | None = None,
) -> tuple[dict[str, Change], SpeedupPlan]:
    """Remove the positions marked ``removable`` from every parameter/buffer; returns changes and plan.

    If a module refuses its new tensors (an attribute without a setter, say), what was already
    changed is rolled back before the error propagates.
    """
    changes: dict[str, Change] = {}
    try:
        plan = _remove(modules, params, removable, folds or [], changes)
    except Exception:
        rollback(changes)
        raise
    return changes, plan


def _remove(
    modules: dict[str, nn.Module],
    params: dict[tuple[str, str], Value],
    removable: np.ndarray,
    folds: list[Fold],
    changes: dict[str, Change],
) -> SpeedupPlan:
    created = apply_folds(modules, folds, removable, changes)
    plan = SpeedupPlan(bias_created=sorted(created))
    sliced: dict[int, torch.Tensor] = {}  # original tensor id -> its new tensor (keeps tied weights tied)
    for (module_name, attr), pv in params.items():
        keeps = {}
        for axis, start in enumerate(pv.offsets):
            gone = removable[start : start + pv.shape[axis]]
            if gone.any():
                keeps[axis] = np.flatnonzero(~gone)
        if not keeps:
            continue
        plan.keep[(module_name, attr)] = {axis: keep.tolist() for axis, keep in keeps.items()}
        module = modules[module_name]
        tensor = getattr(module, attr)
        change = _change(changes, module_name, module)
        change.tensors.setdefault(attr, tensor)
        if id(tensor) in sliced:
            setattr(module, attr, sliced[id(tensor)]) if isinstance(tensor, nn.Parameter) else _set_tensor(
                module, attr, sliced[id(tensor)]
            )
            continue
        new = tensor.detach()
        for axis, keep in keeps.items():  # index_select copies: the new tensor shares nothing with the old
            new = new.index_select(axis, torch.from_numpy(keep).to(new.device))
        _set_tensor(module, attr, new)
        sliced[id(tensor)] = getattr(module, attr)
        if attr == "weight" and module_name in created and 0 in keeps:
            # a bias born from folding follows the weight's output rows
            bias = module.bias
            keep0 = torch.as_tensor(keeps[0], dtype=torch.long, device=bias.device)
            module.bias = nn.Parameter(bias.detach().index_select(0, keep0), requires_grad=bias.requires_grad)
    for change in changes.values():
        _update_attributes(change)
    return plan


def apply_plan(model: nn.Module, plan: SpeedupPlan) -> nn.Module:
    """Shrink a fresh model of the same architecture the way ``plan`` says (weights to be loaded after)."""
    modules = dict(model.named_modules())
    changes: dict[str, Change] = {}
    for name in plan.bias_created:
        module = modules[name]
        if getattr(module, "bias", None) is not None:
            raise ValueError(f"plan adds a bias to {name!r}, which already has one")
        out = module.weight.shape[0]
        module.bias = nn.Parameter(torch.zeros(out, dtype=module.weight.dtype, device=module.weight.device))
    for (module_name, attr), axes in plan.keep.items():
        if module_name not in modules:
            raise ValueError(f"plan names module {module_name!r}, which is not in the model")
        module = modules[module_name]
        tensor = getattr(module, attr, None)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"plan names {module_name}.{attr}, which is no tensor of the model")
        _change(changes, module_name, module).tensors.setdefault(attr, tensor)
        new = tensor.detach()
        for axis, keep in axes.items():
            if keep and max(keep) >= new.shape[axis]:
                raise ValueError(f"plan keeps index {max(keep)} of {module_name}.{attr} axis {axis} (size {new.shape[axis]})")
            new = new.index_select(axis, torch.as_tensor(keep, dtype=torch.long, device=new.device))
        _set_tensor(module, attr, new.clone())
        if attr == "weight" and module_name in plan.bias_created and 0 in axes:
            keep0 = torch.as_tensor(axes[0], dtype=torch.long, device=new.device)
            module.bias = nn.Parameter(module.bias.detach().index_select(0, keep0))
    for change in changes.values():
        _update_attributes(change)
    return model


def _update_attributes(change: Change) -> None:
    m = change.module
    old = change.attrs
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        m.in_channels = m.weight.shape[0]
        m.out_channels = m.weight.shape[1] * m.groups
    elif isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels = m.weight.shape[0]
        if old["groups"] > 1 and old["groups"] == old["in_channels"]:  # depthwise: channels follow outputs
            multiplier = old["out_channels"] // old["in_channels"]
            m.in_channels = m.out_channels // multiplier
            m.groups = m.in_channels
        else:
            m.in_channels = m.weight.shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
        ref = m.running_mean if m.running_mean is not None else m.weight
        if ref is not None:
            m.num_features = ref.shape[0]
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)
    elif isinstance(m, nn.GroupNorm) and m.weight is not None:
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, nn.Embedding):
        m.embedding_dim = m.weight.shape[1]
    elif isinstance(m, nn.PReLU):
        m.num_parameters = m.weight.shape[0]
    elif isinstance(m, nn.RNNBase):
        m.input_size = m.weight_ih_l0.shape[1]


def rollback(changes: dict[str, Change]) -> None:
    """Undo :func:`apply_removal`."""
    for change in changes.values():
        for attr, tensor in change.tensors.items():
            if tensor is None or isinstance(tensor, nn.Parameter):
                setattr(change.module, attr, tensor)
            else:
                _set_tensor(change.module, attr, tensor)
        for attr, value in change.attrs.items():
            setattr(change.module, attr, value)
