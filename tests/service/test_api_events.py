"""Server-Sent Events: format, resumption (Last-Event-ID / ?after=), end of stream, live delivery over uvicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service import store
from service.db import session_scope
from service.states import ExperimentState
from tests.service.api_helpers import errors_at, insert_experiment, insert_trials, make_app, set_state

API = "/api/v1"


def parse_sse(text: str) -> list[dict[str, Any]]:
    """SSE text as messages ``{"id", "event", "data", "retry", "comment"}`` (only the fields present)."""
    import json

    messages = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        msg: dict[str, Any] = {}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                msg["comment"] = value
            elif field == "data":
                msg["data"] = json.loads(value)
            elif field in ("id", "retry"):
                msg[field] = int(value)
            else:
                msg[field] = value
        messages.append(msg)
    return messages


@pytest.fixture
def app(tmp_path: Any) -> Any:
    return make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def _finished_experiment(app: Any) -> int:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 3, best=2)
    set_state(app, exp, ExperimentState.SUCCEEDED)
    return exp


def test_stream_of_a_finished_experiment_sends_everything_then_ends(app: Any, client: TestClient) -> None:
    exp = _finished_experiment(app)
    r = client.get(f"{API}/experiments/{exp}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    messages = parse_sse(r.text)
    assert messages[0] == {"retry": 3000}
    events, end = messages[1:-1], messages[-1]
    assert [m["event"] for m in events] == ["experiment_state", "experiment_state", "trial_finished", "trial_finished",
                                           "trial_finished", "experiment_state"]
    ids = [m["id"] for m in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[-1]["data"] == {"state": "succeeded", "previous": "running"}
    assert [m["data"]["number"] for m in events if m["event"] == "trial_finished"] == [0, 1, 2]
    assert end == {"event": "end", "data": {"state": "succeeded", "last_event_id": ids[-1]}}


def test_stream_resumes_after_last_event_id_or_after(app: Any, client: TestClient) -> None:
    exp = _finished_experiment(app)
    ids = [m["id"] for m in parse_sse(client.get(f"{API}/experiments/{exp}/events").text) if "id" in m]
    resumed = parse_sse(client.get(f"{API}/experiments/{exp}/events", headers={"Last-Event-ID": str(ids[2])}).text)
    assert [m["id"] for m in resumed if "id" in m] == ids[3:]
    by_query = parse_sse(client.get(f"{API}/experiments/{exp}/events", params={"after": ids[4]}).text)
    assert [m["id"] for m in by_query if "id" in m] == ids[5:]
    nothing_left = parse_sse(client.get(f"{API}/experiments/{exp}/events", params={"after": ids[-1]}).text)
    assert [m.get("event") for m in nothing_left] == [None, "end"]


def test_stream_errors_are_json(app: Any, client: TestClient) -> None:
    exp = _finished_experiment(app)
    assert client.get(f"{API}/experiments/999/events").json() == {"detail": "experiment 999 not found"}
    assert errors_at(client.get(f"{API}/experiments/{exp}/events", headers={"Last-Event-ID": "abc"})) == [
        ["header", "last-event-id"]]
    assert ["query", "after"] in errors_at(client.get(f"{API}/experiments/{exp}/events", params={"after": -1}))


@pytest.fixture
def server(app: Any) -> Iterator[str]:
    """The app served by a real uvicorn on a free port (SSE needs real streaming)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_live_stream_delivers_new_events_and_keepalives_until_the_end(app: Any, server: str) -> None:
    app.state.sse_keepalive_s = 0.1
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    received: list[str] = []
    first_event = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{server}{API}/experiments/{exp}/events", timeout=20) as r:
            for chunk in r.iter_text():
                received.append(chunk)
                if "event: experiment_state" in "".join(received):
                    first_event.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first_event.wait(10)
    time.sleep(0.3)  # idle: keep-alive comments flow
    with session_scope(app.state.session_factory) as s:
        store.append_event(s, exp, "trial_progress", {"number": 0, "epoch": 1})
    insert_trials(app, exp, 1)
    set_state(app, exp, ExperimentState.SUCCEEDED)
    reader.join(timeout=20)
    assert not reader.is_alive(), "the stream did not end after the experiment finished"
    messages = parse_sse("".join(received))
    kinds = [m.get("event") for m in messages if "event" in m]
    assert kinds == ["experiment_state", "experiment_state", "trial_progress", "trial_finished", "experiment_state",
                     "end"]
    assert any(m.get("comment") == "keep-alive" for m in messages)


def test_a_stream_open_too_long_is_closed_for_the_client_to_resume(app: Any, server: str) -> None:
    app.state.sse_max_s = 0.3
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    started = time.monotonic()
    r = httpx.get(f"{server}{API}/experiments/{exp}/events", timeout=10)
    assert time.monotonic() - started < 5
    messages = parse_sse(r.text)
    assert [m.get("event") for m in messages if "event" in m] == ["experiment_state", "experiment_state"]
    assert all(m.get("event") != "end" for m in messages)
