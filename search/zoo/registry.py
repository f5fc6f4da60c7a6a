"""Name -> factory registries for the built-in models and datasets.

Models and datasets are looked up by a short name so that search configurations,
workers and the service can refer to them as plain strings.

Example:
    >>> from search.zoo import get_model, get_dummy_input
    >>> model = get_model("digits_cnn", num_classes=10)
    >>> model(get_dummy_input("digits_cnn", batch_size=2)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Builds a dummy input: ``fn(batch_size, **model_kwargs) -> Tensor``.
DummyInputFn = Callable[..., torch.Tensor]


class UnknownNameError(KeyError):
    """A model or dataset name that is not registered.

    Subclasses :class:`KeyError` so ``except KeyError`` works, but prints its message
    without the extra quotes ``KeyError`` adds.

    Example:
        >>> try:
        ...     get_model("resnt18")
        ... except KeyError as err:
        ...     print(err)
        unknown model 'resnt18'; valid: digits_cnn, mobilenet_v2, ...
    """

    def __init__(self, kind: str, name: object, valid: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = list(valid)
        message = f"unknown {kind} {name!r}; valid: {', '.join(self.valid) or '(none registered)'}"
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes:
        name: Registry key.
        factory: Callable returning an ``nn.Module``; accepts keyword arguments.
        dummy_input: Optional ``fn(batch_size, **model_kwargs) -> Tensor`` giving an input
            of the right shape and dtype for a model built with the same kwargs.
        description: One-line human readable description.
    """

    name: str
    factory: Callable[..., nn.Module]
    dummy_input: DummyInputFn | None = None
    description: str = ""


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset loader.

    Attributes:
        name: Registry key.
        loader: Callable returning a :class:`search.zoo.datasets.DatasetSplits`.
        description: One-line human readable description.
    """

    name: str
    loader: Callable[..., Any]
    description: str = ""


_MODELS: dict[str, ModelEntry] = {}
_DATASETS: dict[str, DatasetEntry] = {}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"registry name must be a non-empty string, got {name!r}")
    return name


def _first_line(fn: Callable[..., Any]) -> str:
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def register_model(
    name: str,
    factory: Callable[..., nn.Module] | None = None,
    *,
    dummy_input: DummyInputFn | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> Any:
    """Register a model factory under ``name``; usable directly or as a decorator.

    Args:
        name: Registry key.
        factory: Callable building the model from keyword arguments. Omit to use as a decorator.
        dummy_input: ``fn(batch_size, **model_kwargs) -> Tensor`` for :func:`get_dummy_input`.
        description: One-line description; defaults to the factory's first docstring line.
        overwrite: Replace an existing entry instead of raising ``ValueError``.

    Returns:
        The factory (so it can be used as a decorator).

    Raises:
        ValueError: If ``name`` is empty or already registered and ``overwrite`` is false.

    Example:
        >>> @register_model("tiny_mlp", dummy_input=lambda b, **_: torch.randn(b, 4))
        ... def tiny_mlp(num_classes: int = 2) -> nn.Module:
        ...     return nn.Linear(4, num_classes)
    """
    key = _check_name(name)

    def decorator(fn: F) -> F:
        if key in _MODELS and not overwrite:
            raise ValueError(f"model {key!r} is already registered; pass overwrite=True to replace it")
        desc = description if description is not None else _first_line(fn)
        _MODELS[key] = ModelEntry(key, fn, dummy_input, desc)
        logger.debug("registered model %r", key)
        return fn

    if factory is not None:
        return decorator(factory)  # type: ignore[arg-type]
    return decorator


def register_dataset(
    name: str,
    loader: Callable[..., Any] | None = None,
    *,
    description: str | None = None,
    overwrite: bool = False,
) -> Any:
    """Register a dataset loader under ``name``; usable directly or as a decorator.

    Args:
        name: Registry key.
        loader: Callable returning a ``DatasetSplits``. Omit to use as a decorator.
        description: One-line description; defaults to the loader's first docstring line.
        overwrite: Replace an existing entry instead of raising ``ValueError``.

    Returns:
        The loader (so it can be used as a decorator).

    Raises:
        ValueError: If ``name`` is empty or already registered and ``overwrite`` is false.

    Example:
        >>> @register_dataset("my_data")
        ... def my_data(seed: int = 0) -> DatasetSplits:
        ...     ...
    """
    key = _check_name(name)

    def decorator(fn: F) -> F:
        if key in _DATASETS and not overwrite:
            raise ValueError(f"dataset {key!r} is already registered; pass overwrite=True to replace it")
        desc = description if description is not None else _first_line(fn)
        _DATASETS[key] = DatasetEntry(key, fn, desc)
        logger.debug("registered dataset %r", key)
        return fn

    if loader is not None:
        return decorator(loader)  # type: ignore[arg-type]
    return decorator


def list_models() -> list[str]:
    """Return the registered model names, sorted.

    Example:
        >>> "resnet18" in list_models()
        True
    """
    return sorted(_MODELS)


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted.

    Example:
        >>> "digits" in list_datasets()
        True
    """
    return sorted(_DATASETS)


def model_entry(name: str) -> ModelEntry:
    """Return the :class:`ModelEntry` registered under ``name``.

    Raises:
        UnknownNameError: (a ``KeyError``) if ``name`` is not registered.

    Example:
        >>> model_entry("resnet18").description
        'ResNet-18 ...'
    """
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("model", name, list_models()) from None


def dataset_entry(name: str) -> DatasetEntry:
    """Return the :class:`DatasetEntry` registered under ``name``.

    Raises:
        UnknownNameError: (a ``KeyError``) if ``name`` is not registered.

    Example:
        >>> dataset_entry("digits").name
        'digits'
    """
    try:
        return _DATASETS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("dataset", name, list_datasets()) from None


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered under ``name`` with ``kwargs``.

    Args:
        name: A name from :func:`list_models`.
        **kwargs: Passed to the factory (e.g. ``num_classes``, ``in_channels``).

    Returns:
        A freshly initialised ``nn.Module``.

    Raises:
        UnknownNameError: (a ``KeyError``) for an unknown name, listing the valid ones.

    Example:
        >>> get_model("resnet18", num_classes=10, small_input=True).fc.out_features
        10
    """
    return model_entry(name).factory(**kwargs)


def get_dummy_input(name: str, batch_size: int = 1, **kwargs: Any) -> torch.Tensor:
    """Return a dummy input for the model registered under ``name``.

    Args:
        name: A name from :func:`list_models`.
        batch_size: Leading dimension of the returned tensor.
        **kwargs: The same kwargs given to :func:`get_model` (only those affecting the input
            shape are used, e.g. ``in_channels``, ``small_input``, ``image_size``), plus
            ``image_size`` / ``seq_len`` overrides where the model supports them.

    Returns:
        A tensor (float image batch or LongTensor token ids) the model accepts.

    Raises:
        UnknownNameError: For an unknown name.
        ValueError: If ``batch_size`` is not a positive int or the entry has no dummy input.

    Example:
        >>> get_dummy_input("transformer_classifier", batch_size=4).shape
        torch.Size([4, 16])
    """
    entry = model_entry(name)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if entry.dummy_input is None:
        raise ValueError(f"model {name!r} was registered without a dummy_input function")
    return entry.dummy_input(batch_size, **kwargs)


def get_dataset(name: str, **kwargs: Any) -> Any:
    """Load the dataset registered under ``name``.

    Args:
        name: A name from :func:`list_datasets`.
        **kwargs: Passed to the loader (e.g. ``seed``, ``test_fraction``).

    Returns:
        A :class:`search.zoo.datasets.DatasetSplits`.

    Raises:
        UnknownNameError: (a ``KeyError``) for an unknown name, listing the valid ones.

    Example:
        >>> splits = get_dataset("digits", seed=0)
        >>> splits.num_classes
        10
    """
    return dataset_entry(name).loader(**kwargs)


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int, else raise ``ValueError`` naming ``name``.

    Example:
        >>> check_positive_int("num_classes", 10)
        10
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
