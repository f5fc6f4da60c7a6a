"""The runner's generator journal: a checkpoint plus the journaled calls after it rebuild a search exactly.

Real generators (built as the runner builds them, on the digits CNN) are driven the way the runner
drives them: one ``ask`` per free slot of two, results told out of order, asks that find nothing to
hand out while trials run. Results are synthetic but a fixed function of the task, so a rebuilt
search that continues gets the same results the original got.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from search.algorithms.registry import create_task_generator
from search.scheduling import TaskResult
from search.zoo import get_dummy_input, get_model
from service.runner_db import JournalEntry, task_fields
from service.runner_experiment import JournaledGenerator, StateError

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "max_sparse_ratio": 0.8}]
ALGORITHMS = {
    "agp": {"total_iteration": 12},
    "simulated_annealing": {"neighbours_per_temperature": 3, "cool_down_rate": 0.5, "max_trials": 14},
    "amc": {"max_episodes": 14, "ddpg_params": {"warmup": 3, "batch_size": 8}, "parallel_episodes": 2},
    "optuna": {"max_trials": 14, "n_startup_trials": 3},
    "netadapt": {"reduction_per_iteration": 0.05, "max_trials": 14},  # runs ahead, and discards lost bets
}


def generator(name: str) -> Any:
    return create_task_generator(name, ALGORITHMS[name], origin_model=get_model("digits_cnn"), config_list=CONFIG,
                                 constraints={"max_flops_ratio": 0.8}, dummy_input=get_dummy_input("digits_cnn"))


def result_of(task_id: int, task: dict[str, Any]) -> TaskResult:
    """A result that only depends on the task: fewer FLOPs, lower score; every 5th trial fails."""
    if task_id % 5 == 4:
        return TaskResult(task_id, error="RuntimeError: boom", artifact=f"trials/{task_id}")
    ratios = [float(v) for c in task["config_list"] for k, v in c.items() if k in ("sparse_ratio", "sparsity")]
    flops = 1.0 - 0.8 * (sum(ratios) / len(ratios) if ratios else 0.0)
    score = 0.9 - 0.4 * (1.0 - flops) ** 2 + 1e-3 * (task_id % 3)
    return TaskResult(task_id, score=score, metrics={"accuracy": score, "flops_ratio": flops, "params_ratio": flops},
                      sparsity={"conv1": 1.0 - flops}, artifact=f"trials/{task_id}")


class Rows:
    """The trial rows' journal columns, written as the runner writes them."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def asked(self, call: int, task_id: int, task: dict[str, Any]) -> None:
        self.rows[task_id] = {"ask_seq": call, "tell_seq": None, "told": None,
                              "task": json.loads(json.dumps(task_fields(task)))}

    def told(self, task_id: int, entry: tuple[int, dict[str, Any]]) -> None:
        row = self.rows.setdefault(task_id, {"ask_seq": None, "task": {}})  # a task asked before a resume
        row.update(tell_seq=entry[0], told=json.loads(json.dumps(entry[1])))

    def journal(self, after: int) -> list[JournalEntry]:
        return [JournalEntry(n, r["ask_seq"], r["tell_seq"], r["told"], r["task"]) for n, r in self.rows.items()
                if any(seq is not None and seq >= after for seq in (r["ask_seq"], r["tell_seq"]))]


def drive(search: JournaledGenerator, rows: Rows, running: dict[int, dict[str, Any]], tells: int) -> None:
    """Until ``tells`` more results are told: fill two slots (an ask per free slot, an extra one while
    waiting), then tell the newest running trial on odd rounds and the oldest on even ones."""
    for round_ in range(tells):
        while len(running) < 2:
            call = search.seq
            asked = search.ask()
            if asked is None:
                search.ask()  # asking again while waiting: the same call
                break
            rows.asked(call, *asked)
            running[asked[0]] = asked[1]
        if not running:
            return
        task_id = max(running) if round_ % 2 else min(running)
        rows.told(task_id, search.tell(result_of(task_id, running.pop(task_id))))
        for discarded in set(running) & set(search.generator.discarded):  # cancelled, as the runner does
            del running[discarded]


def state(search: JournaledGenerator) -> str:
    return json.dumps(search.generator.state_dict(), sort_keys=True)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_a_checkpoint_and_the_calls_after_it_rebuild_the_search_exactly(algorithm: str) -> None:
    if algorithm == "optuna":
        pytest.importorskip("optuna")
    live, rows, running = JournaledGenerator(generator(algorithm), None, algorithm=algorithm), Rows(), {}
    drive(live, rows, running, tells=4)
    checkpoint = json.loads(json.dumps(live.checkpoint()))  # through JSON, as SQL keeps it
    drive(live, rows, running, tells=5)  # the runner "crashes" after this result's commit

    rebuilt = JournaledGenerator(generator(algorithm), checkpoint, rows.journal(after=checkpoint["seq"]),
                                 algorithm=algorithm)
    assert (state(rebuilt), rebuilt.seq) == (state(live), live.seq)
    assert sorted(t.task_id for t in rebuilt.generator.pending()) == sorted(running)

    # and both go on alike (the rebuilt one runs the pending tasks again, as the runner does)
    rerun = dict(running)
    drive(live, rows, running, tells=3)
    drive(rebuilt, Rows(), rerun, tells=3)
    assert state(rebuilt) == state(live)


def test_without_a_checkpoint_the_whole_journal_is_replayed() -> None:
    live, rows, running = JournaledGenerator(generator("amc"), None), Rows(), {}
    drive(live, rows, running, tells=6)
    rebuilt = JournaledGenerator(generator("amc"), None, rows.journal(after=0))
    assert state(rebuilt) == state(live)


def test_a_version_1_state_is_a_checkpoint_before_any_journaled_call() -> None:
    live, rows, running = JournaledGenerator(generator("agp"), None), Rows(), {}
    drive(live, rows, running, tells=3)
    old = {"version": 1, "generator": json.loads(json.dumps(live.generator.state_dict()))}  # what runners wrote before
    resumed, resumed_rows = JournaledGenerator(generator("agp"), old), Rows()
    assert resumed.seq == 0
    drive(resumed, resumed_rows, dict(running), tells=2)
    rebuilt = JournaledGenerator(generator("agp"), old, resumed_rows.journal(after=0))
    assert state(rebuilt) == state(resumed)


def test_a_replay_that_hands_out_something_else_than_the_journal_is_an_error() -> None:
    live, rows, running = JournaledGenerator(generator("simulated_annealing"), None), Rows(), {}
    drive(live, rows, running, tells=3)
    rows.rows[1]["task"]["params"]["candidate"] = 99  # the trial row says task 1 was another candidate
    with pytest.raises(StateError, match=r"replaying call \d+ of algorithm 'simulated_annealing' handed out task 1"):
        JournaledGenerator(generator("simulated_annealing"), None, rows.journal(after=0),
                           algorithm="simulated_annealing")


def test_a_checkpoint_of_another_algorithm_is_refused() -> None:
    checkpoint = JournaledGenerator(generator("agp"), None).checkpoint()
    with pytest.raises(StateError, match="does not fit algorithm 'amc'"):
        JournaledGenerator(generator("amc"), checkpoint, algorithm="amc")
    with pytest.raises(StateError, match="unsupported version 7"):
        JournaledGenerator(generator("agp"), {**checkpoint, "version": 7})


def test_a_replay_discards_again_what_the_search_discarded() -> None:
    """NetAdapt's tasks run ahead of a lost bet are discarded inside a journaled call (a tell, or an ask); their
    results are never told, so the replay of the calls alone repeats the discards."""
    live, rows, running = JournaledGenerator(generator("netadapt"), None, algorithm="netadapt"), Rows(), {}
    drive(live, rows, running, tells=9)
    assert live.generator.discarded and not set(live.generator.discarded) & set(live.generator.results)
    rebuilt = JournaledGenerator(generator("netadapt"), None, rows.journal(after=0), algorithm="netadapt")
    assert rebuilt.generator.discarded == live.generator.discarded and state(rebuilt) == state(live)
    assert not set(live.generator.discarded) & {t.task_id for t in rebuilt.generator.pending()}  # never run again
