"""Bearer-token auth: open until a token exists, then mutating calls need one (401 / 403); reads optional."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import store
from service.db import session_scope
from service.states import ExperimentState
from tests.service.api_helpers import create_token, insert_experiment, make_app, revoke_token, spec

API = "/api/v1"


@pytest.fixture
def app(db_url: str, tmp_path: Any) -> Any:
    return make_app(db_url, tmp_path)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def _mutations(exp: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("POST", f"{API}/experiments", {"json": {"spec": spec()}}),
        ("POST", f"{API}/experiments/{exp}/cancel", {}),
        ("POST", f"{API}/experiments/{exp}/resume", {}),
        ("DELETE", f"{API}/experiments/{exp}", {}),
        ("POST", f"{API}/models", {"files": {"file": ("w.safetensors", b"x")}, "data": {"name": "n", "factory": "f"}}),
    ]


def test_without_tokens_the_api_is_open(app: Any, client: TestClient) -> None:
    r = client.post(f"{API}/experiments", json={"spec": spec()})
    assert r.status_code == 201
    with session_scope(app.state.session_factory) as s:
        assert store.get_experiment(s, r.json()["id"]).owner_token_id is None


def test_once_a_token_exists_every_mutation_needs_it(app: Any, client: TestClient) -> None:
    exp = insert_experiment(app, state=ExperimentState.FAILED)
    create_token(app)
    for method, url, kwargs in _mutations(exp):
        r = client.request(method, url, **kwargs)
        assert r.status_code == 401, (method, url, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "token" in r.json()["detail"]
        bad = client.request(method, url, headers={"Authorization": "Bearer ps_not-a-real-token"}, **kwargs)
        assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
        basic = client.request(method, url, headers={"Authorization": "Basic dXNlcjpwdw=="}, **kwargs)
        assert basic.status_code == 401
    assert client.get(f"{API}/experiments/{exp}").json()["state"] == "failed"  # nothing changed; reads are open


def test_a_valid_token_is_accepted_and_recorded_as_owner(app: Any, client: TestClient) -> None:
    token_id, plaintext = create_token(app)
    auth = {"Authorization": f"Bearer {plaintext}"}
    r = client.post(f"{API}/experiments", json={"spec": spec()}, headers=auth)
    assert r.status_code == 201, r.text
    exp = r.json()["id"]
    with session_scope(app.state.session_factory) as s:
        assert store.get_experiment(s, exp).owner_token_id == token_id
        assert next(t for t in store.list_tokens(s) if t.id == token_id).last_used_at is not None
    assert client.post(f"{API}/experiments/{exp}/cancel", headers=auth).json()["state"] == "cancelled"
    assert client.delete(f"{API}/experiments/{exp}", headers=auth).status_code == 204


def test_a_revoked_token_is_403(app: Any, client: TestClient) -> None:
    old_id, old = create_token(app, "old")
    create_token(app, "current")
    revoke_token(app, old_id)
    r = client.post(f"{API}/experiments", json={"spec": spec()}, headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 403 and "revoked" in r.json()["detail"]


def test_reads_need_a_token_only_with_auth_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("PRUNESEARCH_AUTH_READ", "1")
    app = make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path)
    with TestClient(app) as client:
        assert client.get(f"{API}/experiments").status_code == 200  # no token exists yet: open
        _, plaintext = create_token(app)
        for url in (f"{API}/experiments", f"{API}/catalog", f"{API}/models", f"{API}/experiments/1"):
            assert client.get(url).status_code == 401, url
        assert client.get(f"{API}/experiments", headers={"Authorization": f"Bearer {plaintext}"}).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open
