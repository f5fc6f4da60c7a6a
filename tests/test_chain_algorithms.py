"""Linear, AGP and LotteryTicket: the schedules, the chain of parents, end-to-end runs, crash-resume.

A chain asks at iteration ``i`` of ``T`` for ``schedule(i / T)`` of every ratio in the user's config
list (relative to the origin model) and starts from the last successful iteration. The schedule and
chain tests tell hand-made results; the end-to-end tests run the NNI-named pruner classes on the
digits CNN with one finetune epoch per iteration; the crash-resume test uses a small MLP with a
deterministic finetune, so an interrupted search must reproduce the uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from search.algorithms import (
    AGPPruner,
    AGPTaskGenerator,
    FunctionBasedTaskGenerator,
    LinearPruner,
    LinearTaskGenerator,
    LotteryTicketPruner,
    LotteryTicketTaskGenerator,
    scale_config_list,
)
from search.algorithms.registry import algorithm_entry, create_task_generator
from search.config import ConfigError
from search.scheduling import PruningScheduler, TaskResult
from search.zoo import evaluate_accuracy, get_dummy_input, get_model, train_epochs

pytestmark = pytest.mark.usefixtures("single_thread")

GENERATORS: dict[str, type[FunctionBasedTaskGenerator]] = {
    "linear": LinearTaskGenerator, "agp": AGPTaskGenerator, "lottery_ticket": LotteryTicketTaskGenerator,
}

#: the ratio each iteration of T=4 asks for, for a target of 0.8
SCHEDULES = {
    "linear": [0.2, 0.4, 0.6, 0.8],  # target * i / T
    "agp": [0.4625, 0.7, 0.7875, 0.8],  # target * (1 - (1 - i / T) ** 3): large steps first
    "lottery_ticket": [0.331259695, 0.552786405, 0.700930244, 0.8],  # 1 - (1 - target) ** (i / T)
}


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).eval()


def chain(name: str, config_list: list[dict[str, Any]], total_iteration: int = 4,
          **kwargs: Any) -> FunctionBasedTaskGenerator:
    kwargs.setdefault("best_result_mode", "latest")
    return GENERATORS[name](total_iteration, mlp(), origin_config_list=config_list, log_dir=None, **kwargs)


def drive(gen: FunctionBasedTaskGenerator, fail: set[int] = frozenset()) -> FunctionBasedTaskGenerator:
    """Tell every task a result (a failure for the task ids in ``fail``) until the chain is done."""
    while not gen.is_done():
        for task in gen.ask(1):
            failed = task.task_id in fail
            gen.tell(TaskResult(task.task_id, error="boom") if failed else TaskResult(task.task_id, score=0.5))
    return gen


def requested(gen: FunctionBasedTaskGenerator, key: str = "sparse_ratio", index: int = 0) -> list[float]:
    return [gen.tasks[i].config_list[index][key] for i in sorted(gen.tasks)]


# -- schedules ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_each_iteration_asks_for_the_scheduled_share_of_the_target(name: str) -> None:
    gen = drive(chain(name, [{"op_names": ["0", "2"], "sparse_ratio": 0.8}]))
    assert requested(gen) == pytest.approx(SCHEDULES[name], abs=1e-9)
    assert [t.params["iteration"] for t in gen.tasks.values()] == [1, 2, 3, 4]


def test_lottery_ticket_prunes_the_same_share_of_what_remains_each_iteration() -> None:
    keep = [1.0] + [1 - r for r in SCHEDULES["lottery_ticket"]]
    assert [keep[i] / keep[i - 1] for i in range(1, 5)] == pytest.approx([0.2**0.25] * 4)


@pytest.mark.parametrize("key", ["sparsity", "sparsity_per_layer", "total_sparsity"])
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_legacy_ratio_keys_follow_the_same_schedule(name: str, key: str) -> None:
    gen = drive(chain(name, [{"op_types": ["Linear"], key: 0.8}, {"op_names": ["4"], "exclude": True}]))
    assert requested(gen, key) == pytest.approx(SCHEDULES[name], abs=1e-9)
    assert all(t.config_list[1] == {"op_names": ["4"], "exclude": True} for t in gen.tasks.values())


def test_target_settings_ratios_are_scaled_too() -> None:
    config = [{"op_names": ["0"], "sparse_ratio": 0.8, "target_settings": {"bias": {"sparse_ratio": 0.4}}}]
    gen = drive(chain("linear", config))
    assert [t.config_list[0]["target_settings"]["bias"]["sparse_ratio"] for t in gen.tasks.values()] == \
        pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_scale_config_list_scales_ratios_only_and_leaves_its_input_alone() -> None:
    config = [{"op_names": ["0"], "total_sparsity": 0.6, "max_sparse_ratio": 0.9,
               "target_settings": {"weight": {"sparse_ratio": 0.5, "granularity": "out_channel"}}}]
    before = json.dumps(config)
    (scaled,) = scale_config_list(config, lambda r: r / 2)
    assert scaled == {"op_names": ["0"], "total_sparsity": 0.3, "max_sparse_ratio": 0.9,  # a bound, not a target
                      "target_settings": {"weight": {"sparse_ratio": 0.25, "granularity": "out_channel"}}}
    assert json.dumps(config) == before
    (clamped,) = scale_config_list([{"sparse_ratio": 0.6}], lambda r: r * 2)
    assert clamped == {"sparse_ratio": 1.0}


def test_the_registry_builds_the_chains_with_their_schedules() -> None:
    config = [{"op_names": ["0"], "sparse_ratio": 0.8}]
    for name, alias in (("linear", "linear"), ("agp", "agp"), ("lottery_ticket", "lottery")):
        gen = create_task_generator(alias, {"total_iteration": 4}, origin_model=mlp(), config_list=config,
                                    best_result_mode="latest")
        assert type(gen) is GENERATORS[name] and gen.max_trials == 4
        assert requested(drive(gen)) == pytest.approx(SCHEDULES[name], abs=1e-9)
    assert algorithm_entry("lottery").reset_weight and not algorithm_entry("agp").reset_weight


@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_total_iteration_must_be_a_positive_int(value: Any) -> None:
    with pytest.raises(ValueError, match="total_iteration"):
        LinearTaskGenerator(value, mlp(), origin_config_list=[{"op_names": ["0"], "sparse_ratio": 0.5}], log_dir=None)


def test_a_bad_config_list_fails_before_the_first_iteration() -> None:
    # at the target 0.5 the bound 0.3 is violated; the first iterations (0.125, 0.25) alone would pass
    with pytest.raises(ConfigError, match=r"config_list\[0\]\.max_sparse_ratio"):
        chain("linear", [{"op_names": ["0"], "sparse_ratio": 0.5, "max_sparse_ratio": 0.3}])


# -- the chain of parents ----------------------------------------------------------------------------------
def test_the_chain_hands_out_one_iteration_at_a_time() -> None:
    gen = chain("agp", [{"op_names": ["0"], "sparse_ratio": 0.5}])
    assert len(gen.ask(5)) == 1 and gen.ask(5) == []  # the next one waits for this one's model
    assert not gen.is_done()


@pytest.mark.parametrize(("fail", "parents"), [
    (set(), [None, 0, 1, 2]),
    ({1}, [None, 0, 0, 2]),  # iteration 3 starts from iteration 1: the failed one is skipped
    ({0}, [None, None, 1, 2]),  # no successful parent yet: the origin model
    ({1, 2}, [None, 0, 0, 0]),
])
def test_each_iteration_starts_from_the_last_successful_one(fail: set[int], parents: list[int | None]) -> None:
    gen = drive(chain("linear", [{"op_names": ["0"], "sparse_ratio": 0.5}]), fail)
    assert [gen.tasks[i].parent_id for i in range(4)] == parents
    assert len(gen.tasks) == 4 and gen.is_done()  # a failure does not stop or lengthen the chain
    assert gen.best_result().task_id == max(set(range(4)) - fail)


def test_the_chain_keeps_only_the_next_parents_model_in_memory() -> None:
    gen = chain("linear", [{"op_names": ["0"], "sparse_ratio": 0.5}], best_result_mode="minimize")
    for score in (0.1, 0.2, 0.3):
        (task,) = gen.ask(1)
        gen.tell(TaskResult(task.task_id, score=score, model=mlp()))
    # 0 is the best, 2 the next parent; 1 is neither
    assert [gen.results[i].model is not None for i in range(3)] == [True, False, True]


# -- the pruner classes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "name"), [(LinearPruner, "linear"), (AGPPruner, "agp"),
                                          (LotteryTicketPruner, "lottery_ticket")])
def test_chain_pruners_build_their_generator_and_default_to_the_latest_result(cls: type, name: str) -> None:
    pruner = cls(mlp(), [{"op_names": ["0"], "sparse_ratio": 0.5}], "l1", 2, log_dir=None)
    assert type(pruner.task_generator) is GENERATORS[name] and pruner.task_generator.total_iteration == 2
    assert pruner.task_generator.best_result_mode == "latest"  # no evaluator: no score to maximize
    assert pruner.scheduler.reset_weight is algorithm_entry(name).reset_weight


# -- end to end on digits ------------------------------------------------------------------------------------
CONVS = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
FLOPS_BOUND = 0.5


@pytest.fixture(scope="module")
def digits_model(digits: Any) -> nn.Module:
    torch.manual_seed(0)
    model = get_model("digits_cnn")
    train_epochs(model, digits, epochs=1)
    return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kept_channels(masks: dict[str, dict[str, torch.Tensor]], name: str) -> int:
    weight = masks[name]["weight"]
    return int((weight.flatten(1) != 0).any(dim=1).sum())


@pytest.mark.parametrize("cls", [AGPPruner, LinearPruner, LotteryTicketPruner], ids=lambda c: c.__name__)
def test_chain_pruner_end_to_end(cls: type, digits_model: nn.Module, digits: Any) -> None:
    pruner = cls(digits_model, CONVS, "l1", 3, finetuner=lambda m: train_epochs(m, digits, epochs=1),
                 dummy_input=get_dummy_input("digits_cnn"), evaluator=lambda m: evaluate_accuracy(m, digits),
                 log_dir=None, constraints={"max_flops_ratio": FLOPS_BOUND})
    pruner.compress()
    gen = pruner.task_generator
    results = [gen.results[i] for i in sorted(gen.results)]
    assert len(results) == 3 and all(r.ok for r in results), [r.error for r in results]
    # the last iteration reaches the target on every conv, to within one channel of conv1 (32 channels)
    assert all(abs(results[-1].sparsity[name] - 0.5) <= 1 / 32 for name in ("conv1", "conv2", "conv3"))
    # and each iteration prunes at least what its parent pruned
    assert all(results[i].sparsity["conv1"] >= results[i - 1].sparsity["conv1"] for i in (1, 2))

    task_id, compact, masks, score, config_list = pruner.get_best_result()
    best = gen.results[task_id]
    assert best.metrics["flops_ratio"] <= FLOPS_BOUND and config_list == gen.tasks[task_id].config_list
    feasible = [r for r in results if r.metrics["flops_ratio"] <= FLOPS_BOUND]
    assert score == max(r.score for r in feasible) >= feasible[0].score  # maximize over the feasible ones
    # the compact model really is smaller: the channels the masks keep, and nothing else
    assert compact.conv1.out_channels == kept_channels(masks, "conv1") < 32
    assert compact.conv2.out_channels == kept_channels(masks, "conv2") < 64
    assert count_params(compact) == best.metrics["params"] < count_params(digits_model)
    assert evaluate_accuracy(compact.eval(), digits) == pytest.approx(score, abs=1 / len(digits.test))


# -- crash and resume -----------------------------------------------------------------------------------------
_gen = torch.Generator().manual_seed(0)
X, Y = torch.randn(64, 8, generator=_gen), torch.randint(0, 2, (64,), generator=_gen)


def finetune(model: nn.Module) -> None:
    """Three full-batch SGD steps: deterministic, and enough to change the weights the next pruning ranks."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        optimizer.step()
    model.eval()


def negative_loss(model: nn.Module) -> float:
    with torch.no_grad():
        return -float(nn.functional.cross_entropy(model(X), Y))


MLP_CONFIG = [{"op_names": ["0", "2"], "sparse_ratio": 0.75}]


def make_search(name: str, log_dir: Path) -> tuple[FunctionBasedTaskGenerator, PruningScheduler]:
    gen = GENERATORS[name](3, mlp(), origin_config_list=MLP_CONFIG, log_dir=log_dir, best_result_mode="maximize")
    scheduler = PruningScheduler("l1", gen, finetuner=finetune, evaluator=negative_loss,
                                 reset_weight=algorithm_entry(name).reset_weight)
    return gen, scheduler


def outcome(gen: FunctionBasedTaskGenerator) -> list[tuple[Any, ...]]:
    return [(t.config_list, t.parent_id, gen.results[i].score, gen.results[i].sparsity)
            for i, t in sorted(gen.tasks.items())]


@pytest.mark.parametrize("crash", ["after_a_result", "during_a_task"])
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_a_resumed_chain_ends_where_an_uninterrupted_one_does(name: str, crash: str, tmp_path: Path) -> None:
    uninterrupted, scheduler = make_search(name, tmp_path / "a")
    scheduler.compress()

    crashed, scheduler = make_search(name, tmp_path / "b")
    (task,) = crashed.ask(1)
    scheduler.record_task_result(scheduler.pruning_one_step(task))  # iteration 1 of 3
    if crash == "during_a_task":
        crashed.ask(1)  # iteration 2 was handed out and never finished
    state = json.loads(json.dumps(crashed.state_dict()))

    resumed, scheduler = make_search(name, tmp_path / "b")  # a new process, the same log_dir
    resumed.load_state_dict(state)
    scheduler.compress()
    assert outcome(resumed) == outcome(uninterrupted)
    assert [t.parent_id for t in resumed.tasks.values()] == [None, 0, 1]
    last_a, last_b = uninterrupted.results[2], resumed.results[2]
    assert all(torch.equal(last_b.masks[m]["weight"], last_a.masks[m]["weight"]) for m in ("0", "2"))
    assert json.loads((tmp_path / "b" / "best_result" / "result.json").read_text())["task_id"] == \
        uninterrupted.best_result().task_id


# -- LotteryTicket: rewinding the weights or only the schedule ------------------------------------------------
@pytest.mark.parametrize("reset_weight", [True, False])
def test_lottery_rewinds_the_weights_only_with_reset_weight(reset_weight: bool) -> None:
    starts: list[torch.Tensor] = []

    def finetuner(m: nn.Module) -> None:  # "training" adds 1 to every weight of layer 0
        starts.append(m[0].weight.detach().clone())
        with torch.no_grad():
            m[0].weight.add_(1.0)

    model = mlp()
    origin = model[0].weight.detach().clone()
    pruner = LotteryTicketPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], "l1", 2, finetuner=finetuner,
                                 log_dir=None, reset_weight=reset_weight)
    pruner.compress()
    tasks = pruner.task_generator.tasks
    assert [tasks[i].params["reset_weight"] for i in (0, 1)] == [reset_weight, reset_weight]
    kept = pruner.task_generator.results[0].masks["0"]["weight"].amax(1) > 0  # rows iteration 1 kept
    expected = origin[kept] if reset_weight else origin[kept] + 1.0  # iteration 2 starts rewound, or trained
    torch.testing.assert_close(starts[1][kept], expected)


def test_the_registry_passes_reset_weight_to_the_lottery_generator() -> None:
    gen = create_task_generator("lottery_ticket", {"total_iteration": 2, "reset_weight": False}, origin_model=mlp(),
                                config_list=[{"op_names": ["0"], "sparse_ratio": 0.5}])
    assert gen.ask(1)[0].params["reset_weight"] is False
    with pytest.raises(Exception, match="reset_weight"):
        create_task_generator("lottery_ticket", {"total_iteration": 2, "reset_weight": "no"}, origin_model=mlp(),
                              config_list=[{"op_names": ["0"], "sparse_ratio": 0.5}])
