"""The config list, key by key (``search.config`` and the pruners that consume it).

Each test shows one behaviour of the "Compression Config Specification"
(``/work/shared/reference/nni-config-list-spec.rst.txt``) or of a legacy NNI key, through the
public pruner API where the behaviour shows up in masks, the sparsity report or a forward pass,
and through :func:`canonicalize_config_list` for the quantization and distillation keys.

Vocabulary: a *sub-config* is one dict of the config list; a *target* is what gets a mask
(``weight``, ``bias``, ``_input_``, ``_output_``...); a mask is 1 where kept and 0 where masked.
Every error is a :class:`ConfigError` whose message names ``config_list[i]`` and the key.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from search.config import canonicalize_config_list
from search.pruning import (
    ConfigError,
    ConfigWarning,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
)
from search.zoo import get_model

# -- models -----------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Three Linear layers named as in the spec's examples: fc1 (8x4), fc2 (6x8), fc3 (3x6)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 6)
        self.fc3 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ConvNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> mean -> head; plus a nested ``block.conv``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.block = nn.Sequential()
        self.block.add_module("conv", nn.Conv2d(8, 8, 1))
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.block(x)
        return self.head(x.mean((2, 3)))


class Gate(nn.Module):
    """No parameters, two inputs: the ``_input_<i>`` / ``_input_<argname>`` targets."""

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        return x * scale


class GatedNet(nn.Module):
    """``gate(x, scale)``; ``fc`` (6 output rows) is only there to be pruned and aligned with."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.gate = Gate()

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        return self.gate(x, scale)


class MixedNet(nn.Module):
    """One module of each type NNI's ``op_types: ['default']`` covers, and some it does not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 6, 2)
        self.fc = nn.Linear(6, 3)
        self.emb = nn.Embedding(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.up(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# -- helpers ----------------------------------------------------------------------------------------


def compress(pruner_cls: type, model: nn.Module, config_list: list[dict[str, Any]], **kwargs: Any):
    """Build the pruner, compress, and return ``(pruner, masks)``."""
    pruner = pruner_cls(model, config_list, **kwargs)
    _, masks = pruner.compress()
    return pruner, masks


def masked_share(mask: Tensor) -> float:
    return float((mask == 0).float().mean())


def kept_rows(mask: Tensor) -> list[int]:
    """Indexes along axis 0 that keep at least one element."""
    return mask.reshape(mask.shape[0], -1).amax(1).nonzero().flatten().tolist()


def is_constant_over(mask: Tensor, dims: tuple[int, ...]) -> bool:
    return bool(torch.equal(mask.amax(dim=dims), mask.amin(dim=dims)))


def config_error(model: nn.Module, config_list: Any, *fragments: str, mode: str = "pruning") -> str:
    """Assert that ``config_list`` is rejected and that the message holds every fragment.

    ``mode='pruning'`` goes through ``L1NormPruner(model, config_list)``; ``'canonicalize'`` calls
    :func:`canonicalize_config_list` for pruning, ``'quantization'``/``'distillation'`` for those modes.
    """
    with pytest.raises(ConfigError) as info:
        if mode == "pruning":
            L1NormPruner(model, config_list)
        else:
            canonicalize_config_list(model, config_list, mode="pruning" if mode == "canonicalize" else mode)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def set_weight(module: nn.Module, values: Tensor) -> None:
    with torch.no_grad():
        module.weight.copy_(values.reshape(module.weight.shape))


# ==================================================================================================
# Selecting modules: op_names, op_names_re, op_types and the exclude_* keys
# ==================================================================================================


def test_op_names_selects_exactly_the_named_modules() -> None:
    pruner, masks = compress(L1NormPruner, MLP(), [{"op_names": ["fc1", "fc3"], "sparse_ratio": 0.5}])
    assert sorted(masks) == ["fc1", "fc3"]
    assert sorted(pruner.module_configs) == ["fc1", "fc3"]


def test_op_names_re_matches_from_the_start_of_the_name_like_re_match() -> None:
    # 'conv' matches conv1 and conv2 but not 'block.conv' (re.match, not re.search) ...
    pruner = LevelPruner(ConvNet(), [{"op_names_re": ["conv"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["conv1", "conv2"]
    # ... and a pattern may reach into the name to select nested modules.
    pruner = LevelPruner(ConvNet(), [{"op_names_re": [r".*\.conv$"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["block.conv"]


def test_op_names_re_selects_repeated_blocks_of_a_zoo_transformer() -> None:
    model = get_model("transformer_classifier", num_layers=2, d_model=16, nhead=2, dim_feedforward=24)
    pruner = L1NormPruner(model, [{"op_names_re": [r"layers\.\d+\.ffn\.fc1"], "sparse_ratio": 0.25}])
    assert sorted(pruner.module_configs) == ["layers.0.ffn.fc1", "layers.1.ffn.fc1"]


def test_op_names_and_op_names_re_select_the_union() -> None:
    pruner = LevelPruner(ConvNet(), [{"op_names": ["head"], "op_names_re": ["conv1"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["conv1", "head"]


def test_op_types_alone_selects_every_module_of_that_class() -> None:
    pruner = LevelPruner(ConvNet(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["block.conv", "conv1", "conv2"]


def test_op_types_restricts_what_op_names_select() -> None:
    pruner = LevelPruner(ConvNet(), [{"op_names": ["conv1", "bn1", "head"], "op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["conv1"]


@pytest.mark.parametrize("type_name", ["torch.nn.modules.conv.Conv2d", "torch.nn.Conv2d"])
def test_op_types_accepts_a_fully_qualified_class_path(type_name: str) -> None:
    pruner = LevelPruner(ConvNet(), [{"op_types": [type_name], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["block.conv", "conv1", "conv2"]


def test_op_types_accepts_a_class_defined_in_the_model() -> None:
    pruner = LevelPruner(
        GatedNet(), [{"op_types": ["Gate"], "target_names": ["_input_scale"], "sparse_ratio": 0.5}]
    )
    assert list(pruner.module_configs) == ["gate"]


def test_op_types_matches_the_exact_class_not_subclasses() -> None:
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 4), MyLinear(4, 4))
    pruner = LevelPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}])
    assert list(pruner.module_configs) == ["0"]


def test_exclude_op_names_removes_named_modules_from_the_selection() -> None:
    pruner = LevelPruner(ConvNet(), [{"op_types": ["Conv2d"], "exclude_op_names": ["conv2"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["block.conv", "conv1"]


def test_exclude_op_names_re_removes_matching_modules() -> None:
    pruner = LevelPruner(ConvNet(), [{"op_types": ["Conv2d"], "exclude_op_names_re": ["block"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["conv1", "conv2"]


def test_exclude_op_types_removes_modules_of_that_class() -> None:
    pruner = LevelPruner(ConvNet(), [{"op_names_re": [".*"], "exclude_op_types": ["BatchNorm2d", "Sequential"],
                                      "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["block.conv", "conv1", "conv2", "head"]


# ==================================================================================================
# Targets: target_names and target_settings
# ==================================================================================================


def test_default_targets_are_weight_and_a_bias_aligned_to_the_weight_rows() -> None:
    pruner, masks = compress(L1NormPruner, MLP(), [{"op_names": ["fc2"], "sparse_ratio": 0.5}])
    weight, bias = masks["fc2"]["weight"], masks["fc2"]["bias"]
    assert sorted(masks["fc2"]) == ["bias", "weight"]
    assert masked_share(weight) == 0.5
    # bias[i] is masked exactly when the whole weight row i is.
    assert torch.equal(bias, weight.amax(dim=1))
    assert pruner.sparsity_report().row("fc2", "bias").requested is None  # aligned, not ranked


def test_bias_of_a_conv_transpose_follows_its_weight_axis_1() -> None:
    # ConvTranspose2d.weight is [in, out, kh, kw]: its output channels are axis 1.
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 2))
    _, masks = compress(L1NormPruner, model, [{"op_names": ["0"], "sparse_ratio": 0.5}])
    weight, bias = masks["0"]["weight"], masks["0"]["bias"]
    assert is_constant_over(weight, (0, 2, 3))
    assert torch.equal(bias, weight.amax(dim=(0, 2, 3)))
    assert masked_share(bias) == 0.5


def test_target_names_weight_only_leaves_the_bias_alone() -> None:
    _, masks = compress(L1NormPruner, MLP(), [{"op_names": ["fc2"], "target_names": ["weight"], "sparse_ratio": 0.5}])
    assert list(masks["fc2"]) == ["weight"]


def test_target_names_bias_alone_is_ranked_by_its_own_ratio() -> None:
    model = MLP()
    with torch.no_grad():
        model.fc1.bias.copy_(torch.tensor([8.0, -1, 7, 2, -6, 3, 5, 4]))
    _, masks = compress(LevelPruner, model, [{"op_names": ["fc1"], "target_names": ["bias"], "sparse_ratio": 0.5}])
    assert list(masks["fc1"]) == ["bias"]
    assert masks["fc1"]["bias"].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]  # |-1|, 2, 3, 4 masked


def test_a_target_missing_on_some_selected_modules_is_skipped_for_them() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4, bias=False))
    pruner = L1NormPruner(model, [{"op_types": ["Linear"], "target_names": ["weight", "bias"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs["0"]) == ["bias", "weight"]
    assert sorted(pruner.module_configs["1"]) == ["weight"]


@pytest.mark.parametrize(
    ("target", "masked_arg"),
    [("_input_", "x"), ("_input_0", "x"), ("_input_x", "x"), ("_input_1", "scale"), ("_input_scale", "scale")],
)
def test_input_targets_name_an_argument_by_position_or_by_name(target: str, masked_arg: str) -> None:
    # gate's input is masked where fc's weight rows are: `align` lets a mask come from another target.
    model = GatedNet()
    config = [
        {"op_names": ["fc"], "target_names": ["weight"], "sparse_ratio": 0.5},
        {"op_names": ["gate"], "target_names": [target],
         "target_settings": {target: {"align": {"module_name": "fc", "target_name": "weight", "dims": [0]}}}},
    ]
    _, masks = compress(L1NormPruner, model, config)
    keep = masks["fc"]["weight"].amax(dim=1)
    assert torch.equal(masks["gate"][target], keep)
    x, scale = torch.full((2, 6), 2.0), torch.full((2, 6), 3.0)
    expected = (x * keep if masked_arg == "x" else x) * (scale * keep if masked_arg == "scale" else scale)
    assert torch.equal(model(x, scale), expected)
    assert torch.equal(model(x, scale=scale), expected)  # keyword arguments too


def test_target_settings_override_the_shorthand_for_one_target() -> None:
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "target_names": ["weight", "bias"],
               "target_settings": {"weight": {"sparse_ratio": 0.25}, "bias": {"sparse_ratio": 0.75}}}]
    pruner, _ = compress(LevelPruner, MLP(), config)
    report = pruner.sparsity_report()
    assert report.row("fc1", "weight").achieved == 0.25
    assert report.row("fc1", "bias").achieved == 0.75  # an explicit ratio unties the bias from the weight


def test_target_settings_keep_the_shorthand_keys_they_do_not_override() -> None:
    config = [{"op_names": ["fc2"], "sparse_ratio": 0.5, "granularity": "in_channel",
               "target_settings": {"weight": {"sparse_ratio": 0.25}}}]
    pruner, masks = compress(L1NormPruner, MLP(), config)
    assert pruner.module_configs["fc2"]["weight"].granularity == "in_channel"
    assert is_constant_over(masks["fc2"]["weight"], (0,))
    assert masked_share(masks["fc2"]["weight"]) == 0.25


def test_the_spec_shorthand_and_standard_configs_give_the_same_masks() -> None:
    shorthand = [{"op_types": ["Linear"], "sparse_ratio": 0.8}]
    standard = [{
        "op_names": ["fc1", "fc2", "fc3"],
        "target_names": ["weight", "bias"],
        "target_settings": {
            "weight": {"sparse_ratio": 0.8, "max_sparse_ratio": None, "min_sparse_ratio": None,
                       "sparse_threshold": None, "global_group_id": None, "dependency_group_id": None,
                       "granularity": "default", "internal_metric_block": None, "apply_method": "mul"},
            "bias": {"align": {"target_name": "weight", "dims": [0]}, "apply_method": "mul"},
        },
    }]
    model = MLP()
    _, masks_a = compress(L1NormPruner, copy.deepcopy(model), shorthand)
    _, masks_b = compress(L1NormPruner, copy.deepcopy(model), standard)
    assert masks_a.keys() == masks_b.keys()
    for name in masks_a:
        assert masks_a[name].keys() == masks_b[name].keys()
        for target in masks_a[name]:
            assert torch.equal(masks_a[name][target], masks_b[name][target]), (name, target)


def test_target_settings_without_target_names_add_their_targets_to_the_defaults() -> None:
    # As in NNI: the targets are the module's defaults plus those target_settings name.
    config = [{"op_names": ["fc2"], "sparse_ratio": 0.5,
               "target_settings": {"_output_": {"align": {"target_name": "weight", "dims": [0]}}}}]
    pruner = L1NormPruner(MLP(), config)
    assert sorted(pruner.module_configs["fc2"]) == ["_output_", "bias", "weight"]


# ==================================================================================================
# How much is masked: sparse_ratio, sparse_threshold, max/min_sparse_ratio
# ==================================================================================================


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_sparse_ratio_is_the_share_of_the_weight_that_is_masked(ratio: float) -> None:
    pruner, masks = compress(LevelPruner, MLP(), [{"op_names": ["fc1"], "sparse_ratio": ratio}])
    assert masked_share(masks["fc1"]["weight"]) == ratio
    row = pruner.sparsity_report().row("fc1")
    assert (row.requested, row.achieved) == (ratio, ratio)


@settings(max_examples=25, deadline=None)
@given(ratio=st.floats(0.0, 1.0))
def test_sparse_ratio_rounds_to_the_nearest_whole_element(ratio: float) -> None:
    _, masks = compress(LevelPruner, MLP(), [{"op_names": ["fc2"], "sparse_ratio": ratio}])
    masked = int((masks["fc2"]["weight"] == 0).sum())
    assert abs(masked - ratio * 48) <= 0.5 + 1e-9


def test_level_pruner_masks_the_smallest_magnitudes() -> None:
    model = MLP()
    _, masks = compress(LevelPruner, model, [{"op_names": ["fc2"], "sparse_ratio": 0.5}])
    mask, magnitude = masks["fc2"]["weight"], model.fc2.weight.detach().abs()
    assert magnitude[mask == 0].max() <= magnitude[mask == 1].min()


def test_sparse_threshold_masks_exactly_the_metrics_below_it() -> None:
    model = MLP()
    set_weight(model.fc1, torch.linspace(-1.6, 1.5, 32))  # Level's metric is |w|
    _, masks = compress(LevelPruner, model, [{"op_names": ["fc1"], "sparse_threshold": 0.5}])
    assert torch.equal(masks["fc1"]["weight"], (model.fc1.weight.abs() >= 0.5).float())


def test_a_higher_sparse_threshold_gives_a_higher_sparsity() -> None:
    achieved = []
    for threshold in (0.05, 0.1, 0.2, 0.3):
        pruner, _ = compress(LevelPruner, MLP(), [{"op_types": ["Linear"], "sparse_threshold": threshold}])
        achieved.append(pruner.sparsity_report().total())
    assert achieved == sorted(achieved) and achieved[0] < achieved[-1]


def test_max_sparse_ratio_caps_what_a_threshold_masks() -> None:
    model = MLP()
    set_weight(model.fc1, torch.linspace(0.1, 3.2, 32))
    config = [{"op_names": ["fc1"], "sparse_threshold": 2.5, "max_sparse_ratio": 0.5}]  # 75% lie below 2.5
    pruner, _ = compress(LevelPruner, model, config)
    assert pruner.sparsity_report().row("fc1").achieved == 0.5


def test_min_sparse_ratio_floors_what_a_threshold_masks() -> None:
    model = MLP()
    set_weight(model.fc1, torch.linspace(0.1, 3.2, 32))
    config = [{"op_names": ["fc1"], "sparse_threshold": 0.0, "min_sparse_ratio": 0.25}]  # nothing lies below 0
    pruner, _ = compress(LevelPruner, model, config)
    assert pruner.sparsity_report().row("fc1").achieved == 0.25


# ==================================================================================================
# global_group_id: one ratio over several targets
# ==================================================================================================


def _uneven_mlp() -> MLP:
    """fc1's weights are tiny and fc3's huge, so a shared ranking prunes them very differently."""
    model = MLP()
    with torch.no_grad():
        model.fc1.weight.mul_(0.01)
        model.fc3.weight.mul_(100.0)
    return model


def test_global_group_spreads_one_ratio_unevenly_over_its_members() -> None:
    pruner, _ = compress(LevelPruner, _uneven_mlp(),
                         [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": "g"}])
    report = pruner.sparsity_report()
    assert report.group("g") == 49 / 98  # 0.5 of fc1 (32) + fc2 (48) + fc3 (18) weights
    fc1, fc3 = report.row("fc1").achieved, report.row("fc3").achieved
    assert fc1 > 0.5 > fc3
    assert report.row("fc1").global_group == "g"


def test_global_group_may_span_sub_configs_as_in_the_spec_example() -> None:
    config = [
        {"op_names": ["fc1", "fc2"], "sparse_ratio": 0.5, "global_group_id": "linear_group_1"},
        {"op_names": ["fc3"], "sparse_ratio": 0.5, "global_group_id": "linear_group_1"},
    ]
    pruner, _ = compress(LevelPruner, _uneven_mlp(), config)
    report = pruner.sparsity_report()
    assert report.group("linear_group_1") == 49 / 98
    assert report.row("fc1").achieved != report.row("fc3").achieved


def test_global_group_honours_each_members_max_and_min_sparse_ratio() -> None:
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": "g",
               "max_sparse_ratio": 0.6, "min_sparse_ratio": 0.3}]
    pruner, _ = compress(LevelPruner, _uneven_mlp(), config)
    report = pruner.sparsity_report()
    # Unbounded, fc1 would be masked entirely and fc3 not at all.
    assert report.row("fc1").achieved == math.floor(0.6 * 32) / 32
    assert report.row("fc3").achieved == math.ceil(0.3 * 18) / 18
    assert report.group("g") == 0.5  # fc2 makes up the rest


def test_global_group_ratio_may_lie_outside_a_members_bounds() -> None:
    # With a group, sparse_ratio is the group's total, so it is not checked against each bound.
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": "g", "max_sparse_ratio": 0.4}]
    pruner, _ = compress(LevelPruner, _uneven_mlp(), config)
    report = pruner.sparsity_report()
    assert all(report.row(name).achieved <= 0.4 for name in ("fc1", "fc2", "fc3"))


# ==================================================================================================
# dependency_group_id: the same positions across targets
# ==================================================================================================


def test_dependency_group_members_lose_the_same_channel_indexes() -> None:
    model = ConvNet()
    # Alone, conv1 would keep its channels 4-7 (largest L1) and conv2 its channels 0-3.
    set_weight(model.conv1, torch.arange(1.0, 9.0).view(8, 1, 1, 1).expand(8, 3, 3, 3))
    set_weight(model.conv2, torch.arange(8.0, 0.0, -1).view(8, 1, 1, 1).expand(8, 8, 3, 3))
    twin = copy.deepcopy(model)
    _, alone = compress(L1NormPruner, twin, [{"op_names": ["conv1", "conv2"], "sparse_ratio": 0.5}])
    assert (kept_rows(alone["conv1"]["weight"]), kept_rows(alone["conv2"]["weight"])) == ([4, 5, 6, 7], [0, 1, 2, 3])
    # In one group their metrics are ranked together and both lose the same channels.
    config = [{"op_names": ["conv1", "conv2"], "sparse_ratio": 0.5, "dependency_group_id": "d"}]
    _, masks = compress(L1NormPruner, model, config)
    kept = kept_rows(masks["conv1"]["weight"])
    assert kept == kept_rows(masks["conv2"]["weight"]) and len(kept) == 4


def test_dependency_group_aligns_residual_convs_of_a_zoo_resnet18() -> None:
    model = get_model("resnet18", num_classes=10, small_input=True)
    # The stem and each block's last conv feed the same residual sum in layer1.
    names = ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    _, masks = compress(L1NormPruner, model, [{"op_names": names, "sparse_ratio": 0.25, "dependency_group_id": 0}])
    kept = [kept_rows(masks[n]["weight"]) for n in names]
    assert kept[0] == kept[1] == kept[2] and len(kept[0]) == 48
    # The BatchNorm after each conv is masked at the same channels.
    for bn in ("bn1", "layer1.0.bn2", "layer1.1.bn2"):
        assert masks[bn]["weight"].nonzero().flatten().tolist() == kept[0]


def test_dependency_group_members_with_different_sizes_is_an_error_naming_the_group() -> None:
    pruner = L1NormPruner(ConvNet(), [{"op_names": ["conv1", "head"], "sparse_ratio": 0.5,
                                       "dependency_group_id": "skip"}])
    with pytest.raises(ConfigError, match=r"config_list\[0\]\.dependency_group_id.*'skip'"):
        pruner.compress()


# ==================================================================================================
# granularity
# ==================================================================================================


def test_default_granularity_of_level_pruner_is_element_wise() -> None:
    pruner, masks = compress(LevelPruner, ConvNet(), [{"op_names": ["conv2"], "sparse_ratio": 0.5}])
    assert pruner.module_configs["conv2"]["weight"].granularity == "element"
    assert not is_constant_over(masks["conv2"]["weight"], (1, 2, 3))  # not whole filters
    assert masked_share(masks["conv2"]["weight"]) == 0.5


@pytest.mark.parametrize("pruner_cls", [L1NormPruner, L2NormPruner, FPGMPruner])
def test_default_granularity_of_norm_pruners_is_out_channel(pruner_cls: type) -> None:
    pruner, masks = compress(pruner_cls, ConvNet(), [{"op_names": ["conv2"], "sparse_ratio": 0.5}])
    assert pruner.module_configs["conv2"]["weight"].granularity == "out_channel"
    assert is_constant_over(masks["conv2"]["weight"], (1, 2, 3))
    assert masked_share(masks["conv2"]["weight"]) == 0.5


def test_default_granularity_of_an_activation_is_per_channel() -> None:
    config = [{"op_names": ["fc1"], "target_names": ["weight", "_output_"], "sparse_ratio": 0.5,
               "target_settings": {"_output_": {"align": {"target_name": "weight", "dims": [0]}}}}]
    pruner = L1NormPruner(MLP(), config)
    assert pruner.module_configs["fc1"]["_output_"].granularity == "per_channel"


@pytest.mark.parametrize(
    ("granularity", "constant_dims"),
    [("out_channel", (1, 2, 3)), ("per_channel", (1, 2, 3)), ("in_channel", (0, 2, 3))],
)
def test_channel_granularity_masks_whole_channels(granularity: str, constant_dims: tuple[int, ...]) -> None:
    config = [{"op_names": ["conv2"], "sparse_ratio": 0.5, "granularity": granularity}]
    _, masks = compress(LevelPruner, ConvNet(), config)
    mask = masks["conv2"]["weight"]
    assert is_constant_over(mask, constant_dims)
    assert masked_share(mask) == 0.5


def test_spec_out_channel_example_equals_block_1_minus1_minus1_minus1() -> None:
    model = ConvNet()
    _, a = compress(L1NormPruner, copy.deepcopy(model), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5,
                                                          "granularity": "out_channel"}])
    _, b = compress(L1NormPruner, copy.deepcopy(model), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5,
                                                          "granularity": [1, -1, -1, -1]}])
    for name in ("conv1", "conv2", "block.conv"):
        assert torch.equal(a[name]["weight"], b[name]["weight"])


def test_block_granularity_2x2_masks_whole_2x2_blocks() -> None:
    _, masks = compress(LevelPruner, MLP(), [{"op_names": ["fc2"], "sparse_ratio": 0.5, "granularity": [2, 2]}])
    blocks = masks["fc2"]["weight"].reshape(3, 2, 4, 2)  # (6, 8) as 3x4 blocks of 2x2
    assert is_constant_over(blocks, (1, 3))
    assert masked_share(masks["fc2"]["weight"]) == 0.5


def test_block_granularity_minus1_spans_a_whole_axis() -> None:
    # [-1, 4]: a block is every row times 4 columns, so fc2 (6x8) has two blocks.
    _, masks = compress(LevelPruner, MLP(), [{"op_names": ["fc2"], "sparse_ratio": 0.5, "granularity": [-1, 4]}])
    blocks = masks["fc2"]["weight"].reshape(6, 2, 4)
    assert is_constant_over(blocks, (0, 2))
    assert blocks[0, :, 0].tolist() in ([0.0, 1.0], [1.0, 0.0])


def test_block_granularity_shorter_than_the_weight_applies_to_its_last_axes() -> None:
    # On a conv weight (8, 8, 3, 3), [3, 3] makes every 3x3 kernel one block.
    _, masks = compress(LevelPruner, ConvNet(), [{"op_names": ["conv2"], "sparse_ratio": 0.5, "granularity": [3, 3]}])
    mask = masks["conv2"]["weight"]
    assert is_constant_over(mask, (2, 3))
    assert not is_constant_over(mask, (1, 2, 3))


def test_out_channel_of_an_embedding_is_its_weight_axis_1_in_a_zoo_transformer() -> None:
    model = get_model("transformer_classifier", num_layers=1, d_model=16, nhead=2, dim_feedforward=24, vocab_size=30)
    _, masks = compress(L1NormPruner, model, [{"op_names": ["embed"], "sparse_ratio": 0.25}])
    mask = masks["embed"]["weight"]  # (vocab, d_model): output features are the columns
    assert is_constant_over(mask, (0,))
    assert masked_share(mask) == 0.25


# ==================================================================================================
# align and apply_method
# ==================================================================================================


def test_align_spec_example_masks_batchnorm_weight_with_the_conv_output_channels() -> None:
    config = [
        {"op_names": ["conv1"], "sparse_ratio": 0.5},
        {"op_types": ["BatchNorm2d"], "op_names": ["bn1"], "target_names": ["weight"],
         "target_settings": {"weight": {"align": {"module_name": "conv1", "target_name": "weight", "dims": [0]}}}},
    ]
    _, masks = compress(L1NormPruner, ConvNet(), config)
    keep = masks["conv1"]["weight"].amax(dim=(1, 2, 3))
    assert torch.equal(masks["bn1"]["weight"], keep)
    # The explicit config replaces the automatic norm alignment, which would also mask bn1.bias.
    assert list(masks["bn1"]) == ["weight"]


def test_align_module_name_defaults_to_the_configured_module() -> None:
    # A square Linear pruned by input columns, its bias following those columns (dims [1]).
    config = [{"op_names": ["0"], "sparse_ratio": 0.5, "granularity": "in_channel",
               "target_settings": {"bias": {"align": {"target_name": "weight", "dims": [1]}}}}]
    pruner, masks = compress(L1NormPruner, nn.Sequential(nn.Linear(6, 6)), config)
    assert pruner.module_configs["0"]["bias"].align.module_name == "0"
    assert torch.equal(masks["0"]["bias"], masks["0"]["weight"].amax(dim=0))
    assert masked_share(masks["0"]["bias"]) == 0.5


def test_align_may_follow_a_target_that_is_itself_aligned() -> None:
    # bn1 comes before conv2 in the model, and conv2.bias is aligned to conv2.weight.
    config = [{"op_names": ["conv2"], "sparse_ratio": 0.5},
              {"op_names": ["bn1"], "target_names": ["weight"],
               "target_settings": {"weight": {"align": {"module_name": "conv2", "target_name": "bias", "dims": [0]}}}}]
    _, masks = compress(L1NormPruner, ConvNet(), config)
    assert torch.equal(masks["bn1"]["weight"], masks["conv2"]["bias"])
    assert masked_share(masks["bn1"]["weight"]) == 0.5


def test_an_alignment_cycle_is_an_error() -> None:
    def to(module: str) -> dict[str, Any]:
        return {"weight": {"align": {"module_name": module, "target_name": "weight", "dims": [0]}}}

    config = [{"op_names": ["bn1"], "target_names": ["weight"], "target_settings": to("bn2")},
              {"op_names": ["bn2"], "target_names": ["weight"], "target_settings": to("bn1")}]
    config_error(ConvNet(), config, "config_list[0].align", "cycle", "bn1.weight -> bn2.weight")


def test_batchnorm_after_a_channel_pruned_conv_is_aligned_automatically_in_zoo_digits_cnn() -> None:
    model = get_model("digits_cnn")
    _, masks = compress(L1NormPruner, model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
        keep = masks[conv]["weight"].amax(dim=(1, 2, 3))
        assert torch.equal(masks[bn]["weight"], keep)
        assert torch.equal(masks[bn]["bias"], keep)
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    h = model.bn1(model.conv1(x))  # masked channels are exactly 0 after the norm, as in the compact model
    assert h[:, masks["conv1"]["weight"].amax(dim=(1, 2, 3)) == 0].abs().max() == 0


def test_align_norms_false_leaves_the_batchnorm_unmasked() -> None:
    _, masks = compress(L1NormPruner, get_model("digits_cnn"), [{"op_names": ["conv1"], "sparse_ratio": 0.5}],
                        align_norms=False)
    assert list(masks) == ["conv1"]


def test_element_wise_pruning_does_not_align_norms() -> None:
    _, masks = compress(LevelPruner, get_model("digits_cnn"), [{"op_names": ["conv1"], "sparse_ratio": 0.5}])
    assert list(masks) == ["conv1"]


def _output_config(apply_method: str) -> list[dict[str, Any]]:
    return [{"op_names": ["0"], "target_names": ["weight", "bias", "_output_"], "sparse_ratio": 0.5,
             "target_settings": {"_output_": {"align": {"target_name": "weight", "dims": [0]},
                                              "apply_method": apply_method}}}]


def test_apply_method_mul_multiplies_the_output_by_the_mask() -> None:
    model = nn.Sequential(nn.Linear(4, 6))
    reference = copy.deepcopy(model)
    _, masks = compress(L1NormPruner, model, _output_config("mul"))
    keep = masks["0"]["_output_"]
    x = torch.randn(3, 4)
    assert torch.equal(model(x), reference(x) * keep)


def test_apply_method_add_adds_minus_1000_where_the_output_is_masked() -> None:
    model = nn.Sequential(nn.Linear(4, 6))
    _, masks = compress(L1NormPruner, model, _output_config("add"))
    keep = masks["0"]["_output_"]
    x = torch.randn(3, 4)
    with torch.no_grad():  # the weight/bias masks still multiply: masked rows compute 0 before the add
        plain = x @ (model[0].weight * masks["0"]["weight"]).T + model[0].bias * masks["0"]["bias"]
    out = model(x)
    assert torch.allclose(out, plain + (1 - keep) * -1000.0)
    assert torch.all(out[:, keep == 0] == -1000.0)


def test_apply_method_defaults_to_mul() -> None:
    pruner = L1NormPruner(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5}])
    assert {s.apply_method for s in pruner.module_configs["fc1"].values()} == {"mul"}


# ==================================================================================================
# Several sub-configs
# ==================================================================================================


def test_a_later_sub_config_overrides_an_earlier_one_for_the_same_module() -> None:
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5}, {"op_names": ["fc2"], "sparse_ratio": 0.25}]
    pruner, _ = compress(LevelPruner, MLP(), config)
    report = pruner.sparsity_report()
    assert [report.row(n).achieved for n in ("fc1", "fc2", "fc3")] == [0.5, 0.25, 0.5]


def test_sub_config_order_matters_the_last_match_wins() -> None:
    config = [{"op_names": ["fc2"], "sparse_ratio": 0.25}, {"op_types": ["Linear"], "sparse_ratio": 0.5}]
    pruner, _ = compress(LevelPruner, MLP(), config)
    assert pruner.sparsity_report().row("fc2").achieved == 0.5


def test_a_later_sub_config_overrides_only_the_targets_it_names() -> None:
    config = [
        {"op_names": ["fc2"], "sparse_ratio": 0.5, "target_names": ["weight", "bias"],
         "target_settings": {"bias": {"sparse_ratio": 0.5}}},
        {"op_names": ["fc2"], "target_names": ["weight"], "sparse_ratio": 0.25},
    ]
    pruner = LevelPruner(MLP(), config)
    assert pruner.module_configs["fc2"]["weight"].sparse_ratio == 0.25
    assert pruner.module_configs["fc2"]["bias"].sparse_ratio == 0.5


# ==================================================================================================
# Legacy NNI keys
# ==================================================================================================


@pytest.mark.parametrize("legacy_key", ["sparsity", "sparsity_per_layer"])
def test_legacy_per_layer_sparsity_keys_mean_sparse_ratio(legacy_key: str) -> None:
    model = ConvNet()
    _, legacy = compress(L1NormPruner, copy.deepcopy(model), [{"op_types": ["Conv2d"], legacy_key: 0.5}])
    _, current = compress(L1NormPruner, copy.deepcopy(model), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    assert legacy.keys() == current.keys()
    for name in legacy:
        for target in legacy[name]:
            assert torch.equal(legacy[name][target], current[name][target])


def test_legacy_total_sparsity_is_one_ratio_over_a_global_group() -> None:
    pruner, _ = compress(LevelPruner, _uneven_mlp(), [{"op_types": ["Linear"], "total_sparsity": 0.5}])
    report = pruner.sparsity_report()
    group = report.row("fc1").global_group
    assert group is not None and {report.row(n).global_group for n in ("fc1", "fc2", "fc3")} == {group}
    assert report.group(group) == 49 / 98
    assert report.row("fc1").achieved > report.row("fc3").achieved


def test_legacy_total_sparsity_in_two_sub_configs_makes_two_groups() -> None:
    config = [{"op_names": ["fc1"], "total_sparsity": 0.5}, {"op_names": ["fc2", "fc3"], "total_sparsity": 0.25}]
    pruner = LevelPruner(MLP(), config)
    groups = {name: pruner.module_configs[name]["weight"].global_group_id for name in ("fc1", "fc2", "fc3")}
    assert groups["fc1"] != groups["fc2"] == groups["fc3"]


def test_legacy_max_sparsity_per_layer_bounds_every_layer_of_a_total_sparsity() -> None:
    config = [{"op_types": ["Linear"], "total_sparsity": 0.5, "max_sparsity_per_layer": 0.6}]
    pruner, _ = compress(LevelPruner, _uneven_mlp(), config)
    report = pruner.sparsity_report()
    assert pruner.module_configs["fc1"]["weight"].max_sparse_ratio == 0.6
    assert max(report.row(n).achieved for n in ("fc1", "fc2", "fc3")) <= 0.6


def test_legacy_max_sparsity_per_layer_dict_bounds_the_named_layers_only() -> None:
    config = [{"op_types": ["Linear"], "total_sparsity": 0.5, "max_sparsity_per_layer": {"fc1": 0.25}}]
    pruner, _ = compress(LevelPruner, _uneven_mlp(), config)
    report = pruner.sparsity_report()
    assert report.row("fc1").achieved == 0.25
    assert pruner.module_configs["fc2"]["weight"].max_sparse_ratio is None


def test_legacy_max_sparsity_per_layer_dict_naming_an_unselected_module_warns() -> None:
    config = [{"op_names": ["fc1"], "total_sparsity": 0.5, "max_sparsity_per_layer": {"fc9": 0.25}}]
    with pytest.warns(ConfigWarning, match="fc9"):
        LevelPruner(MLP(), config)


def test_legacy_op_types_default_means_conv_conv_transpose_and_linear() -> None:
    pruner = LevelPruner(MixedNet(), [{"op_types": ["default"], "sparse_ratio": 0.5}])
    assert list(pruner.module_configs) == ["conv", "up", "fc"]


def test_legacy_op_types_default_combines_with_other_types() -> None:
    pruner = LevelPruner(MixedNet(), [{"op_types": ["default", "Embedding"], "sparse_ratio": 0.5}])
    assert sorted(pruner.module_configs) == ["conv", "emb", "fc", "up"]


def test_legacy_exclude_removes_modules_earlier_sub_configs_selected() -> None:
    config = [{"op_types": ["Linear"], "sparsity": 0.5}, {"op_names": ["fc2"], "exclude": True}]
    _, masks = compress(L1NormPruner, MLP(), config)
    assert sorted(masks) == ["fc1", "fc3"]


def test_legacy_exclude_is_undone_by_a_later_sub_config() -> None:
    config = [{"op_types": ["Linear"], "sparsity": 0.5}, {"op_types": ["Linear"], "exclude": True},
              {"op_names": ["fc3"], "sparsity": 0.5}]
    _, masks = compress(L1NormPruner, MLP(), config)
    assert list(masks) == ["fc3"]


def test_legacy_exclude_false_is_an_ordinary_sub_config() -> None:
    _, masks = compress(L1NormPruner, MLP(), [{"op_names": ["fc1"], "sparsity": 0.5, "exclude": False}])
    assert list(masks) == ["fc1"]


def test_legacy_quant_types_and_bits_become_target_names_and_quant_dtype() -> None:
    config = [{"op_types": ["Linear"], "quant_types": ["weight", "input", "output"], "quant_bits": 4}]
    configs = canonicalize_config_list(MLP(), config, mode="quantization")
    assert list(configs) == ["fc1", "fc2", "fc3"]
    assert sorted(configs["fc1"]) == ["_input_", "_output_", "weight"]
    assert {s.extra["quant_dtype"] for s in configs["fc1"].values()} == {"int4"}


def test_legacy_quant_bits_dict_gives_bits_per_quant_type() -> None:
    config = [{"op_names": ["fc1"], "quant_types": ["weight", "input"], "quant_bits": {"weight": 4, "input": 8}}]
    configs = canonicalize_config_list(MLP(), config, mode="quantization")
    assert configs["fc1"]["weight"].extra["quant_dtype"] == "int4"
    assert configs["fc1"]["_input_"].extra["quant_dtype"] == "int8"


def test_legacy_quant_bits_default_to_8() -> None:
    configs = canonicalize_config_list(MLP(), [{"op_names": ["fc1"], "quant_types": ["weight"]}], mode="quantization")
    assert configs["fc1"]["weight"].extra["quant_dtype"] == "int8"


# ==================================================================================================
# Quantization and distillation keys (canonicalize_config_list with mode=...)
# ==================================================================================================


def test_quantization_keys_are_kept_per_target_and_the_default_target_is_the_weight() -> None:
    config = [{"op_types": ["Linear"], "quant_dtype": "uint4", "quant_scheme": "affine",
               "granularity": "per_channel", "apply_method": "qat_clamp_round"}]
    setting = canonicalize_config_list(MLP(), config, mode="quantization")["fc1"]
    assert list(setting) == ["weight"]  # no bias by default when quantizing
    assert setting["weight"].extra == {"quant_dtype": "uint4", "quant_scheme": "affine"}
    assert (setting["weight"].granularity, setting["weight"].apply_method) == ("per_channel", "qat_clamp_round")


def test_quantization_block_granularity_and_per_target_dtypes() -> None:
    config = [{"op_names": ["fc2"], "target_names": ["weight", "_input_"], "quant_dtype": "int8",
               "granularity": [2, 4], "target_settings": {"_input_": {"quant_dtype": "uint8", "granularity": [1]}}}]
    setting = canonicalize_config_list(MLP(), config, mode="quantization")["fc2"]
    assert (setting["weight"].extra["quant_dtype"], setting["weight"].granularity) == ("int8", (2, 4))
    assert (setting["_input_"].extra["quant_dtype"], setting["_input_"].granularity) == ("uint8", (1,))


def test_quantization_fuse_names_are_kept_with_the_settings() -> None:
    config = [{"op_names": ["conv1"], "quant_dtype": "int8", "fuse_names": [("conv1", "bn1")]}]
    setting = canonicalize_config_list(ConvNet(), config, mode="quantization")["conv1"]["weight"]
    assert setting.extra["fuse_names"] == [("conv1", "bn1")]


def test_quantization_fuse_names_must_start_with_a_selected_module() -> None:
    config = [{"op_names": ["conv1"], "quant_dtype": "int8", "fuse_names": [("bn1", "conv1")]}]
    config_error(ConvNet(), config, "config_list[0].fuse_names", "'bn1'", mode="quantization")


def test_distillation_keys_apply_to_the_output_by_default() -> None:
    config = [{"op_names": ["fc3"], "lambda": 0.5, "link": "teacher.fc3", "apply_method": "kl"},
              {"op_names": ["fc2"], "lambda": 1, "link": ["teacher.fc2", "teacher.fc1"], "apply_method": "mse"}]
    configs = canonicalize_config_list(MLP(), config, mode="distillation")
    assert list(configs["fc3"]) == ["_output_"]
    assert configs["fc3"]["_output_"].extra == {"lambda": 0.5, "link": "teacher.fc3"}
    assert configs["fc2"]["_output_"].apply_method == "mse"


def test_an_unknown_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        canonicalize_config_list(MLP(), [{"op_names": ["fc1"]}], mode="pruning_and_more")


# ==================================================================================================
# Names that match nothing: a warning, not an error
# ==================================================================================================


@pytest.mark.parametrize(
    ("config", "fragment", "selected"),
    [
        ({"op_names": ["fc1", "fc9"]}, "'fc9'", ["fc1"]),
        ({"op_types": ["Linear"], "exclude_op_names": ["fc9"]}, "'fc9'", ["fc1", "fc2", "fc3"]),
        ({"op_names_re": ["fc9"]}, "selects no module", []),
        ({"op_types": ["Conv2d"]}, "selects no module", []),  # a real type, just absent from this model
    ],
)
def test_names_that_match_nothing_warn_and_the_rest_still_applies(
    config: dict[str, Any], fragment: str, selected: list[str]
) -> None:
    with pytest.warns(ConfigWarning, match=re.escape(fragment)) as record:
        pruner = LevelPruner(MLP(), [{**config, "sparse_ratio": 0.5}])
    assert all("config_list[0]" in str(w.message) for w in record)
    assert sorted(pruner.module_configs) == selected


def test_a_valid_config_list_warns_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compress(L1NormPruner, MLP(), [{"op_types": ["Linear"], "sparse_ratio": 0.5}])


# ==================================================================================================
# Errors: each names config_list[i] and the key
# ==================================================================================================


@pytest.mark.parametrize("key", ["sparse_ratio", "max_sparse_ratio", "min_sparse_ratio"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_a_ratio_outside_0_1_is_an_error(key: str, value: Any) -> None:
    # (bounds come with a threshold here, so only the bad value can be the problem)
    second = {"op_names": ["fc2"], key: value} if key == "sparse_ratio" else {
        "op_names": ["fc2"], "sparse_threshold": 0.1, key: value}
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5}, second], f"config_list[1].{key}", "[0, 1]")


def test_a_ratio_in_target_settings_is_checked_too() -> None:
    config = [{"op_names": ["fc1"], "target_settings": {"weight": {"sparse_ratio": 2}}}]
    config_error(MLP(), config, "config_list[0].target_settings.weight.sparse_ratio", "[0, 1]")


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity_per_layer": -0.5}, "sparsity_per_layer"),
        ({"total_sparsity": float("nan")}, "total_sparsity"),
        ({"total_sparsity": 0.5, "max_sparsity_per_layer": True}, "max_sparsity_per_layer"),
    ],
)
def test_a_legacy_ratio_outside_0_1_is_an_error_under_its_own_key(config: dict[str, Any], key: str) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], **config}], f"config_list[0].{key}", "[0, 1]")


def test_a_bad_ratio_in_a_max_sparsity_per_layer_dict_is_an_error() -> None:
    config = [{"op_names": ["fc1"], "total_sparsity": 0.5, "max_sparsity_per_layer": {"fc1": -1}}]
    config_error(MLP(), config, "config_list[0].max_sparsity_per_layer.fc1", "[0, 1]")


def test_an_unknown_key_is_an_error_with_a_suggestion() -> None:
    config = [{"op_names": ["fc1"], "sparse_ratio": 0.5}, {"op_names": ["fc2"], "sparse_raito": 0.5}]
    config_error(MLP(), config, "config_list[1].sparse_raito", "unknown key 'sparse_raito'",
                 "did you mean 'sparse_ratio'")


def test_an_unknown_key_in_target_settings_is_an_error_with_a_suggestion() -> None:
    config = [{"op_names": ["fc1"], "target_settings": {"weight": {"granularty": "in_channel", "sparse_ratio": 0.5}}}]
    config_error(MLP(), config, "config_list[0].target_settings.weight.granularty", "did you mean 'granularity'")


@pytest.mark.parametrize("key", ["quant_dtype", "quant_scheme", "fuse_names", "lambda", "link"])
def test_a_key_of_another_mode_in_a_pruning_config_is_an_error(key: str) -> None:
    config = [{"op_names": ["fc1"], "sparse_ratio": 0.5, key: "x"}]
    message = config_error(MLP(), config, f"config_list[0].{key}", "pruning config")
    assert "quantization" in message or "distillation" in message


@pytest.mark.parametrize("key", ["quant_types", "quant_bits"])
def test_a_legacy_quantization_key_in_a_pruning_config_is_an_error(key: str) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5, key: ["weight"]}],
                 f"config_list[0].{key}", "legacy quantization key")


def test_a_pruning_key_in_a_distillation_config_is_an_error() -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5}], "config_list[0].sparse_ratio",
                 "pruning key", mode="distillation")


@pytest.mark.parametrize(
    ("key", "type_name", "suggestion"),
    [("op_types", "Conv2D", "Conv2d"), ("exclude_op_types", "linear", "Linear"),
     ("op_types", "torch.nn.Lienar", "torch.nn.Linear")],
)
def test_an_unknown_op_type_is_an_error_with_a_suggestion(key: str, type_name: str, suggestion: str) -> None:
    config = [{"op_names_re": ["fc"], key: [type_name], "sparse_ratio": 0.5}]
    config_error(MLP(), config, f"config_list[0].{key}", repr(type_name), f"did you mean {suggestion!r}")


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"op_names": ["fc1"], "sparsity": 0.5, "sparse_ratio": 0.5}, "sparsity"),
        ({"op_names": ["fc1"], "sparsity": 0.5, "total_sparsity": 0.5}, "total_sparsity"),
        ({"op_names": ["fc1"], "total_sparsity": 0.5, "global_group_id": "g"}, "total_sparsity"),
        ({"op_names": ["fc1"], "total_sparsity": 0.5, "max_sparsity_per_layer": 0.5, "max_sparse_ratio": 0.5},
         "max_sparsity_per_layer"),
        ({"op_names": ["fc1"], "sparse_ratio": 0.5, "sparse_threshold": 0.1}, "sparse_threshold"),
        ({"op_names": ["fc1"], "sparse_threshold": 0.1, "min_sparse_ratio": 0.6, "max_sparse_ratio": 0.4},
         "min_sparse_ratio"),
        ({"op_names": ["fc1"], "sparse_ratio": 0.5, "max_sparse_ratio": 0.4}, "max_sparse_ratio"),
        ({"op_names": ["fc1"], "sparse_ratio": 0.5, "min_sparse_ratio": 0.6}, "min_sparse_ratio"),
        ({"op_names": ["fc1"], "sparse_threshold": 0.1, "global_group_id": "g"}, "global_group_id"),
        ({"op_names": ["fc1"], "exclude": True, "sparse_ratio": 0.5}, "exclude"),
        ({"op_names": ["fc1"], "exclude": True, "sparsity": 0.5}, "exclude"),
    ],
)
def test_conflicting_keys_are_an_error(config: dict[str, Any], key: str) -> None:
    config_error(MLP(), [{"op_names": ["fc3"], "sparse_ratio": 0.5}, config], f"config_list[1].{key}")


def test_exclude_must_be_a_bool() -> None:
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5}, {"op_names": ["fc1"], "exclude": "yes"}]
    config_error(MLP(), config, "config_list[1].exclude", "true or false")


def test_a_sub_config_without_a_selector_is_an_error() -> None:
    config_error(MLP(), [{"sparse_ratio": 0.5}], "config_list[0]", "op_types", "op_names")


def test_a_sub_config_without_a_ratio_or_threshold_is_an_error() -> None:
    config_error(MLP(), [{"op_names": ["fc1"]}], "config_list[0]", "sparse_ratio", "sparse_threshold")


def test_target_names_no_selected_module_has_is_an_error() -> None:
    config = [{"op_types": ["Linear"], "target_names": ["weight", "weight_orig"], "sparse_ratio": 0.5}]
    config_error(MLP(), config, "config_list[0].target_names", "'weight_orig'")


def test_a_target_name_that_is_no_tensor_is_an_error() -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "target_names": ["in_features"], "sparse_ratio": 0.5}],
                 "config_list[0].target_names", "'in_features'")


def test_an_input_argname_not_in_forward_is_an_error_listing_the_arguments() -> None:
    config = [{"op_names": ["gate"], "target_names": ["_input_y"], "sparse_ratio": 0.5}]
    config_error(GatedNet(), config, "config_list[0].target_names", "'_input_y'", "['x', 'scale']")


@pytest.mark.parametrize("granularity", ["in_channel", "out_channel"])
@pytest.mark.parametrize("target", ["_input_", "_output_"])
def test_channel_granularity_on_an_activation_is_an_error(granularity: str, target: str) -> None:
    config = [{"op_names": ["fc1"], "target_names": [target], "sparse_ratio": 0.5, "granularity": granularity}]
    config_error(MLP(), config, "config_list[0].granularity", "per_channel")


@pytest.mark.parametrize("granularity", ["channel", "element", [], [0, 2], [-2], [1.5], [True, 2], 3, None])
def test_a_bad_granularity_is_an_error(granularity: Any) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5, "granularity": granularity}],
                 "config_list[0].granularity")


def test_a_block_granularity_with_more_axes_than_the_weight_is_an_error() -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5, "granularity": [1, 2, 2]}],
                 "config_list[0].granularity", "fc1.weight")


@pytest.mark.parametrize(
    ("align", "fragment"),
    [
        ("weight", "config_list[1].target_settings.weight.align: must be a dict"),
        ({"module_name": "conv1", "dims": [0]}, "align.target_name"),
        ({"module_name": "conv1", "target_name": "weight", "dim": [0]}, "unknown key 'dim'"),
        ({"module_name": "conv1", "target_name": "weight", "dims": []}, "align.dims"),
        ({"module_name": "conv1", "target_name": "weight", "dims": ["0"]}, "align.dims"),
        ({"module_name": "conv9", "target_name": "weight", "dims": [0]}, "'conv9'"),
        ({"module_name": "conv1", "target_name": "wieght", "dims": [0]}, "did you mean 'weight'"),
        ({"module_name": "conv1", "target_name": "weight", "dims": [4]}, "align.dims"),
        ({"module_name": "conv2", "target_name": "weight", "dims": [0]}, "does not compress"),
    ],
)
def test_a_bad_align_is_an_error(align: Any, fragment: str) -> None:
    config = [{"op_names": ["conv1"], "sparse_ratio": 0.5},
              {"op_names": ["bn1"], "target_names": ["weight"], "target_settings": {"weight": {"align": align}}}]
    message = config_error(ConvNet(), config, fragment)
    assert "config_list[1]" in message and "align" in message


def test_an_align_whose_shapes_disagree_is_an_error_at_compress() -> None:
    config = [{"op_names": ["conv1"], "sparse_ratio": 0.5},
              {"op_names": ["head"], "target_names": ["weight"],
               "target_settings": {"weight": {"align": {"module_name": "conv1", "target_name": "weight", "dims": [0]}}}}]
    pruner = L1NormPruner(ConvNet(), config)
    with pytest.raises(ConfigError, match=r"config_list\[1\]\.align"):
        pruner.compress()


@pytest.mark.parametrize("group_key", ["global_group_id", "dependency_group_id"])
def test_group_members_asking_different_ratios_is_an_error_naming_both(group_key: str) -> None:
    config = [{"op_names": ["fc1"], "sparse_ratio": 0.5, group_key: "g"},
              {"op_names": ["fc2"], "sparse_ratio": 0.4, group_key: "g"}]
    message = config_error(MLP(), config, "config_list[1].sparse_ratio", f"{group_key} 'g'")
    assert "fc1.weight" in message and "fc2.weight" in message and "config_list[0]" in message


@pytest.mark.parametrize("value", [1.5, ["g"], {"g": 1}])
def test_a_group_id_must_be_a_string_or_an_int(value: Any) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5, "global_group_id": value}],
                 "config_list[0].global_group_id")


@pytest.mark.parametrize(
    ("key", "value"),
    [("op_names", "fc1"), ("op_names_re", "fc"), ("op_types", "Linear"), ("exclude_op_names", "fc2"),
     ("exclude_op_names_re", "fc2"), ("exclude_op_types", "Conv2d"), ("target_names", "weight")],
)
def test_a_string_instead_of_a_list_is_an_error(key: str, value: str) -> None:
    config = {"op_names": ["fc1"], "sparse_ratio": 0.5, key: value}
    config_error(MLP(), [config], f"config_list[0].{key}", "wrap it in []")


def test_an_invalid_regular_expression_is_an_error() -> None:
    config_error(MLP(), [{"op_names_re": ["fc(1"], "sparse_ratio": 0.5}], "config_list[0].op_names_re",
                 "regular expression")


@pytest.mark.parametrize("config_list", [{"op_names": ["fc1"], "sparse_ratio": 0.5}, None, "fc1", 3])
def test_a_config_list_that_is_no_list_is_an_error(config_list: Any) -> None:
    config_error(MLP(), config_list, "config_list", "list of dicts", mode="canonicalize")


@pytest.mark.parametrize("sub_config", [["op_names", "fc1"], "fc1", None])
def test_a_sub_config_that_is_no_dict_is_an_error(sub_config: Any) -> None:
    config_list = [{"op_names": ["fc1"], "sparse_ratio": 0.5}, sub_config]
    config_error(MLP(), config_list, "config_list[1]", "must be a dict", mode="canonicalize")


@pytest.mark.parametrize("config_list", [None, [None], ["fc1"]])
def test_a_pruner_given_a_malformed_config_list_raises_config_error(config_list: Any) -> None:
    with pytest.raises(ConfigError):
        L1NormPruner(MLP(), config_list)


@pytest.mark.parametrize(
    ("target_settings", "key"),
    [(["weight"], "target_settings"), ({"weight": 0.5}, "target_settings.weight")],
)
def test_target_settings_must_be_a_dict_of_dicts(target_settings: Any, key: str) -> None:
    config = [{"op_names": ["fc1"], "sparse_ratio": 0.5, "target_settings": target_settings}]
    config_error(MLP(), config, f"config_list[0].{key}", "must be a dict")


def test_target_settings_for_a_target_not_in_target_names_is_an_error() -> None:
    config = [{"op_names": ["fc1"], "target_names": ["weight"], "sparse_ratio": 0.5,
               "target_settings": {"bias": {"sparse_ratio": 0.5}}}]
    config_error(MLP(), config, "config_list[0].target_settings.bias", "not in target_names")


def test_target_settings_for_a_target_no_module_has_is_an_error() -> None:
    config = [{"op_names": ["fc1"], "sparse_ratio": 0.5, "target_settings": {"wieght": {"sparse_ratio": 0.25}}}]
    config_error(MLP(), config, "config_list[0].target_settings.wieght", "no selected module has")


def test_empty_target_names_is_an_error() -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5, "target_names": []}],
                 "config_list[0].target_names", "empty")


@pytest.mark.parametrize("value", ["0.1", True, float("nan")])
def test_a_sparse_threshold_must_be_a_number(value: Any) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_threshold": value}], "config_list[0].sparse_threshold")


@pytest.mark.parametrize("value", ["mse", "multiply", None])
def test_a_pruning_apply_method_is_mul_or_add(value: Any) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "sparse_ratio": 0.5, "apply_method": value}],
                 "config_list[0].apply_method", "'mul'", "'add'")


@pytest.mark.parametrize("value", ["int0", "int33", "float16", "i8", 8, None])
def test_a_bad_quant_dtype_is_an_error(value: Any) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "quant_dtype": value}], "config_list[0].quant_dtype",
                 mode="quantization")


@pytest.mark.parametrize("value", ["asymmetric", None, 1])
def test_a_bad_quant_scheme_is_an_error(value: Any) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "quant_dtype": "int8", "quant_scheme": value}],
                 "config_list[0].quant_scheme", "'affine'", mode="quantization")


@pytest.mark.parametrize("value", ["mul", "add", "kl"])
def test_a_quantization_apply_method_is_bypass_or_clamp_round(value: str) -> None:
    config_error(MLP(), [{"op_names": ["fc1"], "quant_dtype": "int8", "apply_method": value}],
                 "config_list[0].apply_method", "clamp_round", mode="quantization")


@pytest.mark.parametrize("value", ["conv1", [("conv1", 2)], [()], 3])
def test_a_malformed_fuse_names_is_an_error(value: Any) -> None:
    config_error(ConvNet(), [{"op_names": ["conv1"], "quant_dtype": "int8", "fuse_names": value}],
                 "config_list[0].fuse_names", mode="quantization")


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"op_names": ["fc1"], "quant_types": "weight"}, "quant_types"),
        ({"op_names": ["fc1"], "quant_types": []}, "quant_types"),
        ({"op_names": ["fc1"], "quant_types": ["activation"]}, "quant_types"),
        ({"op_names": ["fc1"], "quant_types": ["weight"], "target_names": ["weight"]}, "quant_types"),
        ({"op_names": ["fc1"], "quant_bits": 8}, "quant_bits"),
        ({"op_names": ["fc1"], "quant_types": ["weight"], "quant_bits": 0}, "quant_bits"),
        ({"op_names": ["fc1"], "quant_types": ["weight"], "quant_bits": 33}, "quant_bits"),
        ({"op_names": ["fc1"], "quant_types": ["weight"], "quant_bits": True}, "quant_bits"),
        ({"op_names": ["fc1"], "quant_types": ["weight"], "quant_bits": "8"}, "quant_bits"),
        ({"op_names": ["fc1"], "quant_types": ["weight"], "quant_bits": {"weight": 2.5}}, "quant_bits"),
    ],
)
def test_bad_legacy_quant_types_or_bits_are_an_error(config: dict[str, Any], key: str) -> None:
    config_error(MLP(), [config], f"config_list[0].{key}", mode="quantization")


@pytest.mark.parametrize(
    ("key", "value"),
    [("lambda", -1), ("lambda", float("nan")), ("lambda", True), ("lambda", "1"),
     ("link", 3), ("link", []), ("link", ["teacher.fc1", 2]), ("link", ""),
     ("apply_method", "mul"), ("apply_method", "l2")],
)
def test_bad_distillation_lambda_link_or_apply_method_is_an_error(key: str, value: Any) -> None:
    config = {"op_names": ["fc1"], "lambda": 1.0, "link": "teacher.fc1", key: value}
    config_error(MLP(), [config], f"config_list[0].{key}", mode="distillation")
