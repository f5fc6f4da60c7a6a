"""Built-in model factories and their registry entries.

``digits_cnn`` and ``vgg16_bn`` live here; ResNets, MobileNetV2 and the Transformer
classifier live in sibling modules. Importing this module registers all six models
together with a dummy-input builder for each.

Example:
    >>> from search.zoo import get_model, get_dummy_input
    >>> model = get_model("vgg16_bn", num_classes=10, small_input=True)
    >>> model(get_dummy_input("vgg16_bn", small_input=True)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .mobilenet import mobilenet_v2
from .registry import check_positive_int, register_model
from .resnet import resnet18, resnet50
from .transformer import transformer_classifier

__all__ = [
    "DigitsCNN",
    "VGG",
    "digits_cnn",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
    "transformer_classifier",
    "vgg16_bn",
]


class DigitsCNN(nn.Module):
    """Three Conv-BN-ReLU layers, a max-pool, adaptive pool to 4x4, flatten and ``fc``.

    Works for any square input of at least 2x2 (8x8 digits, 28x28 MNIST, ...); the
    classifier always sees ``64 * 4 * 4`` features.

    Example:
        >>> DigitsCNN()(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(64 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def digits_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> DigitsCNN:
    """Small CNN for 8x8 digits (or 28x28 MNIST with ``image_size=28``).

    Args:
        num_classes: Output classes.
        in_channels: Input image channels.
        image_size: Side of the square input; the network adapts to any size >= 2, the
            value is validated and used by :func:`get_dummy_input`.

    Example:
        >>> digits_cnn(image_size=28)(torch.randn(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    if check_positive_int("image_size", image_size) < 2:
        raise ValueError(f"image_size must be >= 2, got {image_size!r}")
    return DigitsCNN(num_classes=num_classes, in_channels=in_channels)


# (output channels, number of 3x3 Conv-BN-ReLU layers) per stage; each stage ends in a 2x2 max-pool.
_VGG16_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG(nn.Module):
    """VGG with batch norm: ``features`` (Conv-BN-ReLU / MaxPool), ``avgpool``, ``classifier``.

    Args:
        stages: ``(channels, num_convs)`` per stage; every stage ends with a 2x2 max-pool.
        num_classes: Output classes.
        in_channels: Input image channels.
        small_input: Pool to 1x1 and use a 512-wide classifier (CIFAR-style, cheap on
            32x32 inputs) instead of 7x7 and 4096-wide.

    Example:
        >>> VGG([(8, 1)], num_classes=3, small_input=True).classifier[-1]
        Linear(in_features=512, out_features=3, bias=True)
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int], ...] | list[tuple[int, int]],
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out, num_convs in stages:
            for _ in range(num_convs):
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        pool, hidden = (1, 512) if small_input else (7, 4096)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, small_input: bool = False) -> VGG:
    """VGG-16 with batch norm; 138,365,992 parameters with 1000 classes.

    Args:
        num_classes: Output classes.
        in_channels: Input image channels.
        small_input: CIFAR-style head (1x1 pool, 512-wide classifier) for 32x32 inputs.

    Example:
        >>> vgg16_bn(num_classes=10, small_input=True).classifier[0]
        Linear(in_features=512, out_features=512, bias=True)
    """
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    return VGG(_VGG16_STAGES, num_classes=num_classes, in_channels=in_channels, small_input=small_input)


# ----------------------------------------------------------------------------- dummy inputs


def _image_input(
    default_size: int, small_size: int | None = None, default_channels: int = 3
) -> Callable[..., torch.Tensor]:
    """Return ``fn(batch_size, **model_kwargs)`` giving a seeded ``[B, C, H, W]`` float batch."""

    def make(
        batch_size: int,
        *,
        in_channels: int | None = None,
        image_size: int | None = None,
        small_input: bool = False,
        **_model_kwargs: Any,
    ) -> torch.Tensor:
        channels = check_positive_int(
            "in_channels", in_channels if in_channels is not None else default_channels
        )
        size = image_size
        if size is None:
            size = small_size if (small_input and small_size is not None) else default_size
        check_positive_int("image_size", size)
        gen = torch.Generator().manual_seed(0)
        return torch.randn(batch_size, channels, size, size, generator=gen)

    return make


def _token_input(
    batch_size: int,
    *,
    vocab_size: int = 1000,
    max_len: int = 64,
    seq_len: int = 16,
    **_model_kwargs: Any,
) -> torch.Tensor:
    """Seeded LongTensor of token ids ``[B, seq_len]`` for the Transformer classifier."""
    check_positive_int("vocab_size", vocab_size)
    if check_positive_int("seq_len", seq_len) > max_len:
        raise ValueError(f"seq_len ({seq_len}) must not exceed max_len ({max_len})")
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)


register_model("digits_cnn", digits_cnn, dummy_input=_image_input(8, default_channels=1))
register_model("resnet18", resnet18, dummy_input=_image_input(224, 32))
register_model("resnet50", resnet50, dummy_input=_image_input(224, 32))
register_model("mobilenet_v2", mobilenet_v2, dummy_input=_image_input(224))
register_model("vgg16_bn", vgg16_bn, dummy_input=_image_input(224, 32))
register_model("transformer_classifier", transformer_classifier, dummy_input=_token_input)
