"""The UI's server side (``service.api.web``) over HTTP, without a browser: pages, static files,
the experiment snapshot and the YAML parser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import store
from service.api import web
from service.db import session_scope
from service.states import ExperimentState, TrialState
from tests.service.api_helpers import create_token, make_app
from tests.web.conftest import with_web

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return with_web(make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path))


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/experiments", "/experiments/new", "/experiments/42"])
def test_spa_routes_serve_index_html(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="/static/app.js">' in r.text


def test_index_preloads_every_module(client: TestClient) -> None:
    # the modules import each other: without a preload each import level is one more round trip
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/([\w.]+)">', client.get("/").text))
    assert preloaded == {path.name for path in web.default_web_dir().glob("*.js")}


def test_unknown_pages_are_404(client: TestClient) -> None:
    assert client.get("/experiments/abc").status_code == 404
    assert client.get("/nope").status_code == 404


def test_static_files_revalidate_with_etag(client: TestClient) -> None:
    r = client.get("/static/app.js")
    assert r.status_code == 200
    assert "javascript" in r.headers["content-type"]
    assert r.headers["cache-control"] == "no-cache"
    again = client.get("/static/app.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("path", ["/static/../service/app.py", "/static/%2e%2e/service/app.py", "/static/nope.js"])
def test_static_files_cannot_leave_the_web_directory(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def _experiment_with_trials(app: Any) -> int:
    with session_scope(app.state.session_factory) as s:
        exp = store.create_experiment(s, spec={"name": "snap"}, name="snap", algorithm="agp",
                                      model="search.zoo:digits_cnn", max_trials=3)
        store.set_experiment_state(s, exp, ExperimentState.RUNNING)
        for i, (state, score) in enumerate([(TrialState.SUCCEEDED, 0.5), (TrialState.FAILED, None),
                                            (TrialState.SUCCEEDED, float("nan"))]):
            store.record_trial_result(s, exp.id, number=i, state=state, generator_state=None, score=score,
                                      metrics={"flops_ratio": 0.25 * (i + 1)} if score is not None else {})
        store.upsert_trial(s, exp.id, number=3, state=TrialState.RUNNING)
        return exp.id


def test_snapshot_has_every_trial_point_and_the_last_event_id(app: Any, client: TestClient) -> None:
    experiment_id = _experiment_with_trials(app)
    r = client.get(f"/ui/experiments/{experiment_id}/snapshot")
    assert r.status_code == 200
    body = r.json()
    assert body["experiment"]["id"] == experiment_id and body["experiment"]["state"] == "running"
    assert body["points"] == {
        "number": [0, 1, 2, 3],
        "state": ["succeeded", "failed", "succeeded", "running"],
        "score": [0.5, None, None, None],  # NaN scores are stored as NULL
        "flops_ratio": [0.25, None, 0.75, None],
    }
    with session_scope(app.state.session_factory) as s:
        last_id = store.events_after(s, experiment_id)[-1].id
    assert body["last_event_id"] == last_id


def test_snapshot_of_a_missing_experiment_is_404(client: TestClient) -> None:
    assert client.get("/ui/experiments/999/snapshot").status_code == 404


def test_snapshot_needs_a_token_when_reads_do(tmp_path: Path) -> None:
    app = with_web(make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path))
    app.state.auth_policy.auth_read = True
    with TestClient(app) as client:
        experiment_id = _experiment_with_trials(app)
        _, token = create_token(app)
        assert client.get(f"/ui/experiments/{experiment_id}/snapshot").status_code == 401
        ok = client.get(f"/ui/experiments/{experiment_id}/snapshot", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200


def test_parse_yaml_gives_the_spec_and_the_line_of_every_path(client: TestClient) -> None:
    text = "name: x\npruner:\n  name: l1\n  config_list:\n    - op_types: [Conv2d]\n      sparse_ratio: 1.5\nwhen: 2024-01-02\n"
    r = client.post("/ui/spec/parse", json={"text": text})
    assert r.status_code == 200
    body = r.json()
    assert body["spec"] == {"name": "x", "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 1.5}]},
                            "when": "2024-01-02"}
    assert body["lines"]["pruner.config_list[0].sparse_ratio"] == 6
    assert body["lines"]["pruner.config_list[0]"] == 5
    assert body["lines"]["pruner.config_list[0].op_types[0]"] == 5


@pytest.mark.parametrize(("text", "line", "needle"), [
    ("name: x\npruner: [1, 2\n", 3, "expected ',' or ']'"),
    ("a: &x [1]\nb: *x\n", 2, "aliases"),
    ("a: .nan\n", 1, "not a number JSON can hold"),
])
def test_parse_yaml_rejects_bad_text_at_its_line(client: TestClient, text: str, line: int, needle: str) -> None:
    r = client.post("/ui/spec/parse", json={"text": text})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "text"]
    assert needle in error["msg"]
    assert error["ctx"]["line"] == line


def test_parse_yaml_limits_the_text_size(client: TestClient) -> None:
    r = client.post("/ui/spec/parse", json={"text": "a: 1\n" * (web.MAX_SPEC_TEXT // 4)})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "text"]
