"""Per-layer budgets for the searches that pick one pruning ratio per layer (AMC, Optuna).

:class:`LayerCostModel` predicts the model's FLOPs and parameter count from the ratio of output
channels each prunable layer loses, without pruning anything: shapes come from one forward pass
of ``dummy_input``, and which input channels of which layers disappear with a layer's output
channels comes from the channel graph that speedup uses. Pruning ``conv1`` therefore also shrinks
``bn1`` and ``conv2``'s input, as the compact model will. Ratios are rounded to whole channels
the way the pruners round them, so the prediction is the compact model's cost whenever speedup
removes exactly the masked channels (serial CNNs; see the class docstring for residual nets).

Example:
    >>> from search.zoo import get_model, get_dummy_input
    >>> model = get_model("digits_cnn")
    >>> costs = LayerCostModel(model, get_dummy_input("digits_cnn"), ["conv1", "conv2", "conv3"])
    >>> round(costs.ratio([0.0, 0.5, 0.25], "flops"), 4)   # measured after speedup: 0.4655
    0.4655
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from search.config import canonicalize_config_list, channel_dims
from search.metrics import count_flops, count_params
from search.scheduling import Constraints

__all__ = ["Layer", "LayerCostModel", "PrunableLayers", "resolve_layers"]

logger = logging.getLogger(__name__)

_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_EPS = 1e-9
METRICS = ("flops", "params")
_RATIO_KEYS = ("sparse_ratio", "sparsity", "sparsity_per_layer", "total_sparsity", "sparse_threshold")


def unrated_subconfigs(config_list: Sequence[Mapping[str, Any]]) -> set[int]:
    """Indexes of the sub-configs that select layers but give no ratio (a per-layer search picks it)."""
    return {i for i, sub in enumerate(config_list) if isinstance(sub, Mapping) and not sub.get("exclude")
            and not any(k in sub for k in _RATIO_KEYS)}


def with_placeholder_ratios(config_list: Sequence[Mapping[str, Any]]) -> list[Any]:
    """``config_list`` with a ``sparse_ratio`` in the sub-configs that give none, for validation.

    The placeholder is the sub-config's ``min_sparse_ratio`` (or 0), so it is within its bounds.

    Example:
        >>> with_placeholder_ratios([{'op_types': ['Conv2d'], 'max_sparse_ratio': 0.9}])
        [{'op_types': ['Conv2d'], 'max_sparse_ratio': 0.9, 'sparse_ratio': 0.0}]
    """
    unrated = unrated_subconfigs(config_list)

    def placeholder(sub: Mapping[str, Any]) -> Any:
        low = sub.get("min_sparse_ratio")
        return low if isinstance(low, int | float) and not isinstance(low, bool) else 0.0

    return [{**sub, "sparse_ratio": placeholder(sub)} if i in unrated else sub for i, sub in enumerate(config_list)]


def channels_removed(ratio: float, n: int) -> int:
    """Channels a pruner masks for ``ratio`` of ``n`` (rounded half up, as the allocator does)."""
    return max(0, min(n, int(math.floor(ratio * n + 0.5 + _EPS))))


@dataclass(frozen=True)
class Layer:
    """One decision of a per-layer search: a prunable layer, or layers whose channels are coupled.

    Coupled layers (the convolutions whose outputs meet in a residual ``add``) can only lose a
    channel together, so they take one ratio and one ``dependency_group_id``. Sizes are those of
    ``name``, the first member in forward order; ``flops`` / ``params`` sum over ``members``.
    """

    name: str
    members: tuple[str, ...]
    kind: str  # 'conv' or 'linear'
    in_channels: int
    out_channels: int
    in_size: tuple[int, int]  # input feature map (h, w); (1, 1) for Linear
    stride: int
    kernel: int
    flops: float  # of the unpruned layers on dummy_input
    params: float
    min_ratio: float
    max_ratio: float

    def quantize(self, ratio: float) -> float:
        """``ratio`` rounded to whole channels within ``[min_ratio, max_ratio]``."""
        lo, hi = self._k_bounds()
        return min(max(channels_removed(ratio, self.out_channels), lo), hi) / self.out_channels

    def choices(self) -> list[float]:
        """Every ratio the layer can take (whole channels within its bounds), ascending."""
        lo, hi = self._k_bounds()
        return [k / self.out_channels for k in range(lo, hi + 1)]

    def _k_bounds(self) -> tuple[int, int]:
        lo = math.ceil(self.min_ratio * self.out_channels - _EPS)
        hi = math.floor(self.max_ratio * self.out_channels + _EPS)
        return lo, max(lo, hi)


@dataclass(frozen=True)
class PrunableLayers:
    """The layers a config list selects, their ratio bounds, and the budgets it implies."""

    names: list[str]
    bounds: dict[str, tuple[float, float]]
    budgets: dict[str, float]  # {'flops': max ratio, 'params': max ratio}
    constraints: Constraints  # the user's constraints with the budgets merged in


def resolve_layers(
    model: nn.Module,
    config_list: Sequence[Mapping[str, Any]],
    constraints: Constraints,
    target: str,
    default_max_ratio: float,
    *,
    who: str,
) -> PrunableLayers:
    """Prunable layers, per-layer bounds and budgets of a per-layer search.

    The config's ``sparse_ratio`` (``total_sparsity``) is the share of the ``target`` cost to remove,
    as in NNI's AMC: ``sparse_ratio=0.5`` with ``target='flops'`` keeps at most half the FLOPs. A
    ``max_flops_ratio`` / ``max_params_ratio`` constraint bounds the cost as well (the tighter wins).
    """
    if target not in METRICS:
        raise ValueError(f"target must be 'flops' or 'params', got {target!r}")
    # A search config may leave the ratio out (the search picks it): give the validator a placeholder.
    unrated = unrated_subconfigs(config_list)
    settings = canonicalize_config_list(model, with_placeholder_ratios(config_list))
    names, bounds, ratios = [], {}, {}
    for name, targets in settings.items():
        setting = targets.get("weight")
        if setting is None:
            continue
        module = model.get_submodule(name)
        if not isinstance(module, _LAYER_TYPES):
            raise ValueError(
                f"{who}: config_list selects {name!r} ({type(module).__name__}); per-layer searches prune the output "
                f"channels of Conv1d/2d/3d and Linear layers only"
            )
        lo = setting.min_sparse_ratio or 0.0
        hi = setting.max_sparse_ratio if setting.max_sparse_ratio is not None else default_max_ratio
        if hi < lo:
            raise ValueError(f"{who}: {name!r}: max_sparse_ratio {hi} is below min_sparse_ratio {lo}")
        names.append(name)
        bounds[name] = (float(lo), float(hi))
        if setting.sparse_ratio is not None and setting.source not in unrated:
            ratios[name] = setting.sparse_ratio
    if not names:
        raise ValueError(f"{who}: config_list selects no Conv/Linear layer with a weight to prune")
    budgets: dict[str, float] = {}
    if constraints.max_flops_ratio is not None:
        budgets["flops"] = constraints.max_flops_ratio
    if constraints.max_params_ratio is not None:
        budgets["params"] = constraints.max_params_ratio
    distinct = sorted(set(ratios.values()))
    if len(distinct) > 1:
        raise ValueError(
            f"{who}: config_list asks for different sparse ratios ({', '.join(map(str, distinct))}); the search reads one "
            f"{target} budget (1 - sparse_ratio) from it: give one ratio, or none and a constraint"
        )
    if distinct:
        budgets[target] = min(budgets.get(target, 1.0), 1.0 - distinct[0])
    merged = Constraints(
        max_flops_ratio=budgets.get("flops"),
        max_params_ratio=budgets.get("params"),
        max_latency_ratio=constraints.max_latency_ratio,
    )
    return PrunableLayers(names, bounds, budgets, merged)


class LayerCostModel:
    """FLOPs / params of ``model`` as a function of per-layer output-channel pruning ratios.

    Every Conv/Linear call contributes ``flops * keep(out axis) * keep(in axis)`` and every
    parameter ``numel * keep(axis 0) * keep(axis 1)``; an axis keeps the share of its positions
    that no pruned layer removes. Other FLOPs (``matmul`` in attention...) are constant.

    The channel graph decides what a layer's ratio reaches (the next layers' inputs, BN, the
    flattened features of a Linear) and which layers cannot be decided alone: layers whose outputs
    meet (residual ``add``) become one decision (:class:`Layer` with several members; the search
    gives them a shared ``dependency_group_id`` so the pruner masks the same channels). Layers
    whose pruning speedup could not turn into smaller tensors are left out with a warning:
    depthwise convolutions (their channels follow their input), layers whose outputs are a model
    output or reach an operation speedup cannot shrink, and layers coupled with a layer that is not
    pruned. If the model cannot be traced, each layer only shrinks itself (the prediction is then
    too high, never too low, for serial nets).

    Args:
        model: the origin model.
        dummy_input: one input for the forward pass that records shapes.
        layer_names: the layers to prune (Conv/Linear), along their output channels.
        bounds: ``{name: (min_ratio, max_ratio)}`` (default ``(0, 1)``).
    """

    def __init__(
        self,
        model: nn.Module,
        dummy_input: Any,
        layer_names: Sequence[str],
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        modules = dict(model.named_modules())
        for name in layer_names:
            if not isinstance(modules.get(name), _LAYER_TYPES):
                raise ValueError(f"{name!r} is no Conv/Linear layer of the model")
        calls = _record_calls(model, dummy_input)
        unseen = [n for n in layer_names if n not in calls]
        if unseen:
            raise ValueError(f"layers {unseen} do not run on dummy_input; they cannot be priced")
        wanted = set(layer_names)
        order = [n for n in calls if n in wanted]
        self.origin = {"flops": float(count_flops(model, dummy_input)), "params": float(count_params(model))}
        graph = _ChannelFacts.build(model, dummy_input, list(calls))
        units, self.skipped = graph.units(order) if graph is not None else ([[n] for n in order], {})
        for name, why in self.skipped.items():
            logger.warning("layer %r is not searched: %s", name, why)
        if not units:
            raise ValueError(f"none of the layers {list(order)} can be pruned for real: {self.skipped}")
        unit_of = {m: u for u, members in enumerate(units) for m in members}
        owner_counts = graph.owner_counts(unit_of) if graph is not None else {}

        def axis_row(module_name: str, attr: str, axis: int, size: int) -> dict[int, float]:
            if graph is not None:
                counts = owner_counts.get((module_name, attr, axis), {})
            elif module_name in unit_of and axis == channel_dims(modules[module_name])[0]:
                counts = {unit_of[module_name]: size}
            else:
                counts = {}
            return {u: c / size for u, c in counts.items()}

        terms: dict[str, list[tuple[float, dict[int, float], dict[int, float]]]] = {"flops": [], "params": []}
        flops_of: dict[str, float] = {}
        for name, info in calls.items():
            module = modules[name]
            out_dim, in_dim = channel_dims(module)
            shape = module.weight.shape
            for base in info["flops"]:
                terms["flops"].append((base, axis_row(name, "weight", out_dim, shape[out_dim]),
                                       axis_row(name, "weight", in_dim, shape[in_dim])))
            flops_of[name] = sum(info["flops"])
        self._constant = {"flops": self.origin["flops"] - sum(flops_of.values()), "params": 0.0}
        params_of: dict[str, float] = {}
        seen: set[int] = set()
        for module_name, module in modules.items():
            for attr, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                rows = [axis_row(module_name, attr, a, p.shape[a]) if a < p.dim() else {} for a in (0, 1)]
                terms["params"].append((float(p.numel()), rows[0], rows[1]))
                params_of[module_name] = params_of.get(module_name, 0.0) + p.numel()
        self._terms = {m: _pack(t, len(units)) for m, t in terms.items()}
        bounds = dict(bounds or {})
        self.layers = []
        for members in units:
            first = calls[members[0]]
            lo = max(bounds.get(m, (0.0, 1.0))[0] for m in members)
            hi = min(bounds.get(m, (0.0, 1.0))[1] for m in members)
            self.layers.append(Layer(
                members[0], tuple(members), "linear" if isinstance(modules[members[0]], nn.Linear) else "conv",
                first["in_channels"], first["out_channels"], first["in_size"], first["stride"], first["kernel"],
                sum(flops_of[m] for m in members), sum(params_of.get(m, 0.0) for m in members), lo, max(lo, hi),
            ))

    @property
    def names(self) -> list[str]:
        """The decisions' names (first member of each)."""
        return [layer.name for layer in self.layers]

    def config_list(self, ratios: Sequence[float]) -> list[dict[str, Any]]:
        """One sub-config per layer; coupled layers share a ``dependency_group_id``."""
        out = []
        for r, layer in zip(ratios, self.layers, strict=True):
            for member in layer.members:
                sub: dict[str, Any] = {"op_names": [member], "sparse_ratio": float(r)}
                if len(layer.members) > 1:
                    sub["dependency_group_id"] = f"search:{layer.name}"
                out.append(sub)
        return out

    def per_layer(self, ratios: Sequence[float]) -> dict[str, float]:
        """``{layer name: ratio}`` for every member."""
        return {m: float(r) for r, layer in zip(ratios, self.layers, strict=True) for m in layer.members}

    def cost(self, ratios: Sequence[float], metric: str) -> float:
        """Absolute FLOPs or params when decision ``i`` removes ``ratios[i]`` of its output channels."""
        keep = np.array([1.0 - channels_removed(r, layer.out_channels) / layer.out_channels
                         for r, layer in zip(ratios, self.layers, strict=True)])
        weights, out_rows, out_free, in_rows, in_free = self._terms[metric]
        return float(self._constant[metric] + np.sum(weights * (out_rows @ keep + out_free) * (in_rows @ keep + in_free)))

    def ratio(self, ratios: Sequence[float], metric: str) -> float:
        """``cost / origin cost``."""
        return self.cost(ratios, metric) / max(self.origin[metric], 1.0)

    def ratios_of(self, ratios: Sequence[float]) -> dict[str, float]:
        """``{'flops_ratio': .., 'params_ratio': ..}`` predicted for ``ratios``."""
        return {f"{m}_ratio": self.ratio(ratios, m) for m in METRICS}

    def feasible(self, ratios: Sequence[float], budgets: Mapping[str, float]) -> bool:
        return all(self.ratio(ratios, m) <= b + _EPS for m, b in budgets.items())

    def max_ratios(self) -> list[float]:
        return [layer.quantize(layer.max_ratio) for layer in self.layers]

    def min_feasible(self, t: int, prefix: Sequence[float], budgets: Mapping[str, float]) -> float | None:
        """The smallest ratio of decision ``t`` that keeps ``budgets`` reachable.

        Decisions before ``t`` take ``prefix``; the ones after are assumed at their maximum ratio.
        ``None`` if even the maximum ratio of decision ``t`` cannot reach the budgets.
        """
        tail = self.max_ratios()[t + 1:]
        choices = self.layers[t].choices()
        if not self.feasible([*prefix, choices[-1], *tail], budgets):
            return None
        lo, hi = 0, len(choices) - 1  # cost falls as the ratio grows: bisect for the first feasible one
        while lo < hi:
            mid = (lo + hi) // 2
            if self.feasible([*prefix, choices[mid], *tail], budgets):
                hi = mid
            else:
                lo = mid + 1
        return choices[lo]

    def repair(self, ratios: Sequence[float], budgets: Mapping[str, float]) -> list[float] | None:
        """The least move of every ratio toward its maximum (one shared share) that meets ``budgets``.

        Ratio ``i`` becomes ``r_i + s * (max_i - r_i)`` for the smallest ``s`` in [0, 1] that meets the
        budgets (bisection on whole channels); ``None`` if not even every layer at its maximum does.
        """
        base = [layer.quantize(r) for r, layer in zip(ratios, self.layers, strict=True)]
        if self.feasible(base, budgets):
            return base
        top = self.max_ratios()

        def at(s: float) -> list[float]:
            return [layer.quantize(r + s * (m - r)) for r, m, layer in zip(base, top, self.layers, strict=True)]

        if not self.feasible(at(1.0), budgets):
            return None
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.feasible(at(mid), budgets):
                hi = mid
            else:
                lo = mid
        return at(hi)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.in_channels


class _ChannelFacts:
    """What the speedup channel graph says about the layers: coupled outputs, pinned channels."""

    def __init__(self, analyzer: Any, labels: np.ndarray, pinned: set[int], layers: Sequence[str]) -> None:
        self.analyzer = analyzer
        self.labels = labels
        self.pinned = pinned
        self.out_labels: dict[str, set[int]] = {}
        for name in layers:
            pv = analyzer.params.get((name, "weight"))
            if pv is not None:
                axis = min(channel_dims(analyzer.modules[name])[0], pv.ndim - 1)
                self.out_labels[name] = set(labels[pv.ids(axis)].tolist())

    @classmethod
    def build(cls, model: nn.Module, dummy_input: Any, layers: Sequence[str]) -> _ChannelFacts | None:
        from search.speedup.analyze import Analyzer  # noqa: PLC0415 (heavy; only when a search starts)
        from search.speedup.trace import trace_model  # noqa: PLC0415

        probe = copy.deepcopy(model)
        probe.eval()
        try:
            analyzer = Analyzer(trace_model(probe, dummy_input), probe, masked=set())  # structure only: no weight read
            graph = analyzer.run()
            _, labels = graph.components()
            pinned_positions, _, _ = graph.pin_reasons()
        except Exception as exc:  # noqa: BLE001 (any tracing problem: fall back to a cruder, safe model)
            logger.warning("cannot trace the model (%s); layer costs ignore the next layers' input channels", exc)
            return None
        return cls(analyzer, labels, set(labels[pinned_positions].tolist()), layers)

    def units(self, order: Sequence[str]) -> tuple[list[list[str]], dict[str, str]]:
        """Decisions (coupled layers together, forward order) and the layers left out, with why."""
        modules = self.analyzer.modules
        skipped: dict[str, str] = {}
        owners: dict[int, set[str]] = {}
        for name, labels in self.out_labels.items():
            if not _is_depthwise(modules[name]):
                for label in labels:
                    owners.setdefault(label, set()).add(name)
        candidates = []
        for name in order:
            if _is_depthwise(modules[name]):
                skipped[name] = "a depthwise convolution: its channels follow its input layer's"
            elif self.out_labels.get(name, set()) & self.pinned:
                skipped[name] = "its output channels cannot be removed (a model output, or an operation speedup keeps whole)"
            else:
                candidates.append(name)
        clusters: list[list[str]] = []
        cluster_of: dict[str, int] = {}
        for name in candidates:  # union of layers that share output channels, in forward order
            linked = {cluster_of[o] for label in self.out_labels.get(name, ()) for o in owners[label] if o in cluster_of}
            merged = [m for c in sorted(linked) for m in clusters[c]] + [name]
            for c in linked:
                clusters[c] = []
            cluster_of.update({m: len(clusters) for m in merged})
            clusters.append(merged)
        units = []
        chosen = set(candidates)
        for members in (c for c in clusters if c):
            others = sorted({o for m in members for label in self.out_labels.get(m, ()) for o in owners[label]} - chosen)
            if others:
                for m in members:
                    skipped[m] = f"it shares output channels with {others[0]!r}, which is not pruned"
                continue
            units.append(sorted(members, key=list(order).index))
        units.sort(key=lambda u: list(order).index(u[0]))
        return units, skipped

    def owner_counts(self, unit_of: Mapping[str, int]) -> dict[tuple[str, str, int], dict[int, int]]:
        """For each parameter axis: how many of its positions each decision's channels cover."""
        unit_by_label = {label: unit_of[name] for name, labels in self.out_labels.items() if name in unit_of
                         for label in labels}
        out: dict[tuple[str, str, int], dict[int, int]] = {}
        for (module_name, attr), pv in self.analyzer.params.items():
            for axis in range(min(pv.ndim, 2)):
                counts: dict[int, int] = {}
                for label in self.labels[pv.ids(axis)].tolist():
                    unit = unit_by_label.get(label)
                    if unit is not None:
                        counts[unit] = counts.get(unit, 0) + 1
                out[(module_name, attr, axis)] = counts
        return out


def _forward(model: nn.Module, dummy_input: Any) -> Any:
    if isinstance(dummy_input, dict):
        return model(**dummy_input)
    if isinstance(dummy_input, tuple | list):
        return model(*dummy_input)
    return model(dummy_input)


def _pack(terms: list[tuple[float, dict[int, float], dict[int, float]]], n_groups: int) -> tuple[np.ndarray, ...]:
    weights = np.array([t[0] for t in terms], dtype=np.float64)
    rows = []
    for side in (1, 2):
        matrix = np.zeros((len(terms), n_groups))
        for i, (_, out_row, in_row) in enumerate(terms):
            for g, share in (out_row if side == 1 else in_row).items():
                matrix[i, g] = share
        rows += [matrix, 1.0 - matrix.sum(axis=1)]  # shares no prunable layer owns stay
    return weights, rows[0], rows[1], rows[2], rows[3]


def _record_calls(model: nn.Module, dummy_input: Any) -> dict[str, dict[str, Any]]:
    """Shapes and FLOPs of every Conv/Linear call on ``dummy_input``, in order of first call."""
    calls: dict[str, dict[str, Any]] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            x = args[0]
            if isinstance(module, nn.Linear):
                flops = 2.0 * output.numel() * module.in_features
                info = {"in_channels": module.in_features, "out_channels": module.out_features, "in_size": (1, 1),
                        "stride": 1, "kernel": 1}
            else:
                assert isinstance(module, nn.modules.conv._ConvNd)
                k = math.prod(module.kernel_size)
                flops = 2.0 * output.numel() * (module.in_channels // module.groups) * k
                spatial = tuple(x.shape[2:]) + (1, 1)
                info = {"in_channels": module.in_channels, "out_channels": module.out_channels,
                        "in_size": (int(spatial[0]), int(spatial[1])), "stride": int(module.stride[0]),
                        "kernel": int(module.kernel_size[0])}
            entry = calls.setdefault(name, {**info, "flops": []})
            entry["flops"].append(flops)
        return record

    for name, module in model.named_modules():
        if isinstance(module, _LAYER_TYPES):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _forward(model, dummy_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls
