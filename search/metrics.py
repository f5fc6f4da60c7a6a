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
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops", "count_macs", "measure_latency", "LatencyStats", "ModelCost", "model_cost"]


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


def count_flops(model: nn.Module, dummy_input: Any) -> int:
    """FLOPs of one forward pass on ``dummy_input`` (2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        _call(model, dummy_input)
    return int(counter.get_total_flops())


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
