"""Weights uploads (safetensors only, checked against the architecture, size-limited while streaming)."""

from __future__ import annotations

import io
import json
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from safetensors.torch import save

from search.zoo import get_model
from tests.service.api_helpers import errors_at, make_app, spec

API = "/api/v1"


def weights(**kwargs: Any) -> bytes:
    torch.manual_seed(0)
    return save({k: v.contiguous() for k, v in get_model("digits_cnn", **kwargs).state_dict().items()})


def upload(client: TestClient, content: bytes, *, name: str = "w", factory: str = "search.zoo:digits_cnn",
           kwargs: str | None = None, **extra: Any) -> Any:
    data = {"name": name, "factory": factory, **({"kwargs": kwargs} if kwargs is not None else {})}
    return client.post(f"{API}/models", files={"file": ("w.safetensors", content)}, data=data, **extra)


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return make_app(f"sqlite:///{tmp_path / 'ps.db'}", tmp_path, max_upload_bytes=400_000)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def test_upload_stores_checked_weights_that_a_spec_can_use(app: Any, client: TestClient) -> None:
    content = weights()
    r = upload(client, content, name="digits-pretrained")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["factory"] == "search.zoo:digits_cnn" and body["size"] == len(content) and body["kwargs"] == {}
    assert body["weights"] == f"models/{body['sha256']}.safetensors"
    assert (app.state.artifacts.root / body["weights"]).read_bytes() == content
    assert [m["id"] for m in client.get(f"{API}/models").json()["data"]] == [body["id"]]
    r = client.post(f"{API}/experiments", json={"spec": spec(model={"factory": "digits_cnn", "weights": body["weights"]})})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["model"]["weights"] == str(app.state.artifacts.root / body["weights"])
    assert r.json()["spec"]["model"]["factory"] == "search.zoo:digits_cnn"


@pytest.mark.parametrize(("content", "form", "loc"), [
    (weights(num_classes=5), {}, ["body", "file", "fc.weight"]),
    (weights(), {"kwargs": '{"num_classes": 5}'}, ["body", "file", "fc.weight"]),
    (save({"conv1.weight": torch.zeros(1)}), {}, ["body", "file", "conv1.weight"]),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json here!}", {}, ["body", "file"]),
    (b"\xff" * 64, {}, ["body", "file"]),
    (weights(), {"factory": "os:system"}, ["body", "factory"]),
    (weights(), {"kwargs": "{oops"}, ["body", "kwargs"]),
    (weights(), {"kwargs": "[1]"}, ["body", "kwargs"]),
    (weights(), {"kwargs": '{"num_klasses": 3}'}, ["body", "kwargs"]),
    (weights(), {"name": ""}, ["body", "name"]),
], ids=["shape", "shape-by-kwargs", "missing", "header-not-json", "bad-length", "factory", "kwargs-json",
        "kwargs-not-object", "kwargs-unknown", "no-name"])
def test_upload_rejects_bad_weights_at_the_field(client: TestClient, content: bytes, form: dict[str, str],
                                                 loc: list[Any]) -> None:
    fields = {"name": "w", "factory": "search.zoo:digits_cnn", **form}
    r = client.post(f"{API}/models", files={"file": ("w.safetensors", content)}, data=fields)
    assert loc in errors_at(r), r.json()
    assert client.get(f"{API}/models").json()["count"] == 0


def test_upload_without_a_file_or_as_json_is_422(client: TestClient) -> None:
    assert ["body", "file"] in errors_at(client.post(f"{API}/models", data={"name": "w", "factory": "digits_cnn"},
                                                     files={"other": ("x", b"")}))
    assert errors_at(client.post(f"{API}/models", json={"name": "w"})) == [["body"]]


class _Tripwire:
    """Unpickling this creates a file: proof that nothing was unpickled if the file never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def test_a_pickle_is_refused_without_being_unpickled(client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    buf = io.BytesIO()
    torch.save({"conv1.weight": _Tripwire(marker)}, buf)  # a .pt file is a zip of pickles
    for payload in (buf.getvalue(), pickle.dumps(_Tripwire(marker))):
        r = upload(client, payload)
        assert errors_at(r) == [["body", "file"]]
    assert not marker.exists()


# -- size limit ---------------------------------------------------------------------------------------------


def test_a_declared_content_length_over_the_limit_is_413_at_once(client: TestClient) -> None:
    r = upload(client, b"\0" * 500_000)
    assert r.status_code == 413 and "max_upload_bytes" in r.json()["detail"]
    assert client.get(f"{API}/models").json()["count"] == 0


@pytest.fixture
def server(app: Any) -> Iterator[tuple[str, int]]:
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield srv.servers[0].sockets[0].getsockname()[:2]
    srv.should_exit = True
    thread.join(timeout=10)


def test_a_chunked_upload_is_cut_off_at_the_limit_without_reading_the_rest(server: tuple[str, int]) -> None:
    boundary = "XyZ"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"w.safetensors\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall((f"POST {API}/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        chunk = b"\0" * 32_768
        sent = 0
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        response = b""
        sock.settimeout(0.05)
        while sent < 50_000_000 and b"\r\n\r\n" not in response:  # the client would send 50 MB
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            try:
                response += sock.recv(65536)
            except TimeoutError:
                pass
        sock.settimeout(5)
        while b"}" not in response:
            response += sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < 2_000_000  # answered long before the body ended
    assert b"max_upload_bytes" in response


# -- catalog -------------------------------------------------------------------------------------------------


def test_catalog_lists_what_a_spec_may_name_with_parameters(client: TestClient) -> None:
    cat = client.get(f"{API}/catalog").json()
    models = {m["name"]: m for m in cat["models"]}
    assert models["digits_cnn"]["factory"] == "search.zoo:digits_cnn"
    assert {"name": "num_classes", "required": False, "default": 10} in models["digits_cnn"]["params"]
    assert "digits" in {d["name"] for d in cat["datasets"]}
    pruners = {p["name"]: p for p in cat["pruners"]}
    assert {"l1", "taylor", "admm"} <= set(pruners)
    assert {"name": "training_steps", "required": True, "default": None} in pruners["taylor"]["params"]
    assert not {"model", "config_list", "evaluator"} & {p["name"] for p in pruners["taylor"]["params"]}
    algorithms = {a["name"]: a for a in cat["algorithms"]}
    assert {"name": "total_iteration", "required": True, "default": None} in algorithms["agp"]["params"]
    assert "lottery" in algorithms["lottery_ticket"]["aliases"]
    assert not {"origin_model", "config_list"} & {p["name"] for p in algorithms["agp"]["params"]}
    assert "accuracy" in cat["objective_metrics"] and cat["export_formats"] == ["pt2", "onnx", "safetensors", "masks"]
    json.dumps(cat)
