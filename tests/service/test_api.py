"""The REST API's experiment and trial routes, over SQLite and PostgreSQL, with the runner off.

Rows the runner would write (trials, states, exports) are written through ``service.store``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import store
from service.db import session_scope
from service.states import ExperimentState
from tests.service.api_helpers import errors_at, insert_experiment, insert_trials, make_app, spec

API = "/api/v1"


@pytest.fixture
def app(db_url: str, tmp_path: Any) -> Any:
    return make_app(db_url, tmp_path)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def sqlite_client(tmp_path: Any) -> Iterator[TestClient]:
    """For checks that do not depend on the database backend (request validation)."""
    with TestClient(make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path)) as c:
        yield c


# -- POST /experiments ---------------------------------------------------------------------------------


def test_create_experiment_queues_it_and_points_to_it(client: TestClient) -> None:
    r = client.post(f"{API}/experiments", json={"spec": spec(), "max_trials": 2})
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"{API}/experiments/{body['id']}"
    assert body["state"] == "queued" and body["name"] == "digits-cnn-agp" and body["algorithm"] == "agp"
    assert body["model"] == "search.zoo:digits_cnn" and body["max_trials"] == 2
    assert body["spec"]["version"] == 1 and body["spec"]["algorithm"]["max_trials"] == 2
    assert body["spec"]["trial"]["finetune_epochs"] == 0  # the normalised spec, defaults filled in
    assert client.get(r.headers["location"]).json()["id"] == body["id"]


def test_create_stores_the_canonical_algorithm_name(sqlite_client: TestClient) -> None:
    r = sqlite_client.post(f"{API}/experiments", json={"spec": spec(algorithm={"name": "lottery", "total_iteration": 2})})
    assert r.status_code == 201, r.text
    assert r.json()["algorithm"] == "lottery_ticket"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"spec": spec(pruner={"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_raito": 0.5}]})},
         ["body", "spec", "pruner", "config_list", 0, "sparse_raito"]),
        ({"spec": spec(algorithm={"name": "agp", "total_iteration": 0})}, ["body", "spec", "algorithm", "total_iteration"]),
        ({"spec": spec(algorithm={"name": "nope"})}, ["body", "spec", "algorithm", "name"]),
        ({"spec": spec(algorithm={"name": "simulated_annealing", "max_trials": 3, "refine": 3})},
         ["body", "spec", "algorithm", "refine"]),
        ({"spec": spec(trial={"lr": -1})}, ["body", "spec", "trial", "lr"]),
        ({"spec": spec(model={"factory": "os:system", "kwargs": {"command": "true"}})}, ["body", "spec", "model", "factory"]),
        ({"spec": spec(model={"factory": "search.zoo:digits_cnn", "weights": "/etc/shadow.pt"})},
         ["body", "spec", "model", "weights"]),
        ({"spec": spec(model={"factory": "search.zoo:digits_cnn", "kwargs": {"num_klasses": 3}})},
         ["body", "spec", "model", "kwargs", "num_klasses"]),
        ({"spec": spec(model={"factory": "search.zoo:digits_cnn", "kwargs": {"num_classes": 10**8}})},
         ["body", "spec", "model", "kwargs"]),
        ({"spec": spec(name="a\x00b")}, ["body", "spec", "name"]),
        ({"spec": spec(name="x" * 201)}, ["body", "spec", "name"]),
        ({"spec": {k: v for k, v in spec().items() if k != "data"}}, ["body", "spec", "data"]),
        ({"spec": spec(), "max_trials": 0}, ["body", "max_trials"]),
        (spec(), ["body", "spec"]),  # the spec without its envelope
    ],
    ids=["config-key", "algorithm-param", "algorithm-name", "refine-over-budget", "trial-lr", "factory-not-catalog", "weights-path",
         "model-kwarg", "model-too-big", "nul", "name-too-long", "missing-section", "max-trials", "no-envelope"],
)
def test_create_rejects_a_bad_spec_at_its_field(sqlite_client: TestClient, body: dict[str, Any], loc: list[Any]) -> None:
    r = sqlite_client.post(f"{API}/experiments", json=body)
    assert loc in errors_at(r), r.json()
    assert all(isinstance(e["msg"], str) and e["msg"] for e in r.json()["detail"])
    assert sqlite_client.get(f"{API}/experiments").json()["count"] == 0


# -- GET /experiments ------------------------------------------------------------------------------------


def test_list_filters_by_state_algorithm_and_name(app: Any, client: TestClient) -> None:
    a = insert_experiment(app, name="alpha-resnet", algorithm="agp")
    b = insert_experiment(app, name="beta", algorithm="linear", state=ExperimentState.RUNNING)
    c = insert_experiment(app, name="gamma-RESNET", algorithm="agp", state=ExperimentState.SUCCEEDED)

    def ids(**params: Any) -> list[int]:
        r = client.get(f"{API}/experiments", params=params)
        assert r.status_code == 200, r.text
        assert r.json()["count"] == len(r.json()["data"])
        return sorted(e["id"] for e in r.json()["data"])

    assert ids() == [a, b, c]
    assert ids(state=["queued", "running"]) == [a, b]
    assert ids(algorithm="agp") == [a, c]
    assert ids(q="resnet") == [a, c]
    assert ids(q="resnet", state="succeeded") == [c]
    assert [e["name"] for e in client.get(f"{API}/experiments", params={"sort": "name"}).json()["data"]] == [
        "alpha-resnet", "beta", "gamma-RESNET"]


def test_list_pages_with_cursor_without_gaps_or_repeats(app: Any, client: TestClient) -> None:
    made = {insert_experiment(app, name=f"e{i}") for i in range(7)}
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        r = client.get(f"{API}/experiments", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        assert r["count"] == 7
        seen += [e["id"] for e in r["data"]]
        cursor = r["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 7
    assert seen == sorted(seen, reverse=True)  # newest first by default


@pytest.mark.parametrize(("params", "loc"), [
    ({"cursor": "not-a-cursor"}, ["query", "cursor"]),
    ({"limit": 501}, ["query", "limit"]),
    ({"state": "sleeping"}, ["query", "state", 0]),
    ({"sort": "size"}, ["query", "sort"]),
])
def test_list_rejects_bad_query_parameters(sqlite_client: TestClient, params: dict[str, Any], loc: list[Any]) -> None:
    assert loc in errors_at(sqlite_client.get(f"{API}/experiments", params=params))


# -- GET /experiments/{id} ---------------------------------------------------------------------------------


def test_get_unknown_experiment_is_404_json(sqlite_client: TestClient) -> None:
    r = sqlite_client.get(f"{API}/experiments/999")
    assert r.status_code == 404 and r.json() == {"detail": "experiment 999 not found"}
    assert errors_at(sqlite_client.get(f"{API}/experiments/0")) == [["path", "experiment_id"]]
    assert sqlite_client.get(f"{API}/nothing-here").json() == {"detail": "Not Found"}
    r = sqlite_client.put(f"{API}/experiments")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}


# -- cancel / resume ------------------------------------------------------------------------------------------


def test_cancel_moves_to_cancelled_or_cancelling(app: Any, client: TestClient) -> None:
    for start, after in [(ExperimentState.QUEUED, "cancelled"), (ExperimentState.RUNNING, "cancelling"),
                         (ExperimentState.CANCELLING, "cancelling"), (ExperimentState.CANCELLED, "cancelled")]:
        exp = insert_experiment(app, state=start)
        r = client.post(f"{API}/experiments/{exp}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == after, start
        assert client.get(f"{API}/experiments/{exp}").json()["state"] == after


def test_cancel_of_a_finished_experiment_is_409_naming_both_states(app: Any, client: TestClient) -> None:
    exp = insert_experiment(app, state=ExperimentState.SUCCEEDED)
    r = client.post(f"{API}/experiments/{exp}/cancel")
    assert r.status_code == 409
    assert r.json()["detail"] | {"msg": None} == {"msg": None, "type": "illegal_transition", "from": "succeeded",
                                                  "to": "cancelled"}
    assert client.post(f"{API}/experiments/12345/cancel").status_code == 404


def test_resume_queues_a_stopped_experiment_again_keeping_its_trials(app: Any, client: TestClient) -> None:
    for start in (ExperimentState.CANCELLED, ExperimentState.FAILED):
        exp = insert_experiment(app, state=start)
        insert_trials(app, exp, 2)
        r = client.post(f"{API}/experiments/{exp}/resume")
        assert r.status_code == 200 and r.json()["state"] == "queued" and r.json()["n_trials"] == 2
        assert client.get(f"{API}/experiments/{exp}/trials").json()["count"] == 2


def test_resume_of_a_running_or_succeeded_experiment_is_409(app: Any, client: TestClient) -> None:
    for start in (ExperimentState.RUNNING, ExperimentState.SUCCEEDED):
        exp = insert_experiment(app, state=start)
        r = client.post(f"{API}/experiments/{exp}/resume")
        assert r.status_code == 409
        assert (r.json()["detail"]["from"], r.json()["detail"]["to"]) == (start.value, "queued")
    assert client.post(f"{API}/experiments/12345/resume").status_code == 404


# -- DELETE ---------------------------------------------------------------------------------------------------


def test_delete_removes_rows_and_artifacts(app: Any, client: TestClient) -> None:
    exp = insert_experiment(app, state=ExperimentState.SUCCEEDED)
    insert_trials(app, exp, 3, best=2)
    folder = app.state.artifacts.trial_dir(exp, 0)
    folder.mkdir(parents=True)
    (folder / "trial.log").write_text("hello")
    other = insert_experiment(app, state=ExperimentState.SUCCEEDED)
    r = client.delete(f"{API}/experiments/{exp}")
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"{API}/experiments/{exp}").status_code == 404
    assert not app.state.artifacts.experiment_dir(exp).exists()
    with session_scope(app.state.session_factory) as s:
        assert store.events_after(s, exp) == [] and store.list_trials(s, exp).count == 0
    assert client.get(f"{API}/experiments/{other}").status_code == 200
    assert client.delete(f"{API}/experiments/{exp}").status_code == 404


def test_delete_of_an_active_experiment_needs_force(app: Any, client: TestClient) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    r = client.delete(f"{API}/experiments/{exp}")
    assert r.status_code == 409 and r.json()["detail"]["state"] == "running"
    assert client.get(f"{API}/experiments/{exp}").status_code == 200
    assert client.delete(f"{API}/experiments/{exp}", params={"force": "true"}).status_code == 204
    assert client.get(f"{API}/experiments/{exp}").status_code == 404


def test_an_oversized_json_body_is_413(sqlite_client: TestClient) -> None:
    big = {"spec": spec(name="x", pruner={"name": "l1", "config_list": [{"op_types": ["Conv2d"], "pad": "y" * 2**21}]})}
    r = sqlite_client.post(f"{API}/experiments", json=big)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
        yield b'{"spec": {"name": "'
        for _ in range(40):
            yield b"z" * 65536
        yield b'"}}'

    r = sqlite_client.post(f"{API}/experiments", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"].startswith("request body larger than")
    assert sqlite_client.get(f"{API}/experiments").json()["count"] == 0
