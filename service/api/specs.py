"""Validating a submitted experiment spec into FastAPI-shaped 422 errors located at the field.

A :class:`~workers.spec.SpecError` path such as ``pruner.config_list[0].sparse_ratio`` becomes the
location ``["body", "spec", "pruner", "config_list", 0, "sparse_ratio"]``. On top of the library's
checks the server enforces what is only a concern when strangers send specs:

* ``model.factory`` must be a catalog model (``search.zoo:<name>`` or ``<name>``): an arbitrary
  ``module:function`` would let a request run any code the server can import;
* ``model.weights`` must be ``null`` or the ``weights`` reference of an upload (``POST /models``),
  never a path on the server's disk;
* the model must be of a sane size (counted on the ``meta`` device, so nothing is allocated);
* strings must not contain NUL characters (PostgreSQL cannot store them) and ``name`` fits its column.

Example:
    >>> spec_loc("pruner.config_list[0].sparse_ratio")
    ['body', 'spec', 'pruner', 'config_list', 0, 'sparse_ratio']
    >>> spec_loc("")
    ['body', 'spec']
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

from service.api.catalog import catalog_factory

__all__ = ["MAX_MODEL_PARAMS", "SpecRejected", "check_spec", "spec_loc"]

logger = logging.getLogger(__name__)

#: Largest model (in parameters) a request may ask the server to build (VGG-16 has 138M).
MAX_MODEL_PARAMS = 300_000_000
_MAX_DEPTH = 32
_NAME_MAX = 200
_TOKEN = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


class SpecRejected(ValueError):
    """A spec problem at ``loc`` (FastAPI error location) with a message."""

    def __init__(self, loc: list[Any], msg: str, type_: str = "spec_error") -> None:
        self.loc = loc
        self.msg = msg
        self.type = type_
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")

    def to_error(self, spec: Any = None) -> dict[str, Any]:
        return {"type": self.type, "loc": self.loc, "msg": self.msg, "input": None}


def spec_loc(path: str) -> list[Any]:
    """A spec path (``a.b[0].c``) as a FastAPI error location under ``body.spec``."""
    parts: list[Any] = ["body", "spec"]
    for match in _TOKEN.finditer(path or ""):
        index, key = match.groups()
        parts.append(int(index) if index is not None else key)
    return parts


def _walk(value: Any, path: list[Any], depth: int = 0) -> None:
    """Reject NUL characters and absurd nesting anywhere in the spec."""
    if depth > _MAX_DEPTH:
        raise SpecRejected(["body", "spec", *path], f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise SpecRejected(["body", "spec", *path], "must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise SpecRejected(["body", "spec", *path], "keys must not contain NUL characters")
            _walk(item, [*path, key], depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, [*path, i], depth + 1)


def _count_params_on_meta(factory: Callable[..., Any], kwargs: dict[str, Any]) -> int | None:
    import torch  # noqa: PLC0415

    try:
        with torch.device("meta"):
            model = factory(**kwargs)
    except Exception:  # the real build in validate() reports kwargs problems with their path
        return None
    return sum(p.numel() for p in model.parameters())


def check_spec(
    data: dict[str, Any],
    *,
    resolve_weights: Callable[[str], str | None],
    max_trials: int | None = None,
) -> Any:
    """Validate ``data`` fully; return the :class:`~workers.spec.ExperimentSpec` to store.

    Args:
        data: the submitted spec.
        resolve_weights: maps an upload reference (``models/3.safetensors``) to its absolute path,
            ``None`` if there is no such upload.
        max_trials: optional cap overriding ``algorithm.max_trials``.

    Raises:
        SpecRejected: located at the offending field.
    """
    from search.zoo import model_entry  # noqa: PLC0415
    from workers.spec import ExperimentSpec, ModelSpec, SpecError  # noqa: PLC0415

    _walk(data, [])
    try:
        spec = ExperimentSpec.from_dict(data, check=False)
    except SpecError as exc:
        raise SpecRejected(spec_loc(exc.path), exc.message) from None
    if len(spec.name) > _NAME_MAX:
        raise SpecRejected(spec_loc("name"), f"must be at most {_NAME_MAX} characters, got {len(spec.name)}")
    zoo_name = catalog_factory(spec.model.factory)
    if zoo_name is None:
        raise SpecRejected(spec_loc("model.factory"),
                           f"must be a catalog model ('search.zoo:<name>', see GET /api/v1/catalog), got {spec.model.factory!r}")
    weights = spec.model.weights
    if weights is not None:
        resolved = resolve_weights(weights)
        if resolved is None:
            raise SpecRejected(spec_loc("model.weights"),
                               f"must be null or the 'weights' reference of an upload (POST /api/v1/models), got {weights!r}")
        weights = resolved
    model = ModelSpec(f"search.zoo:{zoo_name}", spec.model.kwargs, weights, spec.model.input_shape)
    spec = ExperimentSpec(**{**spec.__dict__, "model": model})
    n_params = _count_params_on_meta(model_entry(zoo_name).factory, dict(spec.model.kwargs))
    if n_params is not None and n_params > MAX_MODEL_PARAMS:
        raise SpecRejected(spec_loc("model.kwargs"),
                           f"the model would have {n_params:,} parameters; this server builds at most {MAX_MODEL_PARAMS:,}")
    try:
        if max_trials is not None:
            spec = spec.with_max_trials(max_trials)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            spec.validate()
    except SpecError as exc:
        raise SpecRejected(spec_loc(exc.path), exc.message) from None
    except Exception as exc:  # a factory or generator that fails in a way the library did not foresee
        logger.info("spec validation failed unexpectedly: %r", exc)
        raise SpecRejected(spec_loc(""), f"does not validate: {type(exc).__name__}: {exc}") from None
    return spec
