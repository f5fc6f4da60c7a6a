"""Tests for search.zoo: registries, model architectures, datasets and training loops."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.fx
from torch import nn
from torch.utils.data import Subset

from search import zoo
from search.zoo import registry

MODEL_NAMES = ["digits_cnn", "mobilenet_v2", "resnet18", "resnet50", "transformer_classifier", "vgg16_bn"]

_DEFAULT_MODELS: dict[str, nn.Module] = {}


def _default_model(name: str) -> nn.Module:
    """Build each default (1000-class where applicable) model once per test session."""
    if name not in _DEFAULT_MODELS:
        _DEFAULT_MODELS[name] = zoo.get_model(name).eval()
    return _DEFAULT_MODELS[name]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ registry


def test_registries_list_builtins() -> None:
    assert zoo.list_models() == MODEL_NAMES
    assert zoo.list_datasets() == ["digits", "mnist5k", "synthetic_tokens"]
    assert set(zoo.__all__) >= {
        "register_model",
        "register_dataset",
        "get_model",
        "get_dataset",
        "list_models",
        "list_datasets",
        "DatasetSplits",
        "train_epochs",
        "evaluate_accuracy",
        "get_dummy_input",
        *MODEL_NAMES,
    }


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (lambda: zoo.get_model("resnt18"), "model"),
        (lambda: zoo.get_dummy_input("resnt18"), "model"),
        (lambda: zoo.get_dataset("mnist"), "dataset"),
    ],
)
def test_unknown_name_lists_valid_names(call, kind: str) -> None:
    with pytest.raises(KeyError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"unknown {kind} ")
    valid = MODEL_NAMES if kind == "model" else zoo.list_datasets()
    assert f"valid: {', '.join(valid)}" in message
    assert isinstance(info.value, zoo.UnknownNameError)


@pytest.fixture
def scratch_model_name() -> Iterator[str]:
    name = "test_tiny_linear"
    yield name
    registry._MODELS.pop(name, None)


def test_register_model_decorator_and_duplicates(scratch_model_name: str) -> None:
    @zoo.register_model(scratch_model_name, dummy_input=lambda b, **_: torch.ones(b, 4))
    def tiny(num_classes: int = 2) -> nn.Module:
        """Tiny linear model."""
        return nn.Linear(4, num_classes)

    assert scratch_model_name in zoo.list_models()
    assert zoo.model_entry(scratch_model_name).description == "Tiny linear model."
    out = zoo.get_model(scratch_model_name, num_classes=3)(zoo.get_dummy_input(scratch_model_name, 5))
    assert out.shape == (5, 3)
    with pytest.raises(ValueError, match="already registered"):
        zoo.register_model(scratch_model_name, tiny)
    zoo.register_model(scratch_model_name, tiny, overwrite=True)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        zoo.get_model("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="divisible"):
        zoo.get_model("transformer_classifier", d_model=30, nhead=4)
    with pytest.raises(ValueError, match="batch_size"):
        zoo.get_dummy_input("digits_cnn", batch_size=0)
    with pytest.raises(ValueError, match="test_fraction"):
        zoo.get_dataset("digits", test_fraction=1.5)


def test_import_is_lazy_about_sklearn_and_mlxtend() -> None:
    code = "import sys, search.zoo; print(sorted(m for m in ('sklearn', 'mlxtend') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", 11_689_512),
        ("resnet50", 25_557_032),
        ("mobilenet_v2", 3_504_872),
        ("vgg16_bn", 138_365_992),
    ],
)
def test_parameter_counts_match_reference(name: str, expected: int) -> None:
    assert _num_params(_default_model(name)) == expected


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_model_runs_on_default_dummy_input(name: str) -> None:
    model = _default_model(name)
    x = zoo.get_dummy_input(name, batch_size=1)
    expected_shape = {
        "digits_cnn": (1, 1, 8, 8),
        "transformer_classifier": (1, 16),
    }.get(name, (1, 3, 224, 224))
    assert tuple(x.shape) == expected_shape
    if name == "transformer_classifier":
        assert x.dtype == torch.long
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 10 if name in ("digits_cnn", "transformer_classifier") else 1000)


TRACE_CASES = [
    ("digits_cnn", {}),
    ("digits_cnn", {"image_size": 28, "num_classes": 7}),
    ("resnet18", {"num_classes": 10, "small_input": True}),
    ("resnet50", {"num_classes": 10, "small_input": True}),
    ("mobilenet_v2", {"num_classes": 10, "width_mult": 0.5, "image_size": 32}),
    ("vgg16_bn", {"num_classes": 10, "small_input": True}),
    ("transformer_classifier", {"num_classes": 4, "seq_len": 12}),
]


@pytest.mark.parametrize(
    ("name", "kwargs"), TRACE_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TRACE_CASES)]
)
def test_model_traces_with_fx(name: str, kwargs: dict) -> None:
    model_kwargs = {
        k: v for k, v in kwargs.items() if k not in ("image_size", "seq_len") or name == "digits_cnn"
    }
    model = zoo.get_model(name, **model_kwargs).eval()
    x = zoo.get_dummy_input(name, batch_size=2, **kwargs)
    graph_module = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        expected = model(x)
        traced = graph_module(x)
    assert expected.shape == (2, kwargs.get("num_classes", 10))
    torch.testing.assert_close(traced, expected)


def test_torchvision_style_module_names() -> None:
    names = dict(_default_model("resnet18").named_modules())
    for key in (
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1.0.conv1",
        "layer2.0.downsample.0",
        "layer2.0.downsample.1",
        "layer4.1.bn2",
        "avgpool",
        "fc",
    ):
        assert key in names, key
    assert "layer1.0.conv3" in dict(_default_model("resnet50").named_modules())
    mobilenet = dict(_default_model("mobilenet_v2").named_modules())
    assert isinstance(mobilenet["features.0.0"], nn.Conv2d)
    assert mobilenet["features.2.conv.1.0"].groups == 96  # depthwise conv of the first expanding block
    assert isinstance(mobilenet["features.18.2"], nn.ReLU6)
    assert isinstance(mobilenet["classifier.0"], nn.Dropout)
    small = zoo.get_model("resnet18", small_input=True)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    attn = zoo.get_model("transformer_classifier").layers[0].attn
    assert all(isinstance(getattr(attn, p), nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))


# ------------------------------------------------------------------------------ datasets


def test_digits_dataset_shapes_and_split() -> None:
    splits = zoo.get_dataset("digits")
    assert isinstance(splits, zoo.DatasetSplits)
    x_train, y_train = splits.train.tensors
    x_test, y_test = splits.test.tensors
    assert len(x_train) + len(x_test) == 1797
    assert splits.num_classes == 10 and splits.input_shape == (1, 8, 8) and splits.name == "digits"
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert len(x_test) == pytest.approx(0.2 * 1797, abs=10)
    assert set(y_test.tolist()) == set(range(10))
    assert abs(float(x_train.mean())) < 1e-3 and float(x_train.std()) == pytest.approx(1.0, abs=1e-2)
    # stratified: each class is held out at ~20%
    counts = np.bincount(y_test.numpy(), minlength=10) / np.bincount(
        np.concatenate([y_train.numpy(), y_test.numpy()]), minlength=10
    )
    assert np.all(np.abs(counts - 0.2) < 0.01)


def test_dataset_split_is_deterministic() -> None:
    first, again, other = (zoo.get_dataset("digits", seed=s) for s in (0, 0, 1))
    for a, b in zip(
        first.train.tensors + first.test.tensors, again.train.tensors + again.test.tensors, strict=True
    ):
        assert torch.equal(a, b)
    assert not torch.equal(first.test.tensors[1], other.test.tensors[1])
    first.train.tensors[0].zero_()  # returned tensors are copies: the cache stays intact
    assert float(zoo.get_dataset("digits").train.tensors[0].abs().sum()) > 0


def test_mnist5k_dataset() -> None:
    splits = zoo.get_dataset("mnist5k", test_fraction=0.2)
    x_train, y_train = splits.train.tensors
    x_test, y_test = splits.test.tensors
    assert len(x_train) + len(x_test) == 5000 and len(x_test) == 1000
    assert x_train.shape[1:] == (1, 28, 28) and splits.input_shape == (1, 28, 28)
    assert splits.num_classes == 10
    assert torch.equal(torch.bincount(y_test), torch.full((10,), 100))


def test_synthetic_tokens_follow_their_rule() -> None:
    splits = zoo.get_dataset("synthetic_tokens", num_samples=500, seq_len=16, num_classes=5, seed=3)
    ids = torch.cat([splits.train.tensors[0], splits.test.tensors[0]])
    labels = torch.cat([splits.train.tensors[1], splits.test.tensors[1]])
    assert ids.shape == (500, 16) and ids.dtype == torch.int64 and splits.input_shape == (16,)
    counts = torch.stack([(ids == marker).sum(dim=1) for marker in range(1, 6)], dim=1)
    assert torch.equal(counts.argmax(dim=1), labels)
    top2 = counts.topk(2, dim=1).values
    assert bool((top2[:, 0] > top2[:, 1]).all())  # the majority marker is unique
    again = zoo.get_dataset("synthetic_tokens", num_samples=500, seq_len=16, num_classes=5, seed=3)
    assert torch.equal(again.train.tensors[0], splits.train.tensors[0])


# ------------------------------------------------------------------------------ training


def test_digits_cnn_learns_digits() -> None:
    data = zoo.get_dataset("digits")
    model = zoo.get_model("digits_cnn", num_classes=data.num_classes)
    loss = zoo.train_epochs(model, data, epochs=3, device="cpu")
    assert loss < 0.5
    assert zoo.evaluate_accuracy(model, data, device="cpu") > 0.9


def test_training_is_deterministic_and_stoppable() -> None:
    data = zoo.get_dataset("digits")
    subset = Subset(data.train, range(256))
    losses = []
    for _ in range(2):
        torch.manual_seed(123)  # identical init; train_epochs seeds its own shuffling
        model = zoo.get_model("digits_cnn")
        losses.append(zoo.train_epochs(model, subset, epochs=1, batch_size=32, device="cpu", seed=7))
    assert losses[0] == losses[1]

    seen: list[tuple[int, float]] = []
    zoo.train_epochs(
        zoo.get_model("digits_cnn"),
        subset,
        epochs=5,
        batch_size=32,
        device="cpu",
        on_step=lambda step, loss: seen.append((step, loss)) or step == 2,
    )
    assert [s for s, _ in seen] == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; valid: sgd, adam"):
        zoo.train_epochs(zoo.get_model("digits_cnn"), subset, optimizer="rmsprop")


def test_transformer_learns_synthetic_tokens() -> None:
    data = zoo.get_dataset("synthetic_tokens", num_samples=1000)
    model = zoo.get_model("transformer_classifier", num_classes=data.num_classes)
    zoo.train_epochs(model, data, epochs=3, lr=3e-3, optimizer="adam", device="cpu")
    assert zoo.evaluate_accuracy(model, data, device="cpu") > 0.6
