"""The ``prunesearch`` command: server commands against a real uvicorn server, tokens in a real SQLite
database, ``serve`` as a real process, and ``--help`` without torch or ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service import store
from service.cli import main
from service.db import session_scope, upgrade
from service.states import ExperimentState
from tests.service.api_helpers import add_export, insert_experiment, insert_trials, make_app, set_state, spec
from tests.service.live_server import closed_port, live_server

ROOT = Path(__file__).resolve().parents[2]
#: a stored spec naming its objective metric (the CLI labels scores with it)
ACCURACY_SPEC = spec(objective={"metric": "accuracy", "best_result_mode": "maximize"})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, str]]:
    """``(app, server url, database url)``: one migrated SQLite database served for the module."""
    tmp = tmp_path_factory.mktemp("cli")
    db_url = f"sqlite:///{tmp / 'ps.db'}"
    upgrade(db_url)
    app = make_app(db_url, tmp)
    with live_server(app) as url:
        yield app, url, db_url


@pytest.fixture
def app(env: tuple[Any, str, str]) -> Any:
    return env[0]


@pytest.fixture
def url(env: tuple[Any, str, str]) -> str:
    return env[1]


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRUNESEARCH_URL", "PRUNESEARCH_TOKEN", "PRUNESEARCH_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def spec_file(tmp_path: Path, **overrides: Any) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(**overrides)))
    return str(path)


# -- help and layering -------------------------------------------------------------------------------------


def test_help_lists_every_command_and_imports_neither_torch_nor_ray() -> None:
    code = ("import sys\nfrom service.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('MODULES', sorted(m for m in ('torch', 'ray', 'fastapi', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "MODULES []" in out
    for command in ("serve", "run", "submit", "list", "status", "watch", "download", "cancel", "resume", "token"):
        assert f"    {command} " in out
    module = subprocess.run([sys.executable, "-m", "service.cli", "watch", "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert module.returncode == 0 and "--url" in module.stdout and "PRUNESEARCH_TOKEN" in module.stdout


def test_run_delegates_to_the_local_search(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "run", spec_file(tmp_path, pruner={"name": "l1", "config_list": [
        {"op_types": ["Conv2d"], "sparse_ratio": 2}]}), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "invalid spec" in err and "pruner.config_list[0].sparse_ratio" in err


# -- submit / list / status ----------------------------------------------------------------------------


def test_submit_prints_the_id_and_list_and_status_show_it(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          url: str) -> None:
    code, out, err = run(capsys, "submit", spec_file(tmp_path, name="cli-submitted"), "--url", url,
                         "--max-trials", "3")
    assert code == 0, err
    exp_id = int(out.strip())
    assert f"prunesearch watch {exp_id}" in err
    code, out, _ = run(capsys, "list", "--url", url, "--name", "cli-submitted")
    assert code == 0
    header, rule, row = out.strip().splitlines()
    assert header.split()[:5] == ["id", "name", "state", "algorithm", "trials"]
    assert row.split()[:5] == [str(exp_id), "cli-submitted", "queued", "agp", "0/3"]
    code, out, _ = run(capsys, "status", str(exp_id), "--url", url)
    assert code == 0
    assert f"experiment  {exp_id} (cli-submitted)" in out and "state       queued" in out
    code, out, _ = run(capsys, "status", str(exp_id), "--url", url, "--json")
    assert json.loads(out)["experiment"]["spec"]["name"] == "cli-submitted"


def test_list_filters_limits_and_prints_json(capsys: pytest.CaptureFixture[str], app: Any, url: str) -> None:
    ids = [insert_experiment(app, name=f"listed-{i}", state=ExperimentState.SUCCEEDED) for i in range(3)]
    insert_experiment(app, name="listed-queued")
    code, out, _ = run(capsys, "list", "--url", url, "--name", "listed-", "--state", "succeeded", "--limit", "2")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[2:4]] == [str(ids[2]), str(ids[1])]
    assert lines[-1] == "(2 of 3; --limit 0 shows all)"
    code, out, _ = run(capsys, "list", "--url", url, "--name", "listed-", "--json", "--limit", "0", "--sort", "name")
    assert [e["name"] for e in json.loads(out)] == ["listed-0", "listed-1", "listed-2", "listed-queued"]
    code, out, _ = run(capsys, "list", "--url", url, "--name", "no-such-name")
    assert (code, out.strip()) == (0, "no experiments match")


def test_status_shows_the_best_trial_and_downloads(capsys: pytest.CaptureFixture[str], app: Any, url: str) -> None:
    exp = insert_experiment(app, name="with-best", state=ExperimentState.RUNNING, created_spec=ACCURACY_SPEC)
    insert_trials(app, exp, 4, best=3)
    add_export(app, exp, "pt2", b"x" * 2048)
    set_state(app, exp, ExperimentState.SUCCEEDED)
    code, out, _ = run(capsys, "status", str(exp), "--url", url)
    assert code == 0
    assert "best trial  3: accuracy 0.7500, FLOPs ratio 0.625" in out
    assert "downloads   pt2 (2,048 B)" in out


def test_an_invalid_spec_exits_2_with_the_field_path(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     url: str) -> None:
    bad = spec_file(tmp_path, pruner={"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 1.5}]})
    code, out, err = run(capsys, "submit", bad, "--url", url)
    assert (code, out) == (2, "")
    assert "rejected the request (422)" in err and "  spec.pruner.config_list[0].sparse_ratio: " in err
    code, _, err = run(capsys, "submit", str(tmp_path / "missing.yaml"), "--url", url)
    assert code == 2 and "spec file not found" in err


def test_not_found_and_conflicts_exit_1_with_the_servers_message(capsys: pytest.CaptureFixture[str], app: Any,
                                                                  url: str) -> None:
    code, _, err = run(capsys, "status", "424242", "--url", url)
    assert code == 1 and "404 experiment 424242 not found" in err
    done = insert_experiment(app, state=ExperimentState.SUCCEEDED)
    code, _, err = run(capsys, "cancel", str(done), "--url", url)
    assert code == 1 and "409" in err and "succeeded" in err


def test_an_unreachable_server_exits_1_with_a_hint(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNESEARCH_URL", f"http://127.0.0.1:{closed_port()}")  # --url defaults to the env
    code, _, err = run(capsys, "list")
    assert code == 1 and "cannot reach" in err and "PRUNESEARCH_URL" in err


def test_cancel_and_resume_print_the_new_state(capsys: pytest.CaptureFixture[str], app: Any, url: str) -> None:
    exp = insert_experiment(app)
    assert run(capsys, "cancel", str(exp), "--url", url)[:2] == (0, f"experiment {exp}: cancelled\n")
    assert run(capsys, "resume", str(exp), "--url", url)[:2] == (0, f"experiment {exp}: queued\n")


# -- watch / download -----------------------------------------------------------------------------------------


def _finish_soon(app: Any, exp: int, to: ExperimentState, n: int = 2) -> Any:
    import threading

    def later() -> None:
        time.sleep(0.3)
        failed = to is ExperimentState.FAILED
        insert_trials(app, exp, n, best=n - 1, failed=(0,) if failed else ())
        if failed:  # what the runner sends for a trial that raised
            with session_scope(app.state.session_factory) as s:
                store.append_event(s, exp, "trial_failed", {"number": 0, "attempt": 1, "error": "ValueError: boom"})
        set_state(app, exp, to)

    thread = threading.Thread(target=later)
    thread.start()
    return thread


def test_watch_follows_to_success_and_exits_0(capsys: pytest.CaptureFixture[str], app: Any, url: str) -> None:
    exp = insert_experiment(app, name="watched", state=ExperimentState.RUNNING, created_spec=ACCURACY_SPEC)
    writer = _finish_soon(app, exp, ExperimentState.SUCCEEDED)
    code, out, err = run(capsys, "watch", str(exp), "--url", url, "--timeout", "20")
    writer.join()
    assert code == 0, err
    assert out.strip() == f"experiment {exp} succeeded: 2 trials; best trial 1, accuracy 0.5000, FLOPs ratio 0.750"
    assert "trial 1 finished" in err and "experiment succeeded" in err


def test_watch_exits_1_when_the_experiment_failed(capsys: pytest.CaptureFixture[str], app: Any, url: str) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    writer = _finish_soon(app, exp, ExperimentState.FAILED)
    code, out, err = run(capsys, "watch", str(exp), "--url", url, "--timeout", "20")
    writer.join()
    assert code == 1
    assert f"experiment {exp} failed" in out and "trial 0 failed: ValueError: boom" in err


def test_submit_wait_returns_the_experiments_outcome(capsys: pytest.CaptureFixture[str], app: Any, url: str,
                                                      tmp_path: Path) -> None:
    import threading

    def finish_the_new_one() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = httpx.get(f"{url}/api/v1/experiments", params={"q": "submit-wait"}).json()["data"]
            if found:
                set_state(app, found[0]["id"], ExperimentState.CANCELLED)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=finish_the_new_one)
    thread.start()
    code, out, _ = run(capsys, "submit", spec_file(tmp_path, name="submit-wait"), "--url", url, "--wait", "-q")
    thread.join()
    exp_id = out.splitlines()[0]
    assert code == 1 and out.splitlines()[1] == f"experiment {exp_id} cancelled: 0 trials"


def test_download_writes_the_file_and_reports_a_missing_format(capsys: pytest.CaptureFixture[str], app: Any,
                                                               url: str, tmp_path: Path) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 1, best=0)
    add_export(app, exp, "safetensors", b"\x01\x02" * 5000)
    target = tmp_path / "models" / "best.safetensors"
    code, out, err = run(capsys, "download", str(exp), "--format", "safetensors", "-o", str(target), "--url", url)
    assert code == 0, err
    assert out.strip() == str(target) and target.read_bytes() == b"\x01\x02" * 5000
    assert "10,000 bytes" in err
    code, _, err = run(capsys, "download", str(exp), "-o", str(tmp_path), "--url", url)
    assert code == 1 and "no pt2 export" in err


# -- tokens ------------------------------------------------------------------------------------------------------


def test_tokens_created_in_the_database_guard_the_api(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'fresh' / 'tokens.db'}"  # not even created yet: token create migrates it
    code, out, err = run(capsys, "token", "create", "ci", "--db-url", db_url)
    assert code == 0 and "shown only this once" in err
    token = out.strip()
    assert token.startswith("ps_") and len(token) > 40
    code, out, _ = run(capsys, "token", "list", "--db-url", db_url)
    assert code == 0 and token[:8] in out and token not in out and " ci " in out
    app = make_app(db_url, tmp_path)
    with live_server(app) as url:
        code, _, err = run(capsys, "submit", spec_file(tmp_path), "--url", url)
        assert code == 1 and "401" in err and "--token" in err
        code, out, err = run(capsys, "submit", spec_file(tmp_path), "--url", url, "--token", token)
        assert code == 0, err
        exp_id = out.strip()
        listed = json.loads(run(capsys, "token", "list", "--db-url", db_url, "--json")[1])
        assert listed[0]["last_used_at"] is not None and listed[0]["revoked_at"] is None
        assert run(capsys, "token", "revoke", str(listed[0]["id"]), "--db-url", db_url)[0] == 0
        code, _, err = run(capsys, "cancel", exp_id, "--url", url, "--token", token)
        assert code == 1 and "403" in err and "revoked" in err
    assert run(capsys, "token", "revoke", "999", "--db-url", db_url)[0] == 1


def test_token_commands_read_the_database_url_from_the_environment(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNESEARCH_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert run(capsys, "token", "create", "from-env")[0] == 0
    assert (tmp_path / "env.db").exists()
    code, _, err = run(capsys, "token", "list", "--db-url", "mysql://nope/x")
    assert code == 2 and "unsupported driver" in err


# -- serve -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_runs_the_api_until_sigterm(tmp_path: Path, workers: int) -> None:
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNESEARCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--db-url",
         f"sqlite:///{tmp_path / 'served.db'}", "--artifacts-dir", str(tmp_path / "art"), "--no-runner",
         "--log-level", "info", "--workers", str(workers)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline, health = time.monotonic() + 45, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, proc.stderr.read() if proc.poll() is not None else ""
        assert health.json()["database"] == "ok"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully, then re-raises the signal it caught so the parent sees it
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    assert (tmp_path / "served.db").exists()
    assert "runner off" in err and str(tmp_path / "art") in err
    # the flags reach every worker process (each opened the database given by --db-url)
    assert err.count("Started server process") == workers, err


def test_serve_rejects_a_bad_setting_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "serve", "--max-concurrent-trials", "0")
    assert code == 2 and "PRUNESEARCH_MAX_CONCURRENT_TRIALS" in err
    code, _, err = run(capsys, "serve", "--workers", "0")
    assert code == 2 and "--workers" in err
