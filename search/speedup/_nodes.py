"""Small helpers about fx nodes shared by the rule modules."""

from __future__ import annotations

from typing import Any

from torch import fx


def op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.lstrip("_") if name.startswith("__") else name


def _flat_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def _dims(arg: Any, ndim: int) -> list[int]:
    if arg is None:
        return list(range(ndim))
    if isinstance(arg, int):
        return [arg % ndim]
    return [int(d) % ndim for d in arg]
