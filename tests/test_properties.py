"""Properties of mask allocation over random layer shapes and ratios (hypothesis).

Whatever the shape and the ratio, a pruner masks the number of elements (or channels, or blocks)
closest to what was asked, never more than a member's ``max_sparse_ratio``, only whole blocks,
more for a higher threshold, and never unmasks what an earlier compress masked.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from search.pruning import FPGMPruner, L1NormPruner, L2NormPruner, LevelPruner
from tests.utils import channel_keep, masked_count

pytestmark = pytest.mark.usefixtures("single_thread")

# 30 examples per property keeps the default run fast; raise it for a thorough run, e.g.
# PRUNESEARCH_HYPOTHESIS_EXAMPLES=1000 python -m pytest tests/test_properties.py
EXAMPLES = settings(max_examples=int(os.environ.get("PRUNESEARCH_HYPOTHESIS_EXAMPLES", "30")), deadline=None)

ratios = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def layer_shapes(draw: st.DrawFn) -> tuple[str, int, int, int]:
    """(kind, out_features, in_features, kernel) for a Conv2d or a Linear."""
    kind = draw(st.sampled_from(["conv", "linear"]))
    kernel = draw(st.sampled_from([1, 2, 3])) if kind == "conv" else 1
    return kind, draw(st.integers(1, 24)), draw(st.integers(1, 24)), kernel


def make_layer(shape: tuple[str, int, int, int], seed: int = 0) -> nn.Module:
    kind, out, inp, kernel = shape
    torch.manual_seed(seed)
    return nn.Conv2d(inp, out, kernel) if kind == "conv" else nn.Linear(inp, out)


def _single(layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(layer)


def _weight_mask(pruner_cls: type, model: nn.Module, config: dict) -> Tensor:
    _, masks = pruner_cls(model, [{"op_names": ["0"], "target_names": ["weight"], **config}]).compress()
    return masks["0"]["weight"]


# -- one layer, one ratio ---------------------------------------------------------------------------


@EXAMPLES
@given(shape=layer_shapes(), ratio=ratios)
def test_level_masks_the_element_count_closest_to_the_ratio(shape: tuple, ratio: float) -> None:
    mask = _weight_mask(LevelPruner, _single(make_layer(shape)), {"sparse_ratio": ratio})
    assert abs(masked_count(mask) - ratio * mask.numel()) <= 0.5 + 1e-6


@EXAMPLES
@given(shape=layer_shapes(), ratio=ratios, pruner_cls=st.sampled_from([L1NormPruner, L2NormPruner, FPGMPruner]))
def test_channel_pruners_mask_the_channel_count_closest_to_the_ratio(
    shape: tuple, ratio: float, pruner_cls: type
) -> None:
    mask = _weight_mask(pruner_cls, _single(make_layer(shape)), {"sparse_ratio": ratio})
    keep = channel_keep(mask)  # whole channels only
    assert abs(int((~keep).sum()) - ratio * keep.numel()) <= 0.5 + 1e-6


# -- global groups ----------------------------------------------------------------------------------


@EXAMPLES
@given(
    shapes=st.lists(layer_shapes(), min_size=2, max_size=4),
    ratio=ratios,
    max_ratio=st.none() | ratios,
    pruner_cls=st.sampled_from([LevelPruner, L1NormPruner, L2NormPruner]),
)
def test_global_group_total_is_within_one_block_and_members_respect_max_sparse_ratio(
    shapes: list, ratio: float, max_ratio: float | None, pruner_cls: type
) -> None:
    layers = [make_layer(s, seed=i) for i, s in enumerate(shapes)]
    model = nn.Sequential(*layers)
    config = {"op_names": [str(i) for i in range(len(layers))], "target_names": ["weight"],
              "sparse_ratio": ratio, "global_group_id": "g"}
    if max_ratio is not None:
        config["max_sparse_ratio"] = max_ratio
    pruner = pruner_cls(model, [config])
    _, masks = pruner.compress()

    element_wise = pruner_cls is LevelPruner
    cap_of_max = 1.0 if max_ratio is None else max_ratio
    block_sizes = [1 if element_wise else layer.weight[0].numel() for layer in layers]
    blocks = [layer.weight.numel() // size for layer, size in zip(layers, block_sizes, strict=True)]
    # the most a member may lose: whole blocks up to its max_sparse_ratio
    cap = sum(math.floor(cap_of_max * n + 1e-9) * size for n, size in zip(blocks, block_sizes, strict=True))
    total = sum(layer.weight.numel() for layer in layers)
    masked = sum(masked_count(masks[str(i)]["weight"]) for i in range(len(layers)))
    assert abs(masked - min(ratio * total, cap)) <= max(block_sizes) + 1e-6
    for i, layer in enumerate(layers):
        assert masked_count(masks[str(i)]["weight"]) <= cap_of_max * layer.weight.numel() + 1e-6
    assert pruner.sparsity_report().group("g") == masked / total


# -- block granularity ------------------------------------------------------------------------------


@EXAMPLES
@given(
    out=st.integers(1, 16),
    inp=st.integers(1, 16),
    block=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    ratio=ratios,
    pruner_cls=st.sampled_from([LevelPruner, L1NormPruner, L2NormPruner]),
)
def test_block_granularity_masks_whole_blocks_and_reaches_the_ratio_within_one_block(
    out: int, inp: int, block: tuple[int, int], ratio: float, pruner_cls: type
) -> None:
    a, b = block
    mask = _weight_mask(pruner_cls, _single(make_layer(("linear", out, inp, 1))),
                        {"sparse_ratio": ratio, "granularity": [a, b]})
    for i in range(0, out, a):
        for j in range(0, inp, b):
            tile = mask[i : i + a, j : j + b]
            assert bool((tile == tile.flatten()[0]).all()), f"block at ({i}, {j}) is partly masked"
    assert abs(masked_count(mask) - ratio * out * inp) <= a * b + 1e-6


# -- thresholds -------------------------------------------------------------------------------------


@EXAMPLES
@given(
    shape=layer_shapes(),
    thresholds=st.tuples(st.floats(0.0, 4.0), st.floats(0.0, 4.0)).map(sorted),
    pruner_cls=st.sampled_from([LevelPruner, L1NormPruner, L2NormPruner]),
)
def test_a_higher_threshold_never_masks_less(shape: tuple, thresholds: list[float], pruner_cls: type) -> None:
    low, high = thresholds
    counts = []
    for threshold in (low, high):
        model = _single(make_layer(shape))
        counts.append(masked_count(_weight_mask(pruner_cls, model, {"sparse_threshold": threshold})))
    assert counts[0] <= counts[1]


# -- continuous masks -------------------------------------------------------------------------------


@EXAMPLES
@given(
    shape=layer_shapes(),
    ratios_=st.tuples(ratios, ratios).map(sorted),
    pruner_cls=st.sampled_from([LevelPruner, L1NormPruner, L2NormPruner, FPGMPruner]),
    seed=st.integers(0, 1000),
)
def test_a_second_compress_with_a_higher_ratio_keeps_masked_what_was_masked(
    shape: tuple, ratios_: list[float], pruner_cls: type, seed: int
) -> None:
    low, high = ratios_
    model = _single(make_layer(shape))
    first = pruner_cls(model, [{"op_names": ["0"], "target_names": ["weight"], "sparse_ratio": low}])
    _, masks = first.compress()
    earlier = masks["0"]["weight"].clone()
    first.unwrap_model()
    with torch.no_grad():  # new weights: the metric now prefers other positions
        torch.manual_seed(seed)
        model[0].weight.normal_()
    second = pruner_cls(model, [{"op_names": ["0"], "target_names": ["weight"], "sparse_ratio": high}])
    second.load_masks({"0": {"weight": earlier}})
    _, masks = second.compress()
    later = masks["0"]["weight"]
    assert not bool(((earlier == 0) & (later == 1)).any())
    block = 1 if pruner_cls is LevelPruner else later[0].numel()
    assert abs(masked_count(later) - high * later.numel()) <= block / 2 + 1e-6
