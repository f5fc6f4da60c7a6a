"""Cost bounds in the annealing searches and the sign of AMC's reward (fixes found by benchmarks/bench_search.py).

* SimulatedAnnealing / AutoCompress with a ``max_flops_ratio`` and a ``dummy_input``: every candidate is
  predicted within the bound before it runs (:class:`~search.algorithms.allocation.BudgetRepair`), and a
  result measured over a bound is never accepted as the current allocation nor kept as the best.
* AMC with ``best_result_mode='minimize'`` (a loss as the score) learns to lower the score.
"""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from search.algorithms import AMCTaskGenerator, AutoCompressTaskGenerator, SimulatedAnnealingTaskGenerator
from search.algorithms.allocation import BudgetRepair, allocation_layers
from search.scheduling import Constraints, TaskGenerator, TaskResult
from search.zoo import get_dummy_input

pytestmark = pytest.mark.usefixtures("single_thread")

CONVS = [{"op_types": ["Conv2d"], "sparse_ratio": 0.75}]
SA = {"start_temperature": 0.1, "stop_temperature": 0.02, "cool_down_rate": 0.6, "perturbation_magnitude": 0.35,
      "neighbours_per_temperature": 4}
BOUND = 0.0655  # what uniform 75% reaches on digits_cnn: about half the neighbours of uniform are over it



def annealing(model: nn.Module, **kwargs: Any) -> SimulatedAnnealingTaskGenerator:
    return SimulatedAnnealingTaskGenerator(model, origin_config_list=CONVS, log_dir=None, seed=1, max_layer_ratio=0.9,
                                           constraints={"max_flops_ratio": BOUND}, **{**SA, **kwargs})


def predicted_flops(repair: BudgetRepair, gen: TaskGenerator, task_id: int) -> float:
    ratios = gen.tasks[task_id].params["ratios"]
    return repair.predicted([ratios[layer.name] for layer in repair.layers])["flops_ratio"]


def drive(gen: TaskGenerator, repair: BudgetRepair, score: Any) -> TaskGenerator:
    """Tell every task ``score(task)`` with the flops_ratio the cost model predicts for it."""
    while not gen.is_done():
        tasks = gen.ask(8)
        if not tasks:
            break
        for task in tasks:
            flops = predicted_flops(repair, gen, task.task_id)
            gen.tell(TaskResult(task.task_id, score=score(task, flops), metrics={"flops_ratio": flops}))
    return gen


def test_budget_repair_moves_only_allocations_over_the_bound(cnn: nn.Module) -> None:
    layers = allocation_layers(cnn, CONVS, 0.9)
    repair = BudgetRepair(cnn, get_dummy_input("digits_cnn"), layers, {"flops": BOUND})
    uniform = [0.75, 0.75, 0.75]
    assert repair(uniform) == uniform  # exactly at the bound: unchanged
    over = [0.5, 0.7, 0.8]
    fixed = repair(over)
    assert repair.predicted(over)["flops_ratio"] > BOUND >= repair.predicted(fixed)["flops_ratio"]
    assert all(f >= o for f, o in zip(fixed, over, strict=True))  # ratios only grow, toward their maximum
    assert all(f <= layer.hi + 1e-9 for f, layer in zip(fixed, layers, strict=True))


def test_annealing_with_a_dummy_input_proposes_only_allocations_within_the_bound(cnn: nn.Module) -> None:
    gen = annealing(cnn, dummy_input=get_dummy_input("digits_cnn"))
    assert gen.repair is not None
    drive(gen, gen.repair, lambda task, flops: flops)  # the score rewards spending the budget
    assert len(gen.tasks) > 5
    assert all(predicted_flops(gen.repair, gen, t) <= BOUND + 1e-9 for t in gen.tasks)


def test_annealing_never_accepts_a_result_over_the_bound(cnn: nn.Module) -> None:
    gen = annealing(cnn)  # no dummy_input: nothing is repaired, the bound is only measured
    assert gen.repair is None
    repair = BudgetRepair(cnn, get_dummy_input("digits_cnn"), gen.layers, {"flops": BOUND})
    drive(gen, repair, lambda task, flops: flops)  # over-budget results score best, yet must not be taken
    over = {t for t, r in gen.results.items() if r.metrics["flops_ratio"] > BOUND + 1e-9}
    assert over, "the test needs some neighbours over the bound"
    decisions = gen.annealer.decisions
    assert not any(d["accepted"] for d in decisions if d["task_id"] in over)
    best = gen.best_result()
    assert best is not None and best.task_id not in over


def test_autocompress_repairs_the_last_iteration_only(cnn: nn.Module) -> None:
    gen = AutoCompressTaskGenerator(2, cnn, origin_config_list=CONVS, log_dir=None, seed=2, max_layer_ratio=0.9,
                                    sa_params={**SA, "cool_down_rate": 0.3, "neighbours_per_temperature": 3},
                                    constraints={"max_flops_ratio": BOUND}, dummy_input=get_dummy_input("digits_cnn"))
    assert gen.repair is not None
    drive(gen, gen.repair, lambda task, flops: flops)
    last = [t for t, task in gen.tasks.items() if task.params["iteration"] == 2]
    first = [t for t, task in gen.tasks.items() if task.params["iteration"] == 1]
    assert last and first
    assert all(predicted_flops(gen.repair, gen, t) <= BOUND + 1e-9 for t in last)
    assert any(predicted_flops(gen.repair, gen, t) > BOUND for t in first)  # iteration 1 aims at a milder ratio


def test_amc_reward_follows_the_best_result_mode(cnn: nn.Module) -> None:
    def generator(mode: str) -> AMCTaskGenerator:
        return AMCTaskGenerator(cnn, [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.9}], get_dummy_input("digits_cnn"),
                                max_episodes=2, constraints=Constraints(max_flops_ratio=0.5), best_result_mode=mode,
                                log_dir=None)

    for mode, sign in (("maximize", 1.0), ("minimize", -1.0)):
        gen = generator(mode)
        (task, *_) = gen.ask(1)
        result = TaskResult(task.task_id, score=0.3, metrics={"flops_ratio": 0.4})
        gen.tell(result)
        assert gen.episode_reward(result) == pytest.approx(sign * 0.3)
