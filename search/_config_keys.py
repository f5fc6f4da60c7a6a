"""Key tables and legacy-key translation for config lists (private; see ``search.config``)."""

from __future__ import annotations

import copy
import math
from typing import Any

SELECTOR_KEYS = (
    "op_names",
    "op_names_re",
    "op_types",
    "exclude_op_names",
    "exclude_op_names_re",
    "exclude_op_types",
)
COMMON_KEYS = (*SELECTOR_KEYS, "target_names", "target_settings")

PRUNING_KEYS = (
    "sparse_ratio",
    "max_sparse_ratio",
    "min_sparse_ratio",
    "sparse_threshold",
    "global_group_id",
    "dependency_group_id",
    "granularity",
    "internal_metric_block",
    "align",
    "apply_method",
)
QUANTIZATION_KEYS = ("quant_dtype", "quant_scheme", "fuse_names", "granularity", "apply_method")
DISTILLATION_KEYS = ("lambda", "link", "apply_method")

LEGACY_PRUNING_KEYS = ("sparsity", "sparsity_per_layer", "total_sparsity", "max_sparsity_per_layer", "exclude")
LEGACY_QUANTIZATION_KEYS = ("quant_types", "quant_bits", "exclude")
LEGACY_DISTILLATION_KEYS = ("exclude",)

MODE_KEYS: dict[str, tuple[str, ...]] = {
    "pruning": PRUNING_KEYS,
    "quantization": QUANTIZATION_KEYS,
    "distillation": DISTILLATION_KEYS,
}
MODE_LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "pruning": LEGACY_PRUNING_KEYS,
    "quantization": LEGACY_QUANTIZATION_KEYS,
    "distillation": LEGACY_DISTILLATION_KEYS,
}

# ``op_types: ['default']`` in NNI 2.x meant "the layers a weight pruner normally prunes".
DEFAULT_OP_TYPES = (
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
)

_QUANT_TYPE_TARGET = {"weight": "weight", "input": "_input_", "output": "_output_", "bias": "bias"}


class ConfigError(ValueError):
    """A config list that cannot be applied; the message names the sub-config index and the key."""


def where(index: int, key: str | None = None) -> str:
    return f"config_list[{index}]" + (f".{key}" if key else "")


def _check_legacy_ratio(value: Any, index: int, key: str) -> None:
    """Validate a legacy ratio under the key the user wrote (it is renamed afterwards)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ConfigError(f"{where(index, key)}: must be a number in [0, 1], got {value!r}")


def translate_legacy(config: dict[str, Any], index: int, mode: str) -> dict[str, Any]:
    """Return a copy of ``config`` with NNI 1.x/2.x keys rewritten to the current specification."""
    cfg = copy.deepcopy(config)
    for key in ("sparsity", "sparsity_per_layer", "total_sparsity"):
        if key in cfg:
            _check_legacy_ratio(cfg[key], index, key)
    if "max_sparsity_per_layer" in cfg and not isinstance(cfg["max_sparsity_per_layer"], dict):
        _check_legacy_ratio(cfg["max_sparsity_per_layer"], index, "max_sparsity_per_layer")
    ratio_keys = [k for k in ("sparse_ratio", "sparsity", "sparsity_per_layer", "total_sparsity") if k in cfg]
    if len(ratio_keys) > 1:
        raise ConfigError(
            f"{where(index, ratio_keys[1])}: conflicts with '{ratio_keys[0]}'; give the ratio once "
            "('sparse_ratio', with 'global_group_id' for a total ratio)"
        )
    for key in ("sparsity", "sparsity_per_layer"):
        if key in cfg:
            cfg["sparse_ratio"] = cfg.pop(key)
    if "total_sparsity" in cfg:
        cfg["sparse_ratio"] = cfg.pop("total_sparsity")
        if "global_group_id" in cfg:
            raise ConfigError(f"{where(index, 'total_sparsity')}: conflicts with 'global_group_id'")
        cfg["global_group_id"] = f"__total_sparsity_{index}"
    if "max_sparsity_per_layer" in cfg:
        if "max_sparse_ratio" in cfg:
            raise ConfigError(f"{where(index, 'max_sparsity_per_layer')}: conflicts with 'max_sparse_ratio'")
        value = cfg.pop("max_sparsity_per_layer")
        if isinstance(value, dict):
            # NNI 2.x allowed {op_name: max_ratio}; kept aside and applied per module.
            cfg["__max_per_module__"] = dict(value)
        else:
            cfg["max_sparse_ratio"] = value
    op_types = cfg.get("op_types")
    if isinstance(op_types, list) and "default" in op_types:
        cfg["op_types"] = [t for t in op_types if t != "default"] + [
            t for t in DEFAULT_OP_TYPES if t not in op_types
        ]
    if mode == "quantization" and ("quant_types" in cfg or "quant_bits" in cfg):
        _translate_quant(cfg, index)
    return cfg


def _translate_quant(cfg: dict[str, Any], index: int) -> None:
    quant_types = cfg.pop("quant_types", None)
    quant_bits = cfg.pop("quant_bits", 8)
    if quant_types is None:
        raise ConfigError(f"{where(index, 'quant_bits')}: needs 'quant_types' (e.g. ['weight', 'input'])")
    if not isinstance(quant_types, list) or not quant_types:
        raise ConfigError(f"{where(index, 'quant_types')}: must be a non-empty list, got {quant_types!r}")
    targets = []
    settings = cfg.setdefault("target_settings", {})
    for qtype in quant_types:
        if qtype not in _QUANT_TYPE_TARGET:
            raise ConfigError(
                f"{where(index, 'quant_types')}: unknown quant type {qtype!r}; valid: {sorted(_QUANT_TYPE_TARGET)}"
            )
        bits = quant_bits.get(qtype, 8) if isinstance(quant_bits, dict) else quant_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
            raise ConfigError(f"{where(index, 'quant_bits')}: bits for {qtype!r} must be an int in [1, 32]")
        target = _QUANT_TYPE_TARGET[qtype]
        targets.append(target)
        settings.setdefault(target, {}).setdefault("quant_dtype", f"int{bits}")
    if "target_names" in cfg:
        raise ConfigError(f"{where(index, 'quant_types')}: conflicts with 'target_names'")
    cfg["target_names"] = targets
