"""Channel rules for operators that move positions around: permute, reshape, index, cat, split, stack, expand."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx

from search.speedup._nodes import _dims, op_name
from search.speedup.analyze import Analyzer, _values_in
from search.speedup.graph import Value, carry

__all__ = ["_cat", "_chunk", "_expand", "_getitem", "_permute", "_reshape", "_stack", "rearrange_channels"]


def _permute(an: Analyzer, node: fx.Node) -> bool:
    x = an.value_of(node.args[0])
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None:
        return False
    args = an.concrete(node.args)[1:]
    kwargs = an.concrete(node.kwargs)
    name = op_name(node)
    perm = list(range(x.ndim))
    if name in ("transpose", "swapaxes", "swapdims"):
        d0 = kwargs.get("dim0", args[0] if args else 0) % x.ndim
        d1 = kwargs.get("dim1", args[1] if len(args) > 1 else 1) % x.ndim
        perm[d0], perm[d1] = perm[d1], perm[d0]
    elif name == "t":
        perm = perm[::-1]
    elif name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args
        dims = kwargs.get("dims", dims)
        perm = [int(d) % x.ndim for d in dims]
    elif name == "movedim":
        src = _dims(kwargs.get("source", args[0]), x.ndim)
        dst = _dims(kwargs.get("destination", args[1]), x.ndim)
        rest = [a for a in range(x.ndim) if a not in src]
        perm = [-1] * x.ndim
        for s, d in zip(src, dst, strict=True):
            perm[d] = s
        it = iter(rest)
        perm = [p if p >= 0 else next(it) for p in perm]
    if [x.shape[p] for p in perm] != list(out_shape):
        return False
    out = an.new(node)
    for b, a in enumerate(perm):
        an.g.link(x, a, out, b)
        carry(out, b, x, a)

    def back() -> None:
        for b, a in enumerate(perm):
            an.use(x, a, out.ignored[b])

    an.on_backward(back)
    return True


# -- reshape ---------------------------------------------------------------------------------------


def _segments(ins: tuple[int, ...], outs: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    i = j = 0
    segs: list[tuple[list[int], list[int]]] = []
    while i < len(ins) or j < len(outs):
        if i < len(ins) and ins[i] == 1:
            segs.append(([i], []))
            i += 1
            continue
        if j < len(outs) and outs[j] == 1:
            segs.append(([], [j]))
            j += 1
            continue
        if i >= len(ins) or j >= len(outs):
            return None
        ia, oa, pi, po = [i], [j], ins[i], outs[j]
        i, j = i + 1, j + 1
        while pi != po:
            if pi < po:
                if i >= len(ins):
                    return None
                pi *= ins[i]
                ia.append(i)
                i += 1
            else:
                if j >= len(outs):
                    return None
                po *= outs[j]
                oa.append(j)
                j += 1
        segs.append((ia, oa))
    return segs


def _literal_out_axes(node: fx.Node, out_ndim: int) -> set[int]:
    """Output axes whose size the code spells as a literal int (they cannot change size)."""
    name = op_name(node)
    if name not in ("view", "reshape", "unflatten"):
        return set()
    sizes: Any = node.args[1:]
    if name == "unflatten":
        return set()
    if len(sizes) == 1 and isinstance(sizes[0], tuple | list):
        sizes = sizes[0]
    if "shape" in node.kwargs:
        sizes = node.kwargs["shape"]
    if len(sizes) != out_ndim:
        return set()
    return {i for i, s in enumerate(sizes) if isinstance(s, int) and s != -1}


def _reshape(an: Analyzer, node: fx.Node) -> bool:
    x = an.value_of(node.args[0])
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None:
        return False
    segs = _segments(x.shape, tuple(out_shape))
    if segs is None:
        return False
    out = an.new(node)
    literal = _literal_out_axes(node, len(out_shape))
    backs: list[Callable[[], None]] = []
    for ia, oa in segs:
        if not ia or not oa:
            continue
        if len(ia) == 1 and len(oa) == 1:
            a, b = ia[0], oa[0]
            an.g.link(x, a, out, b)
            carry(out, b, x, a)
            if b in literal:
                an.g.pin(out, b, f"literal size {out_shape[b]} in {op_name(node)} at node {node.name}")
            backs.append(lambda a=a, b=b: an.use(x, a, out.ignored[b]))
            continue
        if len(oa) == 1:  # merge: link the outermost input axis
            a0, b = ia[0], oa[0]
            inner = math.prod(x.shape[k] for k in ia[1:])
            mapping = np.arange(out_shape[b]) // inner
            an.g.link(x, a0, out, b, mapping)
            carry(out, b, x, a0, mapping)
            for k in ia[1:]:
                an.g.pin(x, k, f"inner axis of a merge in {op_name(node)} at node {node.name}")
            if b in literal:
                an.g.pin(out, b, f"literal size {out_shape[b]} in {op_name(node)} at node {node.name}")
            backs.append(lambda a0=a0, b=b, mapping=mapping: _merge_back(an, x, a0, out, b, mapping))
            for k in ia[1:]:
                backs.append(lambda k=k: an.use(x, k, Analyzer.all_ignored(out)))
            continue
        if len(ia) == 1:  # split: link the one output axis whose size may change
            a = ia[0]
            free = [k for k in oa if k not in literal]
            chosen = free[0] if free else oa[0]
            sizes = [out_shape[k] for k in oa]
            idx = np.unravel_index(np.arange(x.shape[a]), sizes)
            pos = idx[oa.index(chosen)]
            an.g.link(out, chosen, x, a, pos)
            z = np.ones(out_shape[chosen], dtype=bool)
            np.logical_and.at(z, pos, x.zero[a])
            out.zero[chosen] = z
            for k in oa:
                if k != chosen or not free:
                    an.g.pin(out, k, f"axis of a split in {op_name(node)} at node {node.name}")
            backs.append(lambda a=a, chosen=chosen, pos=pos: an.use(x, a, out.ignored[chosen][pos]))
            continue
        for k in ia:
            an.g.pin(x, k, f"reshape mixes axes at node {node.name}")
        for k in oa:
            an.g.pin(out, k, f"reshape mixes axes at node {node.name}")
        backs.append(lambda ia=ia: [an.use(x, k, Analyzer.all_ignored(out)) for k in ia])

    def back() -> None:
        for fn in backs:
            fn()
        for ia, oa in segs:
            if ia and not oa:
                an.use(x, ia[0], Analyzer.all_ignored(out))

    an.on_backward(back)
    return True


def _merge_back(an: Analyzer, x: Value, a0: int, out: Value, b: int, mapping: np.ndarray) -> None:
    verdict = np.ones(x.shape[a0], dtype=bool)
    np.logical_and.at(verdict, mapping, out.ignored[b])
    an.use(x, a0, verdict)


# -- getitem, cat, split ---------------------------------------------------------------------------


def _getitem(an: Analyzer, node: fx.Node) -> bool:
    container = an.value_of(node.args[0])
    index = an.concrete(node.args[1])
    if isinstance(container, tuple | list | dict):
        keyed = isinstance(container, dict) and isinstance(index, str) and index in container
        item = container[index] if isinstance(index, int) and not isinstance(container, dict) or keyed else None
        if _values_in(item):  # a Value, or a nested structure of them (an LSTM's (h, c))
            an.node_values[node.name] = item
            return True
        return False
    x = container
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None:
        return False
    idx = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, torch.Tensor) or isinstance(i, list) for i in idx):
        return False
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (x.ndim - sum(1 for i in expanded if i is not None)))
    out = an.new(node)
    a = b = 0
    pairs: list[tuple[int, int]] = []
    for i in expanded:
        if i is None:
            b += 1
            continue
        if isinstance(i, int):
            an.g.pin(x, a, f"integer index at node {node.name}")
            a += 1
            continue
        if isinstance(i, slice):
            if i == slice(None) or (i.start in (None, 0) and i.stop is None and i.step in (None, 1)):
                an.g.link(x, a, out, b)
                carry(out, b, x, a)
                pairs.append((a, b))
            else:
                positions = np.arange(x.shape[a])[i]
                an.g.link(x, a, out, b, positions)
                an.g.pin(x, a, f"slice {i} at node {node.name}")
                carry(out, b, x, a, positions)
            a += 1
            b += 1
            continue
        return False

    def back() -> None:
        used = {p for p, _ in pairs}
        for p, q in pairs:
            an.use(x, p, out.ignored[q])
        for p in range(x.ndim):
            if p not in used:
                an.use(x, p, False)

    an.on_backward(back)
    return True


def _cat(an: Analyzer, node: fx.Node) -> bool:
    seq = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = an.concrete(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0))
    ins = [an.value_of(t) for t in seq] if isinstance(seq, tuple | list) else []
    out_shape = an.shape_of(node)
    if not ins or not all(isinstance(v, Value) for v in ins) or out_shape is None:
        return False
    dim = int(dim) % len(out_shape)
    out = an.new(node)
    offsets = np.cumsum([0] + [v.shape[dim] for v in ins])
    for k, v in enumerate(ins):
        an.g.link(out, dim, v, dim, offsets[k] + np.arange(v.shape[dim]))
        for b in range(len(out_shape)):
            if b != dim:
                an.g.link(v, b, out, b)
    out.zero[dim] = np.concatenate([v.zero[dim] for v in ins])
    out.const[dim] = np.concatenate([v.const[dim] for v in ins])
    for b in range(len(out_shape)):
        if b != dim:
            out.zero[b] = np.logical_and.reduce([v.zero[b] for v in ins])

    def back() -> None:
        for k, v in enumerate(ins):
            an.use(v, dim, out.ignored[dim][offsets[k] : offsets[k + 1]])
            for b in range(len(out_shape)):
                if b != dim:
                    an.use(v, b, out.ignored[b])

    an.on_backward(back)
    return True


def _chunk(an: Analyzer, node: fx.Node) -> bool:
    """chunk(n)/split(size): equal parts couple the same offset in every part."""
    x = an.value_of(node.args[0])
    out = an.concrete(node)
    if not isinstance(x, Value) or not isinstance(out, tuple | list):
        return False
    name = op_name(node)
    args, kwargs = an.concrete(node.args), an.concrete(node.kwargs)
    dim = int(kwargs.get("dim", args[2] if len(args) > 2 else 0)) % x.ndim
    sizes = [o.shape[dim] for o in out]
    equal = len(set(sizes)) == 1 and sum(sizes) == x.shape[dim]
    symmetric = equal and name in ("chunk", "split") and (name == "chunk" or isinstance(args[1], int))
    if name == "split" and isinstance(args[1], int):
        symmetric = False  # a literal part size: the number of parts would change
    items = []
    offset = 0
    backs = []
    for k, o in enumerate(out):
        v = an.g.new_value(f"{node.name}[{k}]", tuple(o.shape), producer=an.describe(node))
        items.append(v)
        positions = offset + np.arange(sizes[k])
        an.g.link(x, dim, v, dim, positions)
        carry(v, dim, x, dim, positions)
        for b in range(x.ndim):
            if b != dim:
                an.g.link(x, b, v, b)
                carry(v, b, x, b)
        if not symmetric:
            an.g.pin(v, dim, f"{name} at literal boundaries at node {node.name}")
        backs.append((v, positions))
        offset += sizes[k]
    if symmetric:
        for v in items[1:]:
            an.g.link(items[0], dim, v, dim)
    an.node_values[node.name] = tuple(items)

    def back() -> None:
        verdict = np.ones(x.shape[dim], dtype=bool)
        for v, positions in backs:
            verdict[positions] = v.ignored[dim]
        an.use(x, dim, verdict)
        for b in range(x.ndim):
            if b != dim:
                an.use(x, b, np.logical_and.reduce([v.ignored[b] for v, _ in backs]))

    an.on_backward(back)
    return True


def _expand(an: Analyzer, node: fx.Node) -> bool:
    x = an.value_of(node.args[0])
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None:
        return False
    out = an.new(node)
    n_out = len(out_shape)
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], tuple | list):
        sizes = sizes[0]
    literal = {i for i, s in enumerate(sizes) if isinstance(s, int) and s != -1} if op_name(node) == "expand" else set()
    pairs = []
    for b in range(n_out):
        a = b - (n_out - x.ndim)
        if a >= 0 and x.shape[a] == out_shape[b]:
            an.g.link(x, a, out, b)
            carry(out, b, x, a)
            pairs.append((a, b))
            if b in literal and out_shape[b] > 1:
                an.g.pin(out, b, f"literal size in expand at node {node.name}")
    if op_name(node) == "expand_as":
        other = an.value_of(node.args[1])
        if isinstance(other, Value):
            for b in range(n_out):
                an.g.link(other, b, out, b)

    def back() -> None:
        linked = {a for a, _ in pairs}
        for a, b in pairs:
            an.use(x, a, out.ignored[b])
        for a in range(x.ndim):
            if a not in linked:
                an.use(x, a, Analyzer.all_ignored(out))

    an.on_backward(back)
    return True


def _stack(an: Analyzer, node: fx.Node) -> bool:
    seq = node.args[0]
    ins = [an.value_of(t) for t in seq] if isinstance(seq, tuple | list) else []
    out_shape = an.shape_of(node)
    if not ins or not all(isinstance(v, Value) for v in ins) or out_shape is None:
        return False
    dim = int(an.concrete(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0))) % len(out_shape)
    out = an.new(node)
    an.g.pin(out, dim, f"stack axis at node {node.name}")
    for v in ins:
        for a in range(v.ndim):
            b = a if a < dim else a + 1
            an.g.link(v, a, out, b)
    for a in range(ins[0].ndim):
        b = a if a < dim else a + 1
        out.zero[b] = np.logical_and.reduce([v.zero[a] for v in ins])

    def back() -> None:
        for v in ins:
            for a in range(v.ndim):
                an.use(v, a, out.ignored[a if a < dim else a + 1])

    an.on_backward(back)
    return True


# -- channel <-> space rearrangements --------------------------------------------------------------


def _channel_groups_of(x: Value, cax: int, kind: str, factor: int, out_channels: int) -> np.ndarray | None:
    """For ``pixel_shuffle`` / ``pixel_unshuffle`` / ``channel_shuffle``: the input channel of each output channel."""
    c = x.shape[cax]
    if kind == "pixel_shuffle" and c == out_channels * factor * factor:
        return np.arange(out_channels) * factor * factor  # first of the factor² input channels
    if kind == "pixel_unshuffle" and out_channels == c * factor * factor:
        return np.arange(out_channels) // (factor * factor)
    if kind == "channel_shuffle" and out_channels == c and c % factor == 0:
        n = c // factor
        k = np.arange(c)  # output k = b * groups + a reads input a * n + b
        return (k % factor) * n + k // factor
    return None


def rearrange_channels(an: Analyzer, node: fx.Node, inp: Any, kind: str, factor: int) -> bool:
    """Pixel (un)shuffle and channel shuffle move channels in blocks; those blocks go together.

    ``pixel_shuffle(r)`` turns each run of r² input channels into one output channel, so a run is
    removed whole; ``pixel_unshuffle(r)`` is the reverse. ``channel_shuffle(g)`` interleaves g
    groups: the same offset in every group is removed together, so the shuffle stays consistent.
    """
    x = an.value_of(inp)
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None or x.ndim < 3 or len(out_shape) != x.ndim or factor < 1:
        return False
    cax = x.ndim - 3
    source = _channel_groups_of(x, cax, kind, factor, out_shape[cax])
    if source is None:
        return False
    out = an.new(node)
    for a in range(cax):
        an.g.link(x, a, out, a)
        carry(out, a, x, a)
    c = x.shape[cax]
    if kind == "pixel_shuffle":
        block = factor * factor
        an.g.link(out, cax, x, cax, np.arange(c) // block)
        out.zero[cax] = x.zero[cax].reshape(-1, block).all(axis=1)
    else:
        an.g.link(x, cax, out, cax, source)
        carry(out, cax, x, cax, source)
        if kind == "channel_shuffle":
            an.g.link(x, cax, x, cax, np.arange(c) % (c // factor))

    def back() -> None:
        for a in range(cax):
            an.use(x, a, out.ignored[a])
        ignored = out.ignored[cax]
        if kind == "pixel_shuffle":
            verdict = np.repeat(ignored, factor * factor)
        else:
            verdict = np.ones(c, dtype=bool)
            np.logical_and.at(verdict, source, ignored)
        an.use(x, cax, verdict)
        every = Analyzer.all_ignored(out)
        for a in range(cax + 1, x.ndim):
            an.use(x, a, every)

    an.on_backward(back)
    return True
