"""``/healthz``, ``/metrics``, the OpenAPI document, and the lifespan (migrations, the runner thread)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.db import make_session_factory
from service.states import ExperimentState
from tests.service.api_helpers import insert_experiment, insert_trials, make_app, make_settings

API = "/api/v1"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_healthz_reports_the_database(db_url: str, tmp_path: Path) -> None:
    app = make_app(db_url, tmp_path)
    with TestClient(app) as client:
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["database"] == "ok"
        # the database goes away (a real refused connection: nothing listens on port 1)
        app.state.session_factory = make_session_factory(
            sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2}))
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["detail"].startswith("database unreachable")


def test_metrics_count_experiments_and_trials_by_state_and_time_requests(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path)
    with TestClient(app) as client:
        insert_experiment(app)
        exp = insert_experiment(app, state=ExperimentState.RUNNING)
        insert_trials(app, exp, 3, failed=(0,))
        assert client.get(f"{API}/experiments/{exp}").status_code == 200
        assert client.get(f"{API}/experiments/999").status_code == 404
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)
    assert samples[("prunesearch_experiments", (("state", "queued"),))] == 1
    assert samples[("prunesearch_experiments", (("state", "running"),))] == 1
    assert samples[("prunesearch_experiments", (("state", "failed"),))] == 0
    assert samples[("prunesearch_trials", (("state", "succeeded"),))] == 2
    assert samples[("prunesearch_trials", (("state", "failed"),))] == 1
    for status in ("200", "404"):
        key = ("prunesearch_http_request_duration_seconds_count",
               (("method", "GET"), ("operation", "getExperiment"), ("status", status)))
        assert samples[key] == 1, key
    assert not any(name == "prunesearch_runner_heartbeat_age_seconds" for name, _ in samples)


def test_lifespan_migrates_and_runs_the_runner_thread(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path, runner=True, lease_seconds=3.0)
    app = create_app(settings)
    with TestClient(app) as client:
        runner = app.state.runner
        assert runner is not None
        deadline = time.monotonic() + 20
        while runner.last_step_monotonic is None:
            assert time.monotonic() < deadline, "the runner never stepped"
            time.sleep(0.05)
        age = _samples(client.get("/metrics").text)[("prunesearch_runner_heartbeat_age_seconds", ())]
        assert 0 <= age < 10
    assert app.state.runner is None  # stopped with the app


def test_openapi_has_stable_operation_ids(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path)
    doc: dict[str, Any] = TestClient(app).get(f"{API}/openapi.json").json()
    ops = {op["operationId"]: (method.upper(), path) for path, item in doc["paths"].items()
           for method, op in item.items()}
    assert ops == {
        "createExperiment": ("POST", "/api/v1/experiments"),
        "listExperiments": ("GET", "/api/v1/experiments"),
        "getExperiment": ("GET", "/api/v1/experiments/{experiment_id}"),
        "cancelExperiment": ("POST", "/api/v1/experiments/{experiment_id}/cancel"),
        "resumeExperiment": ("POST", "/api/v1/experiments/{experiment_id}/resume"),
        "deleteExperiment": ("DELETE", "/api/v1/experiments/{experiment_id}"),
        "listTrials": ("GET", "/api/v1/experiments/{experiment_id}/trials"),
        "getTrial": ("GET", "/api/v1/experiments/{experiment_id}/trials/{number}"),
        "getBestTrial": ("GET", "/api/v1/experiments/{experiment_id}/best"),
        "downloadBestModel": ("GET", "/api/v1/experiments/{experiment_id}/best/model"),
        "streamEvents": ("GET", "/api/v1/experiments/{experiment_id}/events"),
        "uploadModel": ("POST", "/api/v1/models"),
        "listModels": ("GET", "/api/v1/models"),
        "getCatalog": ("GET", "/api/v1/catalog"),
        "healthz": ("GET", "/healthz"),
        "metrics": ("GET", "/metrics"),
    }
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
