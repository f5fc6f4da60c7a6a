"""The executor contract, run against LocalExecutor and RayExecutor; and what only Ray does.

The Ray tests share one local Ray (2 CPUs) started once per session. Trials that must misbehave
(sleep, raise, kill their worker) are small functions defined here and shipped to the workers by
value; the real ``run_trial`` runs too.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from search.scheduling import Task
from workers.executors import Executor, ExecutorError, LocalExecutor, execute_trial
from workers.spec import DataSpec, ModelSpec, TrialSettings, TrialSpec
from workers.trial import TrialResult

# -- trial functions ------------------------------------------------------------------------------------


def sleeping_trial(spec: TrialSpec, progress) -> TrialResult:
    started = time.time()
    time.sleep(float(spec.task["params"].get("sleep", 1.0)))
    return TrialResult(spec.task_id, score=float(spec.task_id), started_at=started, finished_at=time.time(),
                       worker=str(os.getpid()))


def raising_trial(spec: TrialSpec, progress) -> TrialResult:
    if spec.task["params"].get("raise"):
        raise RuntimeError(f"trial {spec.task_id} exploded")
    return sleeping_trial(spec, progress)


def rendezvous_trial(spec: TrialSpec, progress) -> TrialResult:
    """Checks in, then waits (up to 30 s) until ``peers`` trials have checked in: only parallel trials all meet."""
    started = time.time()
    folder = Path(spec.task["params"]["dir"])
    (folder / str(spec.task_id)).write_text(str(os.getpid()))
    deadline = time.monotonic() + 30
    while len(list(folder.iterdir())) < spec.task["params"]["peers"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    return TrialResult(spec.task_id, metrics={"peers_seen": float(len(list(folder.iterdir())))}, started_at=started,
                       finished_at=time.time(), worker=str(os.getpid()))


def killing_trial(spec: TrialSpec, progress) -> TrialResult:
    """Kills its own worker process on the first attempt (remembered by a marker file)."""
    marker = Path(spec.task["params"]["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return TrialResult(spec.task_id, score=1.0, worker=str(os.getpid()))


def interruptible_trial(spec: TrialSpec, progress) -> TrialResult:
    """Writes its pid, then sleeps in short steps, as a training loop returns to Python between batches (Ray
    delivers the interrupt there); an interrupt (a cancel without force) is noted in ``interrupted``."""
    folder = Path(spec.task["params"]["dir"])
    (folder / "pid").write_text(str(os.getpid()))
    try:
        for _ in range(600):
            time.sleep(0.1)
    except KeyboardInterrupt:
        (folder / "interrupted").write_text("yes")
        raise
    return TrialResult(spec.task_id, score=1.0)


def trial_spec(tmp_path: Path, task_id: int, finetune_epochs: int = 0, **params) -> TrialSpec:
    return TrialSpec(
        ModelSpec("search.zoo:digits_cnn"), DataSpec("digits"), "l1", {},
        Task(task_id, [{"op_names": ["conv2"], "sparse_ratio": 0.5}], params=params).to_json(),
        artifact_dir=str(tmp_path / str(task_id)), settings=TrialSettings(finetune_epochs=finetune_epochs),
    )


def drain(executor: Executor, expected: int, timeout: float = 120.0) -> list[tuple]:
    done: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(done) < expected and time.monotonic() < deadline:
        done += executor.poll(timeout=1.0)
    return done


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray with 2 CPUs for the whole session; the trial functions above travel by value."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle  # Ray's own copy serialises task arguments

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def make_executor(request):
    """``make_executor(trial_fn=None, **kwargs)`` for each backend; shut down after the test."""
    made = []

    def make(trial_fn=None, **kwargs):
        if request.param == "local":
            executor = LocalExecutor(trial_fn=trial_fn, **kwargs)
        else:
            request.getfixturevalue("ray_cluster")
            from workers.executors import RayExecutor

            executor = RayExecutor(trial_fn=trial_fn, **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown()


# -- the contract -----------------------------------------------------------------------------------------


def test_a_real_trial_runs_and_reports_its_result(make_executor, tmp_path):
    events = []
    executor = make_executor(on_progress=lambda handle, event: events.append((handle.trial_id, event["phase"])))
    handle = executor.submit(trial_spec(tmp_path, 0, finetune_epochs=1))
    [(done, result)] = drain(executor, 1)
    assert done is handle and result.ok, result.error
    assert result.sparsity["conv2"] == 0.5 and result.metrics["flops_ratio"] < 1
    assert (tmp_path / "0" / "compact" / "compact.json").is_file()
    assert (0, "prune") in events


def test_a_raising_trial_fails_with_its_traceback_and_the_others_go_on(make_executor, tmp_path):
    executor = make_executor(raising_trial)
    bad = executor.submit(trial_spec(tmp_path, 0, sleep=0.1, **{"raise": True}))
    good = executor.submit(trial_spec(tmp_path, 1, sleep=0.1))
    results = {h.id: r for h, r in drain(executor, 2)}
    assert results[good.id].ok and results[good.id].score == 1.0
    error = results[bad.id].error
    assert error is not None and "Traceback" in error and "RuntimeError: trial 0 exploded" in error
    assert results[bad.id].task_id == 0


def test_a_cancelled_trial_is_never_reported(make_executor, tmp_path):
    executor = make_executor(sleeping_trial)
    first = executor.submit(trial_spec(tmp_path, 0, sleep=0.2))
    second = executor.submit(trial_spec(tmp_path, 1, sleep=30))
    assert executor.cancel(second)
    done = drain(executor, 1)
    assert [h.id for h, _ in done] == [first.id]
    assert executor.poll(timeout=0.5) == []
    assert not executor.cancel(second)


def test_poll_with_nothing_submitted_returns_nothing(make_executor):
    assert make_executor().poll(timeout=0.1) == []


def test_execute_trial_never_raises_for_the_trial(tmp_path):
    result = execute_trial(raising_trial, trial_spec(tmp_path, 4, **{"raise": True}).to_json())
    assert result["error"].strip().endswith("RuntimeError: trial 4 exploded") and result["task_id"] == 4


# -- Ray only -------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_ray_runs_two_trials_in_parallel(ray_cluster, tmp_path):
    from workers.executors import RayExecutor

    meeting = tmp_path / "meeting"
    meeting.mkdir()
    executor = RayExecutor(trial_fn=rendezvous_trial)
    try:
        executor.submit(trial_spec(tmp_path, 0, dir=str(meeting), peers=2))
        executor.submit(trial_spec(tmp_path, 1, dir=str(meeting), peers=2))
        a, b = (r for _, r in drain(executor, 2))
    finally:
        executor.shutdown()
    assert a.worker != b.worker
    assert a.started_at < b.finished_at and b.started_at < a.finished_at, "the two trials did not overlap"
    assert a.metrics["peers_seen"] == b.metrics["peers_seen"] == 2


@pytest.mark.ray
def test_ray_retries_a_trial_whose_worker_was_killed(ray_cluster, tmp_path):
    from workers.executors import RayExecutor

    marker = tmp_path / "killed-once"
    executor = RayExecutor(trial_fn=killing_trial, max_retries=2)
    try:
        executor.submit(trial_spec(tmp_path, 0, marker=str(marker)))
        [(_, result)] = drain(executor, 1)
    finally:
        executor.shutdown()
    assert marker.exists(), "the first attempt did not run"
    assert result.ok and result.score == 1.0
    assert result.worker != marker.read_text(), "the retry ran in the killed process?"


@pytest.mark.ray
def test_ray_poll_returns_a_finished_trial_at_once_while_another_runs(ray_cluster, tmp_path):
    from workers.executors import RayExecutor

    executor = RayExecutor(trial_fn=sleeping_trial)
    delays = []
    try:
        executor.submit(trial_spec(tmp_path, 0, sleep=30))  # keeps running through the whole test
        for task_id in range(1, 6):
            executor.submit(trial_spec(tmp_path, task_id, sleep=0.3))
            [(handle, result)] = executor.poll(timeout=20)
            delays.append(time.time() - result.finished_at)
            assert handle.trial_id == task_id and result.ok
    finally:
        executor.shutdown()
    # poll waits for the first finished trial, not for all or for its 0.25 s polling slice to run out
    assert sorted(delays)[2] < 0.1, f"poll returned {delays} s after the trials finished"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.ray
@pytest.mark.parametrize("force", [False, True])
def test_ray_cancel_interrupts_the_trial_or_kills_its_worker(ray_cluster, tmp_path, force):
    """force=False (a discarded trial): the trial is interrupted and its worker lives on, warm; force=True: the
    worker process is killed (a stuck trial stops too)."""
    from workers.executors import RayExecutor

    executor = RayExecutor(trial_fn=interruptible_trial)
    try:
        handle = executor.submit(trial_spec(tmp_path, 0, dir=str(tmp_path)))
        deadline = time.monotonic() + 60
        while not (tmp_path / "pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((tmp_path / "pid").read_text())
        assert executor.cancel(handle, force=force)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (_alive(pid) if force else not (tmp_path / "interrupted").exists()):
            time.sleep(0.05)
        assert executor.poll(timeout=0.5) == []  # a cancelled trial is never reported
        if force:
            assert not _alive(pid)
        else:
            assert (tmp_path / "interrupted").exists() and _alive(pid)
    finally:
        executor.shutdown()


@pytest.mark.ray
def test_ray_gives_up_after_max_retries(ray_cluster, tmp_path):
    from workers.executors import RayExecutor

    executor = RayExecutor(trial_fn=killing_trial, max_retries=0)
    try:
        executor.submit(trial_spec(tmp_path, 0, marker=str(tmp_path / "m")))
        [(_, result)] = drain(executor, 1)
    finally:
        executor.shutdown()
    assert not result.ok and "worker died" in result.error


@pytest.mark.ray
def test_ray_fails_a_trial_that_runs_past_its_timeout(ray_cluster, tmp_path):
    from workers.executors import RayExecutor

    executor = RayExecutor(trial_fn=sleeping_trial, timeout_s=1.0)
    try:
        started = time.monotonic()
        executor.submit(trial_spec(tmp_path, 0, sleep=60))
        [(_, result)] = drain(executor, 1)
    finally:
        executor.shutdown()
    assert not result.ok and "TimeoutError" in result.error
    assert time.monotonic() - started < 20


@pytest.mark.ray
def test_ray_refuses_a_gpu_request_on_a_cluster_without_gpus(ray_cluster):
    from workers.executors import RayExecutor

    started = time.monotonic()
    with pytest.raises(ExecutorError, match="GPU"):
        RayExecutor(num_gpus_per_trial=1)
    assert time.monotonic() - started < 10


@pytest.mark.ray
def test_run_search_runs_trials_concurrently_on_ray(ray_cluster, tmp_path):
    from workers.executors import RayExecutor
    from workers.local import run_search
    from workers.spec import ExperimentSpec

    spec = ExperimentSpec.from_dict({
        "name": "sa", "model": {"factory": "search.zoo:digits_cnn"}, "data": {"name": "digits"},
        "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
        "algorithm": {"name": "simulated_annealing", "max_trials": 4, "neighbours_per_temperature": 2},
        "trial": {"finetune_epochs": 2, "pretrain_epochs": 1},
        "resources": {"max_concurrent_trials": 2},
    })
    # Warm two workers (a cold one spends seconds importing torch, which would hide the overlap).
    meeting = tmp_path / "warm"
    meeting.mkdir()
    warm = RayExecutor(trial_fn=rendezvous_trial)
    for i in range(2):
        warm.submit(trial_spec(tmp_path / "w", i, dir=str(meeting), peers=2))
    assert len(drain(warm, 2)) == 2
    executor = RayExecutor()
    try:
        outcome = run_search(spec, executor, tmp_path, export_onnx=False)
    finally:
        executor.shutdown()
    trials = outcome.trials
    assert [t.task_id for t in trials] == [0, 1, 2, 3] and all(t.ok for t in trials)
    overlaps = [(a.task_id, b.task_id) for a in trials for b in trials
                if a.task_id < b.task_id and a.started_at < b.finished_at and b.started_at < a.finished_at]
    assert overlaps, "no two trials ran at the same time"
    assert (outcome.best_dir / "compact.json").is_file()


@pytest.mark.ray
def test_netadapt_runs_ahead_on_two_ray_workers_and_trains_what_one_worker_trains(ray_cluster, tmp_path):
    """Real parallel workers: the next iteration's candidates start early, and the trials of the search (and
    so its best) are those one in-process worker trains; discarded ones are cancelled, not counted."""
    from tests.utils import netadapt_run_ahead_spec
    from workers.executors import RayExecutor
    from workers.local import run_search
    from workers.spec import ExperimentSpec

    def spec(slots):
        return ExperimentSpec.from_dict(netadapt_run_ahead_spec(slots))

    one = run_search(spec(1), LocalExecutor(), tmp_path / "one", export_onnx=False)
    events = []
    executor = RayExecutor()
    try:
        two = run_search(spec(2), executor, tmp_path / "two", export_onnx=False, on_event=events.append)
    finally:
        executor.shutdown()
    assert [t.score for t in two.trials] == [t.score for t in one.trials]
    assert [two.params[t.task_id]["ratios"] for t in two.trials] == [one.params[t.task_id]["ratios"] for t in one.trials]
    assert two.best.score == one.best.score and not one.discarded
    assert any(p.get("speculative") for p in two.params.values())
    assert sorted(e["task_id"] for e in events if e["type"] == "trial_discarded") == sorted(two.discarded)
    state = json.loads((tmp_path / "two" / "state.json").read_text())
    assert [t["task_id"] for t in state["trials"]] == [t.task_id for t in two.trials]
    assert {t["task_id"] for t in state["generator"]["tasks"] if t["status"] == "discarded"} == set(two.discarded)
