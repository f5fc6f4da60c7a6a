"""Walk a traced graph and build its :class:`ChannelGraph` (links, pins, zero and ignored facts).

Every node is handled by a rule chosen from its kind (module type, function or method name);
a node no rule knows pins every axis it touches, so unknown operators keep channels, never break
the model. Rules for operators live in :mod:`search.speedup.rules`, for modules in
:mod:`search.speedup.module_rules`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.node import map_aggregate

from search.speedup.graph import ChannelGraph, Value
from search.speedup.trace import TracedModel

__all__ = ["Analyzer", "Fold", "PairMatrix", "RowPairs", "Scratch", "analyze_model", "nonzero_pairs", "slice_zero"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """``module`` can absorb constant input slices of ``value`` on ``axis`` into its bias."""

    module_name: str
    value: Value
    axis: int


def slice_zero(t: torch.Tensor, axis: int) -> np.ndarray:
    """Per position on ``axis``: is the whole slice zero?"""
    t = t.detach()
    if t.dim() == 0:
        return np.zeros(0, dtype=bool)
    if t.dim() == 1:
        return (t == 0).cpu().numpy()
    if axis == 0 and t.is_floating_point():
        rows = t.reshape(t.shape[0], -1)
        if rows.shape[1] == 0:
            return np.ones(t.shape[0], dtype=bool)
        # two row reductions read the tensor without writing a temporary (NaN is not zero)
        return ((rows.amax(dim=1) == 0) & (rows.amin(dim=1) == 0)).cpu().numpy()
    return ~nonzero_pairs(t.movedim(axis, 0).reshape(t.shape[axis], 1, -1)).reshape(-1)


_NUMPY_FLOATS = (torch.float32, torch.float64)


class PairMatrix:
    """Which ``(row, column)`` slices of a weight are non-zero, with the queries the rules ask of it.

    ``rows_reading(cols)``: for each row, does it hold a non-zero in one of the selected columns?
    ``cols_read_by(rows)``: the transpose question. Each looks at the smaller side of the
    selection only (the selected or the excluded part, through per-row/column counts), because
    copying big temporaries costs more than the arithmetic here.
    """

    def __init__(self, nonzero: np.ndarray) -> None:
        self.nonzero = nonzero
        self.row_count = np.count_nonzero(nonzero, axis=1)
        self.row_any = self.row_count > 0
        self._col_count: np.ndarray | None = None
        self._transposed: np.ndarray | None = None

    def _by_column(self) -> np.ndarray:
        # selecting columns of a row-major matrix gathers element by element; rows are contiguous
        if self._transposed is None:
            self._transposed = np.ascontiguousarray(self.nonzero.T)
        return self._transposed

    def _cols(self) -> np.ndarray:
        if self._col_count is None:
            self._col_count = np.count_nonzero(self.nonzero, axis=0)
        return self._col_count

    def rows_reading(self, cols: np.ndarray) -> np.ndarray:
        n = int(cols.sum())
        if n == cols.size:
            return self.row_any
        if n == 0:
            return np.zeros(self.nonzero.shape[0], dtype=bool)
        if 2 * n <= cols.size:
            return self._by_column()[cols].any(axis=0)
        return self.row_count > np.count_nonzero(self._by_column()[~cols], axis=0)

    def cols_read_by(self, rows: np.ndarray) -> np.ndarray:
        n = int(rows.sum())
        if n == rows.size:
            return self._cols() > 0
        if n == 0:
            return np.zeros(self.nonzero.shape[1], dtype=bool)
        if 2 * n <= rows.size:
            return self.nonzero[rows].any(axis=0)
        return self._cols() > np.count_nonzero(self.nonzero[~rows], axis=0)


class RowPairs:
    """:class:`PairMatrix`'s queries for a weight known only by which rows a channel mask zeroed.

    Every ``(row, column)`` pair of a row the mask kept counts as non-zero. That is conservative
    (a kept row's coincidental zeros are not exploited, so nothing is removed that should stay)
    and needs no pass over the weight: speedup knows the rows from the mask it applied.
    """

    def __init__(self, row_zero: np.ndarray, cols: int) -> None:
        self.row_any = ~row_zero
        self.cols = cols

    def rows_reading(self, cols: np.ndarray) -> np.ndarray:
        return self.row_any & bool(cols.any())

    def cols_read_by(self, rows: np.ndarray) -> np.ndarray:
        return np.full(self.cols, bool((rows & self.row_any).any()))


class Scratch:
    """A reusable NumPy work buffer: big temporaries freshly allocated per weight cost page faults."""

    def __init__(self) -> None:
        self._buf: dict[Any, np.ndarray] = {}

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        n = math.prod(shape)
        buf = self._buf.get(dtype)
        if buf is None or buf.size < n:
            buf = self._buf[dtype] = np.empty(max(n, 1 << 16), dtype=dtype)
        return buf[:n].reshape(shape)


def nonzero_pairs(weight: torch.Tensor, scratch: Scratch | None = None) -> np.ndarray:
    """``(dim0, dim1)`` booleans: does ``weight[i, j]`` (the rest of its dims) hold a non-zero?

    Speedup asks this of every weight, so it is computed as one matrix-vector product of ``|w|``
    (exact: a sum of absolute values is zero only if every term is, and NaN or inf count as
    non-zero) rather than a boolean reduction over the small kernel dims, which is several times
    slower; CPU tensors go through NumPy, which does both steps faster than torch on one thread.
    """
    w = weight.detach()
    if w.dim() < 2:
        return (w != 0).reshape(-1, 1).cpu().numpy()
    rows, cols = w.shape[0], w.shape[1]
    k = math.prod(w.shape[2:])
    if rows * cols * k == 0:
        return np.zeros((rows, cols), dtype=bool)
    if w.device.type == "cpu" and w.dtype in _NUMPY_FLOATS:
        a = w.numpy().reshape(rows * cols, k)
        if k == 1:
            return (a != 0).reshape(rows, cols)
        absolute = np.abs(a, out=scratch.take(a.shape, a.dtype)) if scratch is not None else np.abs(a)
        return (absolute @ np.ones(k, dtype=a.dtype) != 0).reshape(rows, cols)
    flat = w.reshape(rows * cols, k)
    if k == 1 or not flat.is_floating_point():
        return (flat != 0).any(dim=1).reshape(rows, cols).cpu().numpy()
    sums = torch.mv(flat.abs(), torch.ones(k, dtype=flat.dtype, device=flat.device))
    return (sums != 0).reshape(rows, cols).cpu().numpy()


class Analyzer:
    """Builds the channel graph of a traced model whose parameters already carry their masks."""

    def __init__(
        self,
        traced: TracedModel,
        model: nn.Module,
        modules: dict[str, nn.Module] | None = None,
        mask_rows: dict[str, np.ndarray] | None = None,
        masked: set[str] | None = None,
    ) -> None:
        self.traced = traced
        #: module name -> output rows its channel mask zeroed (the rest of its weight is taken as non-zero)
        self.mask_rows = mask_rows or {}
        #: when given, the modules that have a weight mask: the others' weights are taken as dense
        #: (speedup removes what masks remove; a coincidental zero in an unmasked weight is no reason to read it)
        self.masked = masked
        self.model = model
        self.modules = modules if modules is not None else dict(model.named_modules())
        self.g = ChannelGraph()
        self.node_values: dict[str, Any] = {}
        self.params: dict[tuple[str, str], Value] = {}
        self.backward: list[Callable[[], None]] = []
        self.unsupported: dict[str, str] = {}
        self.folds: list[Fold] = []
        self.scratch = Scratch()
        #: id -> (tensor, Value); the tensor is kept so that its id cannot be reused by another one
        #: (a computed attribute, a parametrized weight say, is a new temporary on every read)
        self._by_tensor: dict[int, tuple[torch.Tensor, Value]] = {}
        #: every (module, attr) that holds a parameter Value's tensor (several when weights are tied)
        self.owners: dict[str, list[tuple[str, str]]] = {}
        self.call_counts: dict[str, int] = {}
        for n in traced.graph.nodes:
            if n.op == "call_module":
                self.call_counts[str(n.target)] = self.call_counts.get(str(n.target), 0) + 1

    # -- helpers used by rules --------------------------------------------------------------------
    def concrete(self, a: Any) -> Any:
        """A node argument's recorded value (tensors as meta tensors)."""
        return map_aggregate(a, lambda x: self.traced.values.get(x.name) if isinstance(x, fx.Node) else x)

    def value_of(self, a: Any) -> Any:
        """Channel-graph Value(s) for a node argument (None for non-tensors)."""
        return map_aggregate(a, lambda x: self.node_values.get(x.name) if isinstance(x, fx.Node) else None)

    def shape_of(self, node: fx.Node) -> tuple[int, ...] | None:
        v = self.traced.values.get(node.name)
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    def new(self, node: fx.Node, shape: tuple[int, ...] | None = None) -> Value:
        shape = shape if shape is not None else self.shape_of(node)
        assert shape is not None
        value = self.g.new_value(node.name, shape, producer=self.describe(node))
        self.node_values[node.name] = value
        return value

    def param(self, module_name: str, attr: str, with_zero: bool = False) -> Value | None:
        key = (module_name, attr)
        if key in self.params:
            return self.params[key]
        owner = self.modules[module_name] if module_name in self.modules else None
        tensor = getattr(owner, attr, None) if owner is not None else None
        if not isinstance(tensor, torch.Tensor):
            return None
        seen = self._by_tensor.get(id(tensor))
        shared = seen[1] if seen is not None and seen[0] is tensor else None
        if shared is not None:  # tied weights: one set of positions, sliced once, assigned to all owners
            self.params[key] = shared
            self.owners[shared.key].append(key)
            return shared
        value = self.g.new_value(f"{module_name}.{attr}" if module_name else attr, tuple(tensor.shape), is_param=True)
        self.params[key] = value
        self._by_tensor[id(tensor)] = (tensor, value)
        self.owners[value.key] = [key]
        if with_zero:  # only tensors used directly as graph values need their zero facts
            for axis in range(value.ndim):
                value.zero[axis] = slice_zero(tensor.detach(), axis)
        return value

    def pairs(self, w: Value, weight: torch.Tensor) -> PairMatrix | RowPairs:
        """Which ``(out, in)`` slices of the weight behind ``w`` are non-zero (see :class:`RowPairs`)."""
        if weight.dim() >= 2:
            owners = self.owners.get(w.key, ())
            for module_name, attr in owners:
                rows = self.mask_rows.get(module_name) if attr == "weight" else None
                if rows is not None and rows.shape == (weight.shape[0],):
                    return RowPairs(rows, weight.shape[1])
            if self.masked is not None and owners and not any(name in self.masked for name, _ in owners):
                return RowPairs(np.zeros(weight.shape[0], dtype=bool), weight.shape[1])
        return PairMatrix(nonzero_pairs(weight, self.scratch))

    def tensor(self, module_name: str, attr: str) -> torch.Tensor:
        return getattr(self.modules[module_name], attr).detach()

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{node.target} ({type(self.modules[str(node.target)]).__name__})"
        if node.op in ("call_function", "call_method"):
            name = getattr(node.target, "__name__", str(node.target))
            return f"{name} at node {node.name}"
        return f"{node.op} {node.name}"

    def on_backward(self, fn: Callable[[], None]) -> None:
        self.backward.append(fn)

    def use(self, value: Value, axis: int, verdict: np.ndarray | bool) -> None:
        """A consumer's view: positions of ``value`` on ``axis`` it ignores (AND-accumulated)."""
        value.consumed = True
        value.ignored[axis] &= verdict

    def use_fully(self, value: Any, reason: str | None = None) -> None:
        """A consumer that needs every position (and, with a reason, pins them)."""
        for v in _values_in(value):
            v.consumed = True
            for axis in range(v.ndim):
                v.ignored[axis][:] = False
                if reason:
                    self.g.pin(v, axis, reason)

    @staticmethod
    def whole_zero(v: Value) -> bool:
        return any(bool(z.all()) and z.size > 0 for z in v.zero)

    @staticmethod
    def all_ignored(v: Value) -> bool:
        return any(bool(ig.all()) and ig.size > 0 for ig in v.ignored)

    # -- the walk ---------------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        from search.speedup.rules import dispatch  # noqa: PLC0415 (rules import this module)

        for node in self.traced.graph.nodes:
            if node.op == "placeholder":
                self._input(node)
            elif node.op == "output":
                for v in _values_in(self.value_of(node.args[0])):
                    self.use_fully(v, "model output")
            elif node.op == "get_attr":
                value = self.concrete(node)
                if isinstance(value, torch.Tensor):
                    owner, _, attr = str(node.target).rpartition(".")
                    pv = self.param(owner, attr, with_zero=True)
                    if pv is None:
                        self.new(node)
                    else:
                        self.node_values[node.name] = pv
            else:
                handled = dispatch(self, node)
                if not handled:
                    self.unknown(node)
                self._alias_in_place(node)
        self._pin_decisions()
        self._pin_numeric_sizes()
        for fn in reversed(self.backward):
            fn()
        return self.g

    def _input(self, node: fx.Node) -> None:
        """A model input: a tensor, or tensors in a tuple / list / dict (all their axes pinned)."""
        self._new_structure(node, self.concrete(node), "model input")

    def _alias_in_place(self, node: fx.Node) -> None:
        """After ``y.add_(1)`` or ``ReLU(inplace=True)(y)``, later readers of ``y`` see the result."""
        if not node.args or not isinstance(node.args[0], fx.Node):
            return
        name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
        in_place = (
            (node.op in ("call_method", "call_function") and name.endswith("_") and not name.endswith("__"))
            or node.kwargs.get("inplace") is True
            or (node.op == "call_module" and getattr(self.modules.get(str(node.target)), "inplace", False) is True)
            or name in ("iadd", "isub", "imul", "itruediv")
        )
        out = self.node_values.get(node.name)
        if in_place and isinstance(out, Value):
            self.node_values[node.args[0].name] = out

    def _pin_numeric_sizes(self) -> None:
        """A tensor size used as a number (``x / x.size(1)``, ``d ** -0.5``) must not change."""
        shape_args = {"view", "reshape", "expand", "unflatten", "new_zeros", "new_ones", "new_empty", "new_full",
                      "zeros", "ones", "empty", "full", "arange", "randn", "rand", "repeat", "tile"}
        for node in self.traced.graph.nodes:
            value = self._sized_value(node)
            if value is None:
                continue
            for axes, start in self._size_reads(node, value.ndim):
                if self._size_used_as_number(start, shape_args):
                    for axis in axes:
                        self.g.pin(value, axis, f"its size is used as a number at node {start.name}")

    def _sized_value(self, node: fx.Node) -> Value | None:
        """The Value whose size ``node`` reads (``x.size()``, ``x.shape``, ``x.dim()``...), if it reads one."""
        name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
        is_size = (node.op == "call_method" and name in ("size", "dim", "numel")) or (
            node.op == "call_function" and name == "getattr" and len(node.args) > 1 and node.args[1] == "shape"
        )
        source = node.args[0] if is_size and isinstance(node.args[0], fx.Node) else None
        value = self.node_values.get(source.name) if source is not None else None
        return value if isinstance(value, Value) else None

    @staticmethod
    def _size_reads(node: fx.Node, ndim: int) -> list[tuple[list[int], fx.Node]]:
        """(axes, node giving their sizes) for each use of a size node.

        ``x.size(1)`` reads axis 1; ``x.shape[-2:]`` or ``b, c, h, w = x.size()`` (every user an
        index) read only the indexed axes; anything else reads every axis.
        """
        if str(node.target) in ("dim", "numel"):
            return [(list(range(ndim)), node)]
        if str(node.target) == "size" and len(node.args) > 1:
            dim = node.args[1]
            return [([dim % ndim], node)] if isinstance(dim, int) else [(list(range(ndim)), node)]
        reads = []
        for user in node.users:
            index = user.args[1] if getattr(user.target, "__name__", "") == "getitem" and len(user.args) > 1 else None
            if isinstance(index, int) and -ndim <= index < ndim:
                reads.append(([index % ndim], user))
            elif isinstance(index, slice):
                reads.append((list(range(ndim))[index], user))
            else:
                return [(list(range(ndim)), node)]
        return reads

    def _size_used_as_number(self, start: fx.Node, shape_args: set[str]) -> bool:
        stack, seen = list(start.users), set()
        while stack:
            user = stack.pop()
            if user.name in seen:
                continue
            seen.add(user.name)
            name = str(user.target) if user.op == "call_method" else getattr(user.target, "__name__", "")
            produced = self.traced.values.get(user.name)
            if user.op == "output":
                return True
            if isinstance(produced, torch.Tensor) or _has_tensor(produced):
                if name in shape_args:
                    continue
                return True
            stack.extend(user.users)
        return False

    def _pin_decisions(self) -> None:
        """Python control flow looked at these values: the tensor sizes they come from must stay."""
        nodes = {n.name: n for n in self.traced.graph.nodes}
        seen: set[str] = set()
        stack = [nodes[name] for name in self.traced.decisions if name in nodes]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            value = self.node_values.get(source.name) if source is not None else None
            name = getattr(node.target, "__name__", str(node.target))
            sized = self._sized_value(source) if name == "getitem" and source is not None else None
            if sized is not None:  # x.shape[i] / x.size()[i]: only the indexed axes
                assert source is not None
                for axes, start in self._size_reads(source, sized.ndim):
                    if start is node:
                        for axis in axes:
                            self.g.pin(sized, axis, f"Python control flow reads this size at node {node.name}")
                        break
                else:
                    stack.append(source)
                continue
            if isinstance(value, Value) and name in ("size", "dim", "numel", "getattr", "len"):
                dims = None
                if name == "size" and len(node.args) > 1 and isinstance(node.args[1], int):
                    dims = [node.args[1] % value.ndim]
                for axis in dims if dims is not None else range(value.ndim):
                    self.g.pin(value, axis, f"Python control flow reads this size at node {node.name}")
                continue
            if isinstance(self.node_values.get(node.name), Value):
                self.use_fully(self.node_values[node.name], f"Python control flow reads values at node {node.name}")
                continue
            stack.extend(a for a in node.all_input_nodes)

    def unknown(self, node: fx.Node, why: str | None = None) -> None:
        """Conservative handling: pin every tensor axis the node reads or writes."""
        reason = why or f"unsupported operation {self.describe(node)}"
        tensors_in = [v for v in _values_in(self.value_of((node.args, node.kwargs)))]
        out = self.concrete(node)
        if tensors_in or _has_tensor(out):
            self.unsupported.setdefault(node.name, reason)
        for v in tensors_in:
            self.use_fully(v, reason)
        self._new_structure(node, out, reason)

    def _new_structure(self, node: fx.Node, out: Any, reason: str | None) -> None:
        """New Values for the tensors ``node`` produces (nested in tuples, lists, dicts), pinned if ``reason``."""
        if isinstance(out, torch.Tensor):
            v = self.new(node, tuple(out.shape))
            if reason:
                self.g.pin_all(v, reason)
            return
        if not _has_tensor(out):
            return
        count = iter(range(1 << 30))

        def make(t: Any) -> Value | None:
            if not isinstance(t, torch.Tensor):
                return None
            v = self.g.new_value(f"{node.name}[{next(count)}]", tuple(t.shape), producer=self.describe(node))
            if reason:
                self.g.pin_all(v, reason)
            return v

        self.node_values[node.name] = map_aggregate(out, make)


def _values_in(structure: Any) -> list[Value]:
    found: list[Value] = []
    map_aggregate(structure, lambda x: found.append(x) if isinstance(x, Value) else None)
    return found


def _has_tensor(structure: Any) -> bool:
    found = []
    map_aggregate(structure, lambda x: found.append(1) if isinstance(x, torch.Tensor) else None)
    return bool(found)


def analyze_model(model: nn.Module, dummy_input: Any) -> Analyzer:
    """Trace ``model`` in eval mode on ``dummy_input`` and build its channel graph (training mode restored).

    For the structure only (which channels are coupled, what is pinned): every weight is taken as
    dense, so no weight is read (zero facts of weights are for speedup, which knows the masks).
    """
    from search.speedup.trace import trace_model  # noqa: PLC0415

    was_training = model.training
    model.eval()
    try:
        analyzer = Analyzer(trace_model(model, dummy_input), model, masked=set())
        analyzer.run()
    finally:
        model.train(was_training)
    return analyzer
