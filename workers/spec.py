"""The experiment spec (JSON or YAML) as typed dataclasses, and the spec of one trial.

Parsing is in two steps so that code which only *carries* specs (the SDK, ``prunesearch --help``)
never imports torch:

* :meth:`ExperimentSpec.from_dict` checks the structure (keys, types, ranges) with no heavy import;
* :meth:`ExperimentSpec.validate` (run by ``from_dict(..., check=True)``, the default) resolves
  names through the registries (models, data sets, pruners, algorithms), builds the model from its
  factory and validates the config list against it, and builds the search algorithm once.

Every problem is a :class:`SpecError` naming the spec path, e.g.
``algorithm.total_iteration: must be a positive int, got 0`` or
``pruner.config_list[0].sparse_raito: unknown key 'sparse_raito' (did you mean 'sparse_ratio'?)``.

Example:
    >>> spec = ExperimentSpec.from_dict({
    ...     "name": "demo",
    ...     "model": {"factory": "search.zoo:digits_cnn"},
    ...     "data": {"name": "digits"},
    ...     "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
    ...     "algorithm": {"name": "agp", "total_iteration": 3},
    ... }, check=False)
    >>> spec.algorithm.params, spec.trial.finetune_epochs
    ({'total_iteration': 3}, 1)
    >>> ExperimentSpec.from_dict(spec.to_dict(), check=False) == spec
    True
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "AlgorithmSpec",
    "Constraints",
    "DataSpec",
    "ExperimentSpec",
    "ModelSpec",
    "Objective",
    "PrunerSpec",
    "Resources",
    "SpecError",
    "TrialSettings",
    "TrialSpec",
    "load_spec_file",
    "rewinds",
]

SPEC_VERSION = 1
OBJECTIVE_METRICS = ("accuracy", "loss", "flops", "params", "flops_ratio", "params_ratio", "latency_ms", "latency_ratio")
BEST_RESULT_MODES = ("maximize", "minimize", "latest")
OPTIMIZERS = ("sgd", "adam")


class SpecError(ValueError):
    """A spec problem at ``path`` (``pruner.config_list[0].sparse_ratio``, ``trial.lr``...).

    Example:
        >>> str(SpecError("trial.lr", "must be a positive number, got 0"))
        'trial.lr: must be a positive number, got 0'
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


# -- small typed readers -------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(path, f"keys must be strings, got {key!r}")
    return dict(value)


def _check_keys(data: Mapping[str, Any], valid: tuple[str, ...], path: str) -> None:
    for key in data:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(_join(path, key), f"unknown key{extra}; valid: {', '.join(valid)}")


def _str(value: Any, path: str, *, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, f"must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise SpecError(path, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _int(value: Any, path: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise SpecError(path, f"must be {what}, got {value!r}")
    return value


def _number(value: Any, path: str, *, minimum: float = 0.0, strict: bool = True, maximum: float | None = None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if maximum is not None:
            what = f"a number in ({minimum:g}, {maximum:g}]"
        else:
            what = "a positive number" if strict and minimum == 0 else f"a number >= {minimum:g}"
        raise SpecError(path, f"must be {what}, got {value!r}")
    return float(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, got {value!r}")
    return value


# -- sections ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """The model: ``factory`` (``'pkg.module:function'`` or a zoo name), its kwargs, optional weights.

    ``weights`` is a safetensors file (or a ``.pt`` state dict, loaded with ``weights_only=True``);
    ``None`` starts from the factory's initialisation (trained first if ``trial.pretrain_epochs``).
    ``input_shape`` gives the dummy input for speedup and FLOPs when the factory is not a zoo model.
    """

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None

    KEYS = ("factory", "kwargs", "weights", "input_shape")

    @classmethod
    def from_dict(cls, data: Any, path: str = "model") -> ModelSpec:
        data = _mapping(data, path)
        _check_keys(data, cls.KEYS, path)
        if "factory" not in data:
            raise SpecError(_join(path, "factory"), "required (e.g. 'search.zoo:digits_cnn')")
        weights = data.get("weights")
        if weights is not None:
            weights = os.fspath(_str(weights, _join(path, "weights")) if not isinstance(weights, os.PathLike) else weights)
            if not str(weights).endswith((".safetensors", ".pt", ".pth")):
                raise SpecError(_join(path, "weights"), f"must be a .safetensors (or weights-only .pt) file, got {weights!r}")
        shape = data.get("input_shape")
        if shape is not None:
            if not isinstance(shape, list | tuple) or not shape:
                raise SpecError(_join(path, "input_shape"), f"must be a list of positive ints, got {shape!r}")
            shape = tuple(_int(s, f"{path}.input_shape[{i}]") for i, s in enumerate(shape))
        return cls(
            factory=_str(data["factory"], _join(path, "factory")),
            kwargs=_mapping(data.get("kwargs"), _join(path, "kwargs")),
            weights=weights,
            input_shape=shape,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "kwargs": copy.deepcopy(self.kwargs),
            "weights": self.weights,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
        }


@dataclass(frozen=True)
class DataSpec:
    """A registered data set (``search.zoo.list_datasets()``) and its loader kwargs."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    KEYS = ("name", "kwargs")

    @classmethod
    def from_dict(cls, data: Any, path: str = "data") -> DataSpec:
        data = _mapping(data, path)
        _check_keys(data, cls.KEYS, path)
        if "name" not in data:
            raise SpecError(_join(path, "name"), "required (e.g. 'digits')")
        return cls(_str(data["name"], _join(path, "name")), _mapping(data.get("kwargs"), _join(path, "kwargs")))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": copy.deepcopy(self.kwargs)}


@dataclass(frozen=True)
class PrunerSpec:
    """A registered pruner (``search.pruning.registry.PRUNERS``), its config list and extra kwargs.

    Data-dependent pruners (``taylor``, ``slim``, ``apoz``, ``mean_activation``, ``admm``) get an
    evaluator over the data set's training split from the trial; give them
    ``kwargs: {training_steps: N}``. ``task_pruners`` holds kwargs for the pruners an algorithm's
    tasks ask for by name (AutoCompress's ``admm: {iterations: 2, training_steps: 20}``).
    """

    name: str
    config_list: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    task_pruners: dict[str, dict[str, Any]] = field(default_factory=dict)

    KEYS = ("name", "config_list", "kwargs", "task_pruners")

    @classmethod
    def from_dict(cls, data: Any, path: str = "pruner") -> PrunerSpec:
        data = _mapping(data, path)
        _check_keys(data, cls.KEYS, path)
        if "name" not in data:
            raise SpecError(_join(path, "name"), "required (e.g. 'l1')")
        config_list = data.get("config_list")
        if not isinstance(config_list, list) or not config_list:
            raise SpecError(_join(path, "config_list"), f"must be a non-empty list of dicts, got {config_list!r}")
        for i, sub in enumerate(config_list):
            _mapping(sub, f"{path}.config_list[{i}]")
        task_pruners = _mapping(data.get("task_pruners"), _join(path, "task_pruners"))
        for key, value in task_pruners.items():
            task_pruners[key] = copy.deepcopy(_mapping(value, f"{path}.task_pruners.{key}"))
        return cls(
            _str(data["name"], _join(path, "name")),
            [copy.deepcopy(dict(c)) for c in config_list],
            _mapping(data.get("kwargs"), _join(path, "kwargs")),
            task_pruners,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config_list": copy.deepcopy(self.config_list), "kwargs": copy.deepcopy(self.kwargs),
                "task_pruners": copy.deepcopy(self.task_pruners)}


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered search algorithm and its parameters (written next to ``name``).

    ``{name: agp, total_iteration: 5}`` → ``AlgorithmSpec('agp', {'total_iteration': 5})``. The
    parameters are the generator's constructor arguments (``max_trials`` and ``seed`` included);
    :mod:`search.algorithms.registry` checks them.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, path: str = "algorithm") -> AlgorithmSpec:
        data = _mapping(data, path)
        if "name" not in data:
            raise SpecError(_join(path, "name"), "required (e.g. 'agp')")
        params = {k: copy.deepcopy(v) for k, v in data.items() if k != "name"}
        if "max_trials" in params and params["max_trials"] is not None:
            _int(params["max_trials"], _join(path, "max_trials"))
        return cls(_str(data["name"], _join(path, "name")), params)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **copy.deepcopy(self.params)}


@dataclass(frozen=True)
class TrialSettings:
    """What one trial does after pruning.

    Attributes:
        finetune_epochs: epochs of finetuning of the masked model (0: none).
        batch_size: training batch size.
        lr: learning rate.
        optimizer: ``sgd`` (momentum 0.9) or ``adam``.
        speedup: build the compact model (FLOPs/params measured on it); else measure the masked model.
        seed: seeds model initialisation (the same for every trial) and each trial's training.
        device: ``auto`` (CUDA when the worker has it), ``cpu``, ``cuda`` or ``cuda:N``.
        measure_latency: also measure forward latency of the origin and the compact model.
        pretrain_epochs: when ``model.weights`` is null, train the origin model this long first (0: don't).
    """

    finetune_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"
    speedup: bool = True
    seed: int = 0
    device: str = "auto"
    measure_latency: bool = False
    pretrain_epochs: int = 3

    @classmethod
    def from_dict(cls, data: Any, path: str = "trial") -> TrialSettings:
        data = _mapping(data, path)
        _check_keys(data, tuple(f.name for f in fields(cls)), path)
        out = cls(**data)
        _int(out.finetune_epochs, _join(path, "finetune_epochs"), minimum=0)
        _int(out.batch_size, _join(path, "batch_size"))
        _number(out.lr, _join(path, "lr"))
        _str(out.optimizer, _join(path, "optimizer"), choices=OPTIMIZERS)
        _bool(out.speedup, _join(path, "speedup"))
        _int(out.seed, _join(path, "seed"), minimum=0)
        device = _str(out.device, _join(path, "device"))
        if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise SpecError(_join(path, "device"), f"must be auto, cpu, cuda or cuda:N, got {device!r}")
        _bool(out.measure_latency, _join(path, "measure_latency"))
        _int(out.pretrain_epochs, _join(path, "pretrain_epochs"), minimum=0)
        return replace(out, lr=float(out.lr))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Objective:
    """Which metric scores a trial and whether higher or lower is better."""

    metric: str = "accuracy"
    best_result_mode: str = "maximize"

    @classmethod
    def from_dict(cls, data: Any, path: str = "objective") -> Objective:
        data = _mapping(data, path)
        _check_keys(data, ("metric", "best_result_mode"), path)
        out = cls(**data)
        _str(out.metric, _join(path, "metric"), choices=OBJECTIVE_METRICS)
        _str(out.best_result_mode, _join(path, "best_result_mode"), choices=BEST_RESULT_MODES)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best_result_mode": self.best_result_mode}


@dataclass(frozen=True)
class Constraints:
    """Upper bounds on the compact model's cost relative to the origin model (null: no bound)."""

    max_flops_ratio: float | None = None
    max_params_ratio: float | None = None
    max_latency_ratio: float | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str = "constraints") -> Constraints:
        data = _mapping(data, path)
        _check_keys(data, tuple(f.name for f in fields(cls)), path)
        values = {k: None if v is None else _number(v, _join(path, k), maximum=1.0) for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Resources:
    """How trials run: concurrency, per-trial CPUs / GPUs, retries of dead workers, timeout."""

    max_concurrent_trials: int = 1
    gpus_per_trial: float = 0
    cpus_per_trial: float = 1
    max_retries: int = 2
    trial_timeout_s: float | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str = "resources") -> Resources:
        data = _mapping(data, path)
        _check_keys(data, tuple(f.name for f in fields(cls)), path)
        out = cls(**data)
        _int(out.max_concurrent_trials, _join(path, "max_concurrent_trials"))
        _number(out.gpus_per_trial, _join(path, "gpus_per_trial"), strict=False)
        _number(out.cpus_per_trial, _join(path, "cpus_per_trial"))
        _int(out.max_retries, _join(path, "max_retries"), minimum=0)
        if out.trial_timeout_s is not None:
            _number(out.trial_timeout_s, _join(path, "trial_timeout_s"))
        return out

    @property
    def num_threads(self) -> int:
        """Intra-op threads a trial uses (its CPU share, at least one)."""
        return max(1, int(self.cpus_per_trial))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- the experiment -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentSpec:
    """A whole experiment: what to prune, on which data, how to search, within which budget.

    See the module docstring for an example and ``examples/digits-agp.yaml`` for a file.
    """

    name: str
    model: ModelSpec
    data: DataSpec
    pruner: PrunerSpec
    algorithm: AlgorithmSpec
    trial: TrialSettings = field(default_factory=TrialSettings)
    objective: Objective = field(default_factory=Objective)
    constraints: Constraints = field(default_factory=Constraints)
    resources: Resources = field(default_factory=Resources)
    version: int = SPEC_VERSION

    KEYS = ("version", "name", "model", "data", "pruner", "algorithm", "trial", "objective", "constraints", "resources")

    @classmethod
    def from_dict(cls, data: Any, *, check: bool = True, base_dir: str | os.PathLike[str] | None = None) -> ExperimentSpec:
        """Parse (and with ``check``, fully validate) a spec.

        Args:
            data: the spec as a mapping (from JSON or YAML).
            check: also resolve names and validate the config list against the model (imports torch).
            base_dir: relative ``model.weights`` paths are resolved against it (the spec file's folder).

        Raises:
            SpecError: naming the first problem's path.
        """
        data = _mapping(data, "")
        _check_keys(data, cls.KEYS, "")
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError("version", f"unsupported spec version {version!r}; this prunesearch reads version {SPEC_VERSION}")
        for key in ("name", "model", "data", "pruner", "algorithm"):
            if key not in data:
                raise SpecError(key, "required")
        model = ModelSpec.from_dict(data["model"])
        if base_dir is not None and model.weights is not None and not os.path.isabs(model.weights):
            weights = os.path.abspath(os.path.join(os.fspath(base_dir), model.weights))
            model = ModelSpec(model.factory, model.kwargs, weights, model.input_shape)
        spec = cls(
            name=_str(data["name"], "name"),
            model=model,
            data=DataSpec.from_dict(data["data"]),
            pruner=PrunerSpec.from_dict(data["pruner"]),
            algorithm=AlgorithmSpec.from_dict(data["algorithm"]),
            trial=TrialSettings.from_dict(data.get("trial")),
            objective=Objective.from_dict(data.get("objective")),
            constraints=Constraints.from_dict(data.get("constraints")),
            resources=Resources.from_dict(data.get("resources")),
        )
        if spec.constraints.max_latency_ratio is not None and not spec.trial.measure_latency:
            raise SpecError("constraints.max_latency_ratio", "needs trial.measure_latency: true")
        if spec.objective.metric.startswith("latency") and not spec.trial.measure_latency:
            raise SpecError("objective.metric", f"{spec.objective.metric!r} needs trial.measure_latency: true")
        if check:
            spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "pruner": self.pruner.to_dict(),
            "algorithm": self.algorithm.to_dict(),
            "trial": self.trial.to_dict(),
            "objective": self.objective.to_dict(),
            "constraints": self.constraints.to_dict(),
            "resources": self.resources.to_dict(),
        }

    def with_max_trials(self, max_trials: int | None) -> ExperimentSpec:
        """A copy whose algorithm stops after ``max_trials`` trials (``None``: unchanged)."""
        if max_trials is None:
            return self
        _int(max_trials, "algorithm.max_trials")
        params = {**self.algorithm.params, "max_trials": max_trials}
        return ExperimentSpec(**{**self.__dict__, "algorithm": AlgorithmSpec(self.algorithm.name, params)})

    # -- deep validation (imports torch) ---------------------------------------------------------------
    def validate(self) -> None:
        """Resolve every name, build the model, check the config list and the algorithm's parameters.

        Raises:
            SpecError: naming the path of the first problem.
        """
        _validate_experiment(self)


def rewinds(algorithm_rewinds: bool, task: Mapping[str, Any]) -> bool:
    """Does ``task`` (as JSON) start from the origin weights rather than its parent's trained ones?

    Only for an algorithm that rewinds (lottery ticket) and a task with a parent, and not when the
    task itself says ``params['reset_weight'] = False`` (the user turned rewinding off).

        >>> rewinds(True, {"parent_id": 3, "params": {"reset_weight": False}}), rewinds(True, {"parent_id": 3})
        (False, True)
    """
    params = task.get("params") or {}
    return algorithm_rewinds and task.get("parent_id") is not None and bool(params.get("reset_weight", True))


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs, as plain JSON data (it travels to Ray workers and into SQL).

    Attributes:
        model: the origin model (``weights``: the origin weights file, e.g. the pretrain trial's).
        data: the data set.
        pruner: pruner name and kwargs (the config list is the task's).
        task: the :class:`~search.scheduling.Task` as JSON; ``params: {'pretrain': N}`` makes a
            pretrain trial (train the origin model N epochs, no pruning).
        parent_artifact: the parent trial's artifact dir (its finetuned masked weights and masks).
        settings: finetune budget, seed, device, ...
        objective_metric: the metric reported as the score.
        artifact_dir: where this trial writes its artifacts (emptied first).
        num_threads: torch intra-op threads for this trial.
        task_pruners: ``{name: kwargs}`` for a task that asks for another pruner (``params['pruner']``).
        reset_weight: rewind to the origin weights (keeping the parent's masks) before pruning.
    """

    model: ModelSpec
    data: DataSpec
    pruner_name: str
    pruner_kwargs: dict[str, Any]
    task: dict[str, Any]
    artifact_dir: str
    parent_artifact: str | None = None
    settings: TrialSettings = field(default_factory=TrialSettings)
    objective_metric: str = "accuracy"
    num_threads: int = 1
    task_pruners: dict[str, dict[str, Any]] = field(default_factory=dict)
    reset_weight: bool = False

    @property
    def task_id(self) -> int:
        return int(self.task["task_id"])

    @property
    def seed_index(self) -> int:
        """What seeds the trial's training (the task's ``seed_index``; the task id if it has none)."""
        index = self.task.get("seed_index")
        return int(index) if index is not None else self.task_id

    @property
    def kind(self) -> str:
        """``'pretrain'`` or ``'prune'``."""
        return "pretrain" if "pretrain" in self.task.get("params", {}) else "prune"

    @property
    def config_list(self) -> list[dict[str, Any]]:
        return list(self.task.get("config_list", []))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "pruner": {"name": self.pruner_name, "kwargs": copy.deepcopy(self.pruner_kwargs)},
            "task": copy.deepcopy(self.task),
            "artifact_dir": self.artifact_dir,
            "parent_artifact": self.parent_artifact,
            "settings": self.settings.to_dict(),
            "objective_metric": self.objective_metric,
            "num_threads": self.num_threads,
            "task_pruners": copy.deepcopy(self.task_pruners),
            "reset_weight": self.reset_weight,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialSpec:
        return cls(
            model=ModelSpec.from_dict(data["model"]),
            data=DataSpec.from_dict(data["data"]),
            pruner_name=str(data["pruner"]["name"]),
            pruner_kwargs=dict(data["pruner"].get("kwargs", {})),
            task=copy.deepcopy(dict(data["task"])),
            artifact_dir=str(data["artifact_dir"]),
            parent_artifact=data.get("parent_artifact"),
            settings=TrialSettings.from_dict(data.get("settings")),
            objective_metric=str(data.get("objective_metric", "accuracy")),
            num_threads=int(data.get("num_threads", 1)),
            task_pruners=copy.deepcopy(dict(data.get("task_pruners") or {})),
            reset_weight=bool(data.get("reset_weight", False)),
        )


def _check_call_kwargs(fn: Any, kwargs: Mapping[str, Any], path: str, what: str, skip: tuple[str, ...] = ()) -> None:
    """Every key of ``kwargs`` is a keyword ``fn`` takes (unless it takes ``**kwargs``)."""
    import inspect  # noqa: PLC0415

    valid: list[str] = []
    # A class: its constructor's keywords along the MRO while ``**kwargs`` forwards them.
    targets = [k.__dict__["__init__"] for k in fn.__mro__ if "__init__" in k.__dict__] if isinstance(fn, type) else [fn]
    for target in targets:
        params = inspect.signature(target).parameters
        valid += [n for n, p in params.items()
                  if n not in skip and n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in valid]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    else:
        return  # ends in ``**kwargs`` that goes nowhere we can see
    for key in kwargs:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(_join(path, key), f"unknown argument of {what}{extra}; valid: {', '.join(valid) or '(none)'}")


def _validate_experiment(spec: ExperimentSpec) -> None:
    """Deep checks (see :meth:`ExperimentSpec.validate`); imports torch and the registries."""
    import inspect  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from search.algorithms.registry import AlgorithmError, algorithm_entry, create_task_generator  # noqa: PLC0415
    from search.config import ConfigError, canonicalize_config_list  # noqa: PLC0415
    from search.pruning.registry import get_pruner_class  # noqa: PLC0415
    from search.speedup import resolve_factory  # noqa: PLC0415
    from search.zoo import dataset_entry  # noqa: PLC0415
    from workers.trial import build_model, dummy_input_for, load_weights  # noqa: PLC0415

    # model: factory, kwargs, weights, an input it accepts
    try:
        factory = resolve_factory(spec.model.factory)
    except KeyError as exc:  # an unknown zoo name (UnknownNameError lists the valid ones)
        raise SpecError("model.factory", str(exc.args[0]) if exc.args else str(exc)) from None
    except ValueError as exc:
        raise SpecError("model.factory", str(exc)) from None
    _check_call_kwargs(factory, spec.model.kwargs, "model.kwargs", f"{spec.model.factory!r}")
    try:
        model = build_model(spec.model, spec.trial.seed)
    except (TypeError, ValueError) as exc:
        raise SpecError("model.kwargs", f"{spec.model.factory!r} rejects them: {exc}") from None
    if spec.model.weights is not None:
        if not os.path.isfile(spec.model.weights):
            raise SpecError("model.weights", f"no such file: {spec.model.weights}")
        try:
            load_weights(model, spec.model.weights)
        except Exception as exc:
            raise SpecError("model.weights", f"does not load into the model: {exc}") from None
    dummy = dummy_input_for(spec.model)
    try:
        with torch.no_grad():
            model.eval()(dummy)
    except Exception as exc:
        raise SpecError("model.input_shape" if spec.model.input_shape else "model",
                        f"the model does not run on its dummy input: {exc}") from None

    # data
    try:
        entry = dataset_entry(spec.data.name)
    except KeyError as exc:
        raise SpecError("data.name", str(exc)) from None
    _check_call_kwargs(entry.loader, spec.data.kwargs, "data.kwargs", f"data set {spec.data.name!r}")

    # pruner: name, kwargs (the trial supplies model, config_list and the evaluator), config list
    supplied = ("model", "config_list", "evaluator")
    for pruner_name, kwargs, path in [(spec.pruner.name, spec.pruner.kwargs, "pruner.kwargs")] + [
            (n, k, f"pruner.task_pruners.{n}") for n, k in spec.pruner.task_pruners.items()]:
        try:
            pruner_cls = get_pruner_class(pruner_name)
        except KeyError as exc:
            where = "pruner.name" if path == "pruner.kwargs" else path
            raise SpecError(where, str(exc.args[0]) if exc.args else str(exc)) from None
        _check_call_kwargs(pruner_cls, kwargs, path, f"pruner {pruner_name!r}", supplied)
        for name, param in inspect.signature(pruner_cls.__init__).parameters.items():
            if (name not in (*supplied, "self") and param.default is param.empty
                    and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL) and name not in kwargs):
                raise SpecError(f"{path}.{name}", f"required by pruner {pruner_name!r}")
    try:  # AMC and Optuna pick every layer's ratio: a sub-config may give bounds only
        config_list = algorithm_entry(spec.algorithm.name).config_for_validation(spec.pruner.config_list)
    except AlgorithmError as exc:
        raise SpecError("algorithm.name", exc.message) from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            selected = canonicalize_config_list(model, config_list, mode="pruning")
    except ConfigError as exc:
        head, sep, rest = str(exc).partition(": ")
        raise SpecError(f"pruner.{head}" if sep else "pruner.config_list", rest if sep else head) from None
    if not selected:
        raise SpecError("pruner.config_list", "selects no module of the model")
    for warning in caught:
        warnings.warn(f"pruner.{warning.message}", warning.category, stacklevel=3)

    # algorithm: name and parameters, by building it once
    try:
        create_task_generator(
            spec.algorithm.name, spec.algorithm.params, origin_model=model, config_list=spec.pruner.config_list,
            best_result_mode=spec.objective.best_result_mode, constraints=spec.constraints.to_dict(), dummy_input=dummy,
        )
    except AlgorithmError as exc:
        raise SpecError(f"algorithm.{exc.param}" if exc.param else "algorithm.name", exc.message) from None


def load_spec_file(path: str | os.PathLike[str], *, check: bool = True) -> ExperimentSpec:
    """Read a YAML or JSON spec file; relative weight paths resolve against the file's folder.

    Raises:
        SpecError: for a file that does not parse or a spec that does not validate.
    """
    import json  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise SpecError("", f"cannot read spec file {file}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError("", f"{file} does not parse: {exc}") from None
    return ExperimentSpec.from_dict(data, check=check, base_dir=file.parent)
