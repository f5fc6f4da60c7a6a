"""Group-aware channel importance (``group_l1`` / ``group_l2``): a channel is scored by everything removed with it.

The expected scores are computed by hand from the weights (filter + norm scale + the consumer's input
slice, or the ``H*W`` linear columns after a flatten), so the tests pin the definition, not just
"something different from filter L1".
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search.config import ConfigError
from search.pruning import GroupL1NormPruner, GroupL2NormPruner, L1NormPruner, TorchEvaluator
from search.pruning.group import GroupNormPruner, channel_parts
from search.pruning.registry import get_pruner_class
from search.zoo import digits_cnn, get_dummy_input

pytestmark = pytest.mark.usefixtures("single_thread")


def digits(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = digits_cnn()
    with torch.no_grad():  # non-trivial BN scales and shifts
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.uniform_(0.2, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return model.eval()


def kept(masks: dict[str, dict[str, torch.Tensor]], name: str) -> list[int]:
    return torch.nonzero(masks[name]["weight"].flatten(1).amax(1)).flatten().tolist()


def lowest(score: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.topk(score, k, largest=False).indices.tolist())


DUMMY = get_dummy_input("digits_cnn")


def test_parts_are_the_filter_the_norm_scale_and_the_consumers_input_slices() -> None:
    parts = channel_parts(digits(), DUMMY, ["conv2", "conv3"])
    assert [(p.module, p.target, p.axis) for p in parts["conv2"]] == [
        ("conv2", "weight", 0), ("bn2", "weight", 0), ("conv3", "weight", 1)]
    # conv3 feeds fc through a 4x4 average pool and a flatten: 16 fc columns per channel
    fc = next(p for p in parts["conv3"] if p.module == "fc")
    assert (fc.target, fc.axis) == ("weight", 1)
    assert fc.channels.bincount().tolist() == [16] * 64
    assert fc.positions[fc.channels == 5].tolist() == list(range(80, 96))


def test_biases_and_norm_shifts_count_only_when_asked() -> None:
    model = digits()
    without = {(p.module, p.target) for p in channel_parts(model, DUMMY, ["conv1"])["conv1"]}
    with_bias = {(p.module, p.target) for p in channel_parts(model, DUMMY, ["conv1"], include_bias=True)["conv1"]}
    assert ("bn1", "bias") not in without and with_bias - without == {("bn1", "bias")}


@pytest.mark.parametrize(("cls", "p"), [(GroupL1NormPruner, 1), (GroupL2NormPruner, 2)])
def test_a_channel_scores_the_sum_of_its_group_slices(cls: type[GroupNormPruner], p: int) -> None:
    model = digits()
    w2, g2, w3 = model.conv2.weight.detach(), model.bn2.weight.detach(), model.conv3.weight.detach()
    expected = (w2.abs() ** p).sum((1, 2, 3)) + g2.abs() ** p + (w3.abs() ** p).sum((0, 2, 3))
    pruner = cls(model, [{"op_names": ["conv2"], "sparse_ratio": 0.5}], dummy_input=DUMMY)
    assert pruner.metrics_calculator is not None and pruner.data_collector is not None
    metric = pruner.metrics_calculator.calculate_metrics(pruner.data_collector.collect())["conv2"]["weight"]
    torch.testing.assert_close(metric.flatten(), expected, rtol=1e-5, atol=1e-5)
    _, masks = pruner.compress()
    assert kept(masks, "conv2") == sorted(set(range(64)) - set(lowest(expected, 32)))


def test_it_keeps_the_channels_the_next_layer_reads_where_filter_l1_cannot_tell() -> None:
    model = digits()
    with torch.no_grad():
        model.conv2.weight.fill_(0.01)  # every conv2 filter has the same L1 norm
        model.bn2.weight.fill_(1.0)
        model.conv3.weight.mul_(0.01)
        model.conv3.weight[:, 40:56] = 1.0  # conv3 relies on conv2's channels 40..55
    _, masks = GroupL1NormPruner(model, [{"op_names": ["conv2"], "sparse_ratio": 0.75}], dummy_input=DUMMY).compress()
    assert kept(masks, "conv2") == list(range(40, 56))


def test_coupled_layers_share_a_score_and_lose_the_same_channels() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.a(x) + self.b(x))

    torch.manual_seed(0)
    model = Residual().eval()
    parts = channel_parts(model, torch.randn(1, 3, 4, 4), ["a", "b"])
    assert {(p.module, p.axis) for p in parts["a"]} == {("a", 0), ("b", 0), ("head", 1)}
    _, masks = GroupL1NormPruner(model, [{"op_names": ["a", "b"], "sparse_ratio": 0.5}],
                                 dummy_input=torch.randn(1, 3, 4, 4)).compress()
    assert kept(masks, "a") == kept(masks, "b") and len(kept(masks, "a")) == 4


def test_norms_after_a_pruned_conv_are_masked_with_it() -> None:
    _, masks = GroupL1NormPruner(digits(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=DUMMY).compress()
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
        assert torch.nonzero(masks[bn]["weight"]).flatten().tolist() == kept(masks, conv)


def test_global_ranking_spreads_one_ratio_over_the_layers() -> None:
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": "all"}]
    _, masks = GroupL1NormPruner(digits(), config, dummy_input=DUMMY).compress()
    total = sum(masks[c]["weight"].numel() for c in ("conv1", "conv2", "conv3"))
    zeros = sum(int((masks[c]["weight"] == 0).sum()) for c in ("conv1", "conv2", "conv3"))
    assert abs(zeros / total - 0.5) < 0.02
    assert all(kept(masks, c) for c in ("conv1", "conv2", "conv3"))


def test_block_granularity_falls_back_to_the_weights_own_norm() -> None:
    config = [{"op_names": ["conv2"], "sparse_ratio": 0.5, "granularity": [1, 1, 3, 3]}]
    _, ours = GroupL1NormPruner(digits(), config, dummy_input=DUMMY).compress()
    _, plain = L1NormPruner(digits(), config).compress()
    assert torch.equal(ours["conv2"]["weight"], plain["conv2"]["weight"])


def test_a_chain_step_keeps_what_is_masked_masked() -> None:
    model = digits()
    pruner = GroupL1NormPruner(model, [{"op_names": ["conv3"], "sparse_ratio": 0.25}], dummy_input=DUMMY)
    _, first = pruner.compress()
    pruner.unwrap_model()
    pruner = GroupL1NormPruner(model, [{"op_names": ["conv3"], "sparse_ratio": 0.5}], dummy_input=DUMMY)
    pruner.load_masks(first)
    _, second = pruner.compress()
    assert set(kept(second, "conv3")) < set(kept(first, "conv3")) and len(kept(second, "conv3")) == 32


def test_without_an_input_to_trace_it_names_dummy_input() -> None:
    with pytest.raises(ConfigError, match="dummy_input"):
        GroupL1NormPruner(digits(), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])


def test_an_evaluators_dummy_input_is_enough() -> None:
    model = digits()
    evaluator = TorchEvaluator(lambda *a: None, torch.optim.SGD(model.parameters(), lr=0.1),
                               lambda batch, m: m(batch[0]).sum(), dummy_input=DUMMY)
    pruner = GroupL1NormPruner(model, [{"op_names": ["conv3"], "sparse_ratio": 0.5}], evaluator=evaluator)
    assert [p.module for p in pruner.group_parts()["conv3"]] == ["conv3", "bn3", "fc"]


def test_an_untraceable_model_warns_and_ranks_by_the_filters_alone() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.from_numpy(x.detach().numpy()))  # no tracer follows a trip through numpy

    torch.manual_seed(0)
    model = Odd()
    with pytest.warns(RuntimeWarning, match="own filter norm"):
        pruner = GroupL1NormPruner(model, [{"op_names": ["conv"], "sparse_ratio": 0.5}], dummy_input=torch.randn(1, 1, 5, 5))
    _, masks = pruner.compress()
    filter_l1 = model.conv.weight.detach().abs().sum((1, 2, 3))
    assert kept(masks, "conv") == sorted(set(range(4)) - set(lowest(filter_l1, 2)))


def test_the_registry_names_and_the_scheduler_hands_it_its_dummy_input() -> None:
    from search.algorithms import LinearTaskGenerator
    from search.scheduling import PruningScheduler

    assert get_pruner_class("group_l1") is GroupL1NormPruner and get_pruner_class("group_l2") is GroupL2NormPruner
    gen = LinearTaskGenerator(2, digits(), origin_config_list=[{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
                              log_dir=None, best_result_mode="latest")
    scheduler = PruningScheduler("group_l1", gen, dummy_input=DUMMY, speedup=True)
    scheduler.compress()
    _, compact, _, _, _ = scheduler.get_best_result()
    assert (compact.conv1.out_channels, compact.conv2.out_channels, compact.conv3.out_channels) == (16, 32, 32)
