"""Real server processes for the end-to-end and fault tests (and ``benchmarks/bench_api.py``).

:class:`ServerProcess` starts ``python -m service.cli serve --port 0`` (what ``prunesearch serve``
runs) in a subprocess, reads the port uvicorn picked from its log, waits for ``/healthz`` and, when
it is stopped, kills it with ``SIGTERM`` (``SIGKILL`` after a grace period). Its stdout/stderr go to a
log file that :meth:`ServerProcess.log_tail` reads back; :func:`running_server` prints that tail when
the code inside it fails, so a failing test shows what the server said.

:func:`sse_events` parses a ``text/event-stream`` response into :class:`SseEvent` s.

Example (not run: it starts a server)::

    with running_server(tmp_path, db_url=f"sqlite:///{tmp_path}/ps.db") as server:
        httpx.get(server.url + "/healthz").json()["status"]   # 'ok'
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["REPO_ROOT", "ServerProcess", "SseEvent", "running_server", "sse_events", "wait_until"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"Uvicorn running on http://([\d.]+):(\d+)")


def wait_until(condition: Any, timeout: float, what: str, poll_s: float = 0.1) -> Any:
    """Poll ``condition()`` until it returns something truthy (returned); ``TimeoutError`` naming ``what``.

    Another process does the work, so polling is the only way to see it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)


@dataclass
class ServerProcess:
    """One ``prunesearch serve`` process on a free port of 127.0.0.1.

    Args:
        workdir: the process's working directory; its log goes to ``workdir/server-<n>.log``.
        db_url: ``PRUNESEARCH_DATABASE_URL``.
        artifacts_dir: ``PRUNESEARCH_ARTIFACTS_DIR`` (default ``workdir/artifacts``).
        env: more environment (``PRUNESEARCH_LEASE_SECONDS``...), on top of this process's.
        args: more ``serve`` arguments (``--no-runner``...).
    """

    workdir: Path
    db_url: str
    artifacts_dir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    log_path: Path | None = None
    _starts: int = 0

    def start(self, timeout: float = 90.0) -> str:
        """Start the process and wait until ``/healthz`` answers 200; returns the root URL."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"server-{self._starts}.log"
        env = {
            **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PRUNESEARCH_DATABASE_URL": self.db_url, "PRUNESEARCH_DATA_DIR": str(self.workdir / "data"),
            "PRUNESEARCH_ARTIFACTS_DIR": str(self.artifacts_dir or self.workdir / "artifacts"),
            **self.env,
        }
        cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--log-level", "info", *self.args]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT)

        def listening() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            match = _LISTENING.search(self.log_text())
            return f"http://{match.group(1)}:{match.group(2)}" if match else None

        self.url = wait_until(listening, timeout, "the server to listen")

        def healthy() -> bool:
            try:
                return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout, "/healthz")
        return self.url

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """``kill -9``: the process dies at once, no shutdown hook runs (leases stay taken)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """``SIGTERM`` (uvicorn shuts down, the runner releases its leases); ``SIGKILL`` after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        """The end of every log this object's processes wrote (each start has its own file)."""
        parts = []
        for n in range(1, self._starts + 1):
            path = self.workdir / f"server-{n}.log"
            if path.exists():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


@contextmanager
def running_server(workdir: Path, *, db_url: str, **kwargs: Any) -> Iterator[ServerProcess]:
    """A started :class:`ServerProcess`, stopped afterwards; on an error inside, its log is printed."""
    server = ServerProcess(workdir, db_url, **kwargs)
    try:
        server.start()
        yield server
    except BaseException:
        sys.stderr.write(f"\n=== server log ===\n{server.log_tail()}\n")
        raise
    finally:
        server.stop()


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event: ``id`` (None for ``end``), ``event`` (the kind) and the decoded JSON ``data``."""

    id: int | None
    event: str
    data: Any


def sse_events(response: httpx.Response) -> Iterator[SseEvent]:
    """Parse a streaming ``text/event-stream`` response (comments and ``retry:`` skipped)."""
    event_id: int | None = None
    kind = "message"
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield SseEvent(event_id, kind, json.loads("\n".join(data)))
            event_id, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = int(value)
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)
