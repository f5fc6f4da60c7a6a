"""Types of the SDK (:mod:`service.client`): the objects the API returns and the errors it raises.

Plain dataclasses built from the API's JSON; unknown fields are ignored, so a newer server does
not break an older client. Nothing here imports the server's code.

Example:
    >>> exp = Experiment.from_json({"id": 3, "name": "x", "state": "running", "algorithm": "agp",
    ...                             "model": "search.zoo:digits_cnn", "spec": {},
    ...                             "created_at": "2030-01-01T00:00:00Z", "n_trials": 2})
    >>> exp.id, exp.done, exp.created_at.year
    (3, False, 2030)
    >>> format_loc(["body", "spec", "pruner", "config_list", 0, "sparse_ratio"])
    'spec.pruner.config_list[0].sparse_ratio'
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import httpx

__all__ = [
    "FORMATS",
    "TERMINAL_STATES",
    "ApiConnectionError",
    "ApiError",
    "BadRequest",
    "Best",
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
    "error_from_response",
    "format_loc",
]

T = TypeVar("T")

#: Experiment states after which nothing changes any more (until a resume).
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
#: Formats of ``download_best``.
FORMATS = ("pt2", "onnx", "safetensors", "masks")


# -- errors -------------------------------------------------------------------------------------------


def format_loc(loc: list[Any] | tuple[Any, ...]) -> str:
    """A FastAPI error location as a field path (``body`` dropped, list indexes in brackets)."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(request)"


class ApiError(Exception):
    """An error answer of the server.

    Attributes:
        status_code: the HTTP status (0 when the server was not reached).
        body: the decoded JSON body (or the text when it was not JSON).
        message: a one-line description.
    """

    status_code: int = 0

    def __init__(self, message: str, *, status_code: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.body = body

    def __str__(self) -> str:
        return f"{self.status_code} {self.message}" if self.status_code else self.message


class ApiConnectionError(ApiError):
    """The server could not be reached (refused, DNS, TLS, timeout, dropped)."""


class EventStreamUnavailable(ApiError):
    """The server (or a proxy in front of it) does not serve the event stream."""


class BadRequest(ApiError):
    """400: the request was malformed."""

    status_code = 400


class Unauthorized(ApiError):
    """401: a token is needed (``--token`` / ``PRUNESEARCH_TOKEN``) or the one sent is unknown."""

    status_code = 401


class Forbidden(ApiError):
    """403: the token was revoked."""

    status_code = 403


class NotFound(ApiError):
    """404: no such experiment, trial or export (yet)."""

    status_code = 404


class Conflict(ApiError):
    """409: the experiment's state does not allow this (cancel a finished one, resume a running one)."""

    status_code = 409


class ValidationError(ApiError):
    """422: the input is invalid. ``errors`` is a list of ``{"loc", "msg", "type", "path"}`` dicts.

    Example:
        >>> err = ValidationError.from_detail([{"loc": ["body", "spec", "name"], "msg": "is required"}])
        >>> err.errors[0]["path"], str(err)
        ('spec.name', '422 spec.name: is required')
    """

    status_code = 422

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None, status_code: int | None = None,
                 body: Any = None) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.errors = errors or []

    @classmethod
    def from_detail(cls, detail: Any, body: Any = None) -> ValidationError:
        errors = []
        for item in detail if isinstance(detail, list) else [detail]:
            if isinstance(item, dict):
                loc = list(item.get("loc") or [])
                errors.append({"loc": loc, "msg": str(item.get("msg", "")), "type": item.get("type"),
                               "path": format_loc(loc)})
            else:
                errors.append({"loc": [], "msg": str(item), "type": None, "path": "(request)"})
        message = "; ".join(f"{e['path']}: {e['msg']}" for e in errors) or "invalid input"
        return cls(message, errors=errors, body=body)


class DownloadError(OSError):
    """A download was cut short or its bytes do not match the server's checksum."""


_BY_STATUS: dict[int, type[ApiError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 422: ValidationError}


def _detail_message(detail: Any) -> str:
    if isinstance(detail, dict):
        return str(detail.get("msg") or detail)
    if isinstance(detail, list):
        return "; ".join(f"{format_loc(d.get('loc') or [])}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                         for d in detail)
    return str(detail)


def error_from_response(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` subclass for an error response, with its decoded body."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = body.get("detail", body) if isinstance(body, dict) else body
    status = response.status_code
    cls = _BY_STATUS.get(status, ApiError)
    if cls is ValidationError:
        return ValidationError.from_detail(detail, body)
    message = _detail_message(detail) if detail not in (None, "") else response.reason_phrase
    return cls(message or f"HTTP {status}", status_code=status, body=body)


# -- resources ----------------------------------------------------------------------------------------


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class _FromJson:
    _times: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in data.items() if k in names}
        for name in cls._times:
            if name in values:
                values[name] = _time(values[name])
        return cls(**values)


@dataclass
class Experiment(_FromJson):
    """An experiment as the server reports it (``state``: queued, running, cancelling, succeeded,
    failed, cancelled)."""

    id: int
    name: str
    state: str
    algorithm: str = ""
    model: str = ""
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error: str | None = field(default=None, repr=False)
    best_trial_number: int | None = None
    best_score: float | None = None
    best_flops_ratio: float | None = None
    n_trials: int = 0
    max_trials: int | None = None
    cancel_requested: bool = False

    _times: ClassVar[tuple[str, ...]] = ("created_at", "updated_at", "started_at", "finished_at")

    @property
    def done(self) -> bool:
        """Whether the experiment is in a terminal state (succeeded, failed, cancelled)."""
        return self.state in TERMINAL_STATES


@dataclass
class Trial(_FromJson):
    """One trial (``number`` -1 is the pretrain trial); ``log`` only from ``Client.trial``."""

    number: int
    state: str
    parent_number: int | None = None
    attempt: int = 1
    params: dict[str, Any] | None = field(default=None, repr=False)
    config_list: list[dict[str, Any]] | None = field(default=None, repr=False)
    score: float | None = None
    metrics: dict[str, Any] | None = field(default=None, repr=False)
    requested_sparsity: dict[str, Any] | None = field(default=None, repr=False)
    achieved_sparsity: dict[str, Any] | None = field(default=None, repr=False)
    error: str | None = field(default=None, repr=False)
    worker: str | None = None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    duration_s: float | None = None
    log: str | None = field(default=None, repr=False)
    log_size: int = 0
    log_truncated: bool = False

    _times: ClassVar[tuple[str, ...]] = ("created_at", "started_at", "finished_at")
    _RECORD: ClassVar[tuple[str, ...]] = ("number", "parent_number", "attempt", "state", "score", "duration_s",
                                         "worker", "started_at", "finished_at", "error")

    def as_record(self) -> dict[str, Any]:
        """A flat dict: the trial's fields, its metrics as columns, ``mean_sparsity``, ``config_list``."""
        record = {name: getattr(self, name) for name in self._RECORD}
        for key, value in (self.metrics or {}).items():
            record[key if key not in record else f"metrics.{key}"] = value
        sparsity = [v for v in (self.achieved_sparsity or {}).values() if isinstance(v, (int, float))]
        record["mean_sparsity"] = sum(sparsity) / len(sparsity) if sparsity else None
        record["config_list"] = self.config_list
        return record

    @classmethod
    def record_columns(cls, records: list[dict[str, Any]]) -> list[str]:
        """Column order of :meth:`as_record` rows: fixed fields, then metrics in first-seen order."""
        columns = list(cls._RECORD)
        for record in records:
            columns.extend(k for k in record if k not in columns and k not in ("mean_sparsity", "config_list"))
        return [*columns, "mean_sparsity", "config_list"]


@dataclass
class Export(_FromJson):
    """A downloadable export of the best model (``format``: pt2, onnx, safetensors, masks)."""

    format: str
    size: int
    content_type: str = "application/octet-stream"
    sha256: str | None = None
    created_at: dt.datetime | None = None
    url: str = ""

    _times: ClassVar[tuple[str, ...]] = ("created_at",)


@dataclass
class Best:
    """The best trial so far and its exports (empty until the experiment ends)."""

    experiment_id: int
    trial: Trial
    exports: list[Export]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Best:
        return cls(int(data["experiment_id"]), Trial.from_json(data["trial"]),
                   [Export.from_json(e) for e in data.get("exports", [])])


@dataclass(frozen=True)
class Event:
    """One event of an experiment's stream: ``id`` (``None`` for the final ``end``), ``kind``, ``data``.

    Kinds: experiment_state, trial_started, trial_progress, trial_finished, trial_failed,
    trial_discarded (``{number, reason, running}``: a task the algorithm ran ahead of a decision and
    then took out of the search), best_changed, log, and ``end`` (the stream is over;
    ``data["state"]`` is the final state).
    """

    id: int | None
    kind: str
    data: Any


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: the items, how many match in all, the cursor of the next page."""

    items: list[T]
    count: int
    next_cursor: str | None = None
