"""Config lists: canonicalisation and validation (the "Compression Config Specification").

A config list is a list of sub-configs (dicts). Each selects modules (``op_names``,
``op_names_re``, ``op_types`` minus the ``exclude_*`` keys), names the targets to compress
(``target_names``; by default a module's ``weight`` and ``bias`` plus any target that
``target_settings`` names), and says how (``target_settings`` or the shorthand keys such as
``sparse_ratio``). A later sub-config overrides an earlier one for the same module and target.

:func:`canonicalize_config_list` resolves a config list against a model into
``{module_name: {target_name: TargetSetting}}``. Legacy NNI keys are translated first
(``sparsity``, ``sparsity_per_layer``, ``total_sparsity``, ``max_sparsity_per_layer``,
``op_types: ['default']``, ``exclude: True``, ``quant_types``/``quant_bits``).

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    >>> cfg = canonicalize_config_list(model, [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}])
    >>> sorted(cfg), sorted(cfg['0']), cfg['0']['weight'].sparse_ratio
    (['0', '2'], ['bias', 'weight'], 0.5)

Differences from NNI, on purpose: ``out_channel``/``in_channel`` follow the module's meaning
(``ConvTranspose`` weights are ``[in, out, ...]``, so their out-channel axis is 1; an
``Embedding``'s output features are axis 1), where NNI always uses axes 0/1.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from search._config_keys import (
    COMMON_KEYS,
    MODE_KEYS,
    MODE_LEGACY_KEYS,
    SELECTOR_KEYS,
    ConfigError,
    translate_legacy,
    where,
)

__all__ = [
    "AlignSetting",
    "ConfigError",
    "ConfigWarning",
    "TargetSetting",
    "canonicalize_config_list",
    "channel_dims",
    "is_io_target",
    "select_modules",
]

logger = logging.getLogger(__name__)

_GRANULARITIES = ("default", "in_channel", "out_channel", "per_channel")
_APPLY_METHODS = {"pruning": ("mul", "add"), "quantization": ("bypass", "clamp_round", "qat_clamp_round")}
_QUANT_DTYPE_RE = re.compile(r"^(u?int)([1-9]|[12][0-9]|3[0-2])$")
_IO_TARGET_RE = re.compile(r"^_(input|output)_(.*)$")


class ConfigWarning(UserWarning):
    """A config list that applies, but probably not as meant (e.g. a name that matches nothing)."""


@dataclass(frozen=True)
class AlignSetting:
    """Generate a target's mask from another target's mask instead of from a metric.

    A position of the aligned target is masked when every element of the source mask on the
    other dimensions is masked (e.g. a ``bias[i]`` when the whole ``weight[i]`` row is).
    """

    module_name: str
    target_name: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TargetSetting:
    """How one target (``weight``, ``bias``, ``_input_``, ...) of one module is compressed.

    ``source`` is the index of the sub-config that produced this setting (used in messages).
    ``extra`` holds the quantization / distillation keys.
    """

    sparse_ratio: float | None = None
    max_sparse_ratio: float | None = None
    min_sparse_ratio: float | None = None
    sparse_threshold: float | None = None
    global_group_id: Any = None
    dependency_group_id: Any = None
    granularity: str | tuple[int, ...] = "default"
    align: AlignSetting | None = None
    apply_method: str = "mul"
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: int = -1

    def with_(self, **changes: Any) -> TargetSetting:
        return replace(self, **changes)


def is_io_target(target_name: str) -> bool:
    """True for activation targets (``_input_``, ``_input_0``, ``_output_x``...)."""
    return target_name.startswith("_input_") or target_name.startswith("_output_")


def channel_dims(module: nn.Module) -> tuple[int, int]:
    """(out_channel_dim, in_channel_dim) of ``module.weight`` by what the module computes."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 1, 0
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return 1, 0
    return 0, 1


def _known_type_names(model: nn.Module) -> set[str]:
    names = {n for n, obj in vars(nn).items() if isinstance(obj, type) and issubclass(obj, nn.Module)}
    names.update(type(m).__name__ for m in model.modules())
    return names


def _str_list(cfg: Mapping[str, Any], key: str, index: int) -> list[str]:
    value = cfg.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        raise ConfigError(f"{where(index, key)}: must be a list of strings, got the string {value!r} (wrap it in [])")
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where(index, key)}: must be a list of strings, got {value!r}")
    return list(value)


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve_type(type_name: str) -> type | None:
    """The class a dotted name such as ``'torch.nn.Conv2d'`` refers to, if any.

    Only modules already imported are looked in: a config list never triggers an import.
    """
    module_path, _, attr = type_name.rpartition(".")
    obj = getattr(sys.modules.get(module_path), attr, None)
    return obj if isinstance(obj, type) and issubclass(obj, nn.Module) else None


def _type_matches(module: nn.Module, type_names: set[str]) -> bool:
    """Exact type match (as NNI: no subclasses) by class name or dotted path (``torch.nn.Conv2d`` too)."""
    cls = type(module)
    if cls.__name__ in type_names or _qualified_name(cls) in type_names:
        return True
    return any("." in name and _resolve_type(name) is cls for name in type_names)


def _type_hint(short: str, known_types: set[str]) -> str | None:
    """The known type name closest to ``short`` (a case-insensitive match first)."""
    by_lower = {t.lower(): t for t in known_types}
    if short.lower() in by_lower:
        return by_lower[short.lower()]
    hint = difflib.get_close_matches(short, sorted(known_types), n=1)
    return hint[0] if hint else None


def _check_type_name(model: nn.Module, type_name: str, known_types: set[str], path: str) -> None:
    """A type name must name a torch.nn class or a class of the model (plain or fully qualified)."""
    module_path, _, short = type_name.rpartition(".")
    if module_path:
        if type_name in {_qualified_name(type(m)) for m in model.modules()} or _resolve_type(type_name):
            return
        hint = _type_hint(short, known_types)
        if hint is not None and _resolve_type(f"{module_path}.{hint}") is not None:
            hint = f"{module_path}.{hint}"
        suggestion = f" (did you mean {hint!r}?)" if hint else ""
        raise ConfigError(f"{path}: {type_name!r} names no torch.nn.Module class{suggestion}")
    if short not in known_types:
        hint = _type_hint(short, known_types)
        suggestion = f" (did you mean {hint!r}?)" if hint else ""
        raise ConfigError(f"{path}: {type_name!r} is no torch.nn.Module type in torch.nn or in the model{suggestion}")


def select_modules(model: nn.Module, config: Mapping[str, Any], index: int = 0) -> dict[str, nn.Module]:
    """Modules a (translated) sub-config selects: (op_names ∪ op_names_re) ∩ op_types − excludes."""
    lists = {key: _str_list(config, key, index) for key in SELECTOR_KEYS}
    known_types = _known_type_names(model)
    for key in ("op_types", "exclude_op_types"):
        for type_name in lists[key]:
            _check_type_name(model, type_name, known_types, where(index, key))
    regexes: dict[str, list[re.Pattern[str]]] = {}
    for key in ("op_names_re", "exclude_op_names_re"):
        try:
            regexes[key] = [re.compile(p) for p in lists[key]]
        except re.error as exc:
            raise ConfigError(f"{where(index, key)}: invalid regular expression: {exc}") from None
    if not (lists["op_names"] or lists["op_names_re"] or lists["op_types"]):
        raise ConfigError(f"{where(index)}: selects no module; give 'op_types', 'op_names' or 'op_names_re'")

    modules = dict(model.named_modules())
    modules.pop("", None)
    names_given = bool(lists["op_names"] or lists["op_names_re"])
    for name in lists["op_names"] + lists["exclude_op_names"]:
        if name not in modules:
            warnings.warn(f"{where(index)}: module name {name!r} matches nothing in the model", ConfigWarning, stacklevel=3)
    selected: dict[str, nn.Module] = {}
    op_types = set(lists["op_types"])
    for name, module in modules.items():
        if names_given and not (name in lists["op_names"] or any(r.match(name) for r in regexes["op_names_re"])):
            continue
        if op_types and not _type_matches(module, op_types):
            continue
        if name in lists["exclude_op_names"] or any(r.match(name) for r in regexes["exclude_op_names_re"]):
            continue
        if _type_matches(module, set(lists["exclude_op_types"])):
            continue
        selected[name] = module
    if not selected:
        warnings.warn(f"{where(index)}: selects no module of the model", ConfigWarning, stacklevel=3)
    return selected


def _check_ratio(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ConfigError(f"{path}: must be a number in [0, 1], got {value!r}")
    return float(value)


def _unknown_key(key: str, allowed: Sequence[str], path: str, mode: str) -> ConfigError:
    for other_mode, keys in MODE_KEYS.items():
        if other_mode != mode and key in keys:
            return ConfigError(f"{path}: {key!r} is a {other_mode} key; it has no meaning in a {mode} config")
    for other_mode, keys in MODE_LEGACY_KEYS.items():
        if other_mode != mode and key in keys:
            return ConfigError(f"{path}: {key!r} is a legacy {other_mode} key; it has no meaning in a {mode} config")
    hint = difflib.get_close_matches(key, list(allowed), n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ConfigError(f"{path}: unknown key {key!r}{suggestion}")


def _parse_granularity(value: Any, path: str) -> str | tuple[int, ...]:
    if isinstance(value, str):
        if value not in _GRANULARITIES:
            raise ConfigError(f"{path}: must be one of {list(_GRANULARITIES)} or a list of block sizes, got {value!r}")
        return value
    if isinstance(value, Sequence) and value and all(
        isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1) for v in value
    ):
        return tuple(value)
    raise ConfigError(f"{path}: a block granularity is a non-empty list of positive ints (or -1 for a whole axis), got {value!r}")


def _parse_align(value: Any, module_name: str, path: str) -> AlignSetting:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be a dict with 'target_name' and 'dims', got {value!r}")
    unknown = set(value) - {"module_name", "target_name", "dims"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; valid: ['dims', 'module_name', 'target_name']")
    target = value.get("target_name")
    if not isinstance(target, str):
        raise ConfigError(f"{path}.target_name: required, a target name such as 'weight'")
    dims = value.get("dims", [0])
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = [dims]
    if not isinstance(dims, Sequence) or not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise ConfigError(f"{path}.dims: must be a non-empty list of ints, got {dims!r}")
    owner = value.get("module_name") or module_name
    if not isinstance(owner, str):
        raise ConfigError(f"{path}.module_name: must be a module name, got {owner!r}")
    return AlignSetting(module_name=owner, target_name=target, dims=tuple(dims))


def _parse_setting(raw: Mapping[str, Any], mode: str, module_name: str, index: int, path: str) -> dict[str, Any]:
    """Validate one target's keys and return them as TargetSetting fields."""
    allowed = MODE_KEYS[mode]
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}"
        if key not in allowed:
            raise _unknown_key(key, allowed, key_path, mode)
        if key in ("sparse_ratio", "max_sparse_ratio", "min_sparse_ratio"):
            fields[key] = None if value is None else _check_ratio(value, key_path)
        elif key == "sparse_threshold":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)
            ):
                raise ConfigError(f"{key_path}: must be a number, got {value!r}")
            fields[key] = None if value is None else float(value)
        elif key in ("global_group_id", "dependency_group_id"):
            if value is not None and not isinstance(value, str | int):
                raise ConfigError(f"{key_path}: must be a string or an int, got {value!r}")
            fields[key] = value
        elif key == "granularity":
            fields[key] = _parse_granularity(value, key_path)
        elif key == "align":
            fields[key] = None if value is None else _parse_align(value, module_name, key_path)
        elif key == "apply_method":
            valid = _APPLY_METHODS.get(mode, ("mse", "kl"))
            if value not in valid:
                raise ConfigError(f"{key_path}: must be one of {list(valid)}, got {value!r}")
            fields[key] = value
        elif key == "internal_metric_block":
            extra[key] = value
        else:
            extra[key] = _check_extra(key, value, key_path)
    if extra:
        fields["extra"] = extra
    return fields


def _check_extra(key: str, value: Any, path: str) -> Any:
    if key == "quant_dtype" and not (isinstance(value, str) and _QUANT_DTYPE_RE.match(value)):
        raise ConfigError(f"{path}: must look like 'int8' or 'uint4' (1-32 bits), got {value!r}")
    if key == "quant_scheme" and value not in ("affine", "symmetric"):
        raise ConfigError(f"{path}: must be 'affine' or 'symmetric', got {value!r}")
    if key == "lambda" and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0
    ):
        raise ConfigError(f"{path}: must be a non-negative number, got {value!r}")
    if key == "link" and not (
        (isinstance(value, str) and value)
        or (isinstance(value, Sequence) and value and all(isinstance(v, str) and v for v in value))
    ):
        raise ConfigError(f"{path}: must be a teacher module name or a non-empty list of them, got {value!r}")
    if key == "fuse_names" and not (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(
            isinstance(t, Sequence) and not isinstance(t, str) and t and all(isinstance(n, str) for n in t)
            for t in value
        )
    ):
        raise ConfigError(f"{path}: must be a list of tuples of module names, got {value!r}")
    return value


def _check_target_name(module: nn.Module, module_name: str, target: str, path: str) -> bool:
    """Validate one target name for one module; False when the module simply lacks it."""
    match = _IO_TARGET_RE.match(target)
    if match:
        kind, suffix = match.groups()
        if kind == "input" and suffix and not suffix.isdigit():
            params = list(inspect.signature(module.forward).parameters)
            if suffix not in params:
                raise ConfigError(
                    f"{path}: {target!r}: {type(module).__name__}.forward of {module_name!r} has no argument "
                    f"{suffix!r}; arguments: {params}"
                )
        return True
    value = getattr(module, target, None)
    if value is None:
        return False
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{path}: {target!r} of module {module_name!r} is no parameter or buffer")
    return True


def _default_targets(module: nn.Module, mode: str) -> list[str]:
    if mode == "pruning" or mode == "quantization":
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            targets = ["weight"]
            if mode == "pruning" and isinstance(getattr(module, "bias", None), torch.Tensor):
                targets.append("bias")
            return targets
        return ["_output_"]
    return ["_output_"]


def _validate_targets_setting(setting: TargetSetting, target: str, module_name: str, mode: str, path: str) -> None:
    if mode != "pruning":
        return
    if setting.align is None and setting.sparse_ratio is None and setting.sparse_threshold is None:
        raise ConfigError(
            f"{path}: target {target!r} of {module_name!r} needs 'sparse_ratio' or 'sparse_threshold' (or 'align')"
        )
    if setting.sparse_ratio is not None and setting.sparse_threshold is not None:
        raise ConfigError(f"{path}.sparse_threshold: conflicts with 'sparse_ratio'; give one of them")
    lo, hi = setting.min_sparse_ratio, setting.max_sparse_ratio
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"{path}.min_sparse_ratio: {lo} is larger than max_sparse_ratio {hi}")
    ratio = setting.sparse_ratio
    if ratio is not None and setting.global_group_id is None:
        if hi is not None and ratio > hi:
            raise ConfigError(f"{path}.max_sparse_ratio: {hi} is below sparse_ratio {ratio}")
        if lo is not None and ratio < lo:
            raise ConfigError(f"{path}.min_sparse_ratio: {lo} is above sparse_ratio {ratio}")
    if setting.global_group_id is not None and ratio is None:
        raise ConfigError(f"{path}.global_group_id: needs 'sparse_ratio' (the group's total ratio)")
    gran = setting.granularity
    if is_io_target(target) and gran in ("in_channel", "out_channel"):
        raise ConfigError(f"{path}.granularity: {gran!r} applies to parameters; use 'per_channel' for {target!r}")


def canonicalize_config_list(
    model: nn.Module, config_list: Sequence[Mapping[str, Any]], mode: str = "pruning"
) -> dict[str, dict[str, TargetSetting]]:
    """Resolve ``config_list`` against ``model``.

    Args:
        model: the model whose modules the config list selects.
        config_list: the user's config list (current or legacy keys).
        mode: ``'pruning'``, ``'quantization'`` or ``'distillation'``: which keys are valid.

    Returns:
        ``{module_name: {target_name: TargetSetting}}`` in the model's module order.

    Raises:
        ConfigError: naming ``config_list[i].key`` for the first problem found.
    """
    if mode not in MODE_KEYS:
        raise ValueError(f"mode must be one of {sorted(MODE_KEYS)}, got {mode!r}")
    if isinstance(config_list, Mapping | str | bytes) or not isinstance(config_list, Sequence):
        raise ConfigError(f"config_list: must be a list of dicts, got {type(config_list).__name__}")
    allowed_top = (*COMMON_KEYS, *MODE_KEYS[mode], *MODE_LEGACY_KEYS[mode])
    result: dict[str, dict[str, TargetSetting]] = {}
    for index, raw in enumerate(config_list):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where(index)}: must be a dict, got {type(raw).__name__}")
        for key in raw:
            if key not in allowed_top:
                raise _unknown_key(str(key), allowed_top, where(index, str(key)), mode)
        cfg = translate_legacy(dict(raw), index, mode)
        exclude = cfg.get("exclude")
        if exclude is not None and not isinstance(exclude, bool):
            raise ConfigError(f"{where(index, 'exclude')}: must be true or false, got {exclude!r}")
        modules = select_modules(model, cfg, index)
        if exclude:
            extra_keys = [k for k in cfg if k not in SELECTOR_KEYS and k != "exclude"]
            if extra_keys:
                raise ConfigError(f"{where(index, 'exclude')}: conflicts with {extra_keys[0]!r}; an exclude sub-config only selects")
            for name in modules:
                result.pop(name, None)
            continue
        _apply_sub_config(result, cfg, modules, index, mode)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    _check_groups(result)
    _check_aligns(model, result)
    return dict(sorted(result.items(), key=lambda kv: order[kv[0]]))


def _check_groups(result: dict[str, dict[str, TargetSetting]]) -> None:
    """Members of one global or dependency group must ask for the same ratio."""
    for key in ("global_group_id", "dependency_group_id"):
        seen: dict[Any, tuple[float | None, int, str]] = {}
        for module_name, targets in result.items():
            for target, setting in targets.items():
                group = getattr(setting, key)
                if group is None:
                    continue
                first = seen.setdefault(group, (setting.sparse_ratio, setting.source, f"{module_name}.{target}"))
                if first[0] != setting.sparse_ratio:
                    raise ConfigError(
                        f"{where(setting.source, 'sparse_ratio')}: {module_name}.{target} asks {setting.sparse_ratio} "
                        f"but {first[2]} (config_list[{first[1]}]) asks {first[0]} in the same {key} {group!r}; "
                        "members of a group share one ratio"
                    )


def _check_aligns(model: nn.Module, result: dict[str, dict[str, TargetSetting]]) -> None:
    """Every ``align`` must name a compressed target of a module of the model, and dims it has."""
    modules = dict(model.named_modules())
    for module_name, targets in result.items():
        for target, setting in targets.items():
            align = setting.align
            if align is None:
                continue
            path = where(setting.source, "align")
            of = f"{module_name}.{target}"
            if align.module_name not in modules:
                hint = difflib.get_close_matches(align.module_name, [n for n in modules if n], n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(
                    f"{path}.module_name: {of} aligns with {align.module_name!r}, no module of the model{suggestion}"
                )
            source_module = modules[align.module_name]
            if not is_io_target(align.target_name):
                value = getattr(source_module, align.target_name, None)
                if not isinstance(value, torch.Tensor):
                    names = [n for n, _ in source_module.named_parameters(recurse=False)]
                    names += [n for n, _ in source_module.named_buffers(recurse=False)]
                    hint = difflib.get_close_matches(align.target_name, names, n=1)
                    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                    raise ConfigError(
                        f"{path}.target_name: {of} aligns with {align.target_name!r}, which "
                        f"{align.module_name!r} does not have{suggestion}"
                    )
                bad = [d for d in align.dims if not -value.dim() <= d < value.dim()]
                if bad:
                    raise ConfigError(
                        f"{path}.dims: {of} aligns with dims {list(align.dims)} but "
                        f"{align.module_name}.{align.target_name} has {value.dim()} dims {tuple(value.shape)}"
                    )
            if align.target_name not in result.get(align.module_name, {}):
                raise ConfigError(
                    f"{path}: {of} aligns with {align.module_name}.{align.target_name}, which this config list "
                    "does not compress (select it in a sub-config too)"
                )
    for module_name, targets in result.items():
        for target, setting in targets.items():
            chain = [(module_name, target)]
            link = setting.align
            while link is not None:
                step = (link.module_name, link.target_name)
                if step in chain:
                    names = " -> ".join(f"{m}.{t}" for m, t in [*chain, step])
                    raise ConfigError(f"{where(setting.source, 'align')}: alignment cycle {names}; one must be ranked")
                chain.append(step)
                link = result[step[0]][step[1]].align


def _apply_sub_config(
    result: dict[str, dict[str, TargetSetting]],
    cfg: dict[str, Any],
    modules: dict[str, nn.Module],
    index: int,
    mode: str,
) -> None:
    shorthand = {k: v for k, v in cfg.items() if k in MODE_KEYS[mode]}
    per_module_max = cfg.get("__max_per_module__", {})
    target_settings = cfg.get("target_settings") or {}
    if not isinstance(target_settings, Mapping):
        raise ConfigError(f"{where(index, 'target_settings')}: must be a dict {{target_name: settings}}")
    explicit_targets = cfg.get("target_names")
    if explicit_targets is not None:
        explicit_targets = _str_list(cfg, "target_names", index)
        if not explicit_targets:
            raise ConfigError(f"{where(index, 'target_names')}: must not be empty")
    for target, settings in target_settings.items():
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where(index, f'target_settings.{target}')}: must be a dict of settings")
        if explicit_targets is not None and target not in explicit_targets:
            raise ConfigError(f"{where(index, f'target_settings.{target}')}: {target!r} is not in target_names")
    if per_module_max:
        for name, value in per_module_max.items():
            _check_ratio(value, where(index, f"max_sparsity_per_layer.{name}"))
            if name not in modules:
                warnings.warn(
                    f"{where(index, 'max_sparsity_per_layer')}: {name!r} is no module this sub-config selects",
                    ConfigWarning,
                    stacklevel=4,
                )
    _check_fuse_names(cfg.get("fuse_names"), modules, index)
    found_any: dict[str, bool] = {}
    for module_name, module in modules.items():
        if explicit_targets is not None:
            targets = explicit_targets
        else:
            # As in NNI: the module's default targets plus any target that target_settings names.
            targets = _default_targets(module, mode)
            targets += [t for t in target_settings if t not in targets]
        out_dim, _ = channel_dims(module)
        for target in targets:
            path = where(index, "target_names" if explicit_targets is not None else f"target_settings.{target}")
            present = _check_target_name(module, module_name, target, path)
            found_any[target] = found_any.get(target, False) or present
            if not present:
                continue
            fields = _parse_setting(shorthand, mode, module_name, index, where(index))
            explicit = target_settings.get(target, {})
            if (
                mode == "pruning"
                and target == "bias"
                and "weight" in targets
                and isinstance(getattr(module, "weight", None), torch.Tensor)
                and not any(k in explicit for k in ("sparse_ratio", "sparse_threshold"))
            ):
                # A bias follows its weight's output channels unless told otherwise.
                fields = {k: v for k, v in fields.items() if k in ("apply_method",)}
                fields["align"] = AlignSetting(module_name, "weight", (out_dim,))
            fields.update(
                _parse_setting(explicit, mode, module_name, index, where(index, f"target_settings.{target}"))
            )
            if module_name in per_module_max:
                fields["max_sparse_ratio"] = _check_ratio(
                    per_module_max[module_name], where(index, f"max_sparsity_per_layer.{module_name}")
                )
            setting = TargetSetting(source=index, **fields)
            _validate_targets_setting(setting, target, module_name, mode, where(index))
            _check_block_granularity(setting, module, module_name, target, where(index, "granularity"))
            result.setdefault(module_name, {})[target] = setting
    named = explicit_targets if explicit_targets is not None else list(target_settings)
    for target in named:
        if modules and not found_any.get(target, False):
            key = "target_names" if explicit_targets is not None else f"target_settings.{target}"
            raise ConfigError(
                f"{where(index, key)}: no selected module has a target {target!r} "
                f"(selected: {sorted(modules)[:5]})"
            )


def _check_block_granularity(
    setting: TargetSetting, module: nn.Module, module_name: str, target: str, path: str
) -> None:
    """A block granularity may not have more axes than the parameter it applies to."""
    gran = setting.granularity
    if not isinstance(gran, tuple) or is_io_target(target):
        return
    value = getattr(module, target)
    if len(gran) > value.dim():
        raise ConfigError(
            f"{path}: block {list(gran)} has {len(gran)} axes but {module_name}.{target} has {value.dim()} "
            f"{tuple(value.shape)}"
        )


def _check_fuse_names(fuse_names: Any, modules: Mapping[str, nn.Module], index: int) -> None:
    """The first name of each fuse_names tuple must be a module this sub-config selects."""
    if not modules or not fuse_names or not isinstance(fuse_names, Sequence):
        return
    for group in fuse_names:
        if isinstance(group, Sequence) and not isinstance(group, str) and group and group[0] not in modules:
            raise ConfigError(
                f"{where(index, 'fuse_names')}: {group[0]!r} (first of {list(group)}) is no module this "
                f"sub-config selects (selected: {sorted(modules)[:5]})"
            )
