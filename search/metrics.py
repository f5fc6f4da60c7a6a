"""Model cost: parameters, FLOPs / MACs, and latency.

Counting convention (the one fvcore, torch's ``FlopCounterMode`` and most papers use): only
matrix products and convolutions count (``Linear``, ``Conv*``, ``matmul``/``bmm``, attention);
one multiply-add is one MAC and two FLOPs, so ``flops == 2 * macs``. Normalisations,
activations, pooling and additions are not counted. Counts are for the given input (batch
included).

Example:
    >>> import torch
    >>> model = torch.nn.Linear(10, 4)
    >>> count_params(model), count_macs(model, torch.randn(1, 10))
    (44, 40)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = [
    "count_params", "count_flops", "count_macs", "measure_latency", "LatencyStats", "ModelCost", "model_cost",
    "FlopCounter",
]


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def split_inputs(dummy_input: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` from a tensor, a tuple/list of positional inputs or a dict of keyword inputs."""
    if isinstance(dummy_input, Mapping):
        return (), dict(dummy_input)
    if isinstance(dummy_input, tuple | list):
        return tuple(dummy_input), {}
    return (dummy_input,), {}


def _call(model: nn.Module, dummy_input: Any) -> Any:
    args, kwargs = split_inputs(dummy_input)
    return model(*args, **kwargs)


#: aten operators that never contain a matrix product: not worth decomposing to look inside
_FLOP_FREE_PREFIXES = (
    "native_batch_norm", "_native_batch_norm", "batch_norm", "native_layer_norm", "layer_norm", "native_group_norm",
    "group_norm", "instance_norm", "max_pool", "avg_pool", "adaptive_", "upsample", "empty", "zeros", "ones",
    "full", "copy", "clone", "cat", "stack", "split", "chunk", "index", "gather", "scatter", "slice", "select",
    "mean", "sum", "amax", "amin", "max", "min", "var", "std", "softmax", "_softmax", "log_softmax",
    "_log_softmax", "dropout", "native_dropout", "constant_pad", "reflection_pad", "replication_pad", "pad",
    "embedding", "where", "masked_fill", "topk", "sort", "argmax", "argmin", "cumsum", "flip", "roll", "repeat",
    "expand", "permute", "transpose", "t", "view", "reshape", "_reshape_alias", "unsqueeze", "squeeze",
    "flatten", "unflatten", "contiguous", "_to_copy", "to", "lift_fresh", "detach", "alias", "arange",
)


def _may_hide_matmul(func: Any) -> bool:
    """Could decomposing ``func`` reveal a matrix product? (Elementwise, view, norm, pooling... cannot.)"""
    if torch.Tag.pointwise in func.tags or func.is_view:
        return False
    name = func._overloadpacket.__name__
    return not name.startswith(_FLOP_FREE_PREFIXES)


class FlopCounter(TorchDispatchMode):
    """Count FLOPs of the operators run inside ``with FlopCounter() as c:`` into ``c.total``.

    The per-operator formulas are torch's own (``torch.utils.flop_counter.flop_registry``), so the
    totals equal ``FlopCounterMode``'s; unlike it, this keeps no per-module breakdown and does not
    decompose operators that cannot contain a matrix product (norms, elementwise, pooling, views),
    which makes it cheap enough to run on every forward pass speedup does (``FlopCounterMode``
    costs about as much as the forward pass itself on a CNN at batch 1 on a CPU). Other operators
    without a formula are decomposed where torch can, as ``FlopCounterMode`` does, so a composite
    operator's matrix products are still seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        formula = flop_registry.get(packet)
        if formula is None and not isinstance(func, torch._ops.HigherOrderOperator):
            decomposable = _DECOMPOSABLE.get(func)
            if decomposable is None:
                decomposable = _DECOMPOSABLE[func] = _may_hide_matmul(func)
            if decomposable:
                with self:
                    decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
                _DECOMPOSABLE[func] = False
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


#: per aten overload: worth trying ``decompose()`` on (filled lazily, process-wide)
_DECOMPOSABLE: dict[Any, bool] = {}


def count_flops(model: nn.Module, dummy_input: Any) -> int:
    """FLOPs of one forward pass on ``dummy_input`` (2 per multiply-add)."""
    with torch.no_grad(), FlopCounter() as counter:
        _call(model, dummy_input)
    return counter.total


def count_macs(model: nn.Module, dummy_input: Any) -> int:
    """Multiply-accumulates of one forward pass (``count_flops // 2``)."""
    return count_flops(model, dummy_input) // 2


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one forward pass in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    device: str


def measure_latency(
    model: nn.Module, dummy_input: Any, *, runs: int = 50, warmup: int = 10, device: str | torch.device | None = None
) -> LatencyStats:
    """Median (and p90, min) wall time of ``runs`` forward passes after ``warmup`` passes.

    On CUDA every pass is synchronised, so the figure is the kernel time, not the launch time.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    inputs = _to(dummy_input, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                _call(model, inputs)
            sync()
            for _ in range(runs):
                start = time.perf_counter()
                _call(model, inputs)
                sync()
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    times.sort()
    return LatencyStats(
        median_ms=statistics.median(times),
        p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
        min_ms=times[0],
        runs=runs,
        device=str(dev),
    )


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(_to(v, device) for v in x)
    return x


@dataclass(frozen=True)
class ModelCost:
    params: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2


def model_cost(model: nn.Module, dummy_input: Any) -> ModelCost:
    return ModelCost(params=count_params(model), flops=count_flops(model, dummy_input))
