"""``GET /catalog``: what a spec may name, built from the library's registries (imports torch once)."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from service.schemas import Catalog, CatalogEntry, CatalogParam, ExportFormat

__all__ = ["build_catalog", "catalog_factory", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["catalog"])

#: Constructor arguments the trial supplies to a pruner (a spec cannot set them).
_PRUNER_SUPPLIED = ("self", "model", "config_list", "evaluator")


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _params(fn: Callable[..., Any], skip: tuple[str, ...] = ("self",)) -> list[CatalogParam]:
    """Keyword parameters of ``fn`` (a class: along its MRO while ``**kwargs`` forwards)."""
    targets = [k.__dict__["__init__"] for k in fn.__mro__ if "__init__" in k.__dict__] if isinstance(fn, type) else [fn]
    out: dict[str, CatalogParam] = {}
    for target in targets:
        params = inspect.signature(target).parameters
        for name, p in params.items():
            if name in skip or name in out or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            required = p.default is p.empty
            out[name] = CatalogParam(name=name, required=required, default=None if required else _jsonable(p.default))
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return list(out.values())


def catalog_factory(factory: str) -> str | None:
    """The zoo name of a catalog model given as ``name`` or ``search.zoo:name``; ``None`` if it is not one.

    Only these may be built by the server from a request (an arbitrary ``module:function`` would run
    any code the server can import).

    Example:
        >>> catalog_factory("search.zoo:digits_cnn"), catalog_factory("digits_cnn"), catalog_factory("os:system")
        ('digits_cnn', 'digits_cnn', None)
    """
    from search.zoo import list_models  # noqa: PLC0415

    if not isinstance(factory, str):
        return None
    module, sep, name = factory.partition(":")
    if not sep:
        module, name = "search.zoo", factory
    if module != "search.zoo" or name not in list_models():
        return None
    return name


@functools.lru_cache(maxsize=1)
def build_catalog() -> Catalog:
    """The catalog (cached: the registries do not change while the server runs)."""
    from search.algorithms.registry import (  # noqa: PLC0415  # noqa: PLC0415
        _ALIASES,
        CONTEXT_PARAMS,
        AlgorithmError,
        algorithm_entry,
        list_algorithms,
    )
    from search.pruning.registry import _LAZY, PRUNERS, get_pruner_class  # noqa: PLC0415
    from search.zoo import dataset_entry, list_datasets, list_models, model_entry  # noqa: PLC0415
    from workers.spec import BEST_RESULT_MODES, OBJECTIVE_METRICS, OPTIMIZERS  # noqa: PLC0415

    models = []
    for name in list_models():
        entry = model_entry(name)
        models.append(CatalogEntry(name=name, factory=f"search.zoo:{name}", description=entry.description,
                                   params=_params(entry.factory)))
    datasets = []
    for name in list_datasets():
        data_entry = dataset_entry(name)
        datasets.append(CatalogEntry(name=name, description=data_entry.description, params=_params(data_entry.loader)))
    pruners = []
    for name in sorted(set(PRUNERS) | set(_LAZY)):
        try:
            cls = get_pruner_class(name)
        except Exception as exc:  # an optional module that does not import: listed, marked unavailable
            pruners.append(CatalogEntry(name=name, available=False, error=str(exc)))
            continue
        pruners.append(CatalogEntry(name=name, description=_first_line(cls), params=_params(cls, _PRUNER_SUPPLIED)))
    algorithms = []
    for name in list_algorithms():
        algo = algorithm_entry(name)
        aliases = sorted(a for a, target in _ALIASES.items() if target == name)
        try:
            params = [p for p in _params(algo.load()) if p.name not in CONTEXT_PARAMS]
        except AlgorithmError as exc:
            algorithms.append(CatalogEntry(name=name, description=algo.description, aliases=aliases,
                                           available=False, error=exc.message))
            continue
        algorithms.append(CatalogEntry(name=name, description=algo.description, aliases=aliases, params=params))
    return Catalog(
        models=models, datasets=datasets, pruners=pruners, algorithms=algorithms,
        objective_metrics=list(OBJECTIVE_METRICS), best_result_modes=list(BEST_RESULT_MODES),
        optimizers=list(OPTIMIZERS), export_formats=[f.value for f in ExportFormat],
    )


@router.get("/catalog", operation_id="getCatalog", response_model=Catalog)
def get_catalog() -> Catalog:
    """Models, data sets, pruners and algorithms a spec may name, with their parameters."""
    return build_catalog()
