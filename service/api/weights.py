"""Checking an uploaded safetensors file without trusting it (and without unpickling anything).

:func:`read_header` parses the format by hand: an 8-byte little-endian header length, a JSON
header ``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}``, then the data; every
tensor's byte range must lie inside the file and match its dtype and shape.
:func:`check_against_architecture` builds the catalog model on PyTorch's ``meta`` device (no memory
is allocated) and compares its ``state_dict`` names and shapes with the file's tensors.

Example:
    >>> import json, struct, io
    >>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    >>> blob = struct.pack("<Q", len(header)) + header + bytes(8)
    >>> read_header(io.BytesIO(blob), len(blob))
    {'w': ('F32', (2,))}
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, BinaryIO

__all__ = ["WeightsError", "check_against_architecture", "read_header"]

#: bytes per element of each safetensors dtype
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_FLOAT = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class WeightsError(ValueError):
    """A problem with the uploaded weights; ``tensor`` names the tensor when there is one."""

    def __init__(self, message: str, tensor: str | None = None) -> None:
        self.tensor = tensor
        self.message = message
        super().__init__(f"{tensor}: {message}" if tensor else message)


def read_header(fh: BinaryIO, size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor: (dtype, shape)}`` of a safetensors file, after checking its structure.

    Raises:
        WeightsError: the bytes are not a well-formed safetensors file.
    """
    if size < 8:
        raise WeightsError(f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
    fh.seek(0)
    (n,) = struct.unpack("<Q", fh.read(8))
    if n == 0 or n > min(MAX_HEADER_BYTES, size - 8):
        raise WeightsError(f"not a safetensors file: header length {n} does not fit the file ({size} bytes)")
    raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"not a safetensors file: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise WeightsError("not a safetensors file: the header is not a JSON object")
    data_size = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise WeightsError("header entry must have exactly dtype, shape and data_offsets", name)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise WeightsError(f"unknown dtype {dtype!r}", name)
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise WeightsError(f"shape must be a list of non-negative ints, got {shape!r}", name)
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise WeightsError(f"data_offsets {offsets!r} outside the data section ({data_size} bytes)", name)
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise WeightsError(f"data_offsets {offsets!r} do not hold a {dtype} tensor of shape {shape}", name)
        spans.append((offsets[0], offsets[1], name))
        out[name] = (dtype, tuple(shape))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise WeightsError(f"its data overlaps tensor {first!r}", second)
    return out


def check_against_architecture(tensors: dict[str, tuple[str, tuple[int, ...]]], factory: Any,
                               kwargs: dict[str, Any]) -> int:
    """Check the tensors fit ``factory(**kwargs)``'s ``state_dict`` exactly; return the parameter count.

    Raises:
        WeightsError: a missing, unexpected or mis-shaped tensor (named), or a float/int mismatch.
        TypeError, ValueError: the factory rejects ``kwargs`` (the caller locates these at ``kwargs``).
    """
    import torch  # noqa: PLC0415

    with torch.device("meta"):
        model = factory(**kwargs)
    state = model.state_dict()
    for name, tensor in state.items():
        if name not in tensors:
            raise WeightsError(f"missing: the architecture has a {list(tensor.shape)} tensor here", name)
        dtype, shape = tensors[name]
        if tuple(tensor.shape) != shape:
            raise WeightsError(f"shape {list(shape)} does not match the architecture's {list(tensor.shape)}", name)
        if tensor.dtype.is_floating_point != (dtype in _FLOAT):
            raise WeightsError(f"dtype {dtype} does not fit the architecture's {tensor.dtype}", name)
    extra = sorted(set(tensors) - set(state))
    if extra:
        raise WeightsError("unexpected: the architecture has no such tensor", extra[0])
    return sum(p.numel() for p in model.parameters())
