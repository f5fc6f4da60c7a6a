"""Export a (compact) model to ONNX or to a ``.pt2`` ExportedProgram, and check the result.

ONNX export uses the ``torch.export``-based ("dynamo") exporter. It handles every model in
:mod:`search.zoo` and :mod:`search.zoo.patterns` (residual adds, concatenations, channel
shuffles, ``scaled_dot_product_attention``, Python control flow on sizes...) with outputs within
1e-6 of torch, it is torch's default since 2.9, and the TorchScript exporter it replaces emits a
``DeprecationWarning`` and is scheduled for removal. It is slower (about 0.5 s for a small model
against 0.05 s), so the TorchScript exporter is kept only as a fallback for models
``torch.export`` cannot capture (data-dependent control flow, say); pass ``fallback=False`` to
get the dynamo error instead.

Every export runs the model in eval mode (the mode is restored afterwards), as deployment does;
:func:`check_onnx` compares against the model in eval mode too.

Example:
    >>> import tempfile, torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> x = torch.randn(1, 3, 8, 8)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = export_onnx(model, x, f"{tmp}/model.onnx")
    ...     check_onnx(path, model, x) < 1e-4
    True
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from search.metrics import split_inputs

__all__ = ["check_onnx", "export_onnx", "export_pt2", "load_pt2"]

logger = logging.getLogger(__name__)




@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _flat_tensors(tree: Any) -> list[Tensor]:
    found: list[Tensor] = []
    torch.fx.node.map_aggregate(tree, lambda x: found.append(x) if isinstance(x, Tensor) else None)
    return found


def export_onnx(
    model: nn.Module,
    dummy_input: Any,
    path: str | Path,
    opset: int | None = None,
    *,
    fallback: bool = True,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` to an ONNX file with the ``torch.export``-based exporter.

    Weights are stored in the file itself (a separate ``.data`` file only past ONNX's 2 GB
    limit). Axis 0 of every positional tensor input is a dynamic batch (``dynamic_batch``); other
    axes are static, as in ``dummy_input``. A model that pins its batch size, keyword or dict
    inputs, and the legacy exporter's fallback give a static graph.

    Args:
        model: The model (exported in eval mode; its mode is restored).
        dummy_input: A tensor, a tuple of positional inputs, or a dict of keyword inputs.
        path: Destination file; parent directories are created.
        opset: ONNX opset version; ``None`` lets the exporter choose (18 or newer).
        fallback: If the dynamo exporter fails, retry with the legacy TorchScript exporter
            (logged as a warning) instead of raising.
        dynamic_batch: Export with a dynamic batch axis (falls back to static shapes, with a
            warning, if the model pins it).

    Returns:
        The path written.

    Raises:
        Exception: Whatever the exporter raises (the dynamo exporter's error when ``fallback``
            is false, the TorchScript exporter's otherwise).

    Example:
        >>> import tempfile, torch
        >>> model = torch.nn.Linear(4, 2)
        >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +SKIP
        ...     export_onnx(model, torch.randn(1, 4), f"{tmp}/linear.onnx").name
        'linear.onnx'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args, kwargs = split_inputs(dummy_input)
    if args and isinstance(args[-1], dict):  # torch.onnx.export reads a trailing dict as keyword inputs
        args = (*args, {})
    with _eval_mode(model):
        try:
            program = None
            if dynamic_batch and not any(isinstance(a, dict) for a in args):
                grown, shapes = _batch_dynamic(args, kwargs)
                try:  # verbose=False: no progress lines on stdout
                    program = torch.onnx.export(model, grown, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                                verbose=False, dynamic_shapes=shapes)
                except Exception as exc:  # the model specialises the batch size somewhere
                    logger.warning("ONNX export with a dynamic batch failed (%s); exporting static shapes",
                                   type(exc).__name__)
            if program is None:
                program = torch.onnx.export(
                    model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset, verbose=False
                )
            assert program is not None
            program.save(str(path))
        except Exception as exc:
            if not fallback:
                raise
            logger.warning(
                "dynamo ONNX export failed (%s: %s); retrying with the TorchScript exporter", type(exc).__name__, exc
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is deprecated: we know
                torch.onnx.export(
                    model, args, str(path), kwargs=kwargs or None, dynamo=False, opset_version=opset or 17
                )
    return path


def check_onnx(path: str | Path, model: nn.Module, dummy_input: Any, atol: float = 1e-4) -> float:
    """Run an ONNX file with onnxruntime (CPU) and compare its outputs with ``model``'s.

    The tolerance scales with the outputs like :class:`~search.speedup.ModelSpeedup`'s: an
    output may differ by ``atol * max(1, max |torch output|)``.

    Args:
        path: The ONNX file (from :func:`export_onnx`).
        model: The torch model it was exported from (run in eval mode; its mode is restored).
        dummy_input: Inputs as for :func:`export_onnx` (tensors only reach the ONNX graph).
        atol: Allowed max absolute difference (relative to the output scale above 1).

    Returns:
        The largest absolute difference over all outputs.

    Raises:
        ValueError: If the number, shapes or values of the outputs differ (beyond tolerance);
            the message lists each output's shape and difference.

    Example:
        >>> import tempfile, torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
        >>> x = torch.randn(3, 4)
        >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +SKIP
        ...     diff = check_onnx(export_onnx(model, x, f"{tmp}/mlp.onnx"), model, x)
        >>> diff < 1e-5  # doctest: +SKIP
        True
    """
    import numpy as np
    import onnxruntime as ort

    args, kwargs = split_inputs(dummy_input)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph_inputs = session.get_inputs()
    names = [i.name for i in graph_inputs]
    if kwargs and set(names) <= set(kwargs):
        feed_tensors = [kwargs[n] for n in names]
    else:
        feed_tensors = _flat_tensors((args, kwargs))
        if len(feed_tensors) != len(names):
            raise ValueError(f"{path}: the ONNX graph takes {len(names)} inputs {names}, got {len(feed_tensors)} tensors")
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, feed_tensors, strict=True)}
    outputs = session.run(None, feed)
    with _eval_mode(model), torch.no_grad():
        reference = _flat_tensors(model(*args, **kwargs))
    if len(outputs) != len(reference):
        raise ValueError(f"{path}: onnxruntime returned {len(outputs)} outputs, torch {len(reference)}")
    worst = 0.0
    problems = []
    lines = []
    for k, (ref, out) in enumerate(zip(reference, outputs, strict=True)):
        r = ref.detach().cpu().numpy()
        o = np.asarray(out)
        if r.shape != o.shape:
            problems.append(k)
            lines.append(f"output {k}: shape {o.shape} from onnxruntime, {r.shape} from torch")
            continue
        if r.size == 0:
            continue
        diff = float(np.abs(r.astype(np.float64) - o.astype(np.float64)).max())
        scale = float(np.abs(r).max()) if np.issubdtype(r.dtype, np.number) else 1.0
        tol = atol * max(1.0, scale)
        worst = max(worst, diff)
        lines.append(f"output {k}: shape {r.shape}, max |diff| {diff:.3e}, tolerance {tol:.3e}")
        if not diff <= tol:
            problems.append(k)
    if problems:
        raise ValueError(f"{path}: onnxruntime and torch disagree on output(s) {problems}:\n" + "\n".join(lines))
    return worst


def _batch_dynamic(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], Any]:
    """Positional inputs to trace with and ``dynamic_shapes`` making axis 0 of every tensor a batch.

    ``torch.export`` specialises axes of size 1, so a batch of 1 is traced as a batch of 2 (the
    same sample twice). With keyword inputs no dynamic shapes are given (static export).
    """
    if kwargs:
        return args, None
    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)
    grown = tuple(a.expand(2, *a.shape[1:]).contiguous() if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == 1
                  else a for a in args)
    return grown, shapes


def export_pt2(model: nn.Module, dummy_input: Any, path: str | Path, *, dynamic_batch: bool = True) -> Path:
    """Capture ``model`` with ``torch.export.export`` and save the ExportedProgram (``.pt2``).

    Args:
        model: The model (exported in eval mode; its mode is restored).
        dummy_input: A tensor, a tuple of positional inputs, or a dict of keyword inputs.
        path: Destination file (conventionally ``*.pt2``); parent directories are created.
        dynamic_batch: make axis 0 of every tensor input dynamic, so the program accepts any
            batch size (falls back to static shapes, with a warning, if the model pins it).

    Returns:
        The path written.

    Example:
        >>> import tempfile, torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> x = torch.randn(1, 3, 8, 8)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     program = load_pt2(export_pt2(model, x, f"{tmp}/model.pt2"))
        ...     torch.allclose(program.module()(x), model(x))
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args, kwargs = split_inputs(dummy_input)
    with _eval_mode(model):
        program = None
        if dynamic_batch:
            grown, shapes = _batch_dynamic(args, kwargs)
            try:
                program = torch.export.export(model, grown, kwargs=kwargs or None, dynamic_shapes=shapes)
            except Exception as exc:  # the model specialises the batch size somewhere
                logger.warning("export with a dynamic batch failed (%s); exporting static shapes", type(exc).__name__)
        if program is None:
            program = torch.export.export(model, args, kwargs=kwargs or None)
    torch.export.save(program, str(path))
    return path


def load_pt2(path: str | Path) -> torch.export.ExportedProgram:
    """Load an ExportedProgram saved by :func:`export_pt2`; call it with ``.module()(inputs)``.

    Example:
        >>> import tempfile, torch
        >>> model = torch.nn.Linear(4, 2)
        >>> x = torch.randn(2, 4)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     program = load_pt2(export_pt2(model, x, f"{tmp}/linear.pt2"))
        >>> program.module()(x).shape
        torch.Size([2, 2])
    """
    return torch.export.load(str(path))
