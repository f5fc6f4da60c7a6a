"""Compact models on disk without pickle: architecture factory + speedup plan + safetensors weights.

A folder holds ``compact.json`` (factory import path and keyword arguments, the speedup plan,
format version), ``model.safetensors`` (the compact weights) and, when given,
``masks.safetensors``. Loading calls the factory, replays the plan and loads the weights
strictly, so the result is exactly the saved compact model.

Example:
    >>> import tempfile, torch
    >>> from search.pruning import L1NormPruner
    >>> from search.speedup import ModelSpeedup
    >>> from search.zoo import get_model, get_dummy_input
    >>> model, x = get_model('digits_cnn'), get_dummy_input('digits_cnn')
    >>> pruner = L1NormPruner(model, [{'op_names': ['conv1', 'conv2'], 'sparse_ratio': 0.5}])
    >>> _, masks = pruner.compress(); pruner.unwrap_model()
    >>> speedup = ModelSpeedup(model, x, masks); _ = speedup.speedup_model()
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_compact_model(folder, model, speedup.plan, factory='search.zoo:digits_cnn', masks=masks)
    >>> again = load_compact_model(folder)
    >>> bool(torch.equal(again.eval()(x), model.eval()(x)))
    True
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from search.pruning.io import save_masks
from search.speedup.shrink import SpeedupPlan, apply_plan

__all__ = ["save_compact_model", "load_compact_model", "resolve_factory"]

FORMAT = "prunesearch-compact-model"
VERSION = 1


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """``'package.module:function'`` → the callable (a registered zoo name also works)."""
    if ":" not in spec:
        from search.zoo import model_entry  # noqa: PLC0415

        return model_entry(spec).factory
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot resolve model factory {spec!r}: {exc}") from None
    if not callable(obj):
        raise ValueError(f"model factory {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]


def save_compact_model(
    folder: str | os.PathLike[str],
    model: nn.Module,
    plan: SpeedupPlan,
    *,
    factory: str,
    factory_kwargs: Mapping[str, Any] | None = None,
    masks: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a compact model to ``folder`` (created if needed); returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "factory": factory,
        "factory_kwargs": dict(factory_kwargs or {}),
        "plan": plan.to_json(),
        "extra": dict(extra or {}),
    }
    json.dumps(meta)  # fail before writing anything if not JSON-able
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": FORMAT})
    if masks is not None:
        save_masks(masks, out / "masks.safetensors")
    (out / "compact.json").write_text(json.dumps(meta, indent=1))
    return out


def load_compact_model(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a compact model saved by :func:`save_compact_model` (no unpickling)."""
    path = Path(folder)
    meta = json.loads((path / "compact.json").read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} folder (got {meta.get('format')} v{meta.get('version')})")
    model = resolve_factory(meta["factory"])(**meta["factory_kwargs"])
    apply_plan(model, SpeedupPlan.from_json(meta["plan"]))
    state = load_file(str(path / "model.safetensors"), device=str(device))
    model.load_state_dict(state, strict=True)
    return model.to(device)
