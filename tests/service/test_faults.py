"""Faults with real processes: the server killed with ``kill -9`` mid-experiment, a Ray worker killed
mid-trial, a trial that raises.

Every test starts ``prunesearch serve`` (``python -m service.cli serve``) as a subprocess and talks to
it over HTTP; the database is a real SQLite file or PostgreSQL (``db_url`` gives a fresh schema per
test, and the server process connects to it through the same URL). The spec is the README's example
(``examples/digits-agp.yaml``) with a smaller budget.

How a start is counted: the runner's trial function appends one line to ``trials/.<n>.starts``
(beside the trial's artifact folder) each time trial ``n`` starts, on whichever process runs it
(:mod:`service.runner_trial`), so the files tell how often each trial really ran, whoever ran it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service import db, store
from service.runner_trial import count_starts, starts_file
from service.states import TrialState
from tests.service.procs import REPO_ROOT, ServerProcess, SseEvent, running_server, sse_events, wait_until

EXAMPLE = REPO_ROOT / "examples" / "digits-agp.yaml"
TIMEOUT_S = 180.0  # generous: the machine is shared; a quiet run of each test takes 15-30 s


def small_spec(*, iterations: int = 3, finetune_epochs: int = 1, name: str = "faults") -> dict[str, Any]:
    """The README example with a small budget: pretrain 1 epoch, AGP ``iterations``, short finetunes."""
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["name"] = name
    spec["algorithm"]["total_iteration"] = iterations
    spec["trial"].update(pretrain_epochs=1, finetune_epochs=finetune_epochs)
    return spec


def submit(client: httpx.Client, spec: dict[str, Any]) -> int:
    created = client.post("/experiments", json={"spec": spec})
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def follow_to_end(client: httpx.Client, exp_id: int, timeout: float = TIMEOUT_S) -> list[SseEvent]:
    """Every event of the experiment from the first, until ``end``."""
    events = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/experiments/{exp_id}/events", timeout=httpx.Timeout(30, read=timeout)) as resp:
        assert resp.status_code == 200
        for event in sse_events(resp):
            events.append(event)
            if event.event == "end" or time.monotonic() > deadline:
                break
    assert events and events[-1].event == "end", f"no end after {timeout} s: {events[-3:]}"
    return events


def trials_over_http(client: httpx.Client, exp_id: int) -> dict[int, dict[str, Any]]:
    body = client.get(f"/experiments/{exp_id}/trials", params={"limit": 500}).json()
    return {row["number"]: row for row in body["data"]}


def trials_in_sql(url: str, exp_id: int) -> dict[int, Any]:
    factory = db.make_session_factory(url)
    try:
        with db.session_scope(factory) as s:
            return {t.number: t for t in store.get_trials(s, exp_id)}
    finally:
        factory.kw["bind"].dispose()


def finished_numbers(events: list[SseEvent]) -> list[int]:
    return sorted(e.data["number"] for e in events if e.event == "trial_finished")


# -- kill -9 the server ---------------------------------------------------------------------------------


def test_a_server_killed_mid_experiment_is_restarted_and_the_experiment_completes_without_losing_or_repeating_a_trial(
        db_url, tmp_path):
    """``kill -9`` the server after trial 0 was committed and while trial 1 trains; start it again.

    The kill comes when the event stream shows trial 1 entering its finetune (3 epochs: a second or
    more of the trial is left, while events reach the stream within ~0.5 s), so the server dies
    mid-trial. The killed server's lease (2 s here) expires and the new server takes the experiment
    over from what SQL holds: the committed trials stay as they were (same score, same finish time,
    started once), the interrupted trial runs again as attempt 2, and every trial finishes once.
    """
    server = ServerProcess(tmp_path / "server", db_url, env={"PRUNESEARCH_LEASE_SECONDS": "2"})
    try:
        server.start()
        with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as client:
            exp_id = submit(client, small_spec(iterations=2, finetune_epochs=3))
            with client.stream("GET", f"/experiments/{exp_id}/events",
                               timeout=httpx.Timeout(30, read=TIMEOUT_S)) as stream:
                for event in sse_events(stream):
                    assert event.event != "end", "the experiment ended before the server was killed"
                    if event.event == "trial_progress" and event.data["number"] >= 1 \
                            and event.data.get("phase") == "finetune":
                        break
        server.kill9()

        before = trials_in_sql(db_url, exp_id)
        committed = {n: (t.score, t.finished_at, t.attempt) for n, t in before.items()
                     if t.state is TrialState.SUCCEEDED}
        interrupted = [n for n, t in before.items() if t.state is TrialState.RUNNING]
        assert {-1, 0} <= set(committed) and len(interrupted) == 1, {n: t.state for n, t in before.items()}
        trials_dir = server.workdir / "artifacts" / "experiments" / str(exp_id) / "trials"
        assert count_starts(trials_dir / str(interrupted[0])) == 1  # it had started when the server died

        server.start()  # same database, same artifacts
        with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as client:
            events = follow_to_end(client, exp_id)
            exp = client.get(f"/experiments/{exp_id}").json()
            best = client.get(f"/experiments/{exp_id}/best").json()
    except BaseException:
        sys.stderr.write(f"\n=== server logs ===\n{server.log_tail()}\n")
        raise
    finally:
        server.stop()

    assert exp["state"] == "succeeded", exp["error"]
    after = trials_in_sql(db_url, exp_id)
    assert sorted(after) == [-1, 0, 1] and all(t.state is TrialState.SUCCEEDED for t in after.values())
    # nothing committed before the kill was lost or run again
    assert {n: (after[n].score, after[n].finished_at, after[n].attempt) for n in committed} == committed
    for n in committed:
        assert count_starts(trials_dir / ("pretrain" if n == -1 else str(n))) == 1, n
    # the trial that was running when the server died ran again; the rest ran once
    (n_interrupted,) = interrupted
    assert after[n_interrupted].attempt == 2 and count_starts(trials_dir / str(n_interrupted)) == 2
    for n in set(after) - set(committed) - {n_interrupted}:
        assert after[n].attempt == 1 and count_starts(trials_dir / str(n)) == 1, n
    assert starts_file(trials_dir / str(n_interrupted)).read_text().count("\n") == 2
    # the events of both server lives: every trial finished exactly once
    assert finished_numbers(events) == [-1, 0, 1]
    assert exp["n_trials"] == 3 and best["trial"]["number"] == exp["best_trial_number"]
    assert {e["format"] for e in best["exports"]} >= {"pt2", "onnx", "safetensors"}


# -- a trial that raises --------------------------------------------------------------------------------


def test_a_trial_that_raises_is_failed_with_its_traceback_and_the_search_goes_on(tmp_path):
    """Trial 1 cannot use its artifact folder (a file sits where the folder goes), so ``run_trial`` raises.

    No mock: the experiment runs the real trial code in the real server. A spec over REST may name
    only catalog models and pruners, and no accepted spec was found that fails at run time for one
    AGP iteration only (pruning a layer 100 % keeps one channel; a failed speedup falls back to the
    masked model), so the fault is put in the trial's environment instead: ``workers.trial.run_trial``
    starts by clearing its folder (``shutil.rmtree``), which raises ``NotADirectoryError`` on a file.
    The experiment is the first in a fresh database, so its id (1) and the folder are known before
    it is submitted.
    """
    artifacts = tmp_path / "server" / "artifacts"
    blocker = artifacts / "experiments" / "1" / "trials" / "1"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder\n")
    with running_server(tmp_path / "server", db_url=f"sqlite:///{tmp_path / 'ps.db'}") as server, \
            httpx.Client(base_url=server.url + "/api/v1", timeout=30) as client:
        exp_id = submit(client, small_spec(iterations=3, finetune_epochs=0))
        assert exp_id == 1
        events = follow_to_end(client, exp_id)
        exp = client.get(f"/experiments/{exp_id}").json()
        rows = trials_over_http(client, exp_id)
        failed = client.get(f"/experiments/{exp_id}/trials/1")
        best = client.get(f"/experiments/{exp_id}/best").json()

    assert exp["state"] == "succeeded" and exp["error"] is None
    assert {n: r["state"] for n, r in rows.items()} == {-1: "succeeded", 0: "succeeded", 1: "failed",
                                                         2: "succeeded"}
    assert failed.status_code == 200, failed.text
    error = failed.json()["error"]
    assert error.startswith("Traceback (most recent call last):") and "run_trial" in error
    assert "NotADirectoryError" in error and str(blocker) in error
    assert failed.json()["score"] is None and rows[1]["error"] == error
    assert rows[2]["parent_number"] == 0  # AGP went on from the last good trial
    (event,) = [e.data for e in events if e.event == "trial_failed"]
    assert event["number"] == 1 and event["error"].startswith("NotADirectoryError")
    assert exp["n_trials"] == 4 and best["trial"]["number"] in (0, 2)


# -- a Ray worker killed mid-trial ----------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` fields after the command name (state, ppid, ...), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _identity(pid: int) -> tuple[int, str] | None:
    """``(pid, start time)``: a pid the system reuses later has another start time."""
    fields = _stat(pid)
    return (pid, fields[19]) if fields else None


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@pytest.fixture
def ray_server(tmp_path) -> Iterator[ServerProcess]:
    """A server whose runner starts its own local Ray (``PRUNESEARCH_RAY_ADDRESS=local``).

    When it is stopped, the Ray processes it started (GCS, raylet, workers) go with it; any still
    there a second later is killed by pid (checked against its start time, so a reused pid is left
    alone): they are this test's own processes.
    """
    env = {"PRUNESEARCH_RAY_ADDRESS": "local", "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    server = ServerProcess(tmp_path / "server", f"sqlite:///{tmp_path / 'ps.db'}", env=env)
    try:
        server.start()
        yield server
    except BaseException:
        sys.stderr.write(f"\n=== server log ===\n{server.log_tail()}\n")
        raise
    finally:
        alive = server.proc is not None and server.proc.poll() is None
        family = {i for pid in (_descendants(server.pid) if alive else ()) if (i := _identity(pid))}
        server.stop(timeout=90)
        time.sleep(1.0)
        for pid, started in family:
            if _identity(pid) == (pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # ~45-70 s: a local Ray starts in the server, and each new worker imports torch
@pytest.mark.ray
def test_a_ray_worker_killed_mid_trial_is_retried_and_the_attempt_recorded(ray_server):
    """``kill -9`` the Ray worker process that runs trial 0, from outside, while it trains.

    The worker's pid is in the trial's start marker (written by the worker when the trial starts);
    it must be one of the server's own descendants (a Ray the server started, not someone else's
    cluster) before it is killed. Ray restarts the task (``resources.max_retries``, default 2):
    trial 0 succeeds as attempt 2 on another worker process, and the search goes on.
    """
    spec = small_spec(iterations=2, finetune_epochs=4)
    trials_dir = ray_server.workdir / "artifacts" / "experiments" / "1" / "trials"
    with httpx.Client(base_url=ray_server.url + "/api/v1", timeout=30) as client:
        exp_id = submit(client, spec)
        assert exp_id == 1

        def started_once() -> str | None:
            marker = starts_file(trials_dir / "0")
            text = marker.read_text() if marker.exists() else ""
            return text if text.endswith("\n") and text.count("\n") == 1 else None

        line = wait_until(started_once, TIMEOUT_S, "trial 0 to start on a Ray worker", poll_s=0.05)
        worker_pid = int(line.split()[0].rsplit(":", 1)[1])
        assert worker_pid != ray_server.pid and worker_pid in _descendants(ray_server.pid), (
            f"trial 0 runs in pid {worker_pid}, not a process of this test's server: did "
            "PRUNESEARCH_RAY_ADDRESS=local join another Ray cluster running on this machine?")
        os.kill(worker_pid, signal.SIGKILL)

        events = follow_to_end(client, exp_id)
        exp = client.get(f"/experiments/{exp_id}").json()
        rows = trials_over_http(client, exp_id)

    assert exp["state"] == "succeeded", exp["error"]
    assert {n: r["state"] for n, r in rows.items()} == {-1: "succeeded", 0: "succeeded", 1: "succeeded"}
    assert rows[0]["attempt"] == 2 and count_starts(trials_dir / "0") == 2
    assert rows[1]["attempt"] == 1 and rows[-1]["attempt"] == 1
    assert int(rows[0]["worker"].rsplit(":", 1)[1]) not in (worker_pid, ray_server.pid)
    assert finished_numbers(events) == [-1, 0, 1]
