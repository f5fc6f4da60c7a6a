"""The Python SDK against a real server: uvicorn on a free port, SQLite in tmp, real HTTP and SSE.

Rows are written through ``service.store`` (tests/service/api_helpers.py) so most tests need no
search; one test runs a real (tiny) search through the runner, end to end.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import store
from service.client import (
    ApiConnectionError,
    Client,
    Conflict,
    DownloadError,
    Experiment,
    Forbidden,
    NotFound,
    Trial,
    Unauthorized,
    ValidationError,
)
from service.db import session_scope, upgrade
from service.states import ExperimentState
from tests.service.api_helpers import (
    add_export,
    create_token,
    insert_experiment,
    insert_trials,
    make_app,
    revoke_token,
    set_state,
    spec,
)
from tests.service.live_server import closed_port, live_server

ROOT = Path(__file__).resolve().parents[2]


class CountingTransport(httpx.HTTPTransport):
    """A real HTTP transport that remembers each request's path and headers."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)

    def paths(self, contains: str = "") -> list[str]:
        return [r.url.path for r in self.requests if contains in r.url.path]


def migrated_app(tmp: Path, name: str = "ps.db", **overrides: Any) -> Any:
    """An app (runner off unless overridden) whose SQLite database is already migrated."""
    url = f"sqlite:///{tmp / name}"
    upgrade(url)
    return make_app(url, tmp, **overrides)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return migrated_app(tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def url(app: Any) -> Iterator[str]:
    with live_server(app) as root:
        yield root


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url, timeout=10) as c:
        yield c


def _finishes_later(app: Any, exp_id: int, n: int, *, delay: float = 0.3, to: ExperimentState = ExperimentState.SUCCEEDED
                    ) -> threading.Thread:
    """A thread that records ``n`` trials and ends the experiment, after ``delay`` seconds."""

    def run() -> None:
        time.sleep(delay)
        insert_trials(app, exp_id, n, best=n - 1)
        set_state(app, exp_id, to)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# -- submit / get / list ---------------------------------------------------------------------------------


def test_submit_a_dict_returns_a_typed_queued_experiment(client: Client) -> None:
    exp = client.submit(spec(name="from-dict"), max_trials=4)
    assert isinstance(exp, Experiment)
    assert (exp.name, exp.state, exp.algorithm, exp.max_trials, exp.done) == ("from-dict", "queued", "agp", 4, False)
    assert exp.created_at is not None and exp.created_at.tzinfo is not None
    assert client.get(exp.id) == exp


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_submit_reads_a_yaml_or_json_spec_file(client: Client, tmp_path: Path, suffix: str) -> None:
    import yaml

    path = tmp_path / f"spec{suffix}"
    data = spec(name=f"from-file{suffix}")
    path.write_text(yaml.safe_dump(data) if suffix == ".yaml" else json.dumps(data))
    exp = client.submit(path)
    assert exp.name == f"from-file{suffix}"
    assert exp.spec["pruner"]["config_list"][0]["sparse_ratio"] == 0.5


def test_an_invalid_spec_raises_validation_error_naming_the_field_path(client: Client) -> None:
    bad = spec(pruner={"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 1.5}]})
    with pytest.raises(ValidationError) as info:
        client.submit(bad)
    err = info.value
    assert err.status_code == 422
    assert [e["path"] for e in err.errors] == ["spec.pruner.config_list[0].sparse_ratio"]
    assert err.errors[0]["loc"] == ["body", "spec", "pruner", "config_list", 0, "sparse_ratio"]
    assert "spec.pruner.config_list[0].sparse_ratio" in str(err)


def test_a_missing_spec_file_is_an_error_before_any_request(client: Client, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="spec file not found"):
        client.submit(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        client.submit(tmp_path / "list.yaml")


def test_get_of_an_unknown_experiment_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as info:
        client.get(999_999)
    assert info.value.status_code == 404
    assert info.value.message == "experiment 999999 not found"


def test_list_pages_lazily_through_every_match(app: Any, url: str) -> None:
    ids = [insert_experiment(app, name=f"paged-{i}", algorithm="linear") for i in range(7)]
    transport = CountingTransport()
    with Client(url, transport=transport) as client:
        items = client.list(algorithm="linear", page_size=3)
        first = next(items)
        assert len(transport.requests) == 1  # one page fetched so far
        rest = list(items)
        assert len(transport.requests) == 3  # 3 + 3 + 1
    assert [e.id for e in [first, *rest]] == ids[::-1]  # newest first
    assert all(isinstance(e, Experiment) for e in rest)


def test_list_filters_by_state_name_and_limit(app: Any, client: Client) -> None:
    done = insert_experiment(app, name="filter-me-done", state=ExperimentState.SUCCEEDED)
    failed = insert_experiment(app, name="filter-me-failed", state=ExperimentState.FAILED)
    insert_experiment(app, name="filter-me-queued")
    assert [e.id for e in client.list(q="filter-me", state=["succeeded", "failed"])] == [failed, done]
    assert [e.id for e in client.list(q="filter-me", state="succeeded")] == [done]
    assert len(list(client.list(q="filter-me", limit=2))) == 2
    assert [e.name for e in client.list(q="filter-me", sort="name")] == [
        "filter-me-done", "filter-me-failed", "filter-me-queued"]
    page = client.list_page(q="filter-me", limit=1)
    assert (page.count, len(page.items), page.next_cursor is not None) == (3, 1, True)


# -- trials / best / download ----------------------------------------------------------------------------


def test_trials_are_rows_across_pages_and_sortable(app: Any, client: Client) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 12, best=11, failed=(3,))
    rows = client.trials(exp, page_size=5)
    assert [t.number for t in rows] == list(range(12))
    assert all(isinstance(t, Trial) for t in rows)
    assert rows[3].state == "failed" and "ValueError: boom" in rows[3].error
    assert rows[5].metrics["accuracy"] == pytest.approx(5 / 12)
    assert [t.number for t in client.trials(exp, sort="-score", limit=3)] == [11, 10, 9]
    assert [t.number for t in client.trials(exp, state="failed")] == [3]


def test_trials_frame_has_one_column_per_metric(app: Any, client: Client) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 4, best=3)
    frame = client.trials_frame(exp)
    assert list(frame.index) == [0, 1, 2, 3]
    assert {"number", "state", "score", "accuracy", "flops_ratio", "duration_s"} <= set(frame.columns)
    assert frame.loc[2, "accuracy"] == pytest.approx(0.5)
    assert frame["score"].idxmax() == 3


def test_trials_frame_without_pandas_says_how_to_get_it(app: Any, client: Client,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # what `import pandas` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install pandas.*Client\.trials"):
        client.trials_frame(insert_experiment(app))


def test_best_and_download_write_the_exact_bytes_atomically(app: Any, client: Client, tmp_path: Path) -> None:
    exp = insert_experiment(app, name="dl", state=ExperimentState.RUNNING)
    insert_trials(app, exp, 3, best=1)
    payload = bytes(range(256)) * 5000  # ~1.3 MB: several chunks
    add_export(app, exp, "pt2", payload)
    add_export(app, exp, "onnx", b"onnx-bytes")
    best = client.best(exp)
    assert best.trial.number == 1 and best.trial.score == pytest.approx(1 / 3)
    assert {e.format: e.size for e in best.exports} == {"pt2": len(payload), "onnx": 10}
    path = client.download_best(exp, tmp_path / "sub" / "model.pt2", chunk_size=64 * 1024)
    assert path.read_bytes() == payload
    into_dir = client.download_best(exp, tmp_path, format="onnx")
    assert into_dir == tmp_path / f"dl-{exp}-model.onnx" and into_dir.read_bytes() == b"onnx-bytes"
    with pytest.raises(NotFound, match="no safetensors export"):
        client.download_best(exp, tmp_path / "w.safetensors", format="safetensors")
    assert sorted(p.name for p in tmp_path.rglob("*")) == [f"dl-{exp}-model.onnx", "model.pt2", "sub"]


def test_download_refuses_bytes_that_differ_from_the_servers_checksum(app: Any, client: Client,
                                                                     tmp_path: Path) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 1, best=0)
    file = add_export(app, exp, "pt2", b"A" * 1000)
    file.write_bytes(b"B" * 1000)  # same size, other bytes: corrupted on disk after it was registered
    with pytest.raises(DownloadError, match="sha256"):
        client.download_best(exp, tmp_path / "model.pt2")
    assert list(tmp_path.iterdir()) == []  # no partial or wrong file left behind


class _ShortBodyHandler(http.server.BaseHTTPRequestHandler):
    """A server that promises 1000 bytes of model and closes after 100 (a fault uvicorn won't show)."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path.endswith("/best"):
            body = json.dumps({"experiment_id": 1, "trial": {"number": 0, "state": "succeeded"}, "exports": [
                {"format": "pt2", "size": 1000, "sha256": None, "url": ""}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 100)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


def test_a_download_cut_short_leaves_no_file(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortBodyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Client(f"http://127.0.0.1:{server.server_address[1]}") as client, \
                pytest.raises(DownloadError, match="download of pt2"):
            client.download_best(1, tmp_path / "model.pt2")
    finally:
        server.shutdown()
        server.server_close()
    assert list(tmp_path.iterdir()) == []


# -- cancel / resume / auth / connection -----------------------------------------------------------------


def test_cancel_and_resume_move_the_experiment_and_illegal_moves_conflict(app: Any, client: Client) -> None:
    exp = insert_experiment(app)
    assert client.cancel(exp).state == "cancelled"
    assert client.resume(exp).state == "queued"
    done = insert_experiment(app, state=ExperimentState.SUCCEEDED)
    with pytest.raises(Conflict) as info:
        client.cancel(done)
    assert info.value.status_code == 409 and "succeeded" in info.value.message
    with pytest.raises(NotFound):
        client.resume(987_654)


def test_tokens_are_sent_as_bearer_and_errors_distinguish_missing_from_revoked(tmp_path: Path) -> None:
    app = migrated_app(tmp_path, "auth.db")
    token_id, token = create_token(app)
    with live_server(app) as root:
        with Client(root) as anonymous, pytest.raises(Unauthorized) as info:
            anonymous.submit(spec())
        assert info.value.status_code == 401
        with Client(root, token=token) as authed:
            exp = authed.submit(spec(name="authed"))
            assert authed.cancel(exp.id).state == "cancelled"
            revoke_token(app, token_id)
            with pytest.raises(Forbidden, match="revoked"):
                authed.resume(exp.id)


def test_an_unreachable_server_raises_api_connection_error() -> None:
    with Client(f"http://127.0.0.1:{closed_port()}", timeout=2) as client, \
            pytest.raises(ApiConnectionError, match="cannot reach"):
        client.get(1)
    with pytest.raises(ValueError, match="url"):
        Client("127.0.0.1:8000")


def test_an_event_stream_that_cannot_connect_gives_up_after_its_retries() -> None:
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{closed_port()}", timeout=2) as client, \
            pytest.raises(ApiConnectionError, match="failed 2 time"):
        list(client.events(1, max_retries=1))
    assert time.monotonic() - started < 10  # one back-off of ~1 s between the two attempts


# -- events / wait ---------------------------------------------------------------------------------------


def _event_ids(app: Any, exp_id: int) -> list[int]:
    with session_scope(app.state.session_factory) as s:
        return [e.id for e in store.events_after(s, exp_id, 0, limit=10_000)]


def test_events_resume_after_an_id_and_end_with_the_final_state(app: Any, client: Client) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    insert_trials(app, exp, 2, best=1)
    set_state(app, exp, ExperimentState.SUCCEEDED)
    events = list(client.events(exp))
    ids = _event_ids(app, exp)
    assert [e.id for e in events] == [*ids, None]
    assert events[-1].kind == "end" and events[-1].data["state"] == "succeeded"
    assert [e.kind for e in events if e.kind.startswith("trial")] == ["trial_finished", "trial_finished"]
    later = list(client.events(exp, after=ids[2]))
    assert [e.id for e in later] == [*ids[3:], None]


def test_a_dropped_stream_is_resumed_with_last_event_id_without_loss_or_repeats(app: Any, url: str) -> None:
    app.state.sse_max_s, app.state.sse_retry_ms = 0.25, 20  # the server closes every stream after 0.25 s
    try:
        exp = insert_experiment(app, state=ExperimentState.RUNNING)

        def produce() -> None:
            for i in range(8):
                time.sleep(0.1)
                with session_scope(app.state.session_factory) as s:
                    store.append_event(s, exp, "log", {"level": "info", "message": f"line {i}"})
            set_state(app, exp, ExperimentState.SUCCEEDED)

        producer = threading.Thread(target=produce)
        producer.start()
        transport = CountingTransport()
        with Client(url, transport=transport) as client:
            received = [e for e in client.events(exp) if e.id is not None]
        producer.join()
    finally:
        app.state.sse_max_s, app.state.sse_retry_ms = None, 3000
    assert [e.id for e in received] == _event_ids(app, exp)  # every event once, in order
    streams = [r for r in transport.requests if r.url.path.endswith("/events")]
    assert len(streams) >= 3
    resumed_from = [r.headers.get("last-event-id") for r in streams[1:]]
    assert all(h is not None and h.isdigit() for h in resumed_from)
    assert [int(h) for h in resumed_from] == sorted(int(h) for h in resumed_from)


def test_wait_follows_the_stream_with_a_progress_bar(app: Any, client: Client) -> None:
    with session_scope(app.state.session_factory) as s:
        row = store.create_experiment(s, spec=spec(), name="waited", algorithm="agp", model="m", max_trials=3)
        store.set_experiment_state(s, row, ExperimentState.RUNNING)
        exp = row.id
    seen: list[str] = []
    bar = io.StringIO()
    writer = _finishes_later(app, exp, 3)
    result = client.wait(exp, progress=True, progress_file=bar, on_event=lambda e: seen.append(e.kind), timeout=20)
    writer.join()
    assert (result.state, result.n_trials, result.best_trial_number) == ("succeeded", 3, 2)
    assert seen.count("trial_finished") == 3 and seen[-1] == "end"
    assert "3/3" in bar.getvalue() and "experiment" in bar.getvalue()


def test_wait_times_out_on_an_experiment_that_does_not_finish(app: Any, client: Client) -> None:
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait(exp, progress=False, timeout=0.6)
    assert time.monotonic() - started < 5


def test_wait_polls_when_the_server_offers_no_event_stream(tmp_path: Path) -> None:
    app = migrated_app(tmp_path, "nosse.db")

    async def no_events(scope: Any, receive: Any, send: Any) -> None:
        # a proxy or an older server without the events route: 404 Not Found for it, the rest passes
        if scope["type"] == "http" and scope["path"].endswith("/events"):
            body = b'{"detail":"Not Found"}'
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"22")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    app_state = app.state
    no_events.state = app_state  # type: ignore[attr-defined]
    exp = insert_experiment(app, state=ExperimentState.RUNNING)
    with live_server(no_events) as root, Client(root) as client:
        writer = _finishes_later(app, exp, 2, delay=0.2)
        result = client.wait(exp, progress=False, poll_interval=0.05, timeout=20)
        writer.join()
    assert (result.state, result.n_trials) == ("succeeded", 2)


# -- layering and a real search --------------------------------------------------------------------------


def test_importing_the_sdk_imports_neither_torch_nor_ray_nor_the_server() -> None:
    code = ("import sys, service.client; "
            "print(sorted(m for m in ('torch', 'ray', 'fastapi', 'sqlalchemy', 'service.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_real_search_submitted_waited_and_downloaded_end_to_end(tmp_path: Path) -> None:
    import torch

    from search.zoo import get_dataset

    torch.set_num_threads(1)
    app = make_app(f"sqlite:///{tmp_path / 'e2e.db'}", tmp_path, runner=True)
    e2e_spec = {
        "name": "e2e", "model": {"factory": "search.zoo:digits_cnn"}, "data": {"name": "digits"},
        "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
        "algorithm": {"name": "agp", "total_iteration": 1},
        "trial": {"finetune_epochs": 0, "pretrain_epochs": 0}, "resources": {"max_concurrent_trials": 1},
    }
    from service.app import create_app

    app = create_app(app.state.settings)  # with the runner thread
    app.state.sse_poll_s = 0.05
    with live_server(app) as root, Client(root) as client:
        exp = client.submit(e2e_spec)
        done = client.wait(exp.id, progress=False, timeout=120)
        assert done.state == "succeeded", done.error
        trials = client.trials(exp.id)
        assert [(t.number, t.state) for t in trials] == [(0, "succeeded")]  # pretrain_epochs 0: no pretrain trial
        best = client.best(exp.id)
        assert best.trial.number == done.best_trial_number == 0
        assert {e.format for e in best.exports} >= {"pt2", "safetensors", "masks"}
        path = client.download_best(exp.id, tmp_path / "best.pt2")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == {e.format: e.sha256 for e in best.exports}["pt2"]
    model = torch.export.load(str(path)).module()
    inputs, labels = get_dataset("digits").test.tensors
    with torch.no_grad():
        accuracy = float((model(inputs).argmax(dim=1) == labels).float().mean())
    assert accuracy == pytest.approx(done.best_score, abs=1e-6)
