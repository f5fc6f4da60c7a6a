"""Channel rules for tensor operators (functions and methods) of a traced graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from search.speedup._nodes import _dims, _flat_args, op_name
from search.speedup.analyze import Analyzer, _has_tensor
from search.speedup.graph import Value
from search.speedup.layout_rules import (
    _cat,
    _chunk,
    _expand,
    _getitem,
    _permute,
    _reshape,
    _stack,
    rearrange_channels,
)

__all__ = ["dispatch", "op_name"]

UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish", "hardsigmoid",
    "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "mish", "softplus",
    "softsign", "logsigmoid", "tanhshrink", "hardshrink", "softshrink", "threshold", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "abs", "neg", "pos", "exp", "log", "log1p",
    "sqrt", "rsqrt", "square", "clamp", "clip", "clamp_min", "clamp_max", "clamp_", "sign", "floor", "ceil", "round",
    "sin", "cos", "erf", "reciprocal", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to",
    "type", "type_as", "requires_grad_", "nan_to_num", "gelu_", "silu_", "exp_", "abs_", "neg_",
}
BINARY = {
    "add": "add", "iadd": "add", "add_": "add", "sub": "add", "isub": "add", "sub_": "add", "rsub": "add",
    "mul": "mul", "imul": "mul", "mul_": "mul", "truediv": "div", "div": "div", "div_": "div", "itruediv": "div",
    "pow": "other", "maximum": "other", "minimum": "other", "max": "other", "min": "other", "where": "other",
    "masked_fill": "other", "eq": "other", "ne": "other", "lt": "other", "le": "other", "gt": "other", "ge": "other",
    "floordiv": "other", "fmod": "other", "remainder": "other", "addcmul": "other", "lerp": "other",
}
RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
PERMUTE = {"transpose", "permute", "t", "movedim", "swapaxes", "swapdims"}
REDUCE_ZERO_KEEPING = {
    "sum", "mean", "amax", "amin", "std", "var", "norm", "nansum", "nanmean", "max", "min", "median", "prod",
}
REDUCE_OTHER = {"logsumexp", "all", "any", "argmax", "argmin"}
ALONG_DIM = {"softmax": False, "log_softmax": False, "normalize": True, "cumsum": True, "cumprod": False}
SPATIAL = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "lp_pool2d",
}


def dispatch(an: Analyzer, node: fx.Node) -> bool:
    out = an.concrete(node)
    if not _has_tensor(out):
        return True  # metadata (size, dim, shape, dtype...): no channel effect
    if node.op == "call_module":
        from search.speedup.module_rules import module_rule  # noqa: PLC0415

        return module_rule(an, node)
    name = op_name(node)
    tensors = [a for a in _flat_args(node) if isinstance(an.value_of(a), Value)]
    if name == "getitem":
        return _getitem(an, node)
    if name in UNARY or (name in BINARY and len(tensors) == 1 and name not in ("max", "min")):
        return unary(an, node, tensors[0] if tensors else None)
    if name in BINARY and name not in ("max", "min") or (name in ("max", "min") and len(tensors) > 1):
        return elementwise(an, node, tensors, BINARY[name])
    handler = _HANDLERS.get(name)
    if handler is not None:
        return handler(an, node)
    if name in RESHAPE:
        return _reshape(an, node)
    if name in PERMUTE:
        return _permute(an, node)
    if name in REDUCE_ZERO_KEEPING or name in REDUCE_OTHER:
        return _reduce(an, node, name in REDUCE_ZERO_KEEPING)
    if name in ALONG_DIM:
        return _along_dim(an, node, ALONG_DIM[name])
    if name in SPATIAL:
        keeps_const = name.startswith(("adaptive", "max_pool", "interpolate", "upsample"))
        return spatial(an, node, zero_keeping=True, const_keeping=keeps_const)
    return False


def _call_with(an: Analyzer, node: fx.Node, replace: fx.Node, tensor: torch.Tensor) -> Any:
    """Re-run a node's operation with one input replaced by ``tensor`` (other inputs as recorded)."""

    def sub(a: Any) -> Any:
        if isinstance(a, fx.Node):
            if a is replace:
                return tensor
            v = an.traced.values.get(a.name)
            if isinstance(v, torch.Tensor):
                raise _NotTestable
            return v
        return a

    args = fx.node.map_aggregate(node.args, sub)
    kwargs = fx.node.map_aggregate(node.kwargs, sub)
    with torch.no_grad():
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        module = an.modules[str(node.target)]
        return module(*args, **kwargs)


class _NotTestable(Exception):
    pass


def maps_zero_to_zero(an: Analyzer, node: fx.Node, inp: fx.Node, *, elementwise: bool = False) -> bool:
    """Does the node's operation map an all-zero ``inp`` to all zeros?

    ``elementwise``: the operation acts on each element alone, the same way everywhere, so a
    tensor with every dim of size one (same rank and dtype) answers for the full shape.
    """
    meta = an.traced.values.get(inp.name)
    if not isinstance(meta, torch.Tensor):
        return False
    try:
        zeros = torch.zeros((1,) * meta.dim() if elementwise else meta.shape, dtype=meta.dtype)
        result = _call_with(an, node, inp, zeros)
    except Exception:
        return False
    return isinstance(result, torch.Tensor) and result.shape == zeros.shape and not bool(result.any())


def unary(an: Analyzer, node: fx.Node, inp: fx.Node | None) -> bool:
    """Elementwise with one tensor input: positions map one to one."""
    out_shape = an.shape_of(node)
    x = an.value_of(inp) if inp is not None else None
    if not isinstance(x, Value) or out_shape is None or tuple(out_shape) != x.shape:
        return False
    out = an.new(node)
    # every operator routed here is elementwise and position-independent, so small probes answer
    known = _known_activation(an, node, inp)  # type: ignore[arg-type]
    if known is not None:
        keeps_zero = bool(known(np.zeros(1, dtype=np.float32))[0] == 0)  # Hardtanh(0.5, 1) does not
    else:
        keeps_zero = maps_zero_to_zero(an, node, inp, elementwise=True)  # type: ignore[arg-type]
    for a in range(x.ndim):
        an.g.link(x, a, out, a)
        if keeps_zero:
            out.zero[a] = x.zero[a].copy()
        if known is not None:
            c = x.constants(a)
            out.const[a] = known(c.astype(np.float32)).astype(np.float64)  # NaN (unknown) stays NaN
        else:
            out.const[a] = _unary_constants(an, node, inp, x, a)  # type: ignore[arg-type]

    def back() -> None:
        for a in range(x.ndim):
            an.use(x, a, out.ignored[a])

    an.on_backward(back)
    return True


def _known_activation(an: Analyzer, node: fx.Node, inp: fx.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    """NumPy float32 twins of the commonest activations (ReLU, ReLU6, Hardtanh), or ``None``.

    A constant slice maps to the activation of the constant, which the generic probes find too,
    by calling the operator on small tensors; a CNN has dozens of these nodes, and NumPy answers
    in a fraction of the time. Only exact types with float32 input.
    """
    meta = an.traced.values.get(inp.name)
    if not isinstance(meta, torch.Tensor) or meta.dtype != torch.float32:
        return None
    bounds: tuple[float, float] | None = None
    if node.op == "call_module":
        m = an.modules[str(node.target)]
        if type(m) is nn.ReLU:
            bounds = (0.0, np.inf)
        elif type(m) in (nn.ReLU6, nn.Hardtanh):
            bounds = (m.min_val, m.max_val)  # type: ignore[union-attr]
    elif not node.args[1:] and all(k == "inplace" for k in node.kwargs):
        bounds = {"relu": (0.0, np.inf), "relu_": (0.0, np.inf), "relu6": (0.0, 6.0)}.get(op_name(node))
    if bounds is None:
        return None
    lo, hi = np.float32(bounds[0]), np.float32(bounds[1])
    return lambda c: np.minimum(np.maximum(c, lo), hi)


def _unary_constants(an: Analyzer, node: fx.Node, inp: fx.Node, x: Value, axis: int) -> np.ndarray:
    """Constants of ``f(x)`` slices where ``x``'s slices are constant (evaluated numerically).

    ``f`` is elementwise and position-independent (see :func:`unary`), so one element per slice is
    probed: a tensor of ``x``'s rank with every dim but ``axis`` of size one.
    """
    c = x.constants(axis)
    known = ~np.isnan(c)
    result = np.full(x.shape[axis], np.nan)
    meta = an.traced.values.get(inp.name)
    if not known.any() or not isinstance(meta, torch.Tensor) or not meta.is_floating_point():
        return result
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    probe = torch.from_numpy(c).to(meta.dtype).reshape(shape)
    try:
        out = _call_with(an, node, inp, probe)
    except Exception:
        return result
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        return result
    dims = [d for d in range(x.ndim) if d != axis]
    lo = out.amin(dim=dims).double().numpy() if dims else out.double().numpy()
    hi = out.amax(dim=dims).double().numpy() if dims else lo
    same = known & (lo == hi) & ~np.isnan(lo)
    result[same] = lo[same]
    return result


def _region_const(v: Value, a: int, n: int) -> np.ndarray:
    if a < 0:
        return np.full(n, np.nan)
    c = v.constants(a)
    if v.shape[a] == n:
        return c
    return np.full(n, c[0] if c.size == 1 else np.nan)


def _aligned_axis(v: Value, out_ndim: int, b: int) -> int:
    return b - (out_ndim - v.ndim)


def _region_zero(v: Value, a: int, n: int) -> np.ndarray:
    """Zero facts of ``v`` for output positions along an output axis of size ``n``."""
    if a < 0:
        return np.full(n, Analyzer.whole_zero(v))
    if v.shape[a] == n:
        return v.zero[a]
    return np.full(n, bool(v.zero[a].all()))


def elementwise(an: Analyzer, node: fx.Node, tensor_nodes: list[fx.Node], kind: str) -> bool:
    """Broadcasting elementwise op over several tensors."""
    out_shape = an.shape_of(node)
    if out_shape is None:
        return False
    ins = [an.value_of(t) for t in tensor_nodes]
    out = an.new(node)
    n_out = len(out_shape)
    for b in range(n_out):
        n = out_shape[b]
        for v in ins:
            a = _aligned_axis(v, n_out, b)
            if a >= 0 and v.shape[a] == n and n > 1:
                an.g.link(v, a, out, b)
        zs = [_region_zero(v, _aligned_axis(v, n_out, b), n) for v in ins]
        cs = [_region_const(v, _aligned_axis(v, n_out, b), n) for v in ins]
        scalar = _scalar_operand(an, node)
        with np.errstate(all="ignore"):
            if kind == "add":
                out.zero[b] = np.logical_and.reduce(zs)
                sign = -1.0 if op_name(node) in ("sub", "isub", "sub_") else 1.0
                plain = "alpha" not in node.kwargs and len(node.args) <= 2 and op_name(node) != "rsub"
                if len(cs) == 2 and scalar is None and plain:
                    out.const[b] = cs[0] + sign * cs[1]
            elif kind == "mul":
                out.zero[b] = np.logical_or.reduce(zs)
                if scalar is None:
                    out.const[b] = np.prod(cs, axis=0)
            elif kind == "div":
                out.zero[b] = zs[0].copy()
                if len(cs) == 2 and scalar is None:
                    out.const[b] = cs[0] / cs[1]

    def back() -> None:
        for i, v in enumerate(ins):
            for a in range(v.ndim):
                b = a + (n_out - v.ndim)
                verdict = out.ignored[b].copy()
                if kind == "mul":
                    for j, w in enumerate(ins):
                        if j != i:
                            verdict |= _region_zero(w, _aligned_axis(w, n_out, b), out_shape[b])
                if v.shape[a] == out_shape[b]:
                    an.use(v, a, verdict)
                else:
                    an.use(v, a, bool(verdict.all()))

    an.on_backward(back)
    return True


def _scalar_operand(an: Analyzer, node: fx.Node) -> Any:
    """A non-tensor operand of a binary op (it makes constant propagation unsafe to guess)."""
    for a in node.args:
        if not isinstance(a, fx.Node) and isinstance(a, int | float):
            return a
    return None


def spatial(an: Analyzer, node: fx.Node, zero_keeping: bool, const_keeping: bool = False) -> bool:
    """Pooling / interpolation / padding: batch and channel axes map one to one, others are new."""
    inp = _flat_args(node)[0] if _flat_args(node) else None
    x = an.value_of(inp) if inp is not None else None
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None or len(out_shape) != x.ndim or x.ndim < 2:
        return False
    if any(x.shape[a] != out_shape[a] for a in (0, 1)):
        return False
    out = an.new(node)
    for a in (0, 1):
        an.g.link(x, a, out, a)
        if zero_keeping:
            out.zero[a] = x.zero[a].copy()
        if const_keeping:
            out.const[a] = x.const[a].copy()

    def back() -> None:
        for a in (0, 1):
            an.use(x, a, out.ignored[a])
        for a in range(2, x.ndim):
            an.use(x, a, Analyzer.all_ignored(out))

    an.on_backward(back)
    return True


def _reduce(an: Analyzer, node: fx.Node, zero_keeping: bool) -> bool:
    """A reduction over some axes (pinned); ``max(dim)``-style ones also return their indices."""
    args = an.concrete(node.args)
    kwargs = an.concrete(node.kwargs)
    x = an.value_of(node.args[0])
    result = an.concrete(node)
    pair = isinstance(result, tuple) and len(result) == 2 and all(isinstance(r, torch.Tensor) for r in result)
    out_shape = tuple(result[0].shape) if pair else an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None or (pair and result[1].shape != result[0].shape):
        return False
    dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], torch.Tensor) else None)
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
    reduced = _dims(dim, x.ndim)
    kept = [a for a in range(x.ndim) if a not in reduced]
    out = an.new(node, out_shape)
    outs = [out]
    if pair:  # (values, indices): the indices have the values' axes, with no zero facts
        indices = an.g.new_value(f"{node.name}.indices", out_shape, producer=an.describe(node))
        outs.append(indices)
        an.node_values[node.name] = (out, indices)
    out_axes = list(range(x.ndim)) if keepdim else [None] * x.ndim
    if not keepdim:
        for i, a in enumerate(kept):
            out_axes[a] = i
    for a in reduced:
        an.g.pin(x, a, f"reduction over axis {a} at {an.describe(node)}")
    for a in kept:
        b = out_axes[a]
        if b is None or out.shape[b] != x.shape[a]:
            return True
        for o in outs:
            an.g.link(x, a, o, b)
        if zero_keeping:
            out.zero[b] = x.zero[a].copy()
        if op_name(node) in ("mean", "amax", "amin", "nanmean", "max", "min", "median"):
            out.const[b] = x.const[a].copy()

    def back() -> None:
        for a in kept:
            b = out_axes[a]
            if b is not None:
                an.use(x, a, np.logical_and.reduce([o.ignored[b] for o in outs]))
        for a in reduced:
            an.use(x, a, all(Analyzer.all_ignored(o) for o in outs))

    an.on_backward(back)
    return True


def _field(an: Analyzer, node: fx.Node) -> bool:
    """``.values`` / ``.indices`` of a ``max(dim)``-style result (a pair of Values)."""
    container = an.value_of(node.args[0])
    field = node.args[1] if len(node.args) > 1 else None
    position = {"values": 0, "indices": 1}.get(field) if isinstance(field, str) else None
    if position is None or not isinstance(container, tuple) or len(container) != 2:
        return False
    item = container[position]
    if not isinstance(item, Value):
        return False
    an.node_values[node.name] = item
    return True


def _along_dim(an: Analyzer, node: fx.Node, zero_keeping: bool) -> bool:
    args, kwargs = an.concrete(node.args), an.concrete(node.kwargs)
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if op_name(node) == "normalize":
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 1)
    if dim is None:
        return False
    return along_axis(an, node, node.args[0], int(dim), zero_keeping, op_name(node))


def along_axis(an: Analyzer, node: fx.Node, inp: Any, dim: int, zero_keeping: bool, what: str) -> bool:
    """An op that mixes positions along ``dim`` only (softmax...): that axis is pinned."""
    x = an.value_of(inp)
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None or tuple(out_shape) != x.shape:
        return False
    dim = dim % x.ndim
    out = an.new(node)
    for a in range(x.ndim):
        an.g.link(x, a, out, a)
        if a == dim:
            an.g.pin(x, a, f"{what} over this axis at node {node.name}")
        elif zero_keeping:
            out.zero[a] = x.zero[a].copy()

    def back() -> None:
        for a in range(x.ndim):
            an.use(x, a, out.ignored[a] if a != dim else Analyzer.all_ignored(out))

    an.on_backward(back)
    return True


def _matmul(an: Analyzer, node: fx.Node) -> bool:
    a_node, b_node = node.args[0], node.args[1]
    a, b = an.value_of(a_node), an.value_of(b_node)
    out_shape = an.shape_of(node)
    if not isinstance(a, Value) or not isinstance(b, Value) or out_shape is None or a.ndim < 2 or b.ndim < 2:
        return False
    out = an.new(node)
    n_out = len(out_shape)
    for k in range(n_out - 2):
        n = out_shape[k]
        for v in (a, b):
            ax = k - (n_out - v.ndim)
            if ax >= 0 and v.shape[ax] == n and n > 1:
                an.g.link(v, ax, out, k)
        out.zero[k] = _region_zero(a, k - (n_out - a.ndim), n) | _region_zero(b, k - (n_out - b.ndim), n)
    an.g.link(a, a.ndim - 2, out, n_out - 2)
    an.g.link(b, b.ndim - 1, out, n_out - 1)
    an.g.link(a, a.ndim - 1, b, b.ndim - 2)
    out.zero[n_out - 2] = a.zero[a.ndim - 2].copy()
    out.zero[n_out - 1] = b.zero[b.ndim - 1].copy()

    def back() -> None:
        everything = Analyzer.all_ignored(out)
        an.use(a, a.ndim - 2, out.ignored[n_out - 2])
        an.use(b, b.ndim - 1, out.ignored[n_out - 1])
        an.use(a, a.ndim - 1, b.zero[b.ndim - 2] | everything)
        an.use(b, b.ndim - 2, a.zero[a.ndim - 1] | everything)
        for k in range(n_out - 2):
            for v, w in ((a, b), (b, a)):
                ax = k - (n_out - v.ndim)
                if ax < 0:
                    continue
                verdict = out.ignored[k] | _region_zero(w, k - (n_out - w.ndim), out_shape[k])
                an.use(v, ax, verdict if v.shape[ax] == out_shape[k] else bool(verdict.all()))

    an.on_backward(back)
    return True


def _sdpa(an: Analyzer, node: fx.Node) -> bool:
    q, k, v = (an.value_of(node.args[i]) if len(node.args) > i else None for i in range(3))
    if not all(isinstance(t, Value) and t.ndim == 4 for t in (q, k, v)) or len(node.args) > 3 or node.kwargs.get("attn_mask") is not None:
        return False
    assert isinstance(q, Value) and isinstance(k, Value) and isinstance(v, Value)
    out = an.new(node)
    for ax in (0, 1):
        for t in (q, k, v):
            an.g.link(t, ax, out, ax)
    an.g.link(q, 2, out, 2)
    an.g.link(k, 2, v, 2)
    an.g.link(q, 3, k, 3)
    an.g.pin(q, 3, f"attention scale depends on the head size at node {node.name}")
    an.g.link(v, 3, out, 3)
    out.zero[1] = v.zero[1].copy()
    out.zero[3] = v.zero[3].copy()

    def back() -> None:
        an.use(v, 1, out.ignored[1])
        an.use(q, 1, out.ignored[1] | v.zero[1])
        an.use(k, 1, out.ignored[1] | v.zero[1])
        an.use(v, 3, out.ignored[3])
        for t in (q, k, v):
            an.use(t, 0, out.ignored[0])
        every = Analyzer.all_ignored(out)
        for t, ax in ((q, 2), (k, 2), (v, 2), (q, 3), (k, 3)):
            an.use(t, ax, every)

    an.on_backward(back)
    return True


def _linear_fn(an: Analyzer, node: fx.Node) -> bool:
    from search.speedup.module_rules import linear_like  # noqa: PLC0415

    x = an.value_of(node.args[0])
    w_node = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    b_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    w = an.value_of(w_node)
    b = an.value_of(b_node) if isinstance(b_node, fx.Node) else None
    if not isinstance(x, Value) or not isinstance(w, Value) or not w.is_param:
        return False
    wt = an.traced.values.get(w_node.name)
    owner, _, attr = str(w_node.target).rpartition(".")
    weight = an.tensor(owner, attr)
    bias = None
    if isinstance(b_node, fx.Node) and b_node.op == "get_attr":
        bo, _, ba = str(b_node.target).rpartition(".")
        bias = an.tensor(bo, ba)
    _ = wt
    return linear_like(an, node, x, w, b if isinstance(b, Value) and b.is_param else None, weight, bias)


def _rearrange(an: Analyzer, node: fx.Node) -> bool:
    args, kwargs = an.concrete(node.args), an.concrete(node.kwargs)
    name = op_name(node)
    kind = "channel_shuffle" if name.endswith("channel_shuffle") else name
    key = {"pixel_shuffle": "upscale_factor", "pixel_unshuffle": "downscale_factor"}.get(kind, "groups")
    factor = kwargs.get(key, args[1] if len(args) > 1 else None)
    if not isinstance(factor, int):
        return False
    return rearrange_channels(an, node, node.args[0], kind, factor)


def _pad(an: Analyzer, node: fx.Node) -> bool:
    args, kwargs = an.concrete(node.args), an.concrete(node.kwargs)
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    value = kwargs.get("value", args[3] if len(args) > 3 else None)
    pads = args[1] if len(args) > 1 else kwargs.get("pad")
    x = an.value_of(node.args[0])
    if not isinstance(x, Value) or pads is None:
        return False
    padded_axes = {x.ndim - 1 - i // 2 for i, p in enumerate(pads) if p}
    if any(a < 2 for a in padded_axes):
        return False
    return spatial(an, node, zero_keeping=mode == "constant" and not value)


_HANDLERS: dict[str, Callable[[Analyzer, fx.Node], bool]] = {
    "cat": _cat,
    "concat": _cat,
    "concatenate": _cat,
    "stack": _stack,
    "chunk": _chunk,
    "split": _chunk,
    "tensor_split": _chunk,
    "matmul": _matmul,
    "bmm": _matmul,
    "mm": _matmul,
    "scaled_dot_product_attention": _sdpa,
    "linear": _linear_fn,
    "expand": _expand,
    "expand_as": _expand,
    "pad": _pad,
    "getattr": _field,
    "pixel_shuffle": _rearrange,
    "pixel_unshuffle": _rearrange,
    "channel_shuffle": _rearrange,
    "native_channel_shuffle": _rearrange,
}

