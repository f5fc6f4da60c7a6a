"""The experiment runner on SQLite and PostgreSQL: searches run to the end, survive a crash (another
runner takes over after the lease expires), cancel and resume, failed trials, limits, heartbeat.

Trials are real (``workers.trial.run_trial`` on the digits CNN, tiny budgets); the runner is
stepped, never sleep-polled. Executions are counted through the trial function hook that ends up
in the ``LocalExecutor``.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch

from service import runner_experiment, store
from service.artifacts import ArtifactStore
from service.db import session_scope
from service.models import Trial, utcnow
from service.runner import Runner, RunnerOptions
from service.settings import Settings
from service.states import ExperimentState as ES
from service.states import TrialState as TS
from workers.executors import LocalExecutor
from workers.spec import ExperimentSpec
from workers.trial import run_trial

pytestmark = pytest.mark.usefixtures("single_thread")


# -- helpers ------------------------------------------------------------------------------------------


def spec_dict(weights: str | None, *, algorithm: dict | None = None, trial: dict | None = None,
              resources: dict | None = None, name: str = "exp") -> dict[str, Any]:
    data = {
        "name": name,
        "model": {"factory": "search.zoo:digits_cnn", "weights": weights},
        "data": {"name": "digits"},
        "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
        "algorithm": algorithm or {"name": "agp", "total_iteration": 2},
        "trial": {"finetune_epochs": 0, "pretrain_epochs": 0, **(trial or {})},
        "resources": {"max_concurrent_trials": 1, **(resources or {})},
    }
    return ExperimentSpec.from_dict(data, check=False).to_dict()


def submit(factory, spec: dict[str, Any]) -> int:
    with session_scope(factory) as s:
        exp = store.create_experiment(s, spec=spec, name=spec["name"], algorithm=spec["algorithm"]["name"],
                                      model=spec["model"]["factory"], max_trials=spec["algorithm"].get("max_trials"))
        return exp.id


def make_runner(factory, tmp_path: Path, *, owner: str = "runner-a", lease: float = 30.0, slots: int = 2,
                formats: tuple[str, ...] = (), **kwargs: Any) -> Runner:
    settings = Settings(database_url="sqlite:///unused.db", data_dir=tmp_path, artifacts_dir=tmp_path / "artifacts",
                        max_concurrent_trials=slots, lease_seconds=lease)
    executor_factory = kwargs.pop("executor_factory", None)
    return Runner(settings, factory, executor_factory, ArtifactStore(tmp_path / "artifacts"), owner_id=owner,
                  options=RunnerOptions(export_formats=formats, **kwargs))


def run_to_idle(runner: Runner, max_steps: int = 60) -> int:
    for n in range(max_steps):
        if not runner.step():
            return n
    raise AssertionError(f"the runner was still busy after {max_steps} steps")


class Counter:
    """A trial function: runs the real trial, counts executions per (experiment folder, number)."""

    def __init__(self, fail: dict[int, BaseException] | None = None, once: bool = True) -> None:
        self.calls: collections.Counter[tuple[str, int]] = collections.Counter()
        self.fail = dict(fail or {})
        self.once = once

    def __call__(self, spec, progress=None):
        key = (Path(spec.artifact_dir).parents[1].name, spec.task_id)
        self.calls[key] += 1
        if spec.task_id in self.fail:
            exc = self.fail.pop(spec.task_id) if self.once else self.fail[spec.task_id]
            raise exc
        return run_trial(spec, progress)

    def numbers(self, exp_id: int) -> collections.Counter[int]:
        return collections.Counter({n: c for (e, n), c in self.calls.items() if e == str(exp_id)})


def experiment(factory, exp_id: int):
    with session_scope(factory) as s:
        return store.get_experiment(s, exp_id)


def trials(factory, exp_id: int) -> dict[int, Any]:
    with session_scope(factory) as s:
        return {t.number: t for t in store.get_trials(s, exp_id)}


def events(factory, exp_id: int) -> list[tuple[str, dict]]:
    with session_scope(factory) as s:
        return [(e.kind, e.data) for e in store.events_after(s, exp_id, 0, limit=10_000)]


class Crash(BaseException):
    """Stands for the process dying mid-trial (not an ``Exception``: nothing in the runner catches it)."""


# -- a whole experiment --------------------------------------------------------------------------------


def test_an_experiment_runs_to_the_end_and_exports_the_best_model(session_factory, tmp_path, origin_weights):
    exp_id = submit(session_factory, spec_dict(origin_weights))
    backend = session_factory.kw["bind"].dialect.name
    # ONNX export does not depend on the database: check it once, keep the PostgreSQL run fast
    formats = ("pt2", "onnx") if backend == "sqlite" else ("pt2",)
    runner = make_runner(session_factory, tmp_path, formats=formats)
    run_to_idle(runner)

    exp = experiment(session_factory, exp_id)
    rows = trials(session_factory, exp_id)
    assert exp.state is ES.SUCCEEDED and exp.error is None and exp.lease_owner is None
    assert sorted(rows) == [0, 1] and all(t.state is TS.SUCCEEDED and t.attempt == 1 for t in rows.values())
    assert exp.n_trials == 2
    best = max(rows.values(), key=lambda t: (t.score, -t.number))
    assert (exp.best_trial_number, exp.best_score) == (best.number, best.score)
    assert exp.best_flops_ratio == pytest.approx(best.metrics["flops_ratio"])
    assert rows[1].parent_number == 0 and rows[1].achieved_sparsity and rows[1].requested_sparsity
    # the journal: ask 0, tell 0, ask 1, tell 1, then an ask that found the search over; the final checkpoint has all
    assert [(rows[n].ask_seq, rows[n].tell_seq) for n in (0, 1)] == [(0, 1), (2, 3)]
    assert exp.generator_state["version"] == 2 and exp.generator_state["seq"] == 5
    assert len(exp.generator_state["generator"]["results"]) == 2

    kinds = [k for k, _ in events(session_factory, exp_id)]
    assert kinds[0] == "experiment_state" and kinds[-1] == "experiment_state"
    assert kinds.count("trial_started") == 2 and kinds.count("trial_finished") == 2 and "best_changed" in kinds
    phases = {d["phase"] for k, d in events(session_factory, exp_id) if k == "trial_progress" and d["number"] == 1}
    assert {"prune", "evaluate", "speedup"} <= phases
    assert [d["state"] for k, d in events(session_factory, exp_id) if k == "experiment_state"] == [
        "queued", "running", "succeeded"]

    store_ = runner.artifacts
    with session_scope(session_factory) as s:
        exported = {a.kind: a for a in store.list_artifacts(s, exp_id, trial_number=None)}
        logs = {a.trial_number: a for a in store.list_artifacts(s, exp_id) if a.kind == "log"}
    assert set(exported) == {*formats, "safetensors", "masks", "compact", "result"}
    assert {k: exported[k].content_type for k in ("pt2", "safetensors", "masks")} == {
        "pt2": "application/octet-stream", "safetensors": "application/octet-stream",
        "masks": "application/octet-stream"}
    if "onnx" in formats:
        assert exported["onnx"].content_type == "application/onnx" and exported["onnx"].size > 1000
    for art in exported.values():
        assert art.path.startswith("best/")
        assert art.size == store_.size(exp_id, art.path) and art.sha256 == store_.sha256(exp_id, art.path)
    assert set(logs) == {0, 1} and "trial 1" in store_.resolve(exp_id, logs[1].path).read_text()

    from search.speedup import load_compact_model
    from search.zoo import get_dummy_input

    compact = load_compact_model(store_.best_dir(exp_id)).eval()
    program = torch.export.load(str(store_.resolve(exp_id, exported["pt2"].path)))
    x = torch.randn(3, *get_dummy_input("digits_cnn").shape[1:])
    assert torch.allclose(program.module()(x), compact(x), atol=1e-5)


def test_a_trial_that_raises_is_failed_with_its_traceback_and_the_search_goes_on(session_factory, tmp_path,
                                                                                   origin_weights):
    exp_id = submit(session_factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 3}))
    counter = Counter(fail={1: ValueError("the data loader broke")})
    run_to_idle(make_runner(session_factory, tmp_path, trial_fn=counter))

    rows = trials(session_factory, exp_id)
    assert experiment(session_factory, exp_id).state is ES.SUCCEEDED
    assert [rows[n].state for n in (0, 1, 2)] == [TS.SUCCEEDED, TS.FAILED, TS.SUCCEEDED]
    assert "Traceback" in rows[1].error and "ValueError: the data loader broke" in rows[1].error
    assert rows[1].score is None and rows[2].parent_number == 0  # AGP continues from the last good trial
    failed = [d for k, d in events(session_factory, exp_id) if k == "trial_failed"]
    assert failed == [{"number": 1, "attempt": 1, "error": "ValueError: the data loader broke"}]
    assert experiment(session_factory, exp_id).n_trials == 3


def test_an_experiment_whose_trials_all_fail_is_failed(session_factory, tmp_path, origin_weights):
    exp_id = submit(session_factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 1}))
    run_to_idle(make_runner(session_factory, tmp_path, trial_fn=Counter(fail={0: RuntimeError("no")})))
    exp = experiment(session_factory, exp_id)
    assert exp.state is ES.FAILED and "all 1 trials failed" in exp.error


# -- crash and takeover --------------------------------------------------------------------------------


def test_a_crashed_runners_experiment_is_taken_over_and_ends_like_an_uninterrupted_one(session_factory, tmp_path):
    spec = spec_dict(None, algorithm={"name": "agp", "total_iteration": 3}, trial={"pretrain_epochs": 1})
    straight_id = submit(session_factory, spec)
    run_to_idle(make_runner(session_factory, tmp_path, owner="straight", slots=1))
    crashed_id = submit(session_factory, spec)

    # runner A: pretrain and trial 0 commit, then the process "dies" while trial 1 runs
    first = Counter(fail={1: Crash()})
    runner_a = make_runner(session_factory, tmp_path, owner="runner-a", slots=1, lease=30, trial_fn=first)
    with pytest.raises(Crash):
        run_to_idle(runner_a)
    before = trials(session_factory, crashed_id)
    assert {n: t.state for n, t in before.items()} == {-1: TS.SUCCEEDED, 0: TS.SUCCEEDED, 1: TS.RUNNING}
    assert experiment(session_factory, crashed_id).lease_owner == "runner-a"
    committed_before = {n: t.finished_at for n, t in before.items() if t.state is TS.SUCCEEDED}

    # runner B sees A's lease as expired (its clock is an hour ahead) and takes over
    second = Counter()
    runner_b = make_runner(session_factory, tmp_path, owner="runner-b", slots=1, lease=30, trial_fn=second,
                           clock=lambda: utcnow() + dt.timedelta(hours=1))
    run_to_idle(runner_b)

    exp, rows = experiment(session_factory, crashed_id), trials(session_factory, crashed_id)
    assert exp.state is ES.SUCCEEDED and sorted(rows) == [-1, 0, 1, 2]
    assert all(t.state is TS.SUCCEEDED for t in rows.values())
    for number, finished_at in committed_before.items():
        assert rows[number].finished_at == finished_at and rows[number].attempt == 1
    runs = first.numbers(crashed_id) + second.numbers(crashed_id)
    assert runs == {-1: 1, 0: 1, 1: 2, 2: 1}  # only the interrupted trial ran again
    assert set(second.numbers(crashed_id)) == {1, 2}
    assert rows[1].attempt == 2
    reference = experiment(session_factory, straight_id)
    assert (exp.best_trial_number, exp.best_score) == (reference.best_trial_number, reference.best_score)
    assert [rows[n].score for n in range(3)] == [trials(session_factory, straight_id)[n].score for n in range(3)]
    assert exp.n_trials == reference.n_trials


def test_a_takeover_replays_the_journal_after_the_last_checkpoint_and_ends_like_an_uninterrupted_run(
        session_factory, tmp_path, origin_weights, monkeypatch):
    monkeypatch.setattr(runner_experiment, "CHECKPOINT_EVERY_TELLS", 2)
    # simulated annealing: rounds of candidates, a random state and decisions, all in the generator's state
    spec = spec_dict(origin_weights, algorithm={"name": "simulated_annealing", "neighbours_per_temperature": 3,
                                                "cool_down_rate": 0.5, "max_trials": 7})
    straight_id = submit(session_factory, spec)
    run_to_idle(make_runner(session_factory, tmp_path, owner="straight", slots=1))
    crashed_id = submit(session_factory, spec)

    first = Counter(fail={5: Crash()})
    with pytest.raises(Crash):
        run_to_idle(make_runner(session_factory, tmp_path, owner="runner-a", slots=1, trial_fn=first))
    checkpoint, rows = experiment(session_factory, crashed_id).generator_state, trials(session_factory, crashed_id)
    assert checkpoint["seq"] > 0 and any(t.tell_seq is not None and t.tell_seq >= checkpoint["seq"]
                                         for t in rows.values())  # results told after the last checkpoint
    finished_before = {n: t.finished_at for n, t in rows.items() if t.state is TS.SUCCEEDED}

    second = Counter()
    run_to_idle(make_runner(session_factory, tmp_path, owner="runner-b", slots=1, trial_fn=second,
                            clock=lambda: utcnow() + dt.timedelta(hours=1)))
    exp, rows, reference = (experiment(session_factory, crashed_id), trials(session_factory, crashed_id),
                            trials(session_factory, straight_id))
    assert exp.state is ES.SUCCEEDED and sorted(rows) == sorted(reference) == list(range(7))
    assert {n: rows[n].finished_at for n in finished_before} == finished_before  # no finished trial ran again
    assert first.numbers(crashed_id) + second.numbers(crashed_id) == {n: 2 if n == 5 else 1 for n in range(7)}
    assert [(t.params, t.config_list, t.score) for _, t in sorted(rows.items())] == [
        (t.params, t.config_list, t.score) for _, t in sorted(reference.items())]
    straight = experiment(session_factory, straight_id)
    assert (exp.best_trial_number, exp.best_score, exp.n_trials) == (
        straight.best_trial_number, straight.best_score, straight.n_trials)
    same = ("tasks", "rng", "algo", "next_id")  # results differ only in their artifact folders (other experiment ids)
    assert {k: exp.generator_state["generator"][k] for k in same} == {
        k: straight.generator_state["generator"][k] for k in same}


def test_a_runner_that_lost_its_lease_writes_nothing_more(session_factory, tmp_path, origin_weights):
    exp_id = submit(session_factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 3}))
    stale = make_runner(session_factory, tmp_path, owner="stale", slots=1)
    stale.step()  # claims, runs trial 0, hands out trial 1
    assert trials(session_factory, exp_id)[1].state is TS.RUNNING

    fresh = make_runner(session_factory, tmp_path, owner="fresh", slots=1,
                        clock=lambda: utcnow() + dt.timedelta(hours=1))
    fresh.step()  # takes over: trial 1 again (attempt 2)
    snapshot = {n: (t.state, t.attempt, t.finished_at) for n, t in trials(session_factory, exp_id).items()}
    assert stale.step() is True and stale.drivers == {}  # noticed the lease is gone and let go
    assert {n: (t.state, t.attempt, t.finished_at) for n, t in trials(session_factory, exp_id).items()} == snapshot
    run_to_idle(fresh)
    assert experiment(session_factory, exp_id).state is ES.SUCCEEDED


# -- cancel, resume, pretrain ---------------------------------------------------------------------------


def test_cancel_stops_running_trials_and_resume_continues_where_it_stopped(session_factory, tmp_path,
                                                                           origin_weights):
    exp_id = submit(session_factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 3}))
    counter = Counter()
    runner = make_runner(session_factory, tmp_path, slots=1, trial_fn=counter)
    runner.step()  # trial 0 done, trial 1 handed out
    with session_scope(session_factory) as s:
        assert store.request_cancel(s, exp_id).state is ES.CANCELLING
    runner.step()
    exp, rows = experiment(session_factory, exp_id), trials(session_factory, exp_id)
    assert exp.state is ES.CANCELLED and exp.lease_owner is None and runner.drivers == {}
    assert {n: t.state for n, t in rows.items()} == {0: TS.SUCCEEDED, 1: TS.CANCELLED}
    assert run_to_idle(runner) == 0  # nothing to do for a cancelled experiment

    with session_scope(session_factory) as s:
        assert store.request_resume(s, exp_id).state is ES.QUEUED
    run_to_idle(runner)
    exp, rows = experiment(session_factory, exp_id), trials(session_factory, exp_id)
    assert exp.state is ES.SUCCEEDED and sorted(rows) == [0, 1, 2]
    assert all(t.state is TS.SUCCEEDED for t in rows.values()) and rows[1].attempt == 2
    assert counter.numbers(exp_id) == {0: 1, 1: 1, 2: 1}  # trial 0 did not run again
    states = [d["state"] for k, d in events(session_factory, exp_id) if k == "experiment_state"]
    assert states == ["queued", "running", "cancelling", "cancelled", "queued", "running", "succeeded"]


def test_a_failed_pretrain_fails_the_experiment_and_resume_trains_again(session_factory, tmp_path):
    exp_id = submit(session_factory, spec_dict(None, algorithm={"name": "agp", "total_iteration": 1},
                                               trial={"pretrain_epochs": 1}))
    counter = Counter(fail={-1: MemoryError("out of memory")})
    runner = make_runner(session_factory, tmp_path, trial_fn=counter)
    run_to_idle(runner)
    exp = experiment(session_factory, exp_id)
    assert exp.state is ES.FAILED and exp.error.startswith("the pretrain trial failed")
    assert "MemoryError: out of memory" in exp.error and sorted(trials(session_factory, exp_id)) == [-1]

    with session_scope(session_factory) as s:
        store.request_resume(s, exp_id)
    run_to_idle(runner)
    rows = trials(session_factory, exp_id)
    assert experiment(session_factory, exp_id).state is ES.SUCCEEDED
    assert rows[-1].state is TS.SUCCEEDED and rows[-1].attempt == 2 and rows[0].state is TS.SUCCEEDED
    assert counter.numbers(exp_id) == {-1: 2, 0: 1}
    assert experiment(session_factory, exp_id).n_trials == 2  # the replaced failed pretrain row is not counted


def test_an_export_failure_is_an_event_not_a_failed_experiment(session_factory, tmp_path, origin_weights,
                                                              monkeypatch):
    import search.speedup.export as export_mod

    def broken(*args, **kwargs):
        raise RuntimeError("the ONNX exporter broke")

    monkeypatch.setattr(export_mod, "export_onnx", broken)  # a fault the real exporter does not show on demand
    exp_id = submit(session_factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 1}))
    run_to_idle(make_runner(session_factory, tmp_path, formats=("pt2", "onnx")))
    assert experiment(session_factory, exp_id).state is ES.SUCCEEDED
    with session_scope(session_factory) as s:
        kinds = {a.kind for a in store.list_artifacts(s, exp_id, trial_number=None)}
    assert "pt2" in kinds and "safetensors" in kinds and "onnx" not in kinds
    logs = [d for k, d in events(session_factory, exp_id) if k == "log"]
    assert [d["export_failed"] for d in logs] == ["onnx"] and "the ONNX exporter broke" in logs[0]["error"]


def test_deleting_an_experiment_while_it_runs_stops_it_and_leaves_no_files(session_factory, tmp_path,
                                                                            origin_weights):
    exp_id = submit(session_factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 3}))
    runner = make_runner(session_factory, tmp_path, slots=1)
    runner.step()  # trial 0 done, trial 1 handed out
    with session_scope(session_factory) as s:  # what DELETE /experiments/{id} does
        assert store.delete_experiment(s, exp_id)
    runner.artifacts.delete_experiment(exp_id)
    assert runner.step() is True and runner.drivers == {}
    assert run_to_idle(runner) == 0 and not runner.artifacts.experiment_dir(exp_id).exists()


# -- limits and heartbeat -------------------------------------------------------------------------------


class Tracking(LocalExecutor):
    """A real LocalExecutor that records how many trials it holds (submitted, not yet reported)."""

    live: collections.Counter[int] = collections.Counter()
    peaks: collections.Counter[int] = collections.Counter()
    peak_total = 0
    together = False

    def __init__(self, key: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key

    def submit(self, spec):
        handle = super().submit(spec)
        cls = type(self)
        cls.live[self.key] += 1
        cls.peaks[self.key] = max(cls.peaks[self.key], cls.live[self.key])
        cls.peak_total = max(cls.peak_total, sum(cls.live.values()))
        cls.together |= sum(1 for v in cls.live.values() if v) > 1
        return handle

    def poll(self, timeout=None):
        done = super().poll(timeout)
        type(self).live[self.key] -= len(done)
        return done

    def cancel(self, handle, force=True):
        cancelled = super().cancel(handle, force)
        type(self).live[self.key] -= cancelled  # e.g. a task run ahead of a decision, then discarded
        return cancelled


def test_several_experiments_run_at_once_within_the_global_and_their_own_limits(session_factory, tmp_path,
                                                                                 origin_weights):
    # NetAdapt hands out one candidate per layer at once (three convs here), and runs ahead into the next
    # iteration when a slot would idle: its discarded tasks are no trials of the search, but free their slots
    spec = spec_dict(origin_weights, algorithm={"name": "netadapt", "max_trials": 4},
                     resources={"max_concurrent_trials": 2})
    ids = [submit(session_factory, spec) for _ in range(2)]
    Tracking.live, Tracking.peaks, Tracking.peak_total, Tracking.together = (
        collections.Counter(), collections.Counter(), 0, False)
    keys = iter(range(100))

    def factory(spec, *, trial_fn, on_progress):
        return Tracking(next(keys), trial_fn=trial_fn, on_progress=on_progress)

    runner = make_runner(session_factory, tmp_path, slots=3, executor_factory=factory)
    run_to_idle(runner)
    assert [experiment(session_factory, i).state for i in ids] == [ES.SUCCEEDED, ES.SUCCEEDED]
    kept = [[n for n, t in trials(session_factory, i).items() if t.state is not TS.DISCARDED] for i in ids]
    assert [len(numbers) for numbers in kept] == [4, 4]
    assert [experiment(session_factory, i).n_trials for i in ids] == [4, 4]
    assert Tracking.peak_total == 3  # the global limit was reached, never passed
    assert max(Tracking.peaks.values()) == 2  # each experiment's own limit
    assert Tracking.together  # both experiments had trials in flight at the same time


def test_the_heartbeat_keeps_the_lease_while_a_long_trial_runs(session_factory, tmp_path, origin_weights):
    lease = 0.6
    started, go = threading.Event(), threading.Event()

    def slow_trial(spec, progress=None):
        started.set()
        assert go.wait(60)
        return run_trial(spec, progress)

    closed = threading.Event()

    class Signalling(LocalExecutor):
        def shutdown(self):
            super().shutdown()
            closed.set()  # the runner lets go of an experiment's executor when the experiment ends

    exp_id = submit(session_factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 1}))
    runner = make_runner(session_factory, tmp_path, lease=lease, trial_fn=slow_trial,
                         executor_factory=lambda spec, *, trial_fn, on_progress: Signalling(trial_fn=trial_fn))
    stop = threading.Event()
    thread = threading.Thread(target=runner.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        assert started.wait(60)
        first = experiment(session_factory, exp_id).lease_expires_at
        time.sleep(2 * lease)  # longer than the lease: only the heartbeat keeps it
        later = experiment(session_factory, exp_id).lease_expires_at
        assert later > first and later > utcnow()
        other = make_runner(session_factory, tmp_path, owner="other")
        assert other.step() is False and experiment(session_factory, exp_id).lease_owner == "runner-a"
    finally:
        go.set()
    assert closed.wait(60)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert experiment(session_factory, exp_id).state is ES.SUCCEEDED
    assert runner.last_step_monotonic is not None


def test_stopping_a_runner_releases_its_leases_so_another_resumes_at_once(session_factory, tmp_path, origin_weights):
    exp_id = submit(session_factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 2}))
    first = make_runner(session_factory, tmp_path, owner="first", slots=1)
    first.step()
    first.close()
    exp = experiment(session_factory, exp_id)
    assert exp.state is ES.RUNNING and exp.lease_owner is None
    assert trials(session_factory, exp_id)[1].state is TS.RUNNING  # was handed out; runs again
    second = make_runner(session_factory, tmp_path, owner="second", slots=1)  # same clock: no expiry needed
    run_to_idle(second)
    rows = trials(session_factory, exp_id)
    assert experiment(session_factory, exp_id).state is ES.SUCCEEDED and rows[1].attempt == 2


def test_a_nan_score_is_stored_and_survives_a_takeover(session_factory, tmp_path, origin_weights):
    def diverging(spec, progress=None):  # trial 0's finetune "diverged": its loss (the objective) is NaN
        result = run_trial(spec, progress)
        if spec.task_id == 0:
            result.metrics["loss"] = result.score = float("nan")
        return result

    spec = spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 2})
    spec["objective"] = {"metric": "loss", "best_result_mode": "minimize"}
    exp_id = submit(session_factory, spec)
    make_runner(session_factory, tmp_path, owner="first", slots=1, trial_fn=diverging).step()
    assert experiment(session_factory, exp_id).generator_state is None  # no checkpoint yet: the takeover replays
    with session_factory() as s:  # the journal keeps the NaN the generator was told (JSON and JSONB have none)
        told = s.execute(sa.select(Trial.told).where(Trial.experiment_id == exp_id, Trial.number == 0)).scalar_one()
    assert told["score"] == told["metrics"]["loss"] == {"$float": "nan"}
    run_to_idle(make_runner(session_factory, tmp_path, owner="second", slots=1,
                            clock=lambda: utcnow() + dt.timedelta(hours=1)))
    exp, rows = experiment(session_factory, exp_id), trials(session_factory, exp_id)
    assert exp.state is ES.SUCCEEDED and exp.best_trial_number == 1
    assert rows[0].state is TS.SUCCEEDED and rows[0].score is None and rows[0].metrics["loss"] is None


# -- Ray ---------------------------------------------------------------------------------------------------


def killing_trial(spec, progress=None):
    """Kills its own Ray worker on the trial's first attempt (the runner's start marker counts them)."""
    import os
    import signal

    from service.runner_trial import count_starts

    if count_starts(spec.artifact_dir) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return run_trial(spec, progress)


@pytest.mark.slow  # ~30 s: a local Ray starts, a worker is killed and a new one imports torch
@pytest.mark.ray
def test_on_ray_a_trial_whose_worker_died_is_retried_and_its_attempts_recorded(tmp_path, origin_weights):
    ray = pytest.importorskip("ray")
    import sys

    from ray import cloudpickle

    from service.db import make_session_factory, upgrade
    from service.runner import DefaultExecutorFactory

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # killing_trial travels to the workers by value
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    url = f"sqlite:///{tmp_path / 'ps.db'}"  # the database does not matter here; Ray does
    upgrade(url)
    factory = make_session_factory(url)
    try:
        exp_id = submit(factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 1},
                                           resources={"max_retries": 2}))
        runner = make_runner(factory, tmp_path, trial_fn=killing_trial, poll_timeout=1.0,
                             executor_factory=DefaultExecutorFactory("local"))
        deadline = time.monotonic() + 180
        while experiment(factory, exp_id).state in (ES.QUEUED, ES.RUNNING) and time.monotonic() < deadline:
            runner.step()  # with Ray a step returns after at most poll_timeout; the trial runs elsewhere
        runner.close()
        exp, rows = experiment(factory, exp_id), trials(factory, exp_id)
        assert exp.state is ES.SUCCEEDED, exp.error
        assert rows[0].state is TS.SUCCEEDED and rows[0].attempt == 2
        assert rows[0].worker and rows[0].worker.split(":")[-1] != str(os.getpid())  # ran in a Ray worker
    finally:
        factory.kw["bind"].dispose()
        if started:
            ray.shutdown()


# -- the standalone worker process ----------------------------------------------------------------------


@pytest.mark.slow  # two runner processes start (torch imports) and export to pt2 + ONNX: ~30-50 s
def test_a_killed_runner_process_is_replaced_and_the_experiment_completes(tmp_path, origin_weights):
    import signal
    import subprocess
    import sys

    from service.db import make_session_factory, upgrade

    root = Path(__file__).resolve().parents[2]
    url = f"sqlite:///{tmp_path / 'ps.db'}"
    upgrade(url)
    factory = make_session_factory(url)
    exp_id = submit(factory, spec_dict(origin_weights, algorithm={"name": "agp", "total_iteration": 4},
                                       trial={"finetune_epochs": 1}))
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PRUNESEARCH_DATABASE_URL": url,
           "PRUNESEARCH_ARTIFACTS_DIR": str(tmp_path / "artifacts"), "PRUNESEARCH_LEASE_SECONDS": "2"}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "service.runner", "--log-level", "WARNING"], cwd=root,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_for(condition, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)  # another process does the work: poll SQL

    first = start()
    try:
        wait_for(lambda: sum(t.state is TS.SUCCEEDED for t in trials(factory, exp_id).values()) >= 2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    before = {n: t.finished_at for n, t in trials(factory, exp_id).items() if t.state is TS.SUCCEEDED}
    assert 2 <= len(before) < 4, "the runner was not killed midway"
    second = start()
    try:
        wait_for(lambda: experiment(factory, exp_id).state is ES.SUCCEEDED)
    finally:
        second.send_signal(signal.SIGTERM)  # a clean stop: releases its leases and exits 0
        assert second.wait(60) == 0, second.stderr.read().decode()
    rows = trials(factory, exp_id)
    assert sorted(rows) == [0, 1, 2, 3] and all(t.state is TS.SUCCEEDED for t in rows.values())
    assert {n: rows[n].finished_at for n in before} == before  # no finished trial ran again
    with session_scope(factory) as s:
        assert store.get_artifact(s, exp_id, trial_number=None, kind="pt2") is not None
    factory.kw["bind"].dispose()
