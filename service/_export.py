"""Export the best trial's compact model to the downloadable formats.

:func:`export_best` copies a trial's ``compact/`` folder (``compact.json`` + ``model.safetensors``
+ ``masks.safetensors``, written by :func:`workers.trial.run_trial`) to the experiment's
``best/`` folder and adds ``model.pt2`` (``torch.export``, loaded with ``torch.export.load``),
``model.onnx`` and ``result.json``. The folder is built next to its destination and swapped in,
so a crash mid-export leaves either the previous ``best/`` or none (the runner exports again).

An export that fails is reported in :attr:`BestExport.failures` and never raised: the
safetensors compact model is the result; ``.pt2`` and ONNX are conveniences.

It calls the same public functions :func:`workers.local.run_search` uses
(:func:`search.speedup.load_compact_model`, :func:`search.speedup.export.export_pt2`,
:func:`search.speedup.export.export_onnx`).

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from search.speedup import SpeedupPlan, save_compact_model
    >>> tmp = Path(tempfile.mkdtemp())
    >>> _ = save_compact_model(tmp / "trial" / "compact", torch.nn.Linear(4, 2), SpeedupPlan(),
    ...                        factory="torch.nn:Linear", factory_kwargs={"in_features": 4, "out_features": 2}, masks={})
    >>> out = export_best(tmp / "trial" / "compact", tmp / "best", torch.zeros(1, 4), formats=("pt2",))
    >>> sorted(out.files), out.failures
    (['compact', 'masks', 'pt2', 'result', 'safetensors'], {})
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BestExport", "EXPORT_FILES", "FORMATS", "export_best", "export_trial"]

logger = logging.getLogger(__name__)

#: Formats that are *exported* (the safetensors files are copied as they are).
FORMATS = ("pt2", "onnx")
#: Artifact kind -> file name inside ``best/``.
EXPORT_FILES = {
    "pt2": "model.pt2",
    "onnx": "model.onnx",
    "safetensors": "model.safetensors",
    "masks": "masks.safetensors",
    "compact": "compact.json",
    "result": "result.json",
}


@dataclass
class BestExport:
    """What :func:`export_best` wrote.

    Attributes:
        best_dir: the ``best/`` folder.
        files: artifact kind -> file (see :data:`EXPORT_FILES`), only files that exist.
        failures: format -> ``"ExceptionType: message"`` for each export that failed.
    """

    best_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """torch's exporters warn about things that do not concern a finished search (torchvision missing...)."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _swap_in(built: Path, dest: Path) -> None:
    """Replace ``dest`` (a folder, maybe missing) with ``built`` (a sibling folder)."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(built, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_best(
    compact_dir: str | os.PathLike[str],
    best_dir: str | os.PathLike[str],
    dummy_input: Any,
    *,
    formats: Sequence[str] = FORMATS,
    result: Mapping[str, Any] | None = None,
) -> BestExport:
    """Build ``best_dir`` from a trial's compact model folder (see the module docstring).

    Args:
        compact_dir: the trial's ``compact/`` folder.
        best_dir: the destination (replaced if it exists).
        dummy_input: an input the model accepts (traced by the exporters).
        formats: any of ``pt2``, ``onnx``.
        result: written to ``result.json`` (the best trial's result).

    Raises:
        ValueError: an unknown format.
        OSError / ValueError: the compact folder is missing or unreadable (nothing to export).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"formats: unknown format {unknown[0]!r}; valid: {', '.join(FORMATS)}")
    from search.speedup import load_compact_model  # noqa: PLC0415 (torch only where exports happen)
    from search.speedup.export import export_onnx, export_pt2  # noqa: PLC0415

    source, dest = Path(compact_dir), Path(best_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.building-"))
    try:
        shutil.copytree(source, building, dirs_exist_ok=True)
        (building / EXPORT_FILES["result"]).write_text(json.dumps(dict(result or {}), indent=1, default=str))
        model = load_compact_model(building).eval()
        failures: dict[str, str] = {}
        exporters: dict[str, Callable[..., Any]] = {"pt2": export_pt2, "onnx": export_onnx}
        for fmt in formats:
            try:
                with _quiet_exporters():
                    exporters[fmt](model, dummy_input, building / EXPORT_FILES[fmt])
            except Exception as exc:  # a convenience format; the safetensors model is the result
                logger.warning("could not export the best model to %s: %s: %s", fmt, type(exc).__name__, exc)
                failures[fmt] = f"{type(exc).__name__}: {exc}"
                (building / EXPORT_FILES[fmt]).unlink(missing_ok=True)
        _swap_in(building, dest)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    files = {kind: dest / name for kind, name in EXPORT_FILES.items() if (dest / name).is_file()}
    return BestExport(dest, files, failures)


def export_trial(
    trial_dir: str | os.PathLike[str],
    best_dir: str | os.PathLike[str],
    dummy_input: Any,
    *,
    formats: Sequence[str] = FORMATS,
    fallback_result: Mapping[str, Any] | None = None,
) -> BestExport:
    """:func:`export_best` from a trial's artifact folder: its ``compact/`` and its ``result.json``
    (``fallback_result`` when the worker left none)."""
    folder = Path(trial_dir)
    try:
        result = dict(json.loads((folder / "result.json").read_text()))
    except (OSError, ValueError):
        result = dict(fallback_result or {})
    return export_best(folder / "compact", best_dir, dummy_input, formats=formats, result=result)
