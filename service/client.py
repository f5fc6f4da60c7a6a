"""The Python SDK of the prunesearch service: submit, watch and download over REST.

It needs only ``httpx``, ``pyyaml`` and ``tqdm`` (``pip install 'prunesearch[client]'``): importing
it imports neither torch nor ray nor anything of the server, so a laptop that only submits
experiments and downloads models needs neither.

Example (against a running ``prunesearch serve``)::

    from service.client import Client

    with Client("http://127.0.0.1:8000", token="ps_...") as client:
        exp = client.submit("examples/digits-agp.yaml")     # or a dict
        exp = client.wait(exp.id)                           # a progress bar over trials
        print(exp.state, exp.best_score)
        client.download_best(exp.id, "best.pt2")            # torch.export.load("best.pt2")
        frame = client.trials_frame(exp.id)                 # needs pandas

Errors of the server raise an :class:`ApiError` subclass (:class:`NotFound`,
:class:`Unauthorized`, :class:`Forbidden`, :class:`ValidationError` with ``.errors``,
:class:`Conflict`); a server that cannot be reached raises :class:`ApiConnectionError`.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from service._client_io import TrialBar, attachment_name, load_spec, parse_sse, write_atomically
from service._client_types import (
    FORMATS,
    TERMINAL_STATES,
    ApiConnectionError,
    ApiError,
    BadRequest,
    Best,
    Conflict,
    DownloadError,
    Event,
    EventStreamUnavailable,
    Experiment,
    Export,
    Forbidden,
    NotFound,
    Page,
    Trial,
    Unauthorized,
    ValidationError,
    error_from_response,
    format_loc,
)

__all__ = [
    "FORMATS",
    "TERMINAL_STATES",
    "ApiConnectionError",
    "ApiError",
    "BadRequest",
    "Best",
    "Client",
    "Conflict",
    "DownloadError",
    "Event",
    "EventStreamUnavailable",
    "Experiment",
    "Export",
    "Forbidden",
    "NotFound",
    "Page",
    "Trial",
    "Unauthorized",
    "ValidationError",
    "format_loc",
    "load_spec",
    "parse_sse",
]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DEFAULT_URL = "http://127.0.0.1:8000"
_MAX_RETRY_S = 30.0


class Client:
    """A client of one prunesearch server.

    Args:
        url: the server's root URL (``http://host:8000``; the ``/api/v1`` prefix is added).
        token: a bearer token from ``prunesearch token create`` (needed for mutating calls once
            the server has tokens).
        timeout: seconds for a regular request (connect and read).
        stream_timeout: seconds an event stream may stay silent before the client reconnects
            (the server sends a keep-alive every 15 s).
        transport: an ``httpx`` transport (tests, proxies); default: a plain HTTP transport.

    Example::

        client = Client("http://127.0.0.1:8000")
        for exp in client.list(state="running"):
            print(exp.id, exp.name, exp.n_trials)
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout: float = 30.0,
                 stream_timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        if not re.match(r"^https?://", url):
            raise ValueError(f"url: must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        headers = {"User-Agent": "prunesearch-sdk", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url + API_PREFIX, headers=headers, timeout=timeout,
                                  transport=transport)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client for ``PRUNESEARCH_URL`` (default ``http://127.0.0.1:8000``) and ``PRUNESEARCH_TOKEN``."""
        return cls(os.environ.get("PRUNESEARCH_URL") or DEFAULT_URL, os.environ.get("PRUNESEARCH_TOKEN") or None,
                   **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- plumbing -----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiConnectionError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- experiments --------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", "database": "ok", "version": ...}``."""
        try:
            response = self._http.get(self.url + "/healthz")
        except httpx.TransportError as exc:
            raise ApiConnectionError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return dict(response.json())

    def catalog(self) -> dict[str, Any]:
        """What a spec may name: models, data sets, pruners, algorithms and their parameters."""
        return dict(self._json("GET", "/catalog"))

    def submit(self, spec: dict[str, Any] | str | os.PathLike[str], *, max_trials: int | None = None) -> Experiment:
        """Submit an experiment spec (a dict, or a YAML/JSON file); it is validated and queued.

        Raises:
            ValidationError: the spec is invalid; ``.errors`` name the field paths.
        """
        body: dict[str, Any] = {"spec": load_spec(spec)}
        if max_trials is not None:
            body["max_trials"] = max_trials
        return Experiment.from_json(self._json("POST", "/experiments", json=body))

    def get(self, experiment_id: int) -> Experiment:
        """One experiment (:class:`NotFound` if there is none)."""
        return Experiment.from_json(self._json("GET", f"/experiments/{int(experiment_id)}"))

    def list_page(self, *, state: str | Sequence[str] | None = None, algorithm: str | None = None,
                  q: str | None = None, sort: str = "-created_at", limit: int = 50,
                  cursor: str | None = None) -> Page[Experiment]:
        """One page of experiments (``count`` = how many match the filter in all)."""
        params: dict[str, Any] = {"sort": sort, "limit": limit}
        if state:
            params["state"] = [state] if isinstance(state, str) else builtins.list(state)
        for key, value in (("algorithm", algorithm), ("q", q), ("cursor", cursor)):
            if value:
                params[key] = value
        body = self._json("GET", "/experiments", params=params)
        return Page([Experiment.from_json(d) for d in body["data"]], body["count"], body.get("next_cursor"))

    def list(self, *, state: str | Sequence[str] | None = None, algorithm: str | None = None, q: str | None = None,
             sort: str = "-created_at", limit: int | None = None, page_size: int = 100) -> Iterator[Experiment]:
        """Iterate over the experiments matching the filters, fetching pages lazily.

        Args:
            state: one state or several (``"running"``, ``["queued", "running"]``).
            algorithm: the algorithm's name (``agp``).
            q: a substring of the name.
            sort: ``created_at``, ``name``, ``best_score`` or ``state``; ``-`` prefix = descending.
            limit: stop after this many experiments (default: all).
            page_size: experiments per request (at most 500).
        """
        yielded, cursor = 0, None
        while limit is None or yielded < limit:
            size = page_size if limit is None else min(page_size, limit - yielded)
            page = self.list_page(state=state, algorithm=algorithm, q=q, sort=sort, limit=size, cursor=cursor)
            for exp in page.items:
                yield exp
                yielded += 1
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    def cancel(self, experiment_id: int) -> Experiment:
        """Cancel: a queued experiment at once, a running one once its trials stopped (``cancelling``)."""
        return Experiment.from_json(self._json("POST", f"/experiments/{int(experiment_id)}/cancel"))

    def resume(self, experiment_id: int) -> Experiment:
        """Queue a cancelled or failed experiment again; finished trials are kept."""
        return Experiment.from_json(self._json("POST", f"/experiments/{int(experiment_id)}/resume"))

    def delete(self, experiment_id: int, *, force: bool = False) -> None:
        """Delete an experiment and its artifacts (``force``: cancel an active one first)."""
        self._request("DELETE", f"/experiments/{int(experiment_id)}", params={"force": "true"} if force else None)

    # -- trials -------------------------------------------------------------------------------------
    def trials(self, experiment_id: int, *, state: str | Sequence[str] | None = None, sort: str = "number",
               limit: int | None = None, page_size: int = 500) -> builtins.list[Trial]:
        """The experiment's trials as :class:`Trial` rows (all pages, or the first ``limit``).

        ``sort``: ``number``, ``score``, ``flops_ratio`` or ``duration_s``; ``-`` prefix = descending.
        """
        rows: builtins.list[Trial] = []
        cursor = None
        while limit is None or len(rows) < limit:
            size = page_size if limit is None else min(page_size, limit - len(rows))
            params: dict[str, Any] = {"sort": sort, "limit": size}
            if state:
                params["state"] = [state] if isinstance(state, str) else builtins.list(state)
            if cursor:
                params["cursor"] = cursor
            body = self._json("GET", f"/experiments/{int(experiment_id)}/trials", params=params)
            rows.extend(Trial.from_json(d) for d in body["data"])
            cursor = body.get("next_cursor")
            if not cursor or not body["data"]:
                break
        return rows

    def trial(self, experiment_id: int, number: int, *, log_bytes: int = 64 * 1024) -> Trial:
        """One trial with the last ``log_bytes`` bytes of its log in ``.log``."""
        return Trial.from_json(self._json("GET", f"/experiments/{int(experiment_id)}/trials/{int(number)}",
                                          params={"log_bytes": log_bytes}))

    def trials_frame(self, experiment_id: int, **kwargs: Any) -> Any:
        """The trials as a ``pandas.DataFrame`` indexed by trial number, one column per metric.

        Needs pandas (``pip install pandas``); :meth:`trials` gives the same rows without it.
        """
        try:
            import pandas as pd  # noqa: PLC0415
        except ImportError:
            raise ImportError("Client.trials_frame needs pandas (pip install pandas); "
                              "Client.trials returns the same rows without it") from None
        records = [t.as_record() for t in self.trials(experiment_id, **kwargs)]
        frame = pd.DataFrame.from_records(records, columns=Trial.record_columns(records))
        return frame.set_index("number", drop=False).rename_axis(None)

    def best(self, experiment_id: int) -> Best:
        """The best trial so far and the downloadable exports (:class:`NotFound` until there is one)."""
        return Best.from_json(self._json("GET", f"/experiments/{int(experiment_id)}/best"))

    def download_best(self, experiment_id: int, path: str | os.PathLike[str], format: str = "pt2", *,
                      chunk_size: int = 1 << 20) -> Path:
        """Download the best compact model (``pt2``, ``onnx``, ``safetensors`` or ``masks``) to ``path``.

        The body is streamed to a temporary file next to ``path`` and moved into place only when
        its size matches ``Content-Length`` (and its sha256 the server's record), so ``path`` is
        never a partial file. A directory ``path`` gets the server's file name.

        Returns:
            The written file's path.

        Raises:
            DownloadError: the transfer was cut short or the checksum differs.
        """
        if format not in FORMATS:
            raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {format!r}")
        expected = {e.format: e.sha256 for e in self.best(experiment_id).exports}.get(format)
        url = f"/experiments/{int(experiment_id)}/best/model"
        try:
            with self._http.stream("GET", url, params={"format": format}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                target = Path(path)
                if target.is_dir():
                    target = target / attachment_name(response, f"experiment-{experiment_id}-model.{format}")
                return write_atomically(response, target, chunk_size, expected)
        except httpx.TransportError as exc:
            raise DownloadError(f"download of {format} for experiment {experiment_id} failed: "
                                f"{type(exc).__name__}: {exc}") from exc

    # -- events -------------------------------------------------------------------------------------
    def events(self, experiment_id: int, after: int | None = None, *, reconnect: bool = True,
               max_retries: int = 5) -> Iterator[Event]:
        """The experiment's events as they happen (Server-Sent Events), from event id ``after`` on.

        The generator ends after the server's final ``end`` event (yielded too: its ``data`` holds
        the final ``state``), which comes once the experiment is finished. A dropped connection is
        resumed with ``Last-Event-ID``: no event is lost or repeated. ``max_retries`` failed
        connection attempts in a row raise :class:`ApiConnectionError`.

        Example::

            for event in client.events(exp_id):
                if event.kind == "trial_finished":
                    print(event.data["number"], event.data["score"])
        """
        yield from self._events(experiment_id, after or 0, reconnect=reconnect, max_retries=max_retries)

    def _events(self, experiment_id: int, after: int, *, reconnect: bool = True, max_retries: int = 5,
                deadline: float | None = None) -> Iterator[Event]:
        state: dict[str, Any] = {"retry_ms": 1000}
        last_id, failures = after, 0
        path = f"/experiments/{int(experiment_id)}/events"
        while True:
            read = self.stream_timeout if deadline is None else max(0.1, min(self.stream_timeout,
                                                                              deadline - time.monotonic()))
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_id:
                headers["Last-Event-ID"] = str(last_id)
            try:
                with self._http.stream("GET", path, headers=headers,
                                       timeout=httpx.Timeout(self.timeout, read=read)) as response:
                    if response.status_code >= 400:
                        response.read()
                        error = error_from_response(response)
                        # a missing route answers {"detail": "Not Found"}; a missing experiment names it
                        if response.status_code in (405, 406, 501) or (
                                response.status_code == 404 and error.message == "Not Found"):
                            raise EventStreamUnavailable(f"{path}: {error.message}", status_code=response.status_code,
                                                         body=error.body)
                        raise error
                    content_type = response.headers.get("content-type", "")
                    if not content_type.startswith("text/event-stream"):
                        raise EventStreamUnavailable(f"{path}: not an event stream (content type {content_type!r})",
                                                     status_code=response.status_code)
                    failures = 0  # connected: count failed attempts in a row only
                    for event in parse_sse(response.iter_lines(), state):
                        if event.id is not None:
                            last_id = event.id
                        yield event
                        if event.kind == "end":
                            return
                logger.debug("event stream of experiment %s closed; resuming after %s", experiment_id, last_id)
            except httpx.TransportError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"experiment {experiment_id}: timed out waiting for events") from None
                failures += 1
                if not reconnect or failures > max_retries:
                    raise ApiConnectionError(f"event stream of experiment {experiment_id} from {self.url} failed "
                                             f"{failures} time(s): {type(exc).__name__}: {exc}") from exc
                logger.info("event stream dropped (%s); reconnecting after event %s", exc, last_id)
            except ApiError as exc:
                if isinstance(exc, EventStreamUnavailable) or exc.status_code < 500 or not reconnect:
                    raise
                failures += 1
                if failures > max_retries:
                    raise
            if not reconnect:
                return
            delay = min(_MAX_RETRY_S, state["retry_ms"] / 1000 * (2 ** max(0, failures - 1)))
            if deadline is not None:
                if time.monotonic() + delay >= deadline:
                    raise TimeoutError(f"experiment {experiment_id}: timed out waiting for events")
            time.sleep(delay)

    def wait(self, experiment_id: int, *, progress: bool = True, timeout: float | None = None,
             on_event: Callable[[Event], None] | None = None, poll_interval: float = 2.0,
             progress_file: TextIO | None = None) -> Experiment:
        """Block until the experiment is finished; return it (check ``.state``).

        Follows the event stream (with a tqdm bar over trials when ``progress``) and falls back to
        polling every ``poll_interval`` seconds when the server offers no event stream.

        Args:
            on_event: called with every :class:`Event` (not when polling).
            timeout: seconds; :class:`TimeoutError` when the experiment is still running by then.
            progress_file: where the bar goes (default stderr).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        exp = self.get(experiment_id)
        bar = TrialBar(exp, progress, progress_file)
        try:
            try:
                for event in self._events(experiment_id, 0, deadline=deadline):
                    bar.on_event(event)
                    if on_event is not None:
                        on_event(event)
            except EventStreamUnavailable as exc:
                logger.info("no event stream (%s); polling experiment %s", exc, experiment_id)
                self._poll(experiment_id, deadline, poll_interval, bar)
        finally:
            bar.close()
        return self.get(experiment_id)

    def _poll(self, experiment_id: int, deadline: float | None, interval: float, bar: TrialBar) -> None:
        while True:
            exp = self.get(experiment_id)
            bar.set_done(exp)
            if exp.done:
                return
            if deadline is not None and time.monotonic() + interval > deadline:
                raise TimeoutError(f"experiment {experiment_id} is still {exp.state}")
            time.sleep(interval)
