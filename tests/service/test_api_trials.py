"""Trials (list, sort, paginate, one with its log), the best trial and the best model's downloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import store
from service.db import session_scope
from service.models import Trial, utcnow
from service.schemas import Page, TrialPublic
from service.states import ExperimentState, TrialState
from tests.service.api_helpers import add_export, errors_at, insert_experiment, insert_trials, make_app

API = "/api/v1"


@pytest.fixture
def app(db_url: str, tmp_path: Any) -> Any:
    return make_app(db_url, tmp_path)


@pytest.fixture
def sqlite_app(tmp_path: Any) -> Any:
    return make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_app: Any) -> Iterator[TestClient]:
    with TestClient(sqlite_app) as c:
        yield c


def _all_pages(client: TestClient, url: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = client.get(url, params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        rows += page.json()["data"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return rows
    raise AssertionError("pagination does not end")


# -- GET /experiments/{id}/trials -------------------------------------------------------------------------


def test_trials_page_through_every_sort_without_gaps(app: Any, client: TestClient) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 12, failed=(3,))
    url = f"{API}/experiments/{exp}/trials"
    assert client.get(url, params={"limit": 5}).json()["count"] == 12
    numbers = [t["number"] for t in _all_pages(client, url, limit=5)]
    assert numbers == list(range(12))
    assert [t["number"] for t in _all_pages(client, url, limit=5, sort="-number")] == list(range(11, -1, -1))
    by_score = [t["number"] for t in _all_pages(client, url, limit=4, sort="-score")]
    assert by_score == [n for n in range(11, -1, -1) if n != 3] + [3]  # no score (failed) comes last
    assert [t["number"] for t in _all_pages(client, url, limit=5, sort="flops_ratio")] == list(range(11, -1, -1))
    assert [t["number"] for t in _all_pages(client, url, limit=5, sort="duration_s")] == list(range(11, -1, -1))


def test_trials_filter_by_state(app: Any, client: TestClient) -> None:
    exp = insert_experiment(app)
    insert_trials(app, exp, 5, failed=(1, 4))
    page = client.get(f"{API}/experiments/{exp}/trials", params={"state": "failed"}).json()
    assert page["count"] == 2 and [t["number"] for t in page["data"]] == [1, 4]
    assert page["data"][0]["error"].startswith("Traceback")
    both = client.get(f"{API}/experiments/{exp}/trials", params={"state": ["failed", "succeeded"]}).json()
    assert both["count"] == 5
    with session_scope(app.state.session_factory) as s:  # a task run ahead of a decision, then discarded
        store.upsert_trial(s, exp, number=2, state=TrialState.DISCARDED, error="discarded: ran ahead from task 0")
    page = client.get(f"{API}/experiments/{exp}/trials", params={"state": "discarded"}).json()
    assert page["count"] == 1 and page["data"][0]["state"] == "discarded"
    assert page["data"][0]["error"] == "discarded: ran ahead from task 0"
    bad = client.get(f"{API}/experiments/{exp}/trials", params={"state": "dropped"})
    assert bad.status_code == 422 and "discarded" in bad.text


def test_a_listed_page_is_never_stale_after_a_trial_is_written(app: Any, client: TestClient) -> None:
    """Pages are served from a cache keyed on the experiment's trials version, which every write bumps."""
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 6)
    url = f"{API}/experiments/{exp}/trials"

    def page(**params: Any) -> dict[str, Any]:
        body = client.get(url, params={"limit": 3, "sort": "-score", **params}).json()
        return {"count": body["count"], "scores": [(t["number"], t["score"]) for t in body["data"]],
                "next_cursor": body["next_cursor"]}

    first = page()
    second = page(cursor=first["next_cursor"])
    assert page() == first and page(cursor=first["next_cursor"]) == second  # served again (from the cache)
    with session_scope(app.state.session_factory) as s:  # through the store
        store.upsert_trial(s, exp, number=1, state=TrialState.SUCCEEDED, score=0.99)
    assert page()["scores"][0] == (1, 0.99) and page()["count"] == 6
    with session_scope(app.state.session_factory) as s:  # and behind its back: raw SQL
        s.execute(sa.text("UPDATE trials SET score = 0.995 WHERE experiment_id = :e AND number = 4"), {"e": exp})
        s.execute(sa.insert(Trial.__table__), [{"experiment_id": exp, "number": 9, "attempt": 1, "params": {},
                                                "metrics": {}, "state": "pending", "created_at": utcnow()}])
    assert page()["scores"][0] == (4, 0.995) and page()["count"] == 7
    with session_scope(app.state.session_factory) as s:
        s.execute(sa.delete(Trial).where(Trial.experiment_id == exp, Trial.number == 9))
    assert page()["count"] == 6


def test_the_trial_list_is_exactly_what_the_response_model_would_write(app: Any, client: TestClient) -> None:
    """The list route writes its JSON itself; it must equal FastAPI's (pydantic) rendering, field by field."""
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 5, failed=(2,))
    with session_scope(app.state.session_factory) as s:
        store.upsert_trial(s, exp, number=7, state=TrialState.RUNNING, params={"x": [1, 2.5]}, worker="héllo\u2028")
        rows = store.get_trials(s, exp)
    expected = Page[TrialPublic](data=[TrialPublic.model_validate(t) for t in rows], count=len(rows), next_cursor=None)
    response = client.get(f"{API}/experiments/{exp}/trials", params={"limit": 50})
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(expected.model_dump_json())
    assert [list(t) for t in response.json()["data"]] == [list(TrialPublic.model_fields)] * len(rows)
    assert response.json()["data"][-1]["started_at"].endswith("Z")  # aware UTC as pydantic writes it


def test_trials_of_unknown_experiment_and_bad_queries(sqlite_client: TestClient) -> None:
    assert sqlite_client.get(f"{API}/experiments/77/trials").status_code == 404
    exp_url = f"{API}/experiments/{sqlite_client.post(f'{API}/experiments', json={'spec': _spec()}).json()['id']}"
    assert ["query", "cursor"] in errors_at(sqlite_client.get(f"{exp_url}/trials", params={"cursor": "eyJ4IjoxfQ"}))
    assert ["query", "sort"] in errors_at(sqlite_client.get(f"{exp_url}/trials", params={"sort": "accuracy"}))
    assert ["query", "limit"] in errors_at(sqlite_client.get(f"{exp_url}/trials", params={"limit": 0}))


def _spec() -> dict[str, Any]:
    from tests.service.api_helpers import spec

    return spec()


# -- GET /experiments/{id}/trials/{n} ----------------------------------------------------------------------


def test_trial_comes_with_the_tail_of_its_log(sqlite_app: Any, sqlite_client: TestClient) -> None:
    exp = insert_experiment(sqlite_app)
    insert_trials(sqlite_app, exp, 2)
    log = sqlite_app.state.artifacts.trial_dir(exp, 1) / "trial.log"
    log.parent.mkdir(parents=True)
    lines = [f"line {i:05d}" for i in range(2000)]
    log.write_text("\n".join(lines) + "\n")
    full = sqlite_client.get(f"{API}/experiments/{exp}/trials/1").json()
    assert full["number"] == 1 and full["metrics"]["accuracy"] == 0.5 and full["log_truncated"] is False
    assert full["log"].splitlines() == lines and full["log_size"] == log.stat().st_size
    tail = sqlite_client.get(f"{API}/experiments/{exp}/trials/1", params={"log_bytes": 100}).json()
    assert tail["log_truncated"] is True and tail["log_size"] == full["log_size"]
    assert tail["log"].endswith("line 01999\n") and tail["log"].splitlines()[0] in lines  # starts at a whole line
    no_log = sqlite_client.get(f"{API}/experiments/{exp}/trials/0").json()
    assert no_log["log"] is None and no_log["log_truncated"] is False


def test_unknown_trial_is_404_and_bounds_are_422(sqlite_app: Any, sqlite_client: TestClient) -> None:
    exp = insert_experiment(sqlite_app)
    insert_trials(sqlite_app, exp, 1)
    r = sqlite_client.get(f"{API}/experiments/{exp}/trials/5")
    assert r.status_code == 404 and r.json() == {"detail": f"experiment {exp} has no trial 5"}
    assert sqlite_client.get(f"{API}/experiments/999/trials/0").status_code == 404
    assert errors_at(sqlite_client.get(f"{API}/experiments/{exp}/trials/-2")) == [["path", "number"]]
    assert ["query", "log_bytes"] in errors_at(
        sqlite_client.get(f"{API}/experiments/{exp}/trials/0", params={"log_bytes": 10**9}))


# -- best -------------------------------------------------------------------------------------------------


def test_best_is_404_until_there_is_one_then_lists_exports(app: Any, client: TestClient) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    r = client.get(f"{API}/experiments/{exp}/best")
    assert r.status_code == 404 and "no best trial" in r.json()["detail"]
    insert_trials(app, exp, 4, best=3)
    best = client.get(f"{API}/experiments/{exp}/best").json()
    assert best["trial"]["number"] == 3 and best["trial"]["score"] == 0.75 and best["exports"] == []
    add_export(app, exp, "pt2", b"PK\x03\x04 pt2 bytes")
    add_export(app, exp, "masks", b"masks")
    exports = {e["format"]: e for e in client.get(f"{API}/experiments/{exp}/best").json()["exports"]}
    assert set(exports) == {"pt2", "masks"}
    assert exports["pt2"]["size"] == 14 and exports["pt2"]["url"] == f"{API}/experiments/{exp}/best/model?format=pt2"
    assert client.get(f"{API}/experiments/999/best").status_code == 404


@pytest.mark.parametrize(("fmt", "content_type", "suffix"), [
    ("pt2", "application/octet-stream", "model.pt2"),
    ("onnx", "application/onnx", "model.onnx"),
    ("safetensors", "application/octet-stream", "model.safetensors"),
    ("masks", "application/octet-stream", "masks.safetensors"),
])
def test_download_streams_the_file_with_type_size_and_name(sqlite_app: Any, sqlite_client: TestClient, fmt: str,
                                                           content_type: str, suffix: str) -> None:
    exp = insert_experiment(sqlite_app, name="my exp/1", state=ExperimentState.SUCCEEDED)
    content = bytes(range(256)) * 4000  # ~1 MB: more than one chunk
    add_export(sqlite_app, exp, fmt, content)
    r = sqlite_client.get(f"{API}/experiments/{exp}/best/model", params={"format": fmt})
    assert r.status_code == 200 and r.content == content
    assert r.headers["content-type"] == content_type
    assert r.headers["content-length"] == str(len(content))
    assert r.headers["content-disposition"] == f'attachment; filename="my_exp_1-{exp}-{suffix}"'


def test_download_is_404_before_export_and_422_for_unknown_format(sqlite_app: Any, sqlite_client: TestClient) -> None:
    exp = insert_experiment(sqlite_app, state=ExperimentState.RUNNING)
    r = sqlite_client.get(f"{API}/experiments/{exp}/best/model", params={"format": "onnx"})
    assert r.status_code == 404 and r.json()["detail"] == f"experiment {exp} has no onnx export (yet)"
    assert ["query", "format"] in errors_at(
        sqlite_client.get(f"{API}/experiments/{exp}/best/model", params={"format": "../../etc/passwd"}))
    assert sqlite_client.get(f"{API}/experiments/4242/best/model").status_code == 404


def test_download_never_follows_a_path_out_of_the_experiment(sqlite_app: Any, sqlite_client: TestClient,
                                                             tmp_path: Any) -> None:
    victim = insert_experiment(sqlite_app, state=ExperimentState.SUCCEEDED)
    secret = add_export(sqlite_app, victim, "pt2", b"someone else's model")
    exp = insert_experiment(sqlite_app, state=ExperimentState.SUCCEEDED)
    # a symlink planted inside the experiment's folder that points at another experiment's file
    link = sqlite_app.state.artifacts.best_dir(exp) / "model.pt2"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)
    add_export(sqlite_app, exp, "onnx", b"x")  # registers best/model.onnx (a real file)
    from service import store
    from service.db import session_scope

    with session_scope(sqlite_app.state.session_factory) as s:
        store.add_artifact(s, experiment_id=exp, trial_number=None, kind="pt2", path="best/model.pt2", size=20,
                           content_type="application/octet-stream")
    r = sqlite_client.get(f"{API}/experiments/{exp}/best/model", params={"format": "pt2"})
    assert r.status_code == 404 and b"someone else" not in r.content
    assert sqlite_client.get(f"{API}/experiments/{exp}/best/model", params={"format": "onnx"}).content == b"x"
