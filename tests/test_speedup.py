"""ModelSpeedup on every zoo model and every graph pattern of :mod:`search.zoo.patterns`.

For each model and channel sparsity (L1NormPruner on Conv/Linear layers, the classifier left
alone) the compact model must compute what the masked model computes (checked here against an
independent masked copy, on the dummy input and on a fresh input), must be smaller (or the
report must say why not), and the report must match the model's new shapes. Residual models
also run with dependency groups (``auto_set_dependency_group_ids``) so they shrink for real.
Then: report rows, error paths, training mode, determinism.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import Tensor, nn

from search.config import channel_dims
from search.metrics import count_flops, count_params
from search.pruning import L1NormPruner
from search.speedup import ModelSpeedup, SpeedupError, auto_set_dependency_group_ids
from search.zoo import get_dummy_input, get_model
from search.zoo.patterns import PATTERNS

PRUNED_TYPES = ("Conv1d", "Conv2d", "ConvTranspose2d", "Linear")
RATIOS = (0.3, 0.5, 0.7)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """These models are tiny: one intra-op thread is faster than two fighting for 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- cases ------------------------------------------------------------------------------------------------------


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give norm layers trained-looking (non-identity) affine parameters and statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def _zoo(name: str, model_kwargs: dict[str, Any], input_kwargs: dict[str, Any]) -> Callable[[], tuple[nn.Module, Any]]:
    def build() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        return _trained_like(get_model(name, **model_kwargs)), get_dummy_input(name, **input_kwargs)

    return build


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], tuple[nn.Module, Any]]
    head: str = "head"
    op_types: tuple[str, ...] = PRUNED_TYPES
    #: residual adds: also run with dependency groups
    residual: bool = False
    #: {module: substring of the reason its masked channels are kept}: the report must say why
    explains: dict[str, str] = field(default_factory=dict)
    #: reason for a strict xfail (a speedup bug), or None
    bug: str | None = None
    #: a zoo model (slower): 50% runs only in the slow suite
    heavy: bool = False


CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case("digits_cnn", _zoo("digits_cnn", {}, {}), head="fc"),
        Case("resnet18", _zoo("resnet18", {"small_input": True, "num_classes": 10}, {"small_input": True}),
             head="fc", residual=True, heavy=True),
        Case("resnet50", _zoo("resnet50", {"small_input": True, "num_classes": 10}, {"small_input": True}),
             head="fc", residual=True, heavy=True),
        Case("vgg16_bn", _zoo("vgg16_bn", {"small_input": True, "num_classes": 10}, {"small_input": True}),
             head="classifier.6", heavy=True),
        Case("mobilenet_v2", _zoo("mobilenet_v2", {"num_classes": 10}, {"image_size": 32}),
             head="classifier.1", residual=True, heavy=True),
        Case("transformer_classifier",
             _zoo("transformer_classifier", {"num_classes": 4, "vocab_size": 50}, {"vocab_size": 50})),
        Case("concat", PATTERNS["concat"]),
        Case("grouped_conv", PATTERNS["grouped_conv"], explains={"grouped": "grouped convolution"}),
        Case("depthwise", PATTERNS["depthwise"]),
        Case("residual", PATTERNS["residual"], residual=True),
        Case("se", PATTERNS["se"]),
        Case("unet_skip", PATTERNS["unet_skip"]),
        Case("channel_shuffle", PATTERNS["channel_shuffle"]),
        Case("attention", PATTERNS["attention"]),
        Case("attention_sdpa", PATTERNS["attention_sdpa"], explains={"q_proj": "head size", "k_proj": "head size"}),
        Case("attention_size_scale", PATTERNS["attention_size_scale"],
             explains={"q_proj": "size is used as a number"}),
        Case("flatten_linear", PATTERNS["flatten_linear"]),
        Case("shared_module", PATTERNS["shared_module"]),
        Case("conv1d", PATTERNS["conv1d"]),
        Case("conv_transpose", PATTERNS["conv_transpose"]),
        Case("embedding", PATTERNS["embedding"], op_types=(*PRUNED_TYPES, "Embedding")),
        Case("layer_norm_mlp", PATTERNS["layer_norm_mlp"], explains={"fc1": "LayerNorm"}),
        Case("group_norm", PATTERNS["group_norm"], explains={"conv1": "GroupNorm"}),
        Case("untraceable", PATTERNS["untraceable"], explains={"wide": "control flow"}),
        Case("unknown_op", PATTERNS["unknown_op"], explains={"conv2": "roll"}),
        Case("pixel_shuffle", PATTERNS["pixel_shuffle"]),
        Case("fpn", PATTERNS["fpn"], residual=True),
        Case("text_cnn", PATTERNS["text_cnn"]),
        Case("recurrent", PATTERNS["recurrent"], op_types=("Linear",)),
    ]
}


def case_params(ratios: tuple[float, ...] = RATIOS, *, only: Callable[[Case], bool] = lambda c: True) -> list[Any]:
    """``(case, ratio)`` params: 50% of heavy models is slow; known speedup bugs are strict xfails."""
    params = []
    for case in CASES.values():
        if not only(case):
            continue
        for ratio in ratios:
            marks: list[Any] = []
            if case.heavy and ratio == 0.5:
                marks.append(pytest.mark.slow)
            if case.bug:
                marks.append(pytest.mark.xfail(strict=True, reason=case.bug))
            params.append(pytest.param(case.name, ratio, marks=marks, id=f"{case.name}-{int(ratio * 100)}"))
    return params


# -- helpers ----------------------------------------------------------------------------------------------------


@dataclass
class Compressed:
    model: nn.Module  # the compact model
    masked: nn.Module  # an independent copy of the masked model
    dummy_input: Any
    masks: dict[str, dict[str, Tensor]]
    speedup: ModelSpeedup
    params_before: int


def config_for(case: Case, model: nn.Module, x: Any, ratio: float, dependency: bool = False) -> list[dict[str, Any]]:
    config: list[dict[str, Any]] = [
        {"op_types": list(case.op_types), "sparse_ratio": ratio},
        {"op_names": [case.head], "exclude": True},
    ]
    if dependency:
        config = auto_set_dependency_group_ids(model, config, x)
    return config


def apply_masks(model: nn.Module, masks: dict[str, dict[str, Tensor]]) -> nn.Module:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, targets in masks.items():
            for target, mask in targets.items():
                getattr(modules[name], target).mul_(mask)
    return model


def compress(
    case: Case, ratio: float, *, dependency: bool = False, align_norms: bool = True, build: Any = None
) -> Compressed:
    """Prune ``case`` at ``ratio``, keep an independent masked copy, speed the model up."""
    model, x = (build or case.build)()
    config = config_for(case, model, x, ratio, dependency)
    pruner = L1NormPruner(model, config, align_norms=align_norms)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    masked = apply_masks(copy.deepcopy(model), masks)
    params_before = count_params(model)
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    return Compressed(model, masked, x, masks, speedup, params_before)


#: big models are rebuilt rather than kept (hundreds of MB each with their masked copies)
_UNCACHED = {"resnet50", "vgg16_bn"}


def cached_compress(name: str, ratio: float) -> Compressed:
    """:func:`compress` with the defaults, once per session (callers must not modify the result)."""
    if name in _UNCACHED:
        return compress(CASES[name], ratio)
    return _cached_compress(name, ratio)


@functools.cache
def _cached_compress(name: str, ratio: float) -> Compressed:
    return compress(CASES[name], ratio)


def _call(model: nn.Module, x: Any) -> Any:
    with torch.no_grad():
        if isinstance(x, dict):
            return model(**x)
        if isinstance(x, tuple | list):
            return model(*x)
        return model(x)


def fresh_like(x: Any, seed: int = 1, batch: int = 3) -> Any:
    """A new input like ``x`` with another batch size (new values; token ids stay in range)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(x, Tensor):
        shape = (batch, *x.shape[1:])
        if x.is_floating_point():
            return torch.randn(shape, generator=gen, dtype=x.dtype)
        return torch.randint(0, int(x.max()) + 1, shape, generator=gen, dtype=x.dtype)
    if isinstance(x, dict):
        return {k: fresh_like(v, seed, batch) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(fresh_like(v, seed, batch) for v in x)
    return x


def max_diff(a: Any, b: Any) -> tuple[float, float]:
    """(max |a - b|, max |a|) over matching tensor outputs."""
    ta, tb = [], []
    torch.fx.node.map_aggregate(a, lambda t: ta.append(t) if isinstance(t, Tensor) else None)
    torch.fx.node.map_aggregate(b, lambda t: tb.append(t) if isinstance(t, Tensor) else None)
    assert len(ta) == len(tb)
    diff = scale = 0.0
    for u, v in zip(ta, tb, strict=True):
        assert u.shape == v.shape
        diff = max(diff, float((u.float() - v.float()).abs().max()))
        scale = max(scale, float(u.float().abs().max()))
    return diff, scale


def assert_exact(c: Compressed) -> float:
    """The compact model equals the masked copy on the dummy input and on a fresh batch of 3."""
    worst = 0.0
    for x in (c.dummy_input, fresh_like(c.dummy_input)):
        diff, scale = max_diff(_call(c.masked, x), _call(c.model, x))
        assert diff <= 1e-4 * max(1.0, scale), f"max |diff| {diff:.3e} at output scale {scale:.3e}"
        if scale > 0:  # also relative to the output's own (possibly tiny) scale
            assert diff <= 1e-3 * scale, f"max |diff| {diff:.3e} at output scale {scale:.3e}"
        worst = max(worst, diff)
    return worst


def assert_report_consistent(c: Compressed) -> None:
    """Report totals match the model; each row's removed/kept match the module's new shape."""
    report = c.speedup.report
    assert report is not None
    assert report.params_before == c.params_before
    assert report.params_after == count_params(c.model)
    assert report.flops_after == count_flops(c.model, c.dummy_input)
    reference = _call(c.masked, c.dummy_input)
    assert report.max_abs_diff <= 1e-4 * max(1.0, max_diff(reference, reference)[1])
    modules = dict(c.model.named_modules())
    for row in report.rows:
        module = modules[row.module]
        out_dim, _ = channel_dims(module)
        if isinstance(module, nn.modules.batchnorm._NormBase):
            out_dim = 0
        assert module.weight.shape[out_dim] == row.channels - row.removed, row
        masked_removed = row.requested - sum(row.kept.values())
        assert 0 <= masked_removed <= row.removed, row
        assert all(reason for reason in row.kept), row


def assert_smaller_or_explained(case: Case, c: Compressed) -> None:
    report = c.speedup.report
    assert report is not None
    assert report.params_after < report.params_before, str(report)
    assert report.flops_after < report.flops_before, str(report)
    for module, why in case.explains.items():
        row = report.row(module)
        assert row.requested > row.removed, str(report)
        assert any(why.lower() in reason.lower() for reason in row.kept), str(report)


# -- every model x ratio ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "ratio"), case_params())
def test_compact_model_is_exact_and_smaller(name: str, ratio: float) -> None:
    case = CASES[name]
    c = cached_compress(name, ratio)
    assert_exact(c)
    assert_smaller_or_explained(case, c)
    assert_report_consistent(c)


def _dependency_params() -> list[Any]:
    params = []
    for case in CASES.values():
        if case.residual:
            for ratio in (0.3, 0.7):
                marks = [pytest.mark.slow] if case.name == "resnet50" or (case.heavy and ratio == 0.3) else []
                params.append(pytest.param(case.name, ratio, marks=marks, id=f"{case.name}-{int(ratio * 100)}"))
    return params


@pytest.mark.parametrize(("name", "ratio"), _dependency_params())
def test_residual_models_shrink_with_dependency_groups(name: str, ratio: float) -> None:
    """With the layers feeding each residual add in one dependency group, their channels go."""
    case = CASES[name]
    plain = cached_compress(name, ratio).speedup.report
    grouped = compress(case, ratio, dependency=True)
    assert_exact(grouped)
    assert_report_consistent(grouped)
    report = grouped.speedup.report
    assert report is not None and plain is not None
    assert report.params_after < report.params_before
    # without groups, residual partners keep each other's channels; with them, every masked channel goes
    assert any(row.kept for row in plain.rows), str(plain)
    assert all(not row.kept and row.requested <= row.removed for row in report.rows), str(report)


BN_CASES = [
    "digits_cnn",
    "depthwise",
    "residual",
    "conv1d",
    pytest.param("resnet18", marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", BN_CASES)
def test_without_norm_alignment_bn_shifts_stay_exact(name: str) -> None:
    """``align_norms=False``: masked convs leave BN shifts (constants); the result is still exact."""
    case = CASES[name]
    c = compress(case, 0.5, align_norms=False)
    assert_exact(c)
    assert_report_consistent(c)
    report = c.speedup.report
    assert report is not None
    for row in report.rows:  # kept channels are explained
        assert row.requested - sum(row.kept.values()) <= row.removed


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn"])
def test_full_size_models(name: str) -> None:
    case = CASES[name]
    build = _zoo(name, {"num_classes": 1000}, {})
    for ratio in (0.3, 0.7):
        c = compress(case, ratio, dependency=case.residual, build=build)
        assert_exact(c)
        assert_smaller_or_explained(case, c)
        assert_report_consistent(c)


# -- report rows ------------------------------------------------------------------------------------------------


def _channel_mask(weight: Tensor, keep: list[int], dim: int = 0) -> Tensor:
    mask = torch.zeros_like(weight)
    index = [slice(None)] * weight.dim()
    index[dim] = keep  # type: ignore[call-overload]
    mask[tuple(index)] = 1
    return mask


def test_report_rows_requested_removed_and_reasons() -> None:
    model, x = PATTERNS["residual"]()
    masks = {
        # conv1 is inside the block: all 6 masked channels go
        "conv1": {"weight": _channel_mask(model.conv1.weight, list(range(10)))},
        "bn1": {"weight": _channel_mask(model.bn1.weight, list(range(10))),
                "bias": _channel_mask(model.bn1.bias, list(range(10)))},
        # conv2 feeds the residual add with the unmasked stem: nothing can go
        "conv2": {"weight": _channel_mask(model.conv2.weight, list(range(12)))},
        "bn2": {"weight": _channel_mask(model.bn2.weight, list(range(12))),
                "bias": _channel_mask(model.bn2.bias, list(range(12)))},
    }
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    assert report is not None
    conv1, conv2 = report.row("conv1"), report.row("conv2")
    assert (conv1.channels, conv1.requested, conv1.removed, conv1.kept) == (16, 6, 6, {})
    assert (conv2.channels, conv2.requested, conv2.removed) == (16, 4, 0)
    assert sum(conv2.kept.values()) == 4 and all("stem" in reason for reason in conv2.kept), conv2
    assert model.conv1.out_channels == 10 and model.bn1.num_features == 10 and model.conv2.in_channels == 10
    assert model.conv2.out_channels == 16
    assert "conv2" in str(report) and report.to_dict()["params_before"] == report.params_before
    with pytest.raises(KeyError):
        report.row("head")


def test_report_names_unsupported_operations() -> None:
    c = cached_compress("unknown_op", 0.5)
    report = c.speedup.report
    assert report is not None
    assert any("roll" in u for u in report.unsupported)
    row = report.row("conv2")
    assert row.removed == 0 and row.requested == 8 and list(row.kept) == [next(iter(row.kept))]
    assert "roll" in next(iter(row.kept))
    assert report.row("conv1").removed == 8 and report.row("conv3").removed == 8


def test_untraceable_model_uses_the_concrete_tracer() -> None:
    c = cached_compress("untraceable", 0.5)
    report = c.speedup.report
    assert report is not None and report.trace_method == "concrete"
    assert c.model.conv1.out_channels == 8 and c.model.wide.in_channels == 8
    # ``int(x.shape[1] > 2)`` reads wide's channel count: it stays, and the report says why
    assert c.model.wide.out_channels == 16
    assert all("control flow" in reason for reason in report.row("wide").kept)


def test_fully_masked_layer_keeps_one_channel() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    masks = {"0": {"weight": torch.zeros(8, 4), "bias": torch.zeros(8)}}
    masked = apply_masks(copy.deepcopy(model), masks)
    x = torch.randn(3, 4)
    ModelSpeedup(model, x, masks).speedup_model()
    assert model[0].out_features == 1 and model[2].in_features == 1
    assert torch.allclose(model(x), masked(x))


def test_no_masks_leaves_the_model_alone() -> None:
    model, x = PATTERNS["concat"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speedup = ModelSpeedup(model, x, {})
    speedup.speedup_model()
    assert speedup.report is not None and speedup.report.params_after == speedup.report.params_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- errors -----------------------------------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> tuple[str, dict[str, Tensor]]:
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, snapshot: tuple[str, dict[str, Tensor]]) -> None:
    text, state = snapshot
    assert repr(model) == text
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)


def _bad_masks(kind: str, model: nn.Module) -> tuple[Any, dict[str, dict[str, Tensor]], str]:
    """(pruner to unwrap afterwards or None, masks, expected message fragment)."""
    if kind == "wrapped":
        pruner = L1NormPruner(model, [{"op_names": ["branch_a"], "sparse_ratio": 0.5}])
        _, masks = pruner.compress()
        return pruner, masks, "unwrap"
    if kind == "wrong_shape":
        return None, {"branch_a": {"weight": torch.ones(4, 3, 3, 3)}}, "shape"
    if kind == "unknown_module":
        return None, {"nope": {"weight": torch.ones(1)}}, "nope"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["wrapped", "wrong_shape", "unknown_module"])
def test_bad_masks_raise_and_leave_the_model_unchanged(kind: str) -> None:
    model, x = PATTERNS["concat"]()
    pruner, masks, fragment = _bad_masks(kind, model)
    snapshot = _snapshot(model)
    with pytest.raises((SpeedupError, ValueError), match=fragment):
        ModelSpeedup(model, x, masks).speedup_model()
    _assert_unchanged(model, snapshot)
    if pruner is not None:
        pruner.unwrap_model()


@pytest.mark.parametrize("kind", ["wrapped", "wrong_shape"])
def test_bad_masks_raise_speedup_error(kind: str) -> None:
    model, x = PATTERNS["concat"]()
    pruner, masks, _ = _bad_masks(kind, model)
    try:
        with pytest.raises(SpeedupError):
            ModelSpeedup(model, x, masks).speedup_model()
    finally:
        if pruner is not None:
            pruner.unwrap_model()


def test_activation_masks_give_a_clear_error() -> None:
    model, x = PATTERNS["concat"]()
    snapshot = _snapshot(model)
    masks = {"fuse": {"_output_": torch.ones(1, 16, 16, 16)}}
    with pytest.raises(SpeedupError, match=r"fuse\._output_.*activations are not supported"):
        ModelSpeedup(model, x, masks).speedup_model()
    _assert_unchanged(model, snapshot)


def test_failed_verification_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the compact model differed, the model is restored (masked, full size) and still runs."""
    case = CASES["concat"]
    model, x = case.build()
    pruner = L1NormPruner(model, config_for(case, model, x, 0.5))
    _, masks = pruner.compress()
    pruner.unwrap_model()
    apply_masks(model, masks)
    snapshot = _snapshot(model)
    expected = _call(model, x)
    monkeypatch.setattr(ModelSpeedup, "_compare", lambda self, reference, result: None)
    with pytest.raises(SpeedupError, match="restored"):
        ModelSpeedup(model, x, masks).speedup_model()
    _assert_unchanged(model, snapshot)
    assert torch.equal(_call(model, x), expected)


# -- modes and determinism -----------------------------------------------------------------------------------------


def test_training_mode_is_restored() -> None:
    model, x = PATTERNS["depthwise"]()
    model.train()
    case = CASES["depthwise"]
    pruner = L1NormPruner(model, config_for(case, model, x, 0.5))
    _, masks = pruner.compress()
    pruner.unwrap_model()
    ModelSpeedup(model, x, masks).speedup_model()
    assert model.training and all(m.training for m in model.modules())


def test_mixed_module_modes_are_restored() -> None:
    model, x = PATTERNS["depthwise"]()
    model.train()
    model.stem[1].eval()  # a frozen BN while fine-tuning
    masks = {"pw1": {"weight": _channel_mask(model.pw1.weight, list(range(8)))}}
    ModelSpeedup(model, x, masks).speedup_model()
    assert model.training and not model.stem[1].training


@pytest.mark.parametrize(
    "name", ["digits_cnn", "channel_shuffle", "transformer_classifier", pytest.param("resnet18", marks=pytest.mark.slow)]
)
def test_speedup_is_deterministic(name: str) -> None:
    case = CASES[name]
    first = compress(case, 0.5)
    second = compress(case, 0.5)
    assert all(torch.equal(first.masks[m][t], second.masks[m][t]) for m in first.masks for t in first.masks[m])
    s1, s2 = first.model.state_dict(), second.model.state_dict()
    assert {k: v.shape for k, v in s1.items()} == {k: v.shape for k, v in s2.items()}
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert first.speedup.report is not None and second.speedup.report is not None
    assert first.speedup.report.rows == second.speedup.report.rows


# -- known speedup bugs: minimal repros (strict xfails name the bug; remove the mark once fixed) ----------------


def _row0_masked(weight: Tensor) -> Tensor:
    """Mask output channel 0 of a conv/linear weight (its bias stays: the channel becomes a constant)."""
    mask = torch.ones_like(weight)
    mask[0] = 0
    return mask


def _assert_speedup_exact(model: nn.Module, x: Any, masks: dict[str, dict[str, Tensor]]) -> ModelSpeedup:
    masked = apply_masks(copy.deepcopy(model), masks)
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()  # raises SpeedupError today
    diff, scale = max_diff(_call(masked, x), _call(model, x))
    assert diff <= 1e-4 * max(1.0, scale)
    return speedup


def test_bug_size_used_as_a_number() -> None:
    class SizeAsNumber(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = torch.relu(self.a(x))
            return self.b(h / h.size(-1))  # the feature count as a number

    model = SizeAsNumber()
    keep = [0, 2, 4, 6]
    masks = {"a": {"weight": _channel_mask(model.a.weight, keep), "bias": _channel_mask(model.a.bias, keep)}}
    _assert_speedup_exact(model, torch.randn(2, 4), masks)


def test_bug_constant_folding_into_a_shared_module() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.shared, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            x = torch.relu(self.stem(x))
            x = torch.relu(self.shared(x))
            return self.head(torch.relu(self.shared(x)))

    torch.manual_seed(0)
    model = Shared()
    with torch.no_grad():
        model.stem.bias.fill_(0.5)
        model.shared.bias.fill_(0.3)
    masks = {"stem": {"weight": _row0_masked(model.stem.weight)}, "shared": {"weight": _row0_masked(model.shared.weight)}}
    _assert_speedup_exact(model, torch.randn(1, 3, 4, 4), masks)


@pytest.mark.parametrize("op", ["add_alpha", "rsub"])
def test_bug_constant_folding_of_add_variants(op: str) -> None:
    class AddVariant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            a, b = self.a(x), self.b(x)
            return self.head(torch.add(a, b, alpha=2.0) if op == "add_alpha" else torch.rsub(a, b))

    torch.manual_seed(0)
    model = AddVariant()
    masks = {"a": {"weight": _row0_masked(model.a.weight)}, "b": {"weight": _row0_masked(model.b.weight)}}
    _assert_speedup_exact(model, torch.randn(1, 3, 4, 4), masks)


def test_bug_in_place_mutation() -> None:
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            y.add_(1.0)
            return self.head(y)

    model = InPlace()
    masks = {"conv": {"weight": _channel_mask(model.conv.weight, [0, 1, 2, 3]),
                      "bias": _channel_mask(model.conv.bias, [0, 1, 2, 3])}}
    _assert_speedup_exact(model, torch.randn(1, 3, 4, 4), masks)


def test_bug_tied_weights_stay_tied() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.fc = nn.Embedding(20, 8), nn.Linear(8, 8)
            self.out = nn.Linear(8, 20, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, ids: Tensor) -> Tensor:
            return self.out(torch.relu(self.fc(self.embed(ids))))

    torch.manual_seed(0)
    model = Tied()
    masks = {"fc": {"weight": _channel_mask(model.fc.weight, [0, 1, 2, 3]),
                    "bias": _channel_mask(model.fc.bias, [0, 1, 2, 3])}}
    speedup = _assert_speedup_exact(model, torch.randint(0, 20, (2, 5)), masks)
    assert speedup.report is not None and speedup.report.params_after <= speedup.report.params_before
    assert model.out.weight is model.embed.weight


def test_bug_report_explains_the_channel_kept_to_avoid_an_empty_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    speedup = ModelSpeedup(model, torch.randn(3, 4), {"0": {"weight": torch.zeros(8, 4), "bias": torch.zeros(8)}})
    speedup.speedup_model()
    assert speedup.report is not None
    assert "no tensor depends on it" not in speedup.report.row("0").kept


def test_bug_report_lists_masked_modules_outside_the_trace() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.a(x) if x.shape[0] > 1 else self.b(x))

    model = Branchy()
    masks = {name: {"weight": _channel_mask(getattr(model, name).weight, [4, 5, 6, 7])} for name in ("a", "b")}
    speedup = ModelSpeedup(model, torch.randn(3, 4), masks)
    speedup.speedup_model()
    assert speedup.report is not None
    speedup.report.row("b")


@pytest.mark.parametrize("transposed", [False, True])
def test_fine_grained_mask_entries_are_applied_and_only_whole_channels_go(transposed: bool) -> None:
    """A mask that is not channel-shaped (some single weights masked) is multiplied in as is; only its
    all-zero output channels count as requested and go; the compact model equals the masked one."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 6, 3, padding=1) if transposed else nn.Conv2d(4, 6, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(6, 3, 1)).eval()
    out_dim, _ = channel_dims(conv)
    mask = torch.ones_like(conv.weight)
    mask.select(out_dim, 1).zero_()
    mask.select(out_dim, 4).zero_()
    mask.select(out_dim, 2).select(0, 0).zero_()  # channel 2: only its slice over input channel 0
    masks = {"0": {"weight": mask, "bias": (mask.movedim(out_dim, 0).flatten(1).amax(1) > 0).float()}}
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[0].weight.mul_(mask)
        reference[0].bias.mul_(masks["0"]["bias"])
    x = torch.randn(2, 4, 5, 5)
    speedup = ModelSpeedup(model, x, {k: {t: v.clone() for t, v in d.items()} for k, d in masks.items()})
    speedup.speedup_model()
    row = speedup.report.row("0")
    assert (row.channels, row.requested, row.removed) == (6, 2, 2)
    assert model[0].weight.shape[out_dim] == 4 and model[2].in_channels == 4
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
    kept = model[0].weight.movedim(out_dim, 0)
    # old channel 2 (now 1) keeps its masked entries at zero, its other entries as they were
    assert bool((kept[1][0] == 0).all()) and bool((kept[1][1:] != 0).all())


# -- architectures beyond the zoo -------------------------------------------------------------------------------


def test_reading_spatial_sizes_leaves_channels_free() -> None:
    """``interpolate(size=c1.shape[-2:])`` reads c1's height and width, not its channels."""
    report = cached_compress("fpn", 0.5).speedup.report
    assert report is not None
    row = report.row("c1")
    assert row.removed == row.requested > 0 and not row.kept, row


def test_lstm_input_features_shrink() -> None:
    c = cached_compress("recurrent", 0.5)
    report = c.speedup.report
    assert report is not None and not report.unsupported
    assert report.row("inp").removed == report.row("inp").requested == 8
    assert c.model.rnn.input_size == c.model.inp.out_features == 8
    assert report.row("fc").removed == 6  # the LSTM's output is not pinned for the layers after it


def test_pixel_shuffle_removes_whole_runs_of_channels() -> None:
    """``pixel_shuffle(2)``: output channel k is made of input channels 4k..4k+3."""
    model, x = PATTERNS["pixel_shuffle"]()
    keep = [i for i in range(16) if i not in (4, 5, 6, 7, 9)]  # the run 4-7 and one channel of the run 8-11
    masks = {"up": {"weight": _channel_mask(model.up.weight, keep), "bias": _channel_mask(model.up.bias, keep)}}
    speedup = _assert_speedup_exact(model, x, masks)
    assert model.up.out_channels == 12 and model.head.in_channels == 3
    assert speedup.report is not None and speedup.report.row("up").removed == 4


def test_inputs_in_a_tuple_or_a_dict() -> None:
    """A forward taking a tuple or a dict of tensors: the inputs are pinned, the rest shrinks."""

    class Structured(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(4, 8), nn.Linear(16, 3)

        def forward(self, pair: tuple[Tensor, Tensor], extra: dict[str, Tensor]) -> Tensor:
            image, _ = pair
            a = torch.relu(self.conv(image)).mean((2, 3))
            return self.head(torch.cat([a, torch.relu(self.fc(extra["features"]))], dim=1))

    torch.manual_seed(0)
    model = Structured().eval()
    x = ((torch.randn(2, 3, 8, 8), torch.randn(2, 1)), {"features": torch.randn(2, 4)})
    masks = {"conv": {"weight": _channel_mask(model.conv.weight, [0, 1, 2, 3])},
             "fc": {"weight": _channel_mask(model.fc.weight, [0, 1]), "bias": _channel_mask(model.fc.bias, [0, 1])}}
    speedup = _assert_speedup_exact(model, x, masks)
    assert speedup.report is not None and speedup.report.unsupported == []
    assert model.conv.out_channels == 4 and model.fc.out_features == 2 and model.head.in_features == 6


def test_parametrized_and_pre_hooked_modules_are_left_alone() -> None:
    """weight_norm computes the weight on every call (its temporaries once aliased other weights)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 8, 3, padding=1)), nn.ReLU(),
        nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 8, 3, padding=1)), nn.ReLU(),
        nn.Conv1d(8, 8, 1), nn.ReLU(), nn.Conv1d(8, 8, 1), nn.ReLU(), nn.Conv1d(8, 2, 1),
    ).eval()
    with torch.no_grad():  # (a leaf weight, so the model can be deep-copied)
        torch_prune.identity(model[8], "weight")  # torch's own pruning: a forward pre-hook
    masks = {"4": {"weight": _channel_mask(model[4].weight, [0, 1, 2, 3])}}
    speedup = _assert_speedup_exact(model, torch.randn(2, 4, 10), masks)
    assert speedup.report is not None
    assert model[4].out_channels == 4 and model[6].in_channels == 4 and model[8].in_channels == 8
    assert any("parametrized" in u for u in speedup.report.unsupported)
    assert any("pre-hook" in u for u in speedup.report.unsupported)
    with pytest.raises(SpeedupError, match="parametrization"):
        ModelSpeedup(model, torch.randn(2, 4, 10), {"0": {"weight": torch.ones(8, 4, 3)}}).speedup_model()


def test_masks_from_a_file(tmp_path: Any) -> None:
    """NNI's ``ModelSpeedup(model, dummy_input, masks_file)``."""
    from search.pruning.io import save_masks  # noqa: PLC0415

    model, x = PATTERNS["concat"]()
    pruner = L1NormPruner(model, config_for(CASES["concat"], model, x, 0.5))
    _, masks = pruner.compress()
    pruner.unwrap_model()
    save_masks(masks, tmp_path / "masks.safetensors")
    speedup = ModelSpeedup(model, x, str(tmp_path / "masks.safetensors"))
    speedup.speedup_model()
    assert speedup.report is not None and speedup.report.params_after < speedup.report.params_before


def test_a_module_refusing_its_new_tensors_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from search.speedup import shrink  # noqa: PLC0415

    model, x = PATTERNS["concat"]()
    pruner = L1NormPruner(model, config_for(CASES["concat"], model, x, 0.5))
    _, masks = pruner.compress()
    pruner.unwrap_model()
    apply_masks(model, masks)
    snapshot = _snapshot(model)
    real, calls = shrink._set_tensor, []

    def fail_third(module: nn.Module, attr: str, new: Tensor) -> None:
        calls.append(attr)
        if len(calls) == 3:
            raise AttributeError(f"can't set attribute {attr!r}")
        real(module, attr, new)

    monkeypatch.setattr(shrink, "_set_tensor", fail_third)
    with pytest.raises(SpeedupError, match="restored"):
        ModelSpeedup(model, x, masks).speedup_model()
    _assert_unchanged(model, snapshot)


# -- shape-only tracing and speedup without the verification run ------------------------------------------------


def _light_cases() -> list[str]:
    return [name for name, case in CASES.items() if not case.heavy] + ["resnet18", "mobilenet_v2"]


@pytest.mark.parametrize("name", _light_cases())
def test_shape_only_trace_records_what_a_real_run_records(name: str) -> None:
    """The meta-device recording (with its shortcuts for norms, activations and elementwise arithmetic)
    gives every node the shape and dtype, and the model the FLOP count, that running it gives."""
    from search.speedup.trace import trace_model  # noqa: PLC0415

    model, x = CASES[name].build()
    real = trace_model(model, x, shapes_only=False)
    shapes = trace_model(model, x, shapes_only=True)
    assert shapes.method == real.method
    assert shapes.flops == real.flops > 0
    assert shapes.counted == real.counted

    def summary(values: dict[str, Any]) -> dict[str, Any]:
        def one(t: Any) -> Any:
            if isinstance(t, Tensor):
                return tuple(t.shape), t.dtype
            return "a device" if isinstance(t, torch.device) else t  # x.device reads meta on the meta run

        return {k: torch.fx.node.map_aggregate(v, one) for k, v in values.items()}

    assert summary(shapes.values) == summary(real.values)
    # the model's own tensors are real again (a meta tensor left behind would break the next forward)
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    _call(model, x)


def test_shape_only_trace_falls_back_to_a_real_run_where_meta_cannot_go() -> None:
    """A forward that builds a tensor on the CPU (or reads a value) cannot run on the meta device."""
    from search.speedup.trace import trace_model  # noqa: PLC0415

    class CpuConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            return y + torch.ones(1, 8, 1, 1)  # a CPU tensor created inside forward

    model = CpuConstant().eval()
    x = torch.randn(1, 3, 8, 8)
    traced = trace_model(model, x)
    assert traced.output.device.type == "cpu"  # recorded on a real run
    torch.testing.assert_close(traced.output, model(x))
    assert tuple(traced.values["conv"].shape) == (1, 8, 6, 6)


@pytest.mark.parametrize("name", ["concat", "residual", "se", "attention", "unet_skip", "embedding", "resnet18"])
def test_speedup_without_verification_builds_the_same_compact_model(name: str) -> None:
    case = CASES[name]
    model, x = case.build()
    config = config_for(case, model, x, 0.5, dependency=case.residual)
    pruner = L1NormPruner(model, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    checked, unchecked = copy.deepcopy(model), copy.deepcopy(model)
    verified = ModelSpeedup(checked, x, copy.deepcopy(masks))
    verified.speedup_model()
    fast = ModelSpeedup(unchecked, x, copy.deepcopy(masks), verify=False)
    fast.speedup_model()
    assert {k: v.shape for k, v in unchecked.state_dict().items()} == {k: v.shape for k, v in checked.state_dict().items()}
    diff, scale = max_diff(_call(checked, x), _call(unchecked, x))
    assert diff <= 1e-6 * max(1.0, scale)
    assert fast.report is not None and verified.report is not None
    assert fast.report.max_abs_diff is None and verified.report.max_abs_diff is not None
    assert "not checked" in str(fast.report)
    assert (fast.report.flops_after, fast.report.params_after) == (verified.report.flops_after, verified.report.params_after)
    assert fast.report.rows == verified.report.rows


def test_input_channel_masks_still_read_the_weights() -> None:
    """Only channel masks on the output dim let speedup skip reading a weight; a mask on input channels
    (dim 1) is multiplied in and its zero columns are found in the weight, so the producer shrinks."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 10, 10)
    mask = torch.ones_like(model[2].weight)
    mask[:, :3] = 0
    reference = _call(apply_masks(copy.deepcopy(model), {"2": {"weight": mask}}), x)
    ModelSpeedup(model, x, {"2": {"weight": mask}}).speedup_model()
    assert (model[0].out_channels, model[2].in_channels) == (5, 5)
    torch.testing.assert_close(_call(model, x), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["concat", "depthwise", "grouped_conv", "channel_shuffle", "attention", "flatten_linear",
                                  "pixel_shuffle", "recurrent", "mobilenet_v2"])
def test_components_merge_whole_axes_without_changing_the_partition(name: str) -> None:
    """Whole-axis links are merged by union-find before the position-level pass; the components must be
    exactly those of the plain graph over every position."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

    from search.speedup.analyze import analyze_model  # noqa: PLC0415

    model, x = CASES[name].build()
    g = analyze_model(model, x).g
    _, labels = g.components()
    a = np.concatenate([np.arange(s, s + n) for s, _, n in g._block_links] + list(g._links_a))
    b = np.concatenate([np.arange(t, t + n) for _, t, n in g._block_links] + list(g._links_b))
    _, plain = connected_components(coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(g.size, g.size)),
                                    directed=False)
    pairs = np.unique(np.stack([labels, plain], axis=1), axis=0)  # the same partition: labels correspond one to one
    assert len(pairs) == len(np.unique(labels)) == len(np.unique(plain))
    assert g._block_links  # the fast path was taken
