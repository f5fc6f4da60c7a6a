"""Model speedup: turn pruning masks into a smaller model that computes the same function.

Example:
    >>> import torch
    >>> from search.pruning import L1NormPruner
    >>> from search.speedup import ModelSpeedup
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> pruner = L1NormPruner(model, [{'op_names': ['0'], 'sparse_ratio': 0.75}])
    >>> _, masks = pruner.compress(); pruner.unwrap_model()
    >>> speedup = ModelSpeedup(model, torch.randn(2, 8), masks)
    >>> model = speedup.speedup_model()
    >>> model[0].out_features, speedup.report.row('0').removed
    (4, 12)
"""

from __future__ import annotations

from search.speedup.dependency import auto_set_dependency_group_ids, channel_groups
from search.speedup.export import check_onnx, export_onnx, export_pt2, load_pt2
from search.speedup.persist import load_compact_model, resolve_factory, save_compact_model
from search.speedup.report import ModuleRow, SpeedupReport
from search.speedup.shrink import SpeedupPlan, apply_plan
from search.speedup.speedup import ModelSpeedup, SpeedupError

__all__ = [
    "ModelSpeedup",
    "ModuleRow",
    "SpeedupError",
    "SpeedupPlan",
    "SpeedupReport",
    "apply_plan",
    "load_compact_model",
    "resolve_factory",
    "save_compact_model",
    "auto_set_dependency_group_ids",
    "channel_groups",
    "check_onnx",
    "export_onnx",
    "export_pt2",
    "load_pt2",
]
