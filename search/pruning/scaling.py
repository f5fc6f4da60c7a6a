"""Scaling: shrink a target-sized tensor to one value per block, and expand it back.

A kernel gives the block size per axis; ``-1`` means the whole axis is one block. A kernel
shorter than the tensor applies to its last axes (``'front'`` padding: the leading axes get block
size 1). Axes that a block does not divide are padded, so edge blocks are smaller; the
allocator counts elements per block so ratios stay exact.

Example:
    >>> import torch
    >>> s = Scaling([1, -1])                    # one value per row
    >>> s.shrink(torch.ones(3, 4)).flatten().tolist()
    [4.0, 4.0, 4.0]
    >>> s.expand(torch.tensor([[1.], [0.], [1.]]), (3, 4)).sum().item()
    8.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Scaling"]


class Scaling:
    """Block-wise reduction (``shrink``) and broadcast (``expand``) of target-shaped tensors.

    Args:
        kernel_size: block size per axis (``-1``: the whole axis).
        kernel_padding_mode: ``'front'`` (pad the kernel with 1 in front) or ``'back'``.
    """

    def __init__(self, kernel_size: Sequence[int], kernel_padding_mode: str = "front") -> None:
        if kernel_padding_mode not in ("front", "back"):
            raise ValueError(f"kernel_padding_mode must be 'front' or 'back', got {kernel_padding_mode!r}")
        if any(k == 0 or k < -1 for k in kernel_size):
            raise ValueError(f"kernel sizes must be positive or -1, got {list(kernel_size)}")
        self.kernel_size = list(kernel_size)
        self.kernel_padding_mode = kernel_padding_mode

    def __repr__(self) -> str:
        return f"Scaling({self.kernel_size})"

    def _kernel(self, shape: Sequence[int]) -> list[int]:
        k = list(self.kernel_size)
        if len(k) > len(shape):
            raise ValueError(f"kernel {k} has more axes than the tensor shape {tuple(shape)}")
        pad = [1] * (len(shape) - len(k))
        k = pad + k if self.kernel_padding_mode == "front" else k + pad
        return [n if b == -1 else min(b, n) for b, n in zip(k, shape, strict=True)]

    def shrunk_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for b, n in zip(self._kernel(shape), shape, strict=True))

    def block_counts(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """Elements per block (edge blocks of a padded axis are smaller), in the shrunk shape."""
        kernel = self._kernel(shape)
        shrunk = self.shrunk_shape(shape)
        if all(n % b == 0 for b, n in zip(kernel, shape, strict=True)):
            return torch.full(shrunk, float(math.prod(kernel)), device=device)
        return self.shrink(torch.ones(tuple(shape), device=device), "sum")

    def whole_axes(self, shape: Sequence[int]) -> list[int] | None:
        """The reduced axes when every block spans whole axes (or single positions); else None."""
        kernel = self._kernel(shape)
        if not all(b in (1, n) for b, n in zip(kernel, shape, strict=True)):
            return None
        axes = [i for i, (b, n) in enumerate(zip(kernel, shape, strict=True)) if b == n and n != 1]
        return axes or None

    def is_identity(self, shape: Sequence[int]) -> bool:
        return all(b == 1 for b in self._kernel(shape))

    def shrink(self, tensor: Tensor, reduce: str = "sum") -> Tensor:
        """One value per block (``sum``, ``mean``, ``max``, ``min``); keeps the number of axes."""
        kernel = self._kernel(tensor.shape)
        if all(b == 1 for b in kernel):
            return tensor
        if all(b in (1, n) for b, n in zip(kernel, tensor.shape, strict=True)):
            dims = [i for i, (b, n) in enumerate(zip(kernel, tensor.shape, strict=True)) if b == n and n != 1]
            return _reduce(tensor, dims, reduce)
        if reduce == "mean" and any(n % b for b, n in zip(kernel, tensor.shape, strict=True)):
            # Edge blocks are smaller: divide by their true element counts.
            return self.shrink(tensor, "sum") / self.shrink(torch.ones_like(tensor), "sum")
        padded = _pad_to_multiple(tensor, kernel, reduce)
        blocked_shape: list[int] = []
        for b, n in zip(kernel, padded.shape, strict=True):
            blocked_shape += [n // b, b]
        blocked = padded.reshape(blocked_shape)
        out = _reduce(blocked, list(range(1, blocked.dim(), 2)), reduce)
        return out.reshape([n // b for b, n in zip(kernel, padded.shape, strict=True)])

    def expand(self, tensor: Tensor, target_shape: Sequence[int]) -> Tensor:
        """Broadcast one value per block back to ``target_shape``."""
        kernel = self._kernel(target_shape)
        if tuple(tensor.shape) == tuple(target_shape):
            return tensor
        if all(b in (1, n) for b, n in zip(kernel, target_shape, strict=True)):
            return tensor.expand(*target_shape).contiguous()
        out = tensor
        for axis, b in enumerate(kernel):
            if b > 1:
                out = out.repeat_interleave(b, dim=axis)
        slices = tuple(slice(0, n) for n in target_shape)
        return out[slices].contiguous()


def _reduce(tensor: Tensor, dims: list[int], reduce: str) -> Tensor:
    if not dims:
        return tensor
    if reduce == "sum":
        return tensor.sum(dim=dims, keepdim=True)
    if reduce == "mean":
        return tensor.mean(dim=dims, keepdim=True)
    if reduce == "max":
        return tensor.amax(dim=dims, keepdim=True)
    if reduce == "min":
        return tensor.amin(dim=dims, keepdim=True)
    raise ValueError(f"reduce must be one of sum, mean, max, min; got {reduce!r}")


def _pad_to_multiple(tensor: Tensor, kernel: list[int], reduce: str) -> Tensor:
    pads = [(-n) % b for b, n in zip(kernel, tensor.shape, strict=True)]
    if not any(pads):
        return tensor
    fill = {"sum": 0.0, "mean": 0.0, "max": -math.inf, "min": math.inf}[reduce]
    out = torch.full([n + p for n, p in zip(tensor.shape, pads, strict=True)], fill, dtype=tensor.dtype, device=tensor.device)
    out[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return out
