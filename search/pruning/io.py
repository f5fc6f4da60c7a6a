"""Saving and loading masks and weights as safetensors (never pickle)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["save_masks", "load_masks", "save_state_dict", "load_state_dict"]

_FORMAT = {"format": "prunesearch-masks", "version": "1"}


def save_masks(masks: Mapping[str, Mapping[str, Tensor]], path: str | os.PathLike[str]) -> None:
    """Save ``{module: {target: mask}}``; keys are ``f"{module}.{target}"`` like state_dict keys."""
    flat = {f"{module}.{target}": mask.detach().to("cpu", torch.float32).clone().contiguous() for module, targets in masks.items() for target, mask in targets.items()}
    save_file(flat, os.fspath(path), metadata=_FORMAT)


def load_masks(path: str | os.PathLike[str]) -> dict[str, dict[str, Tensor]]:
    """Inverse of :func:`save_masks` (target names never contain dots)."""
    masks: dict[str, dict[str, Tensor]] = {}
    for key, value in load_file(os.fspath(path)).items():
        module, _, target = key.rpartition(".")
        masks.setdefault(module, {})[target] = value
    return masks


def save_state_dict(state: Mapping[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Save a state_dict as safetensors (shared storages are cloned, as the format requires)."""
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, os.fspath(path))


def load_state_dict(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    return load_file(os.fspath(path), device=str(device))
