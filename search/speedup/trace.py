"""Tracing a model into a torch.fx graph, with the concrete value of every node recorded.

Symbolic tracing is tried first. Models whose Python looks at tensor values (``if x.size(1) >
64``, ``for chunk in x.split(...)``, ``len(x)``...) fall back to a *concrete* tracer: every
proxy carries the value it has on the dummy input, so ``bool()``, ``len()``, ``int()`` and
iteration answer with that value and the graph records the path the dummy input takes.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.utils.flop_counter import FlopCounterMode

from search.metrics import split_inputs

__all__ = ["TracedModel", "trace_model"]

logger = logging.getLogger(__name__)


class TracedModel:
    """A traced graph plus the value each node had on the dummy input."""

    def __init__(
        self,
        graph_module: fx.GraphModule,
        values: dict[str, Any],
        method: str,
        output: Any = None,
        flops: int = 0,
        decisions: set[str] | None = None,
    ) -> None:
        self.graph_module = graph_module
        self.values = values
        self.method = method
        self.output = output  # the model's output on the dummy input
        self.flops = flops  # FLOPs of that forward pass (see search.metrics)
        #: nodes whose value Python code looked at (control flow): what they depend on must not change
        self.decisions = decisions or set()

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph




class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.values[n.name] = map_aggregate(result, _summarize)
        return result


def _summarize(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    return x


def _record(gm: fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any, int]:
    recorder = _Recorder(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat: list[Any] = list(args)
    for n in placeholders[len(args) :]:
        flat.append(kwargs[n.target] if n.target in kwargs else n.args[0] if n.args else None)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        output = recorder.run(*flat)
    return recorder.values, output, int(counter.get_total_flops())


def trace_model(model: nn.Module, dummy_input: Any) -> TracedModel:
    """Trace ``model`` (symbolically, else concretely) and record every node's value."""
    args, kwargs = split_inputs(dummy_input)
    try:
        concrete = _concrete_kwargs(model, args, kwargs)
        gm = fx.GraphModule(model, fx.Tracer().trace(model, concrete_args=concrete or None))
        values, output, flops = _record(gm, args, kwargs)
        return TracedModel(gm, values, "symbolic", output, flops)
    except Exception as exc:  # untraceable Python: record the dummy input's path instead
        logger.info("symbolic tracing failed (%s: %s); using the concrete tracer", type(exc).__name__, exc)
    tracer = ConcreteTracer(args, kwargs)
    graph = tracer.trace(model)
    gm = fx.GraphModule(model, graph)
    values, output, flops = _record(gm, args, kwargs)
    return TracedModel(gm, values, "concrete", output, flops, {n.name for n in tracer.decided})


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

