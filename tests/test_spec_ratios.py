"""A spec's config list may leave the ratio out when the algorithm picks every layer's ratio (AMC, Optuna).

The other algorithms read the config's ratio as their target, so for them a missing ratio is still an
error naming the sub-config.
"""

from __future__ import annotations

import pytest

from search.algorithms._budget import with_placeholder_ratios
from search.algorithms.registry import algorithm_entry
from workers.spec import ExperimentSpec, SpecError

BOUNDS_ONLY = [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.9}]


def spec(algorithm: dict, config_list: list[dict]) -> dict:
    return {
        "name": "ratios",
        "model": {"factory": "search.zoo:digits_cnn"},
        "data": {"name": "digits"},
        "pruner": {"name": "l1", "config_list": config_list},
        "algorithm": algorithm,
        "constraints": {"max_flops_ratio": 0.5},
    }


@pytest.mark.parametrize("name", ["amc", "optuna"])
def test_a_search_that_picks_the_ratios_accepts_a_config_with_bounds_only(name: str) -> None:
    parsed = ExperimentSpec.from_dict(spec({"name": name, "max_trials": 2}, BOUNDS_ONLY))
    assert parsed.pruner.config_list == BOUNDS_ONLY  # the placeholder is for validation only
    assert algorithm_entry(name).chooses_ratios


@pytest.mark.parametrize("algorithm", [{"name": "agp", "total_iteration": 2},
                                       {"name": "simulated_annealing", "max_trials": 2}])
def test_a_search_that_reads_the_ratio_as_its_target_still_needs_one(algorithm: dict) -> None:
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(spec(algorithm, BOUNDS_ONLY))
    assert info.value.path == "pruner.config_list[0]" and "sparse_ratio" in info.value.message


def test_bad_bounds_are_still_errors_for_amc() -> None:
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(spec({"name": "amc", "max_trials": 2},
                                      [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.9, "min_sparse_ratio": 0.95}]))
    assert info.value.path == "pruner.config_list[0].min_sparse_ratio"


def test_an_unknown_algorithm_is_named_before_the_config_list_is_checked() -> None:
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(spec({"name": "optunaa"}, BOUNDS_ONLY))
    assert info.value.path == "algorithm.name" and "did you mean 'optuna'" in info.value.message


def test_placeholders_sit_within_each_sub_configs_bounds_and_leave_rated_ones_alone() -> None:
    config = [{"op_names": ["conv1"], "min_sparse_ratio": 0.2}, {"op_names": ["conv2"], "sparse_ratio": 0.5},
              {"op_names": ["conv3"], "exclude": True}]
    assert with_placeholder_ratios(config) == [{"op_names": ["conv1"], "min_sparse_ratio": 0.2, "sparse_ratio": 0.2},
                                               config[1], config[2]]
