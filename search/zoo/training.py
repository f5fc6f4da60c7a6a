"""Minimal, deterministic training and evaluation loops for the zoo models.

Example:
    >>> from search.zoo import get_dataset, get_model, train_epochs, evaluate_accuracy
    >>> data = get_dataset("digits")
    >>> model = get_model("digits_cnn")
    >>> loss = train_epochs(model, data, epochs=3)
    >>> evaluate_accuracy(model, data) > 0.9
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .datasets import DatasetSplits
from .registry import check_positive_int

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")

#: ``on_step(step, loss)``; ``step`` counts optimizer steps from 0. Returning ``True`` stops training.
StepCallback = Callable[[int, float], Any]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` as a ``torch.device``; ``None`` means CUDA when available, else CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_dataset(data: Dataset | DatasetSplits, split: str) -> Dataset:
    if isinstance(data, DatasetSplits):
        return data.train if split == "train" else data.test
    if not isinstance(data, Dataset):
        raise ValueError(f"expected a torch Dataset or DatasetSplits, got {type(data).__name__}")
    return data


def _make_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    key = name.lower() if isinstance(name, str) else name
    if key == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if key == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def train_epochs(
    model: nn.Module,
    dataset: Dataset | DatasetSplits,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.01,
    optimizer: str = "sgd",
    device: str | torch.device | None = None,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> float:
    """Train ``model`` in place with cross-entropy for ``epochs`` passes over ``dataset``.

    Shuffling and dropout are seeded from ``seed`` inside a forked RNG, so results are
    reproducible on CPU and the caller's global RNG state is left untouched. The model
    is moved to ``device`` and left there; its train/eval mode is restored afterwards.

    Args:
        model: Classifier returning logits ``[B, num_classes]``.
        dataset: A ``Dataset`` of ``(input, label)`` pairs, or ``DatasetSplits`` (uses ``.train``).
        epochs: Number of passes.
        batch_size: Mini-batch size.
        lr: Learning rate.
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``.
        device: Device to train on; ``None`` picks CUDA when available, else CPU.
        seed: Seed for shuffling and stochastic layers.
        on_step: ``on_step(step, loss)`` after every optimizer step; return ``True`` to stop early.

    Returns:
        Mean training loss of the last (possibly partial) epoch; ``nan`` if no step ran.

    Raises:
        ValueError: For a non-positive ``epochs``/``batch_size``, ``lr <= 0`` or an unknown optimizer.

    Example:
        >>> from search.zoo import get_dataset, get_model
        >>> model, data = get_model("digits_cnn"), get_dataset("digits")
        >>> losses = []
        >>> _ = train_epochs(model, data, epochs=1, on_step=lambda s, l: losses.append(l))
        >>> len(losses) > 0
        True
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    train_set = _as_dataset(dataset, "train")
    dev = resolve_device(device)
    opt = _make_optimizer(model, optimizer, float(lr))
    loss_fn = nn.CrossEntropyLoss()
    was_training = model.training
    model.to(dev)
    model.train()
    fork_devices: list[int] = []
    if dev.type == "cuda":
        fork_devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
    last_mean = math.nan
    step = 0
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=gen)
        try:
            for epoch in range(epochs):
                total, count, stop = 0.0, 0, False
                for inputs, targets in loader:
                    inputs, targets = inputs.to(dev), targets.to(dev)
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(inputs), targets)
                    loss.backward()
                    opt.step()
                    value = float(loss.detach())
                    total += value * len(targets)
                    count += len(targets)
                    if on_step is not None and on_step(step, value) is True:
                        stop = True
                    step += 1
                    if stop:
                        break
                last_mean = total / count if count else math.nan
                logger.debug("epoch %d/%d: mean loss %.4f", epoch + 1, epochs, last_mean)
                if stop:
                    logger.info("training stopped by on_step after %d steps", step)
                    break
        finally:
            model.train(was_training)
    return last_mean


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    dataset: Dataset | DatasetSplits,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in eval mode, in ``[0, 1]``.

    Args:
        model: Classifier returning logits.
        dataset: A ``Dataset`` of ``(input, label)`` pairs, or ``DatasetSplits`` (uses ``.test``).
        batch_size: Evaluation batch size.
        device: Device; ``None`` picks CUDA when available, else CPU.

    Returns:
        Fraction of correctly classified samples (``0.0`` for an empty dataset).

    Example:
        >>> from search.zoo import get_dataset, get_model
        >>> 0.0 <= evaluate_accuracy(get_model("digits_cnn"), get_dataset("digits")) <= 1.0
        True
    """
    check_positive_int("batch_size", batch_size)
    eval_set = _as_dataset(dataset, "test")
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev)
    model.eval()
    correct, total = 0, 0
    try:
        for inputs, targets in DataLoader(eval_set, batch_size=batch_size, shuffle=False):
            inputs, targets = inputs.to(dev), targets.to(dev)
            correct += int((model(inputs).argmax(dim=1) == targets).sum())
            total += len(targets)
    finally:
        model.train(was_training)
    return correct / total if total else 0.0
