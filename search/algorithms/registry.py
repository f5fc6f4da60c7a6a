"""Search algorithms by name: the registry specs, the CLI and the service resolve through.

Each entry names its :class:`~search.scheduling.TaskGenerator` by dotted path and is imported
only when used, so an algorithm whose module is missing (or needs an optional package, such as
Optuna) fails only when someone asks for it.

:func:`create_task_generator` maps a spec's parameters onto the generator's constructor: the
context every search has (origin model, config list, best_result_mode, constraints, seed, a dummy
input) is passed when the constructor takes it, and the user's parameters are checked against the
constructor's signature, so a typo is an error that lists the valid parameters.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> gen = create_task_generator("agp", {"total_iteration": 3}, origin_model=model,
    ...                             config_list=[{"op_names": ["0"], "sparse_ratio": 0.5}])
    >>> type(gen).__name__, gen.max_trials
    ('AGPTaskGenerator', 3)
    >>> try:
    ...     create_task_generator("agp", {"total_iteraton": 3}, origin_model=model, config_list=[])
    ... except AlgorithmError as err:
    ...     print(err.param, '|', err)
    total_iteraton | total_iteraton: unknown parameter for 'agp' (did you mean 'total_iteration'?); valid: ...
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from search.scheduling import TaskGenerator

__all__ = [
    "ALGORITHMS",
    "AlgorithmEntry",
    "AlgorithmError",
    "algorithm_entry",
    "algorithm_params",
    "create_task_generator",
    "get_generator_class",
    "list_algorithms",
    "register_algorithm",
]

#: Constructor arguments the search supplies itself (users may not set them in a spec).
CONTEXT_PARAMS = ("origin_model", "origin_masks", "origin_config_list", "config_list", "log_dir",
                  "keep_intermediate_result", "best_result_mode", "constraints", "dummy_input")


class AlgorithmError(ValueError):
    """A bad algorithm name or parameter; ``param`` is the parameter (``None``: the name)."""

    def __init__(self, param: str | None, message: str) -> None:
        self.param = param
        self.message = message
        super().__init__(f"{param}: {message}" if param else message)


@dataclass(frozen=True)
class AlgorithmEntry:
    """A registered algorithm.

    Attributes:
        name: registry key.
        target: ``'package.module:ClassName'`` of the TaskGenerator.
        description: one line for catalogs.
        reset_weight: every trial rewinds to the origin weights (keeping its parent's masks)
            before pruning, as LotteryTicket does.
        task_pruners: ``task_pruners(pruner_name) -> {name: kwargs}``: defaults for the pruners that
            tasks ask for by name through ``task.params['pruner']`` (AutoCompress's ``'admm'``).
        chooses_ratios: the algorithm picks every layer's ratio itself (AMC, Optuna), so a config
            list may select layers with bounds only (no ``sparse_ratio``).
    """

    name: str
    target: str
    description: str = ""
    reset_weight: bool = False
    task_pruners: Callable[[str], dict[str, dict[str, Any]]] | None = None
    chooses_ratios: bool = False

    def config_for_validation(self, config_list: Sequence[Mapping[str, Any]]) -> list[Any]:
        """``config_list`` as a pruner validator should see it: placeholders where the algorithm picks the ratio.

        Example:
            >>> algorithm_entry('optuna').config_for_validation([{'op_types': ['Conv2d']}])
            [{'op_types': ['Conv2d'], 'sparse_ratio': 0.0}]
        """
        if not self.chooses_ratios:
            return list(config_list)
        from search.algorithms._budget import with_placeholder_ratios  # noqa: PLC0415

        return with_placeholder_ratios(config_list)

    def load(self) -> type[TaskGenerator]:
        module_name, _, class_name = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise AlgorithmError(None, f"algorithm {self.name!r} is not available: cannot import {module_name} ({exc})") from None
        cls = getattr(module, class_name, None)
        if cls is None:
            # Tolerate a renamed class: the one TaskGenerator subclass the module defines.
            found = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, TaskGenerator)
                     and c.__module__ == module_name and not c.__name__.startswith("_")]
            if len(found) != 1:
                names = ", ".join(sorted(c.__name__ for c in found)) or "none"
                raise AlgorithmError(None, f"algorithm {self.name!r}: {module_name} has no {class_name} (TaskGenerators there: {names})")
            cls = found[0]
        if not (isinstance(cls, type) and issubclass(cls, TaskGenerator)):
            raise AlgorithmError(None, f"algorithm {self.name!r}: {self.target} is not a TaskGenerator")
        return cls


ALGORITHMS: dict[str, AlgorithmEntry] = {}
_ALIASES: dict[str, str] = {}


def register_algorithm(name: str, target: str, description: str = "", *, aliases: tuple[str, ...] = (),
                       reset_weight: bool = False,
                       task_pruners: Callable[[str], dict[str, dict[str, Any]]] | None = None,
                       chooses_ratios: bool = False, overwrite: bool = False) -> None:
    """Register ``'package.module:ClassName'`` under ``name`` (and ``aliases``); see :class:`AlgorithmEntry`."""
    if not re.fullmatch(r"[\w.]+:[\w.]+", target):
        raise ValueError(f"target must look like 'package.module:ClassName', got {target!r}")
    if (name in ALGORITHMS or name in _ALIASES) and not overwrite:
        raise ValueError(f"an algorithm named {name!r} is registered already")
    ALGORITHMS[name] = AlgorithmEntry(name, target, description, reset_weight, task_pruners, chooses_ratios)
    for alias in aliases:
        _ALIASES[alias] = name


register_algorithm("linear", "search.algorithms.chain:LinearTaskGenerator", "ratios grow linearly over total_iteration steps")
register_algorithm("agp", "search.algorithms.chain:AGPTaskGenerator", "automated gradual pruning (cubic schedule)")
register_algorithm("lottery_ticket", "search.algorithms.chain:LotteryTicketTaskGenerator",
                   "iterative magnitude pruning with weight rewinding", aliases=("lottery", "lotteryticket"),
                   reset_weight=True)
register_algorithm("netadapt", "search.algorithms.netadapt:NetAdaptTaskGenerator",
                   "NetAdapt: prune the layer whose pruning costs least, step by step")
register_algorithm("simulated_annealing", "search.algorithms.annealing:SimulatedAnnealingTaskGenerator",
                   "simulated annealing over per-layer sparsities", aliases=("sa", "annealing"))
def _admm_defaults(pruner_name: str) -> dict[str, dict[str, Any]]:
    """ADMM prunes like the search's pruner: channels for a channel pruner, weights for ``level``."""
    from search.pruning.registry import get_pruner_class  # noqa: PLC0415

    element = getattr(get_pruner_class(pruner_name), "default_granularity", "") == "element"
    return {"admm": {"granularity": "fine-grained" if element else "coarse-grained"}}


register_algorithm("auto_compress", "search.algorithms.autocompress:AutoCompressTaskGenerator",
                   "AutoCompress: simulated annealing + ADMM", aliases=("autocompress",), task_pruners=_admm_defaults)
register_algorithm("amc", "search.algorithms.amc:AMCTaskGenerator", "AMC: a DDPG agent picks per-layer sparsities",
                   chooses_ratios=True)
register_algorithm("optuna", "search.algorithms.optuna_search:OptunaTaskGenerator", "Optuna (TPE) over per-layer sparsities",
                   chooses_ratios=True)


def list_algorithms() -> list[str]:
    """Registered names, sorted (whether or not their module imports)."""
    return sorted(ALGORITHMS)


def algorithm_entry(name: str) -> AlgorithmEntry:
    """The entry for ``name`` (or an alias); an unknown name lists the valid ones."""
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in ALGORITHMS:
        hint = difflib.get_close_matches(str(name), list(ALGORITHMS), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise AlgorithmError(None, f"unknown algorithm {name!r}{extra}; valid: {', '.join(list_algorithms())}")
    return ALGORITHMS[key]


def get_generator_class(name: str) -> type[TaskGenerator]:
    """Import and return the TaskGenerator class registered under ``name``."""
    return algorithm_entry(name).load()


def _signature_params(cls: type) -> tuple[dict[str, inspect.Parameter], list[str]]:
    """All keyword-passable constructor params along the MRO (while ``**kwargs`` forwards), and the required ones."""
    params: dict[str, inspect.Parameter] = {}
    required: list[str] = []
    first = True
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        sig = inspect.signature(init)
        forwards = False
        for p in list(sig.parameters.values())[1:]:
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.kind is not p.VAR_POSITIONAL and p.name not in params:
                params[p.name] = p
                if first and p.default is p.empty:
                    required.append(p.name)
        first = False
        if not forwards:
            break
    return params, required


def algorithm_params(name: str) -> dict[str, Any]:
    """``{param: default}`` a spec may set for ``name`` (required ones map to ``inspect.Parameter.empty``)."""
    params, _ = _signature_params(get_generator_class(name))
    return {k: p.default for k, p in params.items() if k not in CONTEXT_PARAMS}


_LEADING_PARAM = re.compile(r"^(\w+)(?::| must | should | is )\s*(.*)$", re.S)


def create_task_generator(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    origin_model: Any = None,
    config_list: list[dict[str, Any]] | None = None,
    best_result_mode: str = "maximize",
    constraints: Mapping[str, Any] | None = None,
    dummy_input: Any = None,
) -> TaskGenerator:
    """Build the generator ``name`` with the user's ``params`` and the search's context.

    The generator writes no logs of its own (``log_dir=None``): whoever drives it keeps the results.

    Raises:
        AlgorithmError: an unknown name, an unknown or missing parameter, or a value the
            generator rejects (``param`` names it when the message does).
    """
    cls = get_generator_class(name)
    accepted, required = _signature_params(cls)
    params = dict(params or {})
    valid = [k for k in accepted if k not in CONTEXT_PARAMS]
    for key in params:
        if key not in accepted or key in CONTEXT_PARAMS:
            hint = difflib.get_close_matches(key, valid, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise AlgorithmError(key, f"unknown parameter for {name!r}{extra}; valid: {', '.join(valid)}")
    context = {
        "origin_model": origin_model,
        "origin_config_list": [dict(c) for c in (config_list or [])],
        "config_list": [dict(c) for c in (config_list or [])],
        "log_dir": None,
        "best_result_mode": best_result_mode,
        "constraints": dict(constraints or {}),
        "dummy_input": dummy_input,
    }
    kwargs = {k: v for k, v in context.items() if k in accepted}
    for key in required:
        if key not in params and key not in kwargs:
            raise AlgorithmError(key, f"required by {name!r}")
    kwargs.update(params)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        match = _LEADING_PARAM.match(text)
        if match and match.group(1) in params:
            rest = text[len(match.group(1)):].lstrip(": ")
            raise AlgorithmError(match.group(1), rest) from None
        raise AlgorithmError(None, f"{name!r}: {text}") from None
