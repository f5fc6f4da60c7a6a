"""The eight one-shot pruners on zoo models: what they mask, how much, and from which data.

Every pruner runs on at least two zoo models: ``digits_cnn`` and ResNet-18 at 32x32 (CNNs with
BatchNorm) and a small Transformer whose prunable layers are ``Linear`` (Slim needs BatchNorm, so
not there); MobileNetV2 (depthwise convs) and VGG-16-BN (conv biases) run under ``-m slow``.
One ``compress()`` per (pruner, model) is shared by the tests of this module. Small hand-built
models show that the data-dependent pruners rank by their data, not by magnitude.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from search.config import ConfigError, channel_dims
from search.pruning import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    BasicPruner,
    L1NormPruner,
    SlimPruner,
    TaylorFOWeightPruner,
    TorchEvaluator,
)
from tests.utils import (
    CHANNEL_PRUNERS,
    DATA_PRUNERS,
    PRUNERS,
    SLOW_ZOO_MODELS,
    CountingLoop,
    PrunerSpec,
    build_model,
    channel_keep,
    following_norm,
    is_binary,
    make_evaluator,
    masked_count,
    masked_weights_model,
    model_input,
    pruner_model_pairs,
    random_batches,
    round_half_up,
)

pytestmark = pytest.mark.usefixtures("single_thread")

RATIO = 0.3  # not a "nice" ratio: 0.3 * 32 = 9.6 channels, so rounding is exercised

FAST_PAIRS = pruner_model_pairs()
SLOW_PAIRS = pruner_model_pairs(SLOW_ZOO_MODELS)  # MobileNetV2 (depthwise), VGG-16-BN (conv biases)


def _ids(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-{pair[1]}"


def cases(applies: Callable[[tuple[str, str]], bool] = lambda pair: True) -> list:
    """The (pruner, model) pairs a test applies to; those on the bigger models are marked slow."""
    return [p for p in FAST_PAIRS if applies(p)] + [
        pytest.param(p, marks=pytest.mark.slow, id=_ids(p)) for p in SLOW_PAIRS if applies(p)
    ]


def _channel_wise(pair: tuple[str, str]) -> bool:
    return PRUNERS[pair[0]].channel_wise


def _has_pruned_bias(pair: tuple[str, str]) -> bool:
    # The Transformer's Linear layers and VGG's convs have biases; Slim prunes BatchNorms (bias = beta).
    return pair[1] in ("transformer_classifier", "vgg16_bn") or pair[0] == "slim"


def _conv_then_norm(pair: tuple[str, str]) -> bool:
    # A channel-pruned conv followed by a BatchNorm that is not itself configured.
    return _channel_wise(pair) and pair[0] != "slim" and pair[1] != "transformer_classifier"


@dataclass
class Pruned:
    spec: PrunerSpec
    model_name: str
    model: nn.Module
    pruner: BasicPruner
    masks: dict[str, dict[str, Tensor]]
    returned_model: nn.Module


@pytest.fixture(scope="module")
def _compressed() -> Iterator[dict[tuple[str, str], Pruned]]:
    """One compress() per (pruner, model), shared by every test of this module, dropped after it."""
    cache: dict[tuple[str, str], Pruned] = {}
    yield cache
    cache.clear()


@pytest.fixture
def pruned(request: pytest.FixtureRequest, _compressed: dict[tuple[str, str], Pruned]) -> Pruned:
    pruner_name, model_name = request.param
    if request.param not in _compressed:
        spec = PRUNERS[pruner_name]
        model = build_model(model_name)
        pruner = spec.build(model, spec.config(model_name, RATIO), random_batches(model_name), training_steps=2)
        returned, masks = pruner.compress()
        model.eval()
        _compressed[request.param] = Pruned(spec, model_name, model, pruner, masks, returned)
    return _compressed[request.param]


def _modules(p: Pruned) -> dict[str, nn.Module]:
    return dict(p.model.named_modules())


# -- how much is masked ---------------------------------------------------------------------------


@pytest.mark.parametrize("pruned", cases(), indirect=True, ids=_ids)
def test_compress_returns_the_bound_model_and_binary_masks_shaped_like_targets(pruned: Pruned) -> None:
    assert pruned.returned_model is pruned.model
    modules = _modules(pruned)
    assert pruned.masks
    for module_name, targets in pruned.masks.items():
        for target, mask in targets.items():
            assert mask.shape == getattr(modules[module_name], target).shape, f"{module_name}.{target}"
            assert is_binary(mask), f"{module_name}.{target}"


@pytest.mark.parametrize("pruned", cases(), indirect=True, ids=_ids)
def test_every_selected_module_reaches_the_requested_sparsity(pruned: Pruned) -> None:
    modules = _modules(pruned)
    report = pruned.pruner.sparsity_report()
    checked = 0
    for module_name, target in pruned.pruner.metric_targets():
        mask = pruned.masks[module_name][target]
        if pruned.spec.channel_wise:
            out_dim, _ = channel_dims(modules[module_name])
            keep = channel_keep(mask, out_dim)
            assert int((~keep).sum()) == round_half_up(RATIO * keep.numel()), module_name
        else:
            assert masked_count(mask) == round_half_up(RATIO * mask.numel()), module_name
        row = report.row(module_name, target)
        assert row.requested == RATIO
        assert row.achieved == pytest.approx(masked_count(mask) / mask.numel())
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("pruned", cases(_channel_wise), indirect=True, ids=_ids)
def test_channel_pruners_mask_whole_output_channels(pruned: Pruned) -> None:
    modules = _modules(pruned)
    for module_name, target in pruned.pruner.metric_targets():
        mask = pruned.masks[module_name][target]
        out_dim, _ = channel_dims(modules[module_name])
        keep = channel_keep(mask, out_dim)  # raises if a channel is partly masked
        assert 0 < int(keep.sum()) < keep.numel()


@pytest.mark.parametrize("pruned", cases(lambda pair: pair[0] == "level"), indirect=True, ids=_ids)
def test_level_pruner_masks_single_elements_and_leaves_norms_alone(pruned: Pruned) -> None:
    partly_masked_channels = 0
    for module_name, target in pruned.pruner.metric_targets():
        rows = pruned.masks[module_name][target].reshape(pruned.masks[module_name][target].shape[0], -1)
        partly_masked_channels += int(((rows == 0).any(1) & (rows == 1).any(1)).sum())
    assert partly_masked_channels > 0
    norms = [n for n, m in _modules(pruned).items() if isinstance(m, nn.BatchNorm2d | nn.LayerNorm)]
    assert not set(norms) & set(pruned.masks)


# -- what else follows the pruned channels ----------------------------------------------------------


@pytest.mark.parametrize("pruned", cases(_has_pruned_bias), indirect=True, ids=_ids)
def test_bias_is_masked_exactly_where_its_weight_channel_is(pruned: Pruned) -> None:
    modules = _modules(pruned)
    checked = 0
    for module_name, targets in pruned.masks.items():
        if "bias" not in targets or "weight" not in targets:
            continue
        out_dim, _ = channel_dims(modules[module_name])
        weight = targets["weight"].movedim(out_dim, 0).reshape(targets["bias"].numel(), -1)
        whole_channel_masked = (weight == 0).all(1)
        assert torch.equal(targets["bias"] == 0, whole_channel_masked), module_name
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("pruned", cases(_conv_then_norm), indirect=True, ids=_ids)
def test_following_batchnorm_is_masked_at_the_pruned_channels(pruned: Pruned) -> None:
    checked = 0
    for module_name, _ in pruned.pruner.metric_targets():
        norm = following_norm(pruned.model, module_name)
        if norm is None:
            continue
        keep = channel_keep(pruned.masks[module_name]["weight"])
        assert torch.equal(pruned.masks[norm]["weight"].bool(), keep), norm
        assert torch.equal(pruned.masks[norm]["bias"].bool(), keep), norm
        checked += 1
    assert checked >= 3


def _tiny_convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize("pruner_name", [n for n in CHANNEL_PRUNERS if n != "slim"])
def test_conv_bias_and_next_batchnorm_share_the_conv_channel_mask(pruner_name: str) -> None:
    model = _tiny_convnet()
    spec = PRUNERS[pruner_name]
    batches = [(torch.randn(4, 3, 6, 6), torch.randint(0, 4, (4,))) for _ in range(2)]
    _, masks = spec.build(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], batches).compress()
    keep = channel_keep(masks["0"]["weight"])
    assert int(keep.sum()) == 4
    for target_mask in (masks["0"]["bias"], masks["1"]["weight"], masks["1"]["bias"]):
        assert torch.equal(target_mask.bool(), keep)


# -- what the masked model computes -----------------------------------------------------------------


@pytest.mark.parametrize("pruned", cases(), indirect=True, ids=_ids)
def test_masked_forward_equals_forward_with_masks_multiplied_into_weights(pruned: Pruned) -> None:
    x = model_input(pruned.model_name, 4)
    reference = masked_weights_model(pruned.model_name, pruned.model, pruned.masks)
    unmasked = masked_weights_model(pruned.model_name, pruned.model, {})
    with torch.no_grad():
        out, unmasked_out = pruned.model(x), unmasked(x)
        scale = float(unmasked_out.abs().max())  # MobileNetV2's fresh logits are ~1e-9
        torch.testing.assert_close(out, reference(x), rtol=1e-4, atol=1e-5 * scale)
        assert float((out - unmasked_out).abs().max()) > 1e-3 * scale, "the masks changed nothing"


# -- data-dependent pruners use their data ----------------------------------------------------------


def _keep_rows(mask: Tensor) -> list[bool]:
    return channel_keep(mask).tolist()


def test_taylor_ranks_channels_by_weight_times_gradient_not_by_magnitude() -> None:
    # Rows 4..7 are large but the loss never reads their outputs: zero gradient, zero importance.
    def build() -> nn.Sequential:
        model = nn.Sequential(nn.Linear(6, 8))
        with torch.no_grad():
            model[0].weight.copy_(torch.randn(8, 6).sign())
            model[0].weight[:4] *= 0.1
            model[0].weight[4:] *= 5.0
        return model

    def step(batch: Tensor, model: nn.Module) -> Tensor:
        return model(batch)[:, :4].pow(2).sum()

    torch.manual_seed(0)
    batches = [torch.randn(16, 6) for _ in range(3)]
    config = [{"op_names": ["0"], "sparse_ratio": 0.5}]
    taylor_model = build()
    l1_model = copy.deepcopy(taylor_model)
    evaluator, _ = make_evaluator(taylor_model, batches, lr=1e-3, training_step=step)
    _, taylor_masks = TaylorFOWeightPruner(taylor_model, config, evaluator, training_steps=3).compress()
    _, l1_masks = L1NormPruner(l1_model, config).compress()
    assert _keep_rows(taylor_masks["0"]["weight"]) == [True] * 4 + [False] * 4
    assert _keep_rows(l1_masks["0"]["weight"]) == [False] * 4 + [True] * 4


def _dead_filter_model() -> nn.Sequential:
    """Conv whose filters 0..3 are large but sit behind a -100 bias: always 0 after ReLU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(8, 2, 3, 3).sign())
        model[0].weight[4:] *= 0.01
        model[0].bias[:4] = -100.0
        model[0].bias[4:] = 1.0
    return model


@pytest.mark.parametrize("pruner_cls", [ActivationAPoZRankPruner, ActivationMeanRankPruner])
def test_activation_pruners_mask_the_channels_that_are_always_zero_after_relu(pruner_cls: type) -> None:
    model = _dead_filter_model()
    batches = [torch.randn(4, 2, 6, 6) for _ in range(2)]
    evaluator, _ = make_evaluator(model, batches, lr=1e-3, training_step=lambda x, m: m(x).mean())
    _, masks = pruner_cls(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], evaluator, training_steps=2).compress()
    assert _keep_rows(masks["0"]["weight"]) == [False] * 4 + [True] * 4
    # ...which is not what magnitude says: the dead filters are the large ones.
    _, l1_masks = L1NormPruner(_dead_filter_model(), [{"op_names": ["0"], "sparse_ratio": 0.5}]).compress()
    assert _keep_rows(l1_masks["0"]["weight"]) == [True] * 4 + [False] * 4


def _bn_model(gammas: Tensor) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, gammas.numel(), 3), nn.BatchNorm2d(gammas.numel()), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)
    )
    model(torch.randn(2, 1, 5, 5))  # materialise the lazy layer
    with torch.no_grad():
        model[1].weight.copy_(gammas)
    return model


def test_slim_l1_penalty_shrinks_every_bn_scale_by_lr_times_scale_per_step() -> None:
    gammas = torch.linspace(0.5, 1.5, 8)
    batches = [torch.randn(4, 1, 5, 5)]

    def no_task_loss(x: Tensor, m: nn.Module) -> Tensor:
        return 0.0 * m(x).sum()  # only Slim's penalty moves the scales

    after = {}
    for scale in (0.0, 0.5):
        model = _bn_model(gammas)
        evaluator, loop = make_evaluator(model, batches, lr=0.1, training_step=no_task_loss)
        SlimPruner(model, [{"op_names": ["1"], "sparse_ratio": 0.25}], evaluator, training_steps=3,
                   regular_scale=scale).compress()
        assert loop.steps == 3
        after[scale] = model[1].weight.detach().clone()
    torch.testing.assert_close(after[0.0], gammas)
    torch.testing.assert_close(after[0.5], gammas - 3 * 0.1 * 0.5)


def test_slim_masks_the_channels_with_the_smallest_trained_bn_scales() -> None:
    gammas = torch.tensor([0.9, 0.2, 1.4, 0.05, 1.1, 0.6, 0.3, 1.8])
    model = _bn_model(gammas)
    batches = [(torch.randn(8, 1, 5, 5), torch.randint(0, 3, (8,))) for _ in range(2)]
    evaluator, _ = make_evaluator(model, batches, lr=0.05)
    _, masks = SlimPruner(model, [{"op_names": ["1"], "sparse_ratio": 0.5}], evaluator, training_steps=4,
                          regular_scale=0.1).compress()
    trained = model[1].weight.detach().abs()
    smallest = set(torch.topk(trained, 4, largest=False).indices.tolist())
    masked = {i for i, k in enumerate(channel_keep(masks["1"]["weight"]).tolist()) if not k}
    assert masked == smallest


def test_slim_rejects_a_config_that_selects_no_batchnorm() -> None:
    model = _bn_model(torch.ones(4))
    evaluator, _ = make_evaluator(model, [])
    with pytest.raises(ConfigError, match=r"config_list\[0\]\.op_types: SlimPruner ranks BatchNorm"):
        SlimPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], evaluator, training_steps=1)


@pytest.mark.parametrize("regular_scale", [-0.1, float("nan"), "1.0", None])
def test_slim_rejects_a_regular_scale_that_is_no_non_negative_number(regular_scale: object) -> None:
    model = _bn_model(torch.ones(4))
    evaluator, _ = make_evaluator(model, [])
    with pytest.raises(ValueError, match="regular_scale must be a finite number >= 0"):
        SlimPruner(model, [{"op_names": ["1"], "sparse_ratio": 0.5}], evaluator, training_steps=1,
                   regular_scale=regular_scale)


# -- the evaluator contract -------------------------------------------------------------------------


@pytest.mark.parametrize("pruner_name", DATA_PRUNERS)
def test_training_func_that_ignores_max_steps_is_stopped_after_training_steps(pruner_name: str) -> None:
    spec = PRUNERS[pruner_name]
    model = build_model("digits_cnn")
    evaluator, loop = make_evaluator(model, random_batches("digits_cnn"), honour_max_steps=False)
    pruner = spec.cls(model, spec.config("digits_cnn", 0.5), evaluator, training_steps=3)
    pruner.compress()
    assert loop.seen_max_steps == [3]
    assert loop.steps == 3  # the 4th optimizer.step() raised before it ran


@pytest.mark.parametrize("pruner_name", DATA_PRUNERS)
@pytest.mark.parametrize("evaluator", [None, "evaluator", lambda model: model], ids=["none", "str", "function"])
def test_data_pruners_reject_an_evaluator_of_the_wrong_type(pruner_name: str, evaluator: object) -> None:
    spec = PRUNERS[pruner_name]
    model = build_model("digits_cnn")
    with pytest.raises(TypeError, match="evaluator must be a search.pruning.Evaluator"):
        spec.cls(model, spec.config("digits_cnn", 0.5), evaluator, training_steps=1)


@pytest.mark.parametrize("pruner_name", DATA_PRUNERS)
@pytest.mark.parametrize("training_steps", [0, -1, 1.5, True, "3", None])
def test_data_pruners_reject_a_training_steps_that_is_no_positive_int(pruner_name: str, training_steps: object) -> None:
    spec = PRUNERS[pruner_name]
    model = build_model("digits_cnn")
    evaluator, _ = make_evaluator(model, random_batches("digits_cnn"))
    with pytest.raises(ValueError, match="training_steps must be a positive int"):
        spec.cls(model, spec.config("digits_cnn", 0.5), evaluator, training_steps)


@pytest.mark.parametrize("pruner_name", DATA_PRUNERS)
def test_training_func_that_takes_no_optimizer_step_is_an_error(pruner_name: str) -> None:
    spec = PRUNERS[pruner_name]
    model = build_model("digits_cnn")
    evaluator, _ = make_evaluator(model, [])
    evaluator.training_func = CountingLoop([], honour_max_steps=False, limit=0)
    pruner = spec.cls(model, spec.config("digits_cnn", 0.5), evaluator, training_steps=2)
    with pytest.raises(RuntimeError, match="took no optimizer step"):
        pruner.compress()


def test_torch_evaluator_rejects_optimizers_that_are_not_optimizers() -> None:
    with pytest.raises(TypeError, match="optimizers must be a torch.optim.Optimizer"):
        TorchEvaluator(CountingLoop([]), [nn.Linear(2, 2)], lambda b, m: m(b).sum())


@pytest.mark.parametrize("pruner_name", ["l1", "l2", "fpgm"])
@pytest.mark.parametrize(("ratio", "masked_channels"), [(0.3, 0), (0.8, 1)])
def test_channel_pruners_handle_a_layer_with_a_single_output_channel(
    pruner_name: str, ratio: float, masked_channels: int
) -> None:
    # Regression: FPGM used to raise "granularity must be 'out_channel'" for a one-channel layer.
    model = nn.Sequential(nn.Conv2d(3, 1, 3))
    _, masks = PRUNERS[pruner_name].cls(model, [{"op_names": ["0"], "sparse_ratio": ratio}]).compress()
    assert int((~channel_keep(masks["0"]["weight"])).sum()) == masked_channels
