"""Tracing a model into a torch.fx graph, with the concrete value of every node recorded.

Symbolic tracing is tried first. Models whose Python looks at tensor values (``if x.size(1) >
64``, ``for chunk in x.split(...)``, ``len(x)``...) fall back to a *concrete* tracer: every
proxy carries the value it has on the dummy input, so ``bool()``, ``len()``, ``int()`` and
iteration answer with that value and the graph records the path the dummy input takes.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.utils.flop_counter import conv_flop_count

from search.metrics import FlopCounter, split_inputs

__all__ = ["CountedNode", "TracedModel", "recount_flops", "trace_model"]

logger = logging.getLogger(__name__)


class TracedModel:
    """A traced graph plus the value each node had on the dummy input."""

    def __init__(
        self,
        root: nn.Module,
        graph: fx.Graph,
        values: dict[str, Any],
        method: str,
        output: Any = None,
        flops: int = 0,
        decisions: set[str] | None = None,
        counted: list[CountedNode] | None = None,
        flops_by_mode: int = 0,
    ) -> None:
        self.root = root
        self._graph = graph
        self._graph_module: fx.GraphModule | None = None
        self.values = values
        self.method = method
        self.output = output  # the model's output on the dummy input (meta tensors if recorded on shapes)
        self.flops = flops  # FLOPs of that forward pass (see search.metrics)
        #: nodes whose value Python code looked at (control flow): what they depend on must not change
        self.decisions = decisions or set()
        #: Conv/Linear leaf calls counted from their shapes (see :func:`recount_flops`)
        self.counted = counted or []
        #: FLOPs counted by dispatch (operators other than Conv/Linear leaf modules)
        self.flops_by_mode = flops_by_mode

    @property
    def graph(self) -> fx.Graph:
        return self._graph

    @property
    def graph_module(self) -> fx.GraphModule:
        """The graph as a runnable ``GraphModule`` (built on first use: code generation costs time)."""
        if self._graph_module is None:
            self._graph_module = fx.GraphModule(self.root, self._graph)
        return self._graph_module




#: leaf modules whose forward holds no matrix product (nothing for the FLOP count)
_NO_FLOP_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.ReLU, nn.ReLU6, nn.GELU,
    nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.Mish, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.PReLU, nn.Softmax, nn.LogSoftmax, nn.Softmax2d,
    nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample, nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.Embedding, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
)
#: functions and methods that hold no matrix product
_NO_FLOP_CALLS = frozenset({
    "getattr", "getitem", "add", "iadd", "sub", "isub", "rsub", "mul", "imul", "truediv", "itruediv", "floordiv",
    "neg", "pow", "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "hardtanh", "hardtanh_", "leaky_relu", "elu", "softplus", "cat", "concat", "stack", "split", "chunk", "view",
    "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous", "size", "dim", "numel", "unsqueeze",
    "squeeze", "expand", "expand_as", "view_as", "reshape_as", "mean", "sum", "amax", "amin", "max", "min",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "interpolate", "softmax", "log_softmax", "dropout", "layer_norm",
    "batch_norm", "group_norm", "pad", "to", "float", "half", "type_as", "masked_fill", "clamp", "clip",
    "channel_shuffle", "pixel_shuffle", "abs", "exp", "sqrt", "rsqrt", "detach", "clone",
})


_KNOWN_FORWARDS = {
    nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward, nn.ConvTranspose1d.forward,
    nn.ConvTranspose2d.forward, nn.ConvTranspose3d.forward,
}


class CountedNode(NamedTuple):
    """A Conv/Linear leaf call whose FLOPs were computed from shapes."""

    node: str
    module: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def _leaf_flops(m: nn.Module, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """torch's formulas for a Linear / Conv / ConvTranspose call (bias not counted)."""
    if isinstance(m, nn.Linear):
        return 2 * (math.prod(x_shape) // max(x_shape[-1], 1)) * m.weight.shape[1] * m.weight.shape[0]
    w = m.weight
    batched = len(x_shape) == w.dim()
    xs = list(x_shape) if batched else [1, *x_shape]
    os_ = list(out_shape) if batched else [1, *out_shape]
    return int(conv_flop_count(xs, list(w.shape), os_, transposed=isinstance(m, nn.modules.conv._ConvTransposeNd)))


def recount_flops(traced: TracedModel, model: nn.Module, modules: dict[str, nn.Module] | None = None) -> int | None:
    """FLOPs of ``model`` now, from the traced shapes and the modules' current weights.

    Valid after speedup when every counted FLOP came from Conv/Linear leaf calls (``None``
    otherwise) and only their channel dims changed; the caller checks the latter.
    """
    if traced.flops_by_mode:
        return None
    modules = modules if modules is not None else dict(model.named_modules())
    return sum(_leaf_flops(modules[c.module], c.input_shape, c.output_shape) for c in traced.counted)


class _Recorder(fx.Interpreter):
    """Runs the graph once, keeping each node's value (as a meta tensor) and counting FLOPs.

    FLOPs are counted by torch's own per-operator formulas (:class:`search.metrics.FlopCounter`),
    but the counting mode (Python on every operator) is entered only for nodes that may hold a
    matrix product: Conv/Linear leaf modules are counted from their shapes with the same formulas,
    and nodes known to hold none (norms, activations, pooling, views, elementwise) run plainly.
    """

    def __init__(self, root: nn.Module, graph: fx.Graph, shapes_only: bool = False) -> None:
        super().__init__(root, graph=graph)
        self.values: dict[str, Any] = {}
        self.counter = FlopCounter()
        self.counted: list[CountedNode] = []
        self.by_mode = 0
        self.result: Any = None
        #: the inputs and parameters are meta tensors: shape-preserving nodes take a shortcut
        self.shapes_only = shapes_only

    def run_node(self, n: fx.Node) -> Any:
        result = _shape_shortcut(self, n) if self.shapes_only else None
        if result is not None:
            pass
        elif n.op in ("placeholder", "get_attr", "output"):
            result = super().run_node(n)
        elif n.op == "call_module" and isinstance(self.submodules[str(n.target)], _NO_FLOP_MODULES):
            result = super().run_node(n)
        elif n.op == "call_module" and isinstance(self.submodules[str(n.target)], _MATMUL_MODULES):
            result = super().run_node(n)
            m = self.submodules[str(n.target)]
            x = self.env.get(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
            if type(m).forward in _KNOWN_FORWARDS and isinstance(x, torch.Tensor) and isinstance(result, torch.Tensor):
                counted = CountedNode(n.name, str(n.target), tuple(x.shape), tuple(result.shape))
                self.counted.append(counted)
                self.counter.total += _leaf_flops(m, counted.input_shape, counted.output_shape)
            else:  # a subclass with its own forward, or unusual arguments: count it by dispatch
                result = self._counted_run(n)
        elif n.op in ("call_function", "call_method") and _call_name(n) in _NO_FLOP_CALLS:
            result = super().run_node(n)
        else:
            result = self._counted_run(n)
        self.values[n.name] = map_aggregate(result, _summarize)
        return result

    def _counted_run(self, n: fx.Node) -> Any:
        if self.shapes_only and (n.op not in ("call_function", "call_method") or _call_name(n) not in _SAME_COUNT_ON_META):
            # composite operators (attention, recurrent layers...) may take another path on the meta
            # device than on a real one, and so count other FLOPs: record those models for real
            raise _NeedsRealRun(f"{n.op} {n.target}")
        before = self.counter.total
        with self.counter:
            result = super().run_node(n)
        self.by_mode += self.counter.total - before
        return result


_MATMUL_MODULES = (nn.Linear, nn.modules.conv._ConvNd)

#: operators that run the same aten operator (hence count the same FLOPs) on the meta device
_SAME_COUNT_ON_META = frozenset({
    "matmul", "__matmul__", "mm", "bmm", "addmm", "baddbmm", "linear", "einsum", "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
})


class _NeedsRealRun(Exception):
    """A node whose shape-only recording could differ from a real run."""


#: module forwards whose output has the input's shape and dtype (norms checked for their channel count)
_SAME_SHAPE_FORWARDS = frozenset(
    cls.forward for cls in (
        nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU,
        nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
        nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    )
)
#: functions and methods of one tensor (other arguments plain Python) whose output has its shape and dtype
_SAME_SHAPE_CALLS = frozenset({
    "relu", "relu_", "relu6", "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "silu", "hardswish", "hardsigmoid",
    "hardtanh", "hardtanh_", "leaky_relu", "elu", "softplus", "mish", "dropout", "contiguous", "clone", "detach",
    "neg", "abs",
})
_BINARY_CALLS = frozenset({
    "add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "itruediv", "add_", "sub_", "mul_", "div_",
})


def _shape_shortcut(rec: _Recorder, n: fx.Node) -> torch.Tensor | None:
    """The output of a shape-preserving or elementwise node computed from shapes alone, or ``None``.

    On the meta device torch computes shapes through Python reference implementations, which
    for a BatchNorm or an add cost ~0.1-0.6 ms each (more than running them on real data);
    these nodes make most of a CNN, so their shapes are derived here in microseconds.
    """
    if n.kwargs and n.op != "call_module":
        if not all(k in ("inplace", "alpha") for k in n.kwargs) or n.kwargs.get("alpha", 1) != 1:
            return None
    args = [rec.env[a] if isinstance(a, fx.Node) else a for a in n.args]
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        if n.op == "call_function" and _call_name(n) in _BINARY_CALLS and len(args) == 2 and isinstance(args[1], torch.Tensor):
            return _broadcast(args[0], args[1])
        return None
    x = args[0]
    if n.op == "call_module":
        m = rec.submodules[str(n.target)]
        if type(m).forward not in _SAME_SHAPE_FORWARDS or len(args) != 1 or n.kwargs or not _channels_fit(m, x):
            return None
        return x if getattr(m, "inplace", False) is True else meta_like(x)
    name = _call_name(n)
    if name in _SAME_SHAPE_CALLS and not any(isinstance(a, torch.Tensor) for a in args[1:]):
        in_place = name.endswith("_") or n.kwargs.get("inplace") is True
        return x if in_place else meta_like(x)
    if name in _BINARY_CALLS and len(args) == 2:
        out = _broadcast(x, args[1])
        in_place = name.endswith("_") or name.startswith("i")
        if in_place:
            return x if out is not None and out.shape == x.shape and out.dtype == x.dtype else None
        return out
    return None


def _broadcast(a: Any, b: Any) -> torch.Tensor | None:
    """Meta result of ``a (op) b`` for tensors / Python numbers (``None`` where true division changes the dtype)."""
    if not all(isinstance(v, bool | int | float) or (isinstance(v, torch.Tensor) and v.is_meta) for v in (a, b)):
        return None  # a real tensor meets a meta one: let torch raise (the fallback runs the model)
    dtype = torch.result_type(a, b)
    if not (dtype.is_floating_point or dtype.is_complex):
        return None  # integer true division gives floats, floor semantics differ: let torch decide
    sa = a.shape if isinstance(a, torch.Tensor) else ()
    sb = b.shape if isinstance(b, torch.Tensor) else ()
    return torch.empty(torch.broadcast_shapes(sa, sb), dtype=dtype, device="meta")


def _channels_fit(m: nn.Module, x: torch.Tensor) -> bool:
    """A norm's own input check on the channel count (the real forward raises where it fails)."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return x.dim() >= 2 and x.shape[1] == m.num_features
    if isinstance(m, nn.GroupNorm):
        return x.dim() >= 2 and x.shape[1] == m.num_channels
    if isinstance(m, nn.LayerNorm):
        ns = tuple(m.normalized_shape)
        return tuple(x.shape[x.dim() - len(ns):]) == ns
    return True


def _call_name(n: fx.Node) -> str:
    return str(n.target) if n.op == "call_method" else getattr(n.target, "__name__", "")


def _summarize(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and not x.is_meta:  # a meta tensor already is its own summary
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    return x


def _record(
    root: nn.Module, graph: fx.Graph, args: tuple[Any, ...], kwargs: dict[str, Any], shapes_only: bool = False,
) -> _Recorder:
    recorder = _Recorder(root, graph, shapes_only)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    flat: list[Any] = list(args)
    for n in placeholders[len(args) :]:
        flat.append(kwargs[n.target] if n.target in kwargs else n.args[0] if n.args else None)
    with torch.no_grad():
        recorder.result = recorder.run(*flat)
    return recorder


def meta_like(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``t``'s shape, strides and dtype (``empty_like`` on meta runs Python reference code)."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def to_meta(x: Any) -> Any:
    """``x`` (a tensor or a structure of them) with every tensor replaced by a meta tensor of its shape."""
    return map_aggregate(x, lambda t: meta_like(t) if isinstance(t, torch.Tensor) else t)


@contextlib.contextmanager
def on_meta(model: nn.Module) -> Iterator[None]:
    """Every parameter and buffer of ``model`` temporarily replaced by a meta tensor of its shape.

    A forward pass then computes shapes only (no arithmetic, no memory). Tied tensors stay tied;
    the real tensors are back on exit, whatever happened inside.
    """
    saved: list[tuple[dict[str, Any], str, Any]] = []
    twins: dict[int, torch.Tensor] = {}
    try:
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for key, tensor in store.items():
                    if tensor is None:
                        continue
                    twin = twins.get(id(tensor))
                    if twin is None:
                        twin = meta_like(tensor)
                        if isinstance(tensor, nn.Parameter):
                            twin = nn.Parameter(twin, requires_grad=tensor.requires_grad)
                        twins[id(tensor)] = twin
                    saved.append((store, key, tensor))
                    store[key] = twin
        yield
    finally:
        for store, key, tensor in reversed(saved):
            store[key] = tensor


def _record_shapes(root: nn.Module, graph: fx.Graph, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Recorder | None:
    """:func:`_record` on the meta device (shapes and FLOPs only); ``None`` where a node needs real values."""
    try:
        with on_meta(root):
            return _record(root, graph, to_meta(args), to_meta(kwargs), shapes_only=True)
    except Exception as exc:  # a data-dependent op, a tensor built on the CPU inside forward...
        logger.debug("shape-only recording failed (%s: %s); running the model", type(exc).__name__, exc)
        return None


def trace_model(model: nn.Module, dummy_input: Any, *, shapes_only: bool = True) -> TracedModel:
    """Trace ``model`` (symbolically, else concretely) and record every node's value.

    With ``shapes_only`` (the default: the channel analysis needs shapes, not values), a
    symbolically traced graph is run on the meta device: every node's shape and the FLOPs are
    recorded without computing anything, and :attr:`TracedModel.output` holds meta tensors.
    The concrete tracer (and any graph a meta run cannot take: data-dependent operators,
    tensors created on a real device inside ``forward``) runs for real.
    """
    args, kwargs = split_inputs(dummy_input)
    try:
        concrete = _concrete_kwargs(model, args, kwargs)
        graph = fx.Tracer().trace(model, concrete_args=concrete or None)
        rec = (_record_shapes(model, graph, args, kwargs) if shapes_only else None) or _record(model, graph, args, kwargs)
        return TracedModel(model, graph, rec.values, "symbolic", rec.result, rec.counter.total, None, rec.counted, rec.by_mode)
    except Exception as exc:  # untraceable Python: record the dummy input's path instead
        logger.info("symbolic tracing failed (%s: %s); using the concrete tracer", type(exc).__name__, exc)
    tracer = ConcreteTracer(args, kwargs)
    graph = tracer.trace(model)
    rec = _record(model, graph, args, kwargs)
    return TracedModel(model, graph, rec.values, "concrete", rec.result, rec.counter.total, {n.name for n in tracer.decided},
                       rec.counted, rec.by_mode)


def _concrete_kwargs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Forward parameters the dummy input leaves out keep their defaults (not placeholders)."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {}
    for i, p in enumerate(params):
        if i < len(args) or p.name in kwargs or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not inspect.Parameter.empty:
            concrete[p.name] = p.default
    return concrete


class _ConcreteProxy(fx.Proxy):
    """A proxy that knows its value on the dummy input."""

    def __init__(self, node: fx.Node, tracer: ConcreteTracer) -> None:
        super().__init__(node, tracer)
        self.value = tracer.node_values[node]

    def __bool__(self) -> bool:
        self.tracer.decided.add(self.node)  # type: ignore[attr-defined]
        return bool(self.value)

    def __len__(self) -> int:
        self.tracer.decided.add(self.node)  # type: ignore[attr-defined]
        return len(self.value)

    def __int__(self) -> int:
        self.tracer.decided.add(self.node)  # type: ignore[attr-defined]
        return int(self.value)

    def __index__(self) -> int:
        self.tracer.decided.add(self.node)  # type: ignore[attr-defined]
        return int(self.value)

    def __float__(self) -> float:
        self.tracer.decided.add(self.node)  # type: ignore[attr-defined]
        return float(self.value)

    def __iter__(self):  # type: ignore[no-untyped-def]
        if not isinstance(self.value, tuple | list):
            self.tracer.decided.add(self.node)  # type: ignore[attr-defined]
        for i in range(len(self.value)):
            yield self[i]

    def __getattr__(self, k: str) -> Any:
        if k in ("value", "node", "tracer"):
            raise AttributeError(k)
        attr = getattr(self.value, k)
        if callable(attr) and not isinstance(attr, torch.Tensor):
            return _ConcreteMethod(self, k)
        return self.tracer.create_proxy("call_function", getattr, (self, k), {})


class _ConcreteMethod:
    def __init__(self, owner: _ConcreteProxy, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner.tracer.create_proxy("call_method", self.name, (self.owner, *args), kwargs)


class ConcreteTracer(fx.Tracer):
    """An fx tracer whose proxies carry concrete values (see the module docstring)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.inputs = list(args)
        self.kw_inputs = kwargs
        self.node_values: dict[fx.Node, Any] = {}
        self._placeholder_index = 0
        self._evaluating = 0
        self.decided: set[fx.Node] = set()

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:  # type: ignore[override]
        if self._evaluating:  # computing a concrete value: real tensors, not proxies
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        if node not in self.node_values:
            self.node_values[node] = self._evaluate(node)
        return _ConcreteProxy(node, self)

    def _value(self, a: Any) -> Any:
        def get(x: fx.Node) -> Any:
            if x not in self.node_values:  # nodes fx creates without a proxy (tensor constants)
                self.node_values[x] = self._evaluate(x)
            return self.node_values[x]

        return map_aggregate(a, lambda x: get(x) if isinstance(x, fx.Node) else x)

    def _evaluate(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            name = str(node.target).lstrip("*")
            if self._placeholder_index < len(self.inputs):
                value = self.inputs[self._placeholder_index]
            else:
                value = self.kw_inputs.get(name)
            self._placeholder_index += 1
            return value
        if node.op == "get_attr":
            obj: Any = self.root
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        args, kwargs = self._value(node.args), self._value(node.kwargs)
        self._evaluating += 1
        try:
            return self._run(node, args, kwargs)
        finally:
            self._evaluating -= 1

    def _run(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        with torch.no_grad():
            if node.op == "call_function":
                return node.target(*args, **kwargs)  # type: ignore[operator]
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            if node.op == "call_module":
                # forward, not __call__: fx patches Module.__call__ while tracing
                return self.root.get_submodule(str(node.target)).forward(*args, **kwargs)
        return None

    def iter(self, obj: fx.Proxy) -> Any:  # type: ignore[override]
        return iter(obj)  # _ConcreteProxy.__iter__

    def to_bool(self, obj: fx.Proxy) -> bool:  # type: ignore[override]
        self.decided.add(obj.node)
        return bool(getattr(obj, "value", False))

    def keys(self, obj: fx.Proxy) -> Any:  # type: ignore[override]
        return self.node_values[obj.node].keys()

