"""NetAdapt running ahead of its decisions: more throughput, the same search.

A simulated cluster (``simulate``) runs a generator's tasks on ``W`` workers with given trial
durations, results arriving in finishing order and discarded tasks cancelled at once, as the
runners do. The checks: the search with running ahead makes the same decisions, trains the same
trials (same config lists, parents and seeds) and ends with the same best result as one worker;
tentative tasks are never the best; discarded tasks do not count in the budget; and with 3 layers
on 2 workers the iterations overlap (the makespan drops below what the iteration barrier allows).
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from search.algorithms import NetAdaptTaskGenerator
from search.scheduling import Task, TaskResult, TaskStatus
from search.zoo import get_dummy_input
from tests.utils import netadapt_run_ahead_spec

pytestmark = pytest.mark.usefixtures("single_thread")

CONVS = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]



def netadapt(model: nn.Module, **kwargs: Any) -> NetAdaptTaskGenerator:
    kwargs.setdefault("constraints", {"max_flops_ratio": 0.3})
    kwargs.setdefault("reduction_per_iteration", 0.15)
    return NetAdaptTaskGenerator(model, origin_config_list=CONVS, log_dir=None,
                                 dummy_input=get_dummy_input("digits_cnn"), **kwargs)


def _hash(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts, sort_keys=True).encode())


def trial(gen: NetAdaptTaskGenerator, task: Task, fail_every: int = 0) -> TaskResult:
    """What a real trial depends on: the config list, the parent's weights (its seed index) and the task's
    own seed index (its training seed). Pruning conv1 hurts most."""
    parent = gen.tasks[task.parent_id].seed_index if task.parent_id is not None else None
    key = _hash(task.config_list, parent, task.seed_index)
    if fail_every and key % fail_every == 0:
        return TaskResult(task.task_id, error="Traceback: a trial that raised")
    weight = {"conv1": 1.0, "conv2": 0.3, "conv3": 0.1}
    score = 1.0 - sum(weight[n] * r * r for n, r in task.params["ratios"].items()) + key % 1000 / 2e4
    assert gen.cost is not None
    return TaskResult(task.task_id, score=score, metrics={"flops_ratio": gen.cost.flops_ratio(task.params["ratios"])},
                      sparsity=dict(task.params["ratios"]))


def simulate(gen: NetAdaptTaskGenerator, workers: int, duration: Callable[[Task], float] = lambda task: 1.0,
             fail_every: int = 0) -> float:
    """Run the search on ``workers`` simulated workers; returns the makespan."""
    clock, running = 0.0, {}
    while True:
        for _ in range(workers - len(running)):  # the service's runner: ask(1) per free slot
            tasks = gen.ask(1)
            if not tasks:
                break
            running[tasks[0].task_id] = clock + duration(tasks[0])
        if not running:
            assert gen.is_done()
            return clock
        task_id = min(running, key=lambda t: (running[t], t))
        clock = running.pop(task_id)
        gen.tell(trial(gen, gen.tasks[task_id], fail_every))
        for other in [t for t in running if gen.tasks[t].status is TaskStatus.DISCARDED]:
            del running[other]  # cancelled
        best = gen.best_result()
        assert best is None or not gen._tentative(gen.tasks[best.task_id]), "a tentative task was the best"


def search_view(gen: NetAdaptTaskGenerator) -> dict[str, Any]:
    """What must not depend on the workers: decisions, the trials run (by seed index) and the best result."""
    live = {t.task_id: t for t in gen.tasks.values() if t.status is not TaskStatus.DISCARDED}
    index = {tid: t.seed_index for tid, t in live.items()}
    trials = {t.seed_index: (t.config_list, index.get(t.parent_id) if t.parent_id is not None else None,
                             gen.results[tid].score if tid in gen.results else None) for tid, t in live.items()}
    best = gen.best_result()
    return {
        "decisions": [(d["iteration"], d["layer"], d["score"]) for d in gen.decisions],
        "trials": trials,
        "best": None if best is None else (index[best.task_id], best.score, gen.tasks[best.task_id].config_list),
        "stop": gen.stop_reason,
    }


DURATIONS: dict[str, Callable[[Task], float]] = {
    "equal": lambda task: 1.0,
    "varied": lambda task: 0.5 + _hash(task.config_list) % 100 / 50,
}


@pytest.mark.parametrize("fail_every", [0, 5])
@pytest.mark.parametrize("durations", sorted(DURATIONS))
@pytest.mark.parametrize("workers", [2, 3, 5])
def test_running_ahead_gives_the_search_one_worker_gives(cnn: nn.Module, workers: int, durations: str,
                                                          fail_every: int) -> None:
    one = netadapt(cnn)
    simulate(one, 1, DURATIONS[durations], fail_every)
    assert not one.discarded  # one worker never has a free slot to run ahead with
    many = netadapt(cnn)
    simulate(many, workers, DURATIONS[durations], fail_every)
    assert search_view(many) == search_view(one)
    assert all(t.seed_index == t.task_id for t in one.tasks.values())
    speculative = [t for t in many.tasks.values() if t.params.get("speculative")]
    assert speculative and all(t.params["iteration"] >= 2 for t in speculative)
    for task_id, reason in many.discarded.items():
        assert many.tasks[task_id].status is TaskStatus.DISCARDED and task_id not in many.results
        assert reason.startswith("ran ahead from task ")


def test_running_ahead_overlaps_iterations_on_two_workers(cnn: nn.Module) -> None:
    """3 convs on 2 workers: the barrier alone allows at most 1.5x; running ahead goes past it."""
    step = {"reduction_per_iteration": 0.1}  # 7 iterations, mostly of 3 candidates
    one, barrier, ahead = netadapt(cnn, **step), netadapt(cnn, speculate=False, **step), netadapt(cnn, **step)
    t1, t_barrier, t_ahead = simulate(one, 1), simulate(barrier, 2), simulate(ahead, 2)
    assert search_view(barrier) == search_view(ahead) == search_view(one)
    rounds = [sum(1 for t in one.tasks.values() if t.params["iteration"] == i) for i in range(1, one.iteration + 1)]
    assert t_barrier == sum((n + 1) // 2 for n in rounds)  # each iteration waits for its last candidate
    assert t_ahead < t_barrier
    assert t1 / t_ahead > 1.6  # the goal for 2 workers, reached in this simulation
    assert ahead.discarded  # some bets were lost and cost nothing but idle time


def test_discarded_tasks_are_not_counted_in_the_budget(cnn: nn.Module) -> None:
    one, many = netadapt(cnn, max_trials=7), netadapt(cnn, max_trials=7)
    simulate(one, 1)
    simulate(many, 2)
    assert len(one.tasks) == 7 and many.discarded
    assert len([t for t in many.tasks.values() if t.status is not TaskStatus.DISCARDED]) == 7
    assert search_view(many) == search_view(one)
    assert many.stop_reason == "trial budget max_trials=7 used up"


def test_a_leader_overtaken_before_the_decision_discards_its_tasks_at_once(cnn: nn.Module) -> None:
    gen = netadapt(cnn)
    c0, c1, c2 = gen.ask(3)
    gen.tell(TaskResult(c0.task_id, score=0.5, metrics={"flops_ratio": 0.85}))
    (ahead,) = gen.ask(1)  # c1 and c2 still run: a free slot runs ahead from c0
    assert ahead.parent_id == c0.task_id and ahead.params == {**ahead.params, "iteration": 2, "speculative": True}
    assert ahead.seed_index == 3  # the place it has if c0 wins: right after the first iteration's 3 candidates
    gen.tell(TaskResult(ahead.task_id, score=0.9, metrics={"flops_ratio": 0.25}))  # feasible, but tentative
    assert gen.best_result() is None  # not the best while iteration 1 is open
    gen.tell(TaskResult(c1.task_id, score=0.6, metrics={"flops_ratio": 0.85}))  # c1 leads now
    assert gen.tasks[ahead.task_id].status is TaskStatus.DISCARDED and ahead.task_id not in gen.results
    assert "task 1 leads iteration 1 now" in gen.discarded[ahead.task_id]
    (again,) = gen.ask(1)  # the free slot runs ahead from c1
    assert again.parent_id == c1.task_id and again.seed_index == 3
    gen.tell(TaskResult(ahead.task_id, score=0.1))  # a late result of the discarded task is ignored
    assert ahead.task_id not in gen.results
    gen.tell(TaskResult(c2.task_id, score=0.1, metrics={"flops_ratio": 0.85}))  # c1 wins: the bet on it is kept
    assert gen.iteration == 2 and gen.decisions[-1]["task_id"] == c1.task_id
    assert gen.tasks[again.task_id].status is TaskStatus.RUNNING and not gen._tentative(gen.tasks[again.task_id])
    rest = gen.ask(5)
    assert [t.params["candidate"] for t in rest] == [1, 2] and {t.parent_id for t in rest} == {c1.task_id}
    assert [t.seed_index for t in rest] == [4, 5]


def test_state_while_running_ahead_survives_json(cnn: nn.Module) -> None:
    gen = netadapt(cnn)
    c0, _, _ = gen.ask(3)
    gen.tell(TaskResult(c0.task_id, score=0.5, metrics={"flops_ratio": 0.85}))
    gen.ask(1)
    state = json.loads(json.dumps(gen.state_dict()))
    resumed = netadapt(cnn)
    resumed.load_state_dict(state)
    assert resumed.ahead is not None and resumed.ahead["base"] == c0.task_id
    assert [t.task_id for t in resumed.pending()] == [1, 2, 3]
    assert resumed.state_dict() == state


def test_speculate_must_be_a_bool(cnn: nn.Module) -> None:
    with pytest.raises(ValueError, match="speculate must be true or false"):
        netadapt(cnn, speculate="yes")


def test_run_search_with_two_slots_trains_the_same_trials_and_cancels_discarded_ones() -> None:
    """Real trials (digits CNN, 1 finetune epoch): the in-process executor with 2 slots runs ahead."""
    from workers.executors import LocalExecutor
    from workers.local import run_search
    from workers.spec import ExperimentSpec

    def spec(slots: int) -> ExperimentSpec:
        return ExperimentSpec.from_dict(netadapt_run_ahead_spec(slots))

    outcomes, events = {}, {}
    for slots in (1, 2):
        events[slots] = []
        outcomes[slots] = run_search(spec(slots), LocalExecutor(), Path(tempfile.mkdtemp()) / "out", export_onnx=False,
                                     on_event=events[slots].append)
    one, two = outcomes[1], outcomes[2]
    assert not one.discarded and two.discarded  # (with these trials, one of its bets is lost)
    assert any(two.params[t.task_id].get("speculative") for t in two.trials)
    assert len(two.trials) == len(one.trials) and set(two.discarded).isdisjoint(t.task_id for t in two.trials)
    assert [t.score for t in two.trials] == [t.score for t in one.trials]  # same trials, same seeds: same scores
    assert [two.params[t.task_id]["ratios"] for t in two.trials] == [one.params[t.task_id]["ratios"] for t in one.trials]
    assert two.best is not None and one.best is not None and two.best.score == one.best.score
    assert two.params[two.best.task_id]["ratios"] == one.params[one.best.task_id]["ratios"]
    gone = [e for e in events[2] if e["type"] == "trial_discarded"]
    assert sorted(e["task_id"] for e in gone) == sorted(two.discarded)
    state = json.loads((two.out_dir / "state.json").read_text())
    assert {t["task_id"] for t in state["trials"]}.isdisjoint(two.discarded)
