"""NetAdapt running ahead through the runner, on SQLite and PostgreSQL.

With ``resources.max_concurrent_trials: 2`` and three prunable convs, a slot that would idle while
an iteration's last candidate runs takes a candidate of the next iteration (``speculative``). When
the iteration is decided the bet is kept or its tasks are discarded: cancelled if they still run,
rows ``discarded`` with the reason, no longer counted in ``n_trials``. The search must end exactly
as with one slot (trials are seeded by their place among the kept tasks), also across a crash.

Trials are real (``workers.trial.run_trial`` on the digits CNN; no finetune, one epoch where the
training seeds matter); the executors are real ``LocalExecutor`` s that report in other orders:
oldest first (the ahead tasks are still queued when discarded), ahead tasks first (they finished
while tentative, then are discarded), all at once (a discarded trial's result arrives in the same
poll as the one that discarded it). A small test algorithm discards in an ask that hands out
nothing, which no trial row journals.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from search.algorithms.registry import ALGORITHMS, AlgorithmEntry
from search.scheduling import Proposal, Task, TaskGenerator
from service import runner as runner_module
from service import runner_experiment, store
from service.db import session_scope
from service.models import utcnow
from service.runner_db import discard_trials, open_trial
from service.states import ExperimentState as ES
from service.states import TrialState as TS
from tests.service.conftest import migrated_factory
from tests.service.test_runner import (
    Counter,
    Crash,
    events,
    experiment,
    make_runner,
    run_to_idle,
    spec_dict,
    submit,
    trials,
)
from workers.executors import LocalExecutor

pytestmark = pytest.mark.usefixtures("single_thread")


def ahead_spec(weights: str, slots: int, finetune_epochs: int) -> dict[str, Any]:
    """NetAdapt on conv1..conv3 down to half the FLOPs, 15 % per iteration (iterations of 3 candidates)."""
    spec = spec_dict(weights, algorithm={"name": "netadapt", "reduction_per_iteration": 0.15, "max_trials": 10},
                     trial={"finetune_epochs": finetune_epochs}, resources={"max_concurrent_trials": slots})
    spec["constraints"] = {"max_flops_ratio": 0.5}
    return spec


class AheadFirst(LocalExecutor):
    """Runs the tasks handed out ahead of a decision before the others (as if they were shorter): they finish
    while still tentative, count as trials, and are taken out again when their bet is lost."""

    def poll(self, timeout=None):
        ahead = next((h for h in self._queue if h.spec.task["params"].get("speculative")), None)
        if ahead is not None:  # to the front of the in-process queue
            self._queue.remove(ahead)
            self._queue.appendleft(ahead)
        return super().poll(timeout)


class AllAtOnce(LocalExecutor):
    """Runs every submitted trial in one poll and reports them together (as Ray does when several finished
    between two polls): a result may discard a trial whose result is in the same batch."""

    def poll(self, timeout=None):
        done = []
        while self.running():
            done += super().poll(timeout)
        return done


EXECUTORS = {"oldest_first": LocalExecutor, "ahead_first": AheadFirst, "all_at_once": AllAtOnce}


def executor_factory(name: str):
    return lambda spec, *, trial_fn, on_progress: EXECUTORS[name](trial_fn=trial_fn, on_progress=on_progress)


def search_of(factory, exp_id: int) -> dict[str, Any]:
    """What must not depend on the slots: the kept trials in order (config, parent's place, score) and the best."""
    rows = trials(factory, exp_id)
    kept = sorted(n for n, t in rows.items() if t.state is not TS.DISCARDED)
    place = {n: i for i, n in enumerate(kept)}
    exp = experiment(factory, exp_id)
    return {
        "trials": [(rows[n].config_list, place.get(rows[n].parent_number), rows[n].state, rows[n].score)
                   for n in kept],
        "best": (place[exp.best_trial_number], exp.best_score, exp.best_flops_ratio),
        "n_trials": exp.n_trials,
    }


def discarded_rows(factory, exp_id: int) -> dict[int, Any]:
    return {n: t for n, t in trials(factory, exp_id).items() if t.state is TS.DISCARDED}


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory, origin_weights) -> Callable[[int], dict[str, Any]]:
    """``one_slot(finetune_epochs)``: :func:`search_of` the spec run with one slot (nothing runs ahead), on SQLite.

    Run once per module: both backends must end as this search does.
    """
    done: dict[int, dict[str, Any]] = {}

    def search(finetune_epochs: int) -> dict[str, Any]:
        if finetune_epochs not in done:
            folder = tmp_path_factory.mktemp("one_slot")
            with migrated_factory(f"sqlite:///{folder / 'one_slot.db'}") as factory:
                exp_id = submit(factory, ahead_spec(origin_weights, 1, finetune_epochs))
                run_to_idle(make_runner(factory, folder, owner="one-slot", slots=1), max_steps=100)
                rows = trials(factory, exp_id)
                assert experiment(factory, exp_id).state is ES.SUCCEEDED and len(rows) == 10
                assert not any(t.params.get("speculative") or t.state is TS.DISCARDED for t in rows.values())
                done[finetune_epochs] = search_of(factory, exp_id)
        return done[finetune_epochs]

    return search


@pytest.mark.parametrize("order", sorted(EXECUTORS))
def test_running_ahead_discards_lost_bets_and_ends_as_one_slot_does(session_factory, tmp_path, origin_weights,
                                                                    one_slot, order):
    exp_id = submit(session_factory, ahead_spec(origin_weights, 2, finetune_epochs=0))
    counter = Counter()
    run_to_idle(make_runner(session_factory, tmp_path, owner="two-slots", slots=2, trial_fn=counter,
                            executor_factory=executor_factory(order)), max_steps=100)

    exp, rows = experiment(session_factory, exp_id), trials(session_factory, exp_id)
    assert exp.state is ES.SUCCEEDED
    assert any(t.params.get("speculative") and t.state is not TS.DISCARDED for t in rows.values())  # a bet won
    discarded = discarded_rows(session_factory, exp_id)
    assert discarded, "no task was discarded: the spec no longer makes NetAdapt lose a bet"
    for row in discarded.values():
        assert row.params["speculative"] is True and row.finished_at is not None
        assert row.error.splitlines()[-1].startswith("discarded: ran ahead from task ")
    assert search_of(session_factory, exp_id) == one_slot(0)  # same trials, scores, best and n_trials
    assert exp.best_trial_number not in discarded
    assert exp.generator_state["generator"]["discarded"].keys() == {str(n) for n in discarded}

    dropped = [d for k, d in events(session_factory, exp_id) if k == "trial_discarded"]
    assert {d["number"]: d["reason"] for d in dropped} == {
        n: row.error.splitlines()[-1].removeprefix("discarded: ") for n, row in discarded.items()}
    runs = counter.numbers(exp_id)
    assert all(runs[n] == 1 for n in rows if n not in discarded)  # no kept trial ran twice
    if order == "ahead_first":  # finished while tentative, counted, then taken out of n_trials again
        assert any(not d["running"] for d in dropped)
        assert all(runs[n] == 1 for n in discarded)
    if order == "oldest_first":  # still queued when their bet was lost: cancelled, never ran
        assert all(d["running"] for d in dropped) and not any(runs[n] for n in discarded)
    if order == "all_at_once":  # ran, but reported in the batch that discarded it: its result was dropped
        assert any(runs[n] == 1 and discarded[n].score is None and discarded[n].metrics == {} for n in discarded)


def test_a_takeover_while_a_task_runs_ahead_ends_as_one_slot_does_and_never_reruns_a_discarded_trial(
        session_factory, tmp_path, origin_weights, one_slot, monkeypatch):
    monkeypatch.setattr(runner_experiment, "CHECKPOINT_EVERY_TELLS", 2)  # the takeover replays past a checkpoint
    exp_id = submit(session_factory, ahead_spec(origin_weights, 2, finetune_epochs=1))  # seeds matter

    class CrashAhead(Counter):
        """Dies in the first task run ahead after a discard was committed."""

        crashed: int | None = None

        def __call__(self, spec, progress=None):
            if spec.task["params"].get("speculative") and discarded_rows(session_factory, exp_id):
                self.calls[(Path(spec.artifact_dir).parents[1].name, spec.task_id)] += 1
                self.crashed = spec.task_id
                raise Crash()
            return super().__call__(spec, progress)

    first = CrashAhead()
    with pytest.raises(Crash):
        run_to_idle(make_runner(session_factory, tmp_path, owner="runner-a", slots=2, trial_fn=first), max_steps=100)
    before = trials(session_factory, exp_id)
    assert before[first.crashed].state is TS.RUNNING and before[first.crashed].params["speculative"]
    gone = {n: (t.attempt, t.finished_at, t.error) for n, t in before.items() if t.state is TS.DISCARDED}
    checkpoint = experiment(session_factory, exp_id).generator_state
    assert gone and checkpoint["seq"] > 0 and any(t.tell_seq is not None and t.tell_seq >= checkpoint["seq"]
                                                 for t in before.values())  # results told after the checkpoint

    second = Counter()
    run_to_idle(make_runner(session_factory, tmp_path, owner="runner-b", slots=2, trial_fn=second,
                            clock=lambda: utcnow() + dt.timedelta(hours=1)), max_steps=100)
    exp, rows = experiment(session_factory, exp_id), trials(session_factory, exp_id)
    assert exp.state is ES.SUCCEEDED
    assert {n: (rows[n].state, rows[n].attempt, rows[n].finished_at, rows[n].error) for n in gone} == {
        n: (TS.DISCARDED, *kept) for n, kept in gone.items()}  # untouched by the takeover
    assert not set(second.numbers(exp_id)) & set(gone)  # and never ran again
    assert rows[first.crashed].attempt == 2 or rows[first.crashed].state is TS.DISCARDED
    assert search_of(session_factory, exp_id) == one_slot(1)
    finished_by_a = {n for n, t in before.items() if t.state in (TS.SUCCEEDED, TS.FAILED)}
    assert not set(second.numbers(exp_id)) & finished_by_a


def test_discarded_rows_keep_their_reason_and_journal_stop_counting_and_never_open_again(session_factory):
    exp_id = submit(session_factory, ahead_spec("unused.safetensors", 2, finetune_epochs=0))
    task = {"config_list": [], "params": {"speculative": True}}
    with session_scope(session_factory) as s:
        for number, state in ((0, TS.SUCCEEDED), (1, TS.FAILED), (2, TS.RUNNING), (3, TS.CANCELLED)):
            open_trial(s, exp_id, {**task, "task_id": number}, ask_seq=number)
            if state is not TS.RUNNING:
                store.record_trial_result(s, exp_id, number=number, state=state, tell_seq=10 + number,
                                          told={"task_id": number}, error="Traceback: boom" if number == 1 else None)
    assert experiment(session_factory, exp_id).n_trials == 2

    reasons = {n: f"ran ahead from task 9, but task 8 won iteration {n}" for n in (0, 1, 2, 3, 42)}
    with session_scope(session_factory) as s:
        dropped = discard_trials(s, exp_id, reasons)
    assert dropped == [("trial_discarded", {"number": n, "reason": reasons[n], "running": n == 2}) for n in range(4)]
    rows = trials(session_factory, exp_id)
    assert {n: t.state for n, t in rows.items()} == dict.fromkeys(range(4), TS.DISCARDED)
    assert rows[0].error == f"discarded: {reasons[0]}"
    assert rows[1].error == f"Traceback: boom\n\ndiscarded: {reasons[1]}"  # a failed trial keeps its traceback
    assert (rows[0].ask_seq, rows[0].tell_seq) == (0, 10)  # the journal stays: a replay discards it again
    assert experiment(session_factory, exp_id).n_trials == 0

    with session_scope(session_factory) as s:  # a resumed runner reconciling: nothing left to do
        assert discard_trials(s, exp_id, reasons) == []
    assert experiment(session_factory, exp_id).n_trials == 0
    with session_scope(session_factory) as s, pytest.raises(ValueError, match="trial 2 of experiment .* is discarded"):
        open_trial(s, exp_id, {**task, "task_id": 2})


class DiscardsWhenAsked(TaskGenerator):
    """A search that runs task 1 ahead of task 0's result and, at the first ask after it, discards task 1 and hands
    out nothing: a discard no trial row journals (the ask that made it handed out no task)."""

    def _propose(self, n: int) -> list[Proposal]:
        if len(self.tasks) < 2:
            ratio = 0.25 if not self.tasks else 0.5
            return [Proposal([{"op_names": ["conv1"], "sparse_ratio": ratio}], None, {"speculative": bool(self.tasks)})]
        if 0 in self.results and 1 not in self.discarded:
            self.discard([1], "task 0 was told")
        return []

    def _tentative(self, task: Task) -> bool:
        return task.task_id == 1

    def _finished(self) -> bool:
        return bool(self.discarded)


def test_a_discard_made_by_an_ask_that_hands_out_nothing_survives_a_crash(session_factory, tmp_path, origin_weights,
                                                                          monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "discards_when_asked",
                        AlgorithmEntry("discards_when_asked", f"{__name__}:DiscardsWhenAsked"))
    spec = spec_dict(origin_weights, algorithm={"name": "discards_when_asked"},
                     resources={"max_concurrent_trials": 2})
    exp_id = submit(session_factory, spec)

    def dying_export(*args, **kwargs):  # the runner dies right after the commit of the discard, before it ends
        raise Crash()

    first = Counter()
    with monkeypatch.context() as m:
        m.setattr(runner_module, "export_trial", dying_export)
        with pytest.raises(Crash):
            run_to_idle(make_runner(session_factory, tmp_path, owner="runner-a", slots=2, trial_fn=first))
    assert {n: t.state for n, t in trials(session_factory, exp_id).items()} == {0: TS.SUCCEEDED, 1: TS.DISCARDED}

    second = Counter()
    run_to_idle(make_runner(session_factory, tmp_path, owner="runner-b", slots=2, trial_fn=second,
                            clock=lambda: utcnow() + dt.timedelta(hours=1)))
    exp = experiment(session_factory, exp_id)
    assert exp.state is ES.SUCCEEDED and exp.error is None  # task 1 was not handed to runner B as pending
    assert first.numbers(exp_id) == {0: 1} and not second.numbers(exp_id)
    assert (exp.n_trials, exp.best_trial_number) == (1, 0)
    assert exp.generator_state["generator"]["discarded"] == {"1": "task 0 was told"}
