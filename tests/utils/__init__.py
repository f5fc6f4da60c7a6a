"""Factories and assertions shared by the pruning tests.

Everything here is small and deterministic: models come from the zoo (seeded), training data is
a handful of random batches, and training loops count the optimizer steps they really take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from search.pruning import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    SlimPruner,
    TaylorFOWeightPruner,
    TorchEvaluator,
)
from search.zoo import get_dummy_input, get_model

# -- models -----------------------------------------------------------------------------------------

#: zoo models the pruner tests run on, with the (small) kwargs that keep them fast on CPU.
ZOO_MODELS: dict[str, dict[str, Any]] = {
    "digits_cnn": {},
    "resnet18": {"small_input": True, "num_classes": 10},
    "transformer_classifier": {
        "num_classes": 4,
        "vocab_size": 50,
        "d_model": 32,
        "nhead": 4,
        "num_layers": 1,
        "dim_feedforward": 48,
    },
}

#: more zoo models, for the tests marked slow (depthwise convs; conv biases before BatchNorm).
SLOW_ZOO_MODELS: dict[str, dict[str, Any]] = {
    "mobilenet_v2": {"num_classes": 10, "width_mult": 0.5},
    "vgg16_bn": {"small_input": True, "num_classes": 10},
}
_ALL_MODELS = {**ZOO_MODELS, **SLOW_ZOO_MODELS}
_INPUT_KWARGS: dict[str, dict[str, Any]] = {"mobilenet_v2": {"image_size": 32}}

#: the layer type a channel pruner selects in each model.
PRUNED_TYPE = {
    "digits_cnn": "Conv2d",
    "resnet18": "Conv2d",
    "transformer_classifier": "Linear",
    "mobilenet_v2": "Conv2d",
    "vgg16_bn": "Conv2d",
}


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A freshly initialised zoo model in eval mode (same weights for the same seed)."""
    torch.manual_seed(seed)
    return get_model(name, **_ALL_MODELS[name]).eval()


def model_input(name: str, batch_size: int = 4) -> Tensor:
    return get_dummy_input(name, batch_size=batch_size, **_ALL_MODELS[name], **_INPUT_KWARGS.get(name, {}))


def num_classes(name: str) -> int:
    return int(_ALL_MODELS[name].get("num_classes", 10))


def random_batches(name: str, n: int = 2, batch_size: int = 8, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``n`` (input, label) batches for a zoo model; inputs are seeded like the dummy input."""
    gen = torch.Generator().manual_seed(seed)
    x = model_input(name, batch_size * n)
    y = torch.randint(0, num_classes(name), (batch_size * n,), generator=gen)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


# -- evaluators -----------------------------------------------------------------------------------


def cross_entropy_step(batch: tuple[Tensor, Tensor], model: nn.Module) -> Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@dataclass
class CountingLoop:
    """A ``training_func`` that cycles over ``batches`` and counts the optimizer steps it completes.

    With ``honour_max_steps=False`` it ignores ``max_steps`` and would run ``limit`` steps, like a
    user's loop written for plain training; the evaluator has to stop it.
    """

    batches: list[Any]
    honour_max_steps: bool = True
    limit: int = 1000
    steps: int = 0
    calls: int = 0
    seen_max_steps: list[int | None] = field(default_factory=list)

    def __call__(
        self,
        model: nn.Module,
        optimizers: torch.optim.Optimizer,
        training_step: Callable[[Any, nn.Module], Tensor],
        lr_schedulers: Any,
        max_steps: int | None,
        max_epochs: int | None,
    ) -> None:
        self.calls += 1
        self.seen_max_steps.append(max_steps)
        budget = max_steps if (self.honour_max_steps and max_steps is not None) else self.limit
        model.train()
        for i in range(budget):
            batch = self.batches[i % len(self.batches)]
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()
            self.steps += 1


def make_evaluator(
    model: nn.Module,
    batches: list[Any],
    *,
    lr: float = 0.01,
    training_step: Callable[[Any, nn.Module], Tensor] = cross_entropy_step,
    honour_max_steps: bool = True,
) -> tuple[TorchEvaluator, CountingLoop]:
    """A TorchEvaluator over plain SGD and a :class:`CountingLoop` (returned to inspect)."""
    loop = CountingLoop(batches, honour_max_steps=honour_max_steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return TorchEvaluator(loop, optimizer, training_step), loop


# -- pruners ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunerSpec:
    """How to build one pruner class for a test."""

    name: str
    cls: type
    data_dependent: bool
    channel_wise: bool

    def config(self, model_name: str, ratio: float) -> list[dict[str, Any]]:
        if self.cls is SlimPruner:
            return [{"op_types": ["BatchNorm2d"], "sparse_ratio": ratio}]
        return [{"op_types": [PRUNED_TYPE[model_name]], "sparse_ratio": ratio}]

    def build(self, model: nn.Module, config_list: list[dict[str, Any]], batches: list[Any] | None = None,
              training_steps: int = 2, **kwargs: Any) -> Any:
        if not self.data_dependent:
            return self.cls(model, config_list, **kwargs)
        evaluator, _ = make_evaluator(model, batches or [])
        return self.cls(model, config_list, evaluator, training_steps, **kwargs)


PRUNERS: dict[str, PrunerSpec] = {
    spec.name: spec
    for spec in (
        PrunerSpec("level", LevelPruner, data_dependent=False, channel_wise=False),
        PrunerSpec("l1", L1NormPruner, data_dependent=False, channel_wise=True),
        PrunerSpec("l2", L2NormPruner, data_dependent=False, channel_wise=True),
        PrunerSpec("fpgm", FPGMPruner, data_dependent=False, channel_wise=True),
        PrunerSpec("slim", SlimPruner, data_dependent=True, channel_wise=True),
        PrunerSpec("taylor", TaylorFOWeightPruner, data_dependent=True, channel_wise=True),
        PrunerSpec("apoz", ActivationAPoZRankPruner, data_dependent=True, channel_wise=True),
        PrunerSpec("mean_rank", ActivationMeanRankPruner, data_dependent=True, channel_wise=True),
    )
}
DATA_PRUNERS = [name for name, spec in PRUNERS.items() if spec.data_dependent]
CHANNEL_PRUNERS = [name for name, spec in PRUNERS.items() if spec.channel_wise]


def pruner_model_pairs(models: Iterable[str] = ZOO_MODELS) -> list[tuple[str, str]]:
    """Every pruner on every given zoo model it applies to (Slim needs BatchNorm: not the transformer)."""
    return [
        (p, m)
        for p in PRUNERS
        for m in models
        if not (p == "slim" and m == "transformer_classifier")
    ]


# -- mask inspection --------------------------------------------------------------------------------


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def channel_keep(mask: Tensor, dim: int = 0) -> Tensor:
    """Per-channel keep flags of a channel mask; asserts the mask is constant along every other axis."""
    moved = mask.movedim(dim, 0).reshape(mask.shape[dim], -1)
    assert bool((moved == moved[:, :1]).all()), "mask is not constant over a channel's elements"
    return moved[:, 0].bool()


def masked_count(mask: Tensor) -> int:
    return int((mask == 0).sum())


def is_binary(mask: Tensor) -> bool:
    return bool(((mask == 0) | (mask == 1)).all())


def masked_weights_model(name: str, pruned: nn.Module, masks: dict[str, dict[str, Tensor]]) -> nn.Module:
    """A fresh, never-wrapped zoo model holding ``pruned``'s weights with the masks multiplied in."""
    reference = get_model(name, **_ALL_MODELS[name]).eval()
    reference.load_state_dict(pruned.state_dict())
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for module_name, targets in masks.items():
            for target, mask in targets.items():
                getattr(modules[module_name], target).mul_(mask)
    return reference


def clone_masks(masks: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    return {m: {t: v.detach().clone() for t, v in targets.items()} for m, targets in masks.items()}


def following_norm(model: nn.Module, module_name: str) -> str | None:
    """The BatchNorm registered right after a conv: ``conv1``→``bn1``, ``features.0``→``features.1``."""
    prefix, _, last = module_name.rpartition(".")
    if last.startswith("conv") and last[4:].isdigit():
        candidate = f"bn{last[4:]}"
    elif last.isdigit():
        candidate = str(int(last) + 1)
    else:
        return None
    candidate = f"{prefix}.{candidate}" if prefix else candidate
    module = dict(model.named_modules()).get(candidate)
    return candidate if isinstance(module, nn.modules.batchnorm._BatchNorm) else None


# -- search specs -------------------------------------------------------------------------------------
def netadapt_run_ahead_spec(slots: int) -> dict[str, Any]:
    """A NetAdapt experiment on the digits CNN (real trials, 1 finetune epoch, 8 trials) in which, with 2 slots,
    NetAdapt runs ahead of its decisions and loses one of its bets (a task is discarded)."""
    return {
        "name": "netadapt-ahead", "model": {"factory": "search.zoo:digits_cnn"}, "data": {"name": "digits"},
        "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.75}]},
        "algorithm": {"name": "netadapt", "max_trials": 8, "reduction_per_iteration": 0.25},
        "trial": {"finetune_epochs": 1, "pretrain_epochs": 1, "batch_size": 64},
        "objective": {"metric": "loss", "best_result_mode": "minimize"},
        "constraints": {"max_flops_ratio": 0.15}, "resources": {"max_concurrent_trials": slots},
    }
