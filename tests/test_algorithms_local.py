"""NetAdapt, SimulatedAnnealing and AutoCompress: ask/tell behaviour, crash-resume, end-to-end runs.

The ask/tell tests drive the generators with a synthetic objective (no training), so they can check
decisions exactly: results told in reversed order, a resume from JSON state half-way. The
end-to-end tests run each pruner class on the digits CNN with one finetune epoch per trial.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from search.algorithms import (
    ADMMPruner,
    AutoCompressPruner,
    AutoCompressTaskGenerator,
    NetAdaptPruner,
    NetAdaptTaskGenerator,
    SimulatedAnnealingPruner,
    SimulatedAnnealingTaskGenerator,
)
from search.algorithms.allocation import allocation_layers, rescale, weighted_ratio
from search.algorithms.annealing import AnnealingSchedule
from search.pruning import TorchEvaluator
from search.scheduling import Task, TaskGenerator, TaskResult
from search.zoo import evaluate_accuracy, get_dummy_input, get_model, train_epochs
from tests.utils import make_evaluator, random_batches

pytestmark = pytest.mark.usefixtures("single_thread")

CONVS = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
TOTAL = [{"op_types": ["Conv2d"], "total_sparsity": 0.5}]
SA_SMALL = {"start_temperature": 0.02, "stop_temperature": 0.004, "cool_down_rate": 0.5,
            "perturbation_magnitude": 0.3, "neighbours_per_temperature": 3}


# -- synthetic objective ------------------------------------------------------------------------------
def fake_score(task: Task) -> float:
    """Pruning conv1 hurts most; a hash of the config list adds deterministic noise."""
    weight = {"conv1": 1.0, "conv2": 0.3, "conv3": 0.1}
    ratios = task.params["ratios"]
    noise = zlib.crc32(json.dumps(task.config_list, sort_keys=True).encode()) % 1000 / 2e5
    return 1.0 - sum(weight[name] * r * r for name, r in ratios.items()) + noise


def fake_result(gen: TaskGenerator, task: Task) -> TaskResult:
    metrics = {}
    if isinstance(gen, NetAdaptTaskGenerator) and gen.cost is not None:
        metrics["flops_ratio"] = gen.cost.flops_ratio(task.params["ratios"])
    return TaskResult(task.task_id, score=fake_score(task), metrics=metrics, sparsity=dict(task.params["ratios"]))


def drive(gen: TaskGenerator, *, batch: int = 8, reverse: bool = False, max_tells: int | None = None) -> TaskGenerator:
    """Ask for ``batch`` tasks at a time and tell them (reversed if asked); stop after ``max_tells``."""
    tells = 0
    while not gen.is_done():
        tasks = gen.pending() or gen.ask(batch)
        if not tasks:
            break
        for task in reversed(tasks) if reverse else tasks:
            if max_tells is not None and tells >= max_tells:
                return gen
            gen.tell(fake_result(gen, task))
            tells += 1
    return gen


def proposed(gen: TaskGenerator) -> list[tuple[int | None, list[dict[str, Any]]]]:
    return [(t.parent_id, t.config_list) for _, t in sorted(gen.tasks.items())]



def netadapt(model: nn.Module, **kwargs: Any) -> NetAdaptTaskGenerator:
    kwargs.setdefault("constraints", {"max_flops_ratio": 0.4})
    kwargs.setdefault("reduction_per_iteration", 0.25)
    return NetAdaptTaskGenerator(model, origin_config_list=CONVS, log_dir=None,
                                 dummy_input=get_dummy_input("digits_cnn"), **kwargs)


def annealing(model: nn.Module, **kwargs: Any) -> SimulatedAnnealingTaskGenerator:
    params = {**SA_SMALL, **kwargs}
    return SimulatedAnnealingTaskGenerator(model, origin_config_list=TOTAL, log_dir=None, seed=3, **params)


def autocompress(model: nn.Module, **kwargs: Any) -> AutoCompressTaskGenerator:
    sa = {**SA_SMALL, "stop_temperature": 0.008, "neighbours_per_temperature": 2}
    return AutoCompressTaskGenerator(2, model, origin_config_list=TOTAL, log_dir=None, sa_params=sa, seed=5, **kwargs)


FACTORIES: dict[str, Callable[..., TaskGenerator]] = {
    "netadapt": netadapt, "annealing": annealing, "autocompress": autocompress,
}


def decisions(gen: TaskGenerator) -> Any:
    if isinstance(gen, NetAdaptTaskGenerator):
        return gen.decisions
    if isinstance(gen, SimulatedAnnealingTaskGenerator):
        return gen.annealer.decisions
    assert isinstance(gen, AutoCompressTaskGenerator)
    return [(t.task_id, t.parent_id, t.params["phase"]) for t in gen.tasks.values()]


# -- helpers ----------------------------------------------------------------------------------------
def test_rescale_meets_the_weighted_target_within_bounds(cnn: nn.Module) -> None:
    layers = allocation_layers(cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.6, "max_sparse_ratio": 0.7}])
    ratios = rescale([0.9, 0.1, 0.5], layers, {0: 0.6}, lower=[0.2, 0.0, 0.0])
    assert weighted_ratio(layers, ratios) == pytest.approx(0.6, abs=1e-6)
    assert ratios[0] >= 0.2 - 1e-9 and max(ratios) <= 0.7 + 1e-9


def test_annealing_schedule_counts_rounds_to_the_stop_temperature() -> None:
    assert AnnealingSchedule(100, 20, 0.9).rounds() == 16  # NNI's defaults
    with pytest.raises(ValueError, match="cool_down_rate"):
        AnnealingSchedule(100, 20, 1.0)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_search_needs_scores(cnn: nn.Module, name: str) -> None:
    with pytest.raises(ValueError, match="best_result_mode"):
        FACTORIES[name](cnn, best_result_mode="latest")


# -- NetAdapt ----------------------------------------------------------------------------------------
def test_netadapt_proposes_one_candidate_per_layer_at_once(cnn: nn.Module) -> None:
    gen = netadapt(cnn)
    tasks = gen.ask(10)
    assert [t.params["layer"] for t in tasks] == ["conv1", "conv2", "conv3"]
    assert gen.ask(10) == []  # the iteration waits for all its candidates
    for task in tasks:
        changed = [name for name, r in task.params["ratios"].items() if r > 0]
        assert changed == [task.params["layer"]] and task.parent_id is None
        # the estimated FLOPs drop by the step (0.25 of the origin), to within one channel
        assert 0.75 - 0.03 < task.params["estimated"]["flops_ratio"] <= 0.75 + 1e-6


def test_netadapt_keeps_the_best_candidate_as_the_next_parent(cnn: nn.Module) -> None:
    gen = netadapt(cnn)
    first = gen.ask(10)
    for task in first:
        gen.tell(fake_result(gen, task))
    best = max(first, key=lambda t: fake_score(t))
    assert gen.decisions[0]["task_id"] == best.task_id
    assert {t.parent_id for t in gen.ask(10)} == {best.task_id}


def test_netadapt_decides_the_same_when_results_arrive_reversed(cnn: nn.Module) -> None:
    forward, backward = drive(netadapt(cnn)), drive(netadapt(cnn), reverse=True)
    assert proposed(forward) == proposed(backward)
    assert forward.decisions == backward.decisions
    assert forward.stop_reason == "target reached"


def test_netadapt_without_constraints_reaches_the_config_ratio(cnn: nn.Module) -> None:
    gen = drive(NetAdaptTaskGenerator(cnn, origin_config_list=CONVS, log_dir=None, sparsity_per_iteration=0.2))
    best = gen.best_result()
    assert gen.stop_reason == "target reached" and best is not None
    assert gen.tasks[best.task_id].params["requested_sparsity"] >= 0.5 - 1e-6


def test_netadapt_stops_at_the_trial_budget(cnn: nn.Module) -> None:
    gen = drive(netadapt(cnn, max_trials=4))
    assert len(gen.tasks) == 4 and gen.is_done()
    assert gen.stop_reason == "trial budget max_trials=4 used up"
    assert len(gen.decisions) == 2  # the cut-short second iteration is decided on its one candidate


def test_netadapt_skips_failed_candidates_and_stops_when_all_fail(cnn: nn.Module) -> None:
    gen = netadapt(cnn)
    first = gen.ask(10)
    gen.tell(TaskResult(first[0].task_id, score=2.0, error="Traceback: out of memory"))  # best score, but failed
    for task in first[1:]:
        gen.tell(fake_result(gen, task))
    assert gen.decisions[0]["task_id"] != first[0].task_id
    for task in gen.ask(10):
        gen.tell(TaskResult(task.task_id, error="boom"))
    assert gen.is_done() and gen.stop_reason == "every candidate of iteration 2 failed"


def test_netadapt_flops_bound_needs_a_dummy_input(cnn: nn.Module) -> None:
    with pytest.raises(ValueError, match="dummy_input"):
        NetAdaptTaskGenerator(cnn, origin_config_list=CONVS, constraints={"max_flops_ratio": 0.5})


# -- simulated annealing ----------------------------------------------------------------------------
def tell_scores(gen: TaskGenerator, tasks: list[Task], scores: list[float | None]) -> None:
    """Tell each task its score; ``None``: the trial failed."""
    for task, score in zip(tasks, scores, strict=True):
        gen.tell(TaskResult(task.task_id, score=score) if score is not None else TaskResult(task.task_id, error="boom"))


def test_annealing_first_round_is_the_initial_allocation_and_its_neighbours(cnn: nn.Module) -> None:
    gen = annealing(cnn)
    first = gen.ask(10)
    assert [(t.params["round"], t.params["candidate"]) for t in first] == [(0, 0), (0, 1), (0, 2)]
    assert first[0].params["ratios"] == {"conv1": 0.5, "conv2": 0.5, "conv3": 0.5}  # the uniform allocation
    assert all(t.params["ratios"] != first[0].params["ratios"] for t in first[1:])
    assert all(t.params["temperature"] == 0.02 and t.parent_id is None for t in first)
    assert all(t.params["requested_sparsity"] == pytest.approx(0.5, abs=1e-6) for t in first)
    assert gen.ask(10) == []  # round 1 waits for round 0's decisions
    for task in first:
        gen.tell(fake_result(gen, task))
    second = gen.ask(10)
    assert [(t.params["round"], t.params["candidate"]) for t in second] == [(1, 0), (1, 1), (1, 2)]
    assert all(t.params["temperature"] == 0.01 for t in second)  # round 0 drew neighbours: it cooled


def test_annealing_with_one_neighbour_evaluates_the_initial_allocation_alone_first(cnn: nn.Module) -> None:
    gen = annealing(cnn, neighbours_per_temperature=1)
    (initial,) = gen.ask(10)
    gen.tell(fake_result(gen, initial))
    (neighbour,) = gen.ask(10)
    assert neighbour.params["round"] == 1 and neighbour.params["ratios"] != initial.params["ratios"]
    assert neighbour.params["temperature"] == 0.02  # a round without neighbours does not cool


def test_annealing_decides_round_0_neighbours_against_the_initial_score(cnn: nn.Module) -> None:
    gen = annealing(cnn)
    first = gen.ask(10)
    tell_scores(gen, first, [0.5, 0.6, -10.0])  # better: taken; far worse at T=0.02: exp(-530) never is
    assert [d["accepted"] for d in gen.annealer.decisions] == [True, True, False]
    assert gen.annealer.current == [first[1].params["ratios"][n] for n in ("conv1", "conv2", "conv3")]
    assert gen.annealer.current_score == 0.6


def test_annealing_starts_from_the_first_usable_candidate_when_the_initial_one_fails(cnn: nn.Module) -> None:
    gen = annealing(cnn)
    first = gen.ask(10)
    tell_scores(gen, first, [None, 0.2, 0.1])
    assert [d["accepted"] for d in gen.annealer.decisions] == [False, True, False]
    assert gen.annealer.current_score == 0.2 and gen.annealer.best_score == 0.2
    assert len(gen.ask(10)) == 3  # and the search goes on


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
def test_annealing_round_0_decisions_do_not_depend_on_the_order_results_arrive_in(cnn: nn.Module,
                                                                                  order: tuple[int, ...]) -> None:
    def run(tell_order: tuple[int, ...]) -> TaskGenerator:
        gen = annealing(cnn)
        first = gen.ask(10)
        for i in tell_order:
            gen.tell(fake_result(gen, first[i]))
        return drive(gen)

    in_order, shuffled = run((0, 1, 2)), run(order)
    assert shuffled.annealer.decisions == in_order.annealer.decisions
    assert proposed(shuffled) == proposed(in_order)


def test_annealing_cools_every_round_and_ends(cnn: nn.Module) -> None:
    gen = annealing(cnn)
    while not gen.is_done():  # every neighbour is worse than the current solution
        for task in gen.ask(10):
            gen.tell(TaskResult(task.task_id, score=-float(task.task_id)))
    rounds = gen.schedule.rounds()
    assert len(gen.tasks) == rounds * 3  # round 0 included: the initial allocation takes a neighbour's slot
    temperatures = sorted({d["temperature"] for d in gen.annealer.decisions}, reverse=True)
    assert temperatures == pytest.approx([0.02 * 0.5**i for i in range(rounds)])
    assert gen.stop_reason == f"temperature 0.0025 fell to stop_temperature 0.004 after {rounds} rounds"


def test_annealing_decides_the_same_when_results_arrive_reversed(cnn: nn.Module) -> None:
    forward, backward = drive(annealing(cnn)), drive(annealing(cnn), reverse=True)
    assert proposed(forward) == proposed(backward)
    assert forward.annealer.decisions == backward.annealer.decisions
    accepted = [d["accepted"] for d in forward.annealer.decisions[1:]]
    assert any(accepted) and not all(accepted)  # the Metropolis rule has something to decide


def test_annealing_stops_at_the_trial_budget(cnn: nn.Module) -> None:
    gen = drive(annealing(cnn, max_trials=5))
    assert len(gen.tasks) == 5 and gen.stop_reason == "trial budget max_trials=5 used up"
    assert [d["round"] for d in gen.annealer.decisions] == [0, 0, 0, 1, 1]  # the cut round is decided on


def test_annealing_budget_smaller_than_the_first_round_cuts_it(cnn: nn.Module) -> None:
    gen = annealing(cnn, max_trials=2)
    first = gen.ask(10)
    assert [t.params["candidate"] for t in first] == [0, 1] and gen.ask(10) == []
    tell_scores(gen, first, [0.5, 0.7])
    assert [d["accepted"] for d in gen.annealer.decisions] == [True, True]
    assert gen.is_done() and gen.stop_reason == "trial budget max_trials=2 used up"


# -- AutoCompress -------------------------------------------------------------------------------------
def test_autocompress_runs_search_rounds_then_admm_per_iteration(cnn: nn.Module) -> None:
    gen = autocompress(cnn)
    first = gen.ask(10)  # the starting allocation and a neighbour of it at once
    assert [(t.params["round"], t.params["candidate"]) for t in first] == [(0, 0), (0, 1)]
    drive(gen)
    phases = [(t.params["iteration"], t.params["phase"]) for _, t in sorted(gen.tasks.items())]
    assert phases == [(1, "search")] * 4 + [(1, "admm")] + [(2, "search")] * 4 + [(2, "admm")]
    rounds = [(t.params["round"], t.params["candidate"]) for t in gen.tasks.values()
              if t.params["iteration"] == 2 and t.params["phase"] == "search"]
    assert rounds == [(0, 0), (0, 1), (1, 0), (1, 1)]
    admm1 = next(t for t in gen.tasks.values() if t.params["phase"] == "admm")
    assert {t.parent_id for t in gen.tasks.values() if t.params["iteration"] == 2} == {admm1.task_id}
    assert admm1.params["requested_sparsity"] == pytest.approx(1 - 0.5**0.5, abs=1e-6)
    assert gen.stop_reason == "all 2 iterations done"


def test_autocompress_keeps_room_for_every_admm_step_in_the_budget(cnn: nn.Module) -> None:
    gen = drive(autocompress(cnn, max_trials=5))
    phases = [t.params["phase"] for _, t in sorted(gen.tasks.items())]
    assert len(phases) == 5 and phases.count("admm") == 2 and gen.stop_reason == "all 2 iterations done"


def test_autocompress_decides_the_same_when_results_arrive_reversed(cnn: nn.Module) -> None:
    forward, backward = drive(autocompress(cnn)), drive(autocompress(cnn), reverse=True)
    assert proposed(forward) == proposed(backward)
    assert forward.annealer.decisions == backward.annealer.decisions


# -- crash and resume -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_from_json_state_proposes_what_an_uninterrupted_run_does(cnn: nn.Module, name: str) -> None:
    make = FACTORIES[name]
    uninterrupted = drive(make(cnn), batch=2)
    tells = len(uninterrupted.results) + len(uninterrupted.discarded)
    mid_round = 0
    for cut in range(1, tells):  # a crash after every result (NetAdapt: also while tasks run ahead)
        crashed = drive(make(cnn), batch=2, max_tells=cut)
        mid_round += bool(crashed.pending())
        assert not crashed.is_done()
        state = json.loads(json.dumps(crashed.state_dict()))
        resumed = make(cnn)
        resumed.load_state_dict(state)
        drive(resumed, batch=2)
        assert proposed(resumed) == proposed(uninterrupted), cut
        assert decisions(resumed) == decisions(uninterrupted), cut
        assert resumed.stop_reason == uninterrupted.stop_reason is not None
    assert mid_round > 0  # some crashes left tasks running, to run again


@pytest.mark.parametrize("tells", [0, 1, 2])
def test_annealing_resumed_mid_round_0_ends_like_an_uninterrupted_run(cnn: nn.Module, tells: int) -> None:
    uninterrupted = drive(annealing(cnn))
    crashed = drive(annealing(cnn), max_tells=tells)  # round 0 handed out, ``tells`` of its 3 results told
    assert crashed.annealer.round_index == 0 and len(crashed.pending()) == 3 - tells
    resumed = annealing(cnn)
    resumed.load_state_dict(json.loads(json.dumps(crashed.state_dict())))
    drive(resumed)
    assert proposed(resumed) == proposed(uninterrupted)
    assert resumed.annealer.decisions == uninterrupted.annealer.decisions
    assert resumed.best_result().task_id == uninterrupted.best_result().task_id


# -- ADMM ---------------------------------------------------------------------------------------------
def test_admm_pruner_trains_a_copy_with_the_penalty_and_masks_the_ratio() -> None:
    torch.manual_seed(0)
    model = get_model("digits_cnn").eval()
    evaluator, loop = make_evaluator(model, random_batches("digits_cnn", n=2))
    copy_ = get_model("digits_cnn")
    copy_.load_state_dict(model.state_dict())
    before = copy_.conv2.weight.detach().clone()
    own = model.conv2.weight.detach().clone()
    pruner = ADMMPruner(copy_, [{"op_names": ["conv2"], "sparse_ratio": 0.5}], evaluator,
                        iterations=3, training_steps=2, rho=0.5)
    _, masks = pruner.compress()
    assert loop.steps == 6 and len(pruner.residuals) == 3
    assert not torch.equal(copy_.conv2.weight.detach(), before)  # the optimizer was rebuilt for the copy
    assert float(masks["conv2"]["weight"].mean()) == pytest.approx(0.5)
    assert torch.equal(model.conv2.weight.detach(), own)  # the evaluator's own model is left alone


# -- end to end on digits -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_model(digits: Any) -> nn.Module:
    torch.manual_seed(0)
    model = get_model("digits_cnn")
    train_epochs(model, digits, epochs=1)
    return model.eval()


@pytest.fixture
def trial(digits: Any) -> dict[str, Any]:
    return {
        "finetuner": lambda m: train_epochs(m, digits, epochs=1),
        "evaluator": lambda m: evaluate_accuracy(m, digits),
        "dummy_input": get_dummy_input("digits_cnn"),
        "log_dir": None,
    }


def assert_requested_vs_achieved(gen: TaskGenerator) -> None:
    """Every result records the requested per-layer ratios and achieves them to within a channel."""
    for task_id, result in gen.results.items():
        for name, requested in gen.tasks[task_id].params["ratios"].items():
            assert abs(result.sparsity[name] - requested) <= 1 / 32 + 1e-6, (task_id, name)


def first_feasible(gen: TaskGenerator) -> TaskResult:
    return next(r for _, r in sorted(gen.results.items()) if gen.feasible(r))


def test_netadapt_pruner_end_to_end(digits_model: nn.Module, trial: dict[str, Any]) -> None:
    pruner = NetAdaptPruner(digits_model, CONVS, "l1", constraints={"max_flops_ratio": 0.5},
                            reduction_per_iteration=0.3, **trial)
    pruner.compress()
    gen = pruner.task_generator
    task_id, compact, masks, score, config_list = pruner.get_best_result()
    assert gen.stop_reason == "target reached" and len(gen.tasks) == 6
    assert gen.results[task_id].metrics["flops_ratio"] <= 0.5
    assert score >= first_feasible(gen).score
    assert_requested_vs_achieved(gen)


def test_annealing_pruner_end_to_end(digits_model: nn.Module, trial: dict[str, Any]) -> None:
    pruner = SimulatedAnnealingPruner(digits_model, TOTAL, start_temperature=0.02, stop_temperature=0.009,
                                      cool_down_rate=0.5, perturbation_magnitude=0.3, pruning_algorithm="l1",
                                      neighbours_per_temperature=2, constraints={"max_flops_ratio": 0.5}, **trial)
    pruner.compress()
    gen = pruner.task_generator
    task_id, compact, masks, score, config_list = pruner.get_best_result()
    assert len(gen.tasks) == 4 and gen.stop_reason.startswith("temperature")  # 2 rounds of 2
    assert score >= first_feasible(gen).score and gen.results[task_id].metrics["flops_ratio"] <= 0.5
    assert all(t.params["requested_sparsity"] == pytest.approx(0.5, abs=1e-6) for t in gen.tasks.values())
    assert_requested_vs_achieved(gen)


def test_autocompress_pruner_end_to_end(digits_model: nn.Module, digits: Any, trial: dict[str, Any]) -> None:
    loader = torch.utils.data.DataLoader(digits.train, batch_size=64, shuffle=False)

    def training_func(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs) -> None:  # noqa: ANN001
        model.train()
        for step, batch in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()

    def training_step(batch: Any, model: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    admm_evaluator = TorchEvaluator(training_func, torch.optim.SGD(digits_model.parameters(), lr=0.01), training_step)
    pruner = AutoCompressPruner(
        digits_model, TOTAL, 2, {"evaluator": admm_evaluator, "iterations": 2, "training_steps": 5, "rho": 1e-3},
        {**SA_SMALL, "stop_temperature": 0.01, "neighbours_per_temperature": 2, "pruning_algorithm": "l1"},
        constraints={"max_flops_ratio": 0.5}, **trial,
    )
    pruner.compress()
    gen = pruner.task_generator
    task_id, compact, masks, score, config_list = pruner.get_best_result()
    assert [t.params["phase"] for t in gen.tasks.values()].count("admm") == 2 and len(gen.tasks) == 6
    assert all(r.ok for r in gen.results.values()), [r.error for r in gen.results.values() if not r.ok]
    assert gen.tasks[task_id].params["iteration"] == 2 and gen.results[task_id].metrics["flops_ratio"] <= 0.5
    assert score >= first_feasible(gen).score and not math.isnan(score)
    assert_requested_vs_achieved(gen)
