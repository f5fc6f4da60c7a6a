"""``/experiments/{id}/trials``: list (filter, sort, cursor) and one trial with the tail of its log."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.engine import Connection

from service import db, store
from service.api.deps import (
    ArtifactsDep,
    CurrentToken,
    ExperimentDep,
    ExperimentId,
    SessionDep,
    not_found,
    validation_error,
)
from service.api.trial_json import TRIAL_FIELDS, ExperimentTrials, page_response, trial_cache, trial_json
from service.artifacts import ArtifactPathError, ArtifactStore
from service.schemas import MAX_ID, ErrorResponse, Page, TrialDetail, TrialPublic, TrialSort
from service.states import TrialState

__all__ = ["read_log_tail", "router"]

router = APIRouter(prefix="/experiments/{experiment_id}/trials", tags=["trials"])

_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such experiment or trial"}}
LOG_FILE = "trial.log"
DEFAULT_LOG_BYTES = 64 * 1024
MAX_LOG_BYTES = 4 * 1024 * 1024


def read_log_tail(artifacts: ArtifactStore, session: Any, experiment_id: int, number: int,
                  max_bytes: int) -> tuple[str | None, int, bool]:
    """``(text, size, truncated)`` of a trial's log: its last ``max_bytes`` bytes (``None`` if no log)."""
    row = store.get_artifact(session, experiment_id, trial_number=number, kind="log")
    relpath = row.path if row is not None else f"trials/{'pretrain' if number == -1 else number}/{LOG_FILE}"
    try:
        fh = artifacts.open(experiment_id, relpath)
    except (FileNotFoundError, ArtifactPathError):
        return None, 0, False
    with fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        fh.seek(start)
        data = fh.read(size - start)
    if start > 0:  # do not start in the middle of a UTF-8 sequence or a line
        newline = data.find(b"\n")
        if 0 <= newline < len(data) - 1:
            data = data[newline + 1:]
    return data.decode("utf-8", errors="replace"), size, start > 0


@router.get("", operation_id="listTrials", response_model=Page[TrialPublic], responses=_404)
async def list_trials(
    experiment_id: ExperimentId,
    request: Request,
    _token: CurrentToken,
    state: Annotated[list[TrialState] | None, Query(description="repeatable: ?state=succeeded&state=failed")] = None,
    sort: TrialSort = TrialSort.NUMBER,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000, description="`next_cursor` of the previous page")] = None,
) -> Any:
    """List an experiment's trials (sort by number, score, flops_ratio or duration_s; '-' = descending)."""
    # In the event loop, not the thread pool: a page seen before is one indexed query, cheaper than the
    # hop to a thread and its GIL contention (the server's throughput on this route more than doubled).
    states = tuple(sorted({st.value for st in state})) if state else None
    return trial_page(request.app.state, experiment_id, states=states, sort=sort.value, limit=limit, cursor=cursor)


def trial_page(app_state: Any, experiment_id: int, *, states: tuple[str, ...] | None, sort: str, limit: int,
               cursor: str | None) -> Response:
    """The JSON page. Under an unchanged stamp of the experiment's trials, a page seen before costs one
    small query (the stamp); otherwise the count, the page's keys (an index scan) and the trials not
    serialised yet are read.

    Read-only, so on a plain connection in autocommit mode (``db.read``). The stamp is read first,
    so every later read is at least as new as it.
    """
    cache = trial_cache(app_state)
    query = (states, sort, limit, cursor)

    def read(conn: Connection) -> tuple[ExperimentTrials, tuple[list[int], str | None], bool, dict[int, bytes]]:
        stamp = store.trials_stamp(conn, experiment_id)
        if stamp is None:
            raise not_found(f"experiment {experiment_id} not found")
        cached = cache.experiment(experiment_id, stamp)
        keys = cached.pages.get(query)
        known = keys is not None
        if keys is None:
            keys = _page_keys(conn, cached, experiment_id, states=states, sort=sort, limit=limit, cursor=cursor)
        missing = [i for i in keys[0] if i not in cached.rows]
        fresh = {row.id: trial_json(row) for row in store.trial_rows(conn, missing, TRIAL_FIELDS)} if missing else {}
        return cached, keys, known, fresh

    cached, (ids, next_cursor), known, fresh = db.read(app_state.session_factory, read)
    rows = [fresh.get(i) or cached.rows.get(i) for i in ids]
    # a row deleted between reading the page's keys and its rows (a cancelled trial re-run under a new id)
    # belongs to a changed stamp: answer without it, but do not keep the page
    complete = None not in rows
    if fresh or not known:
        cache.add(cached, fresh, query if complete else None, (ids, next_cursor))
    return page_response([r for r in rows if r is not None], cached.counts[states], next_cursor)


def _page_keys(conn: Connection, cached: ExperimentTrials, experiment_id: int, *, states: tuple[str, ...] | None,
               sort: str, limit: int, cursor: str | None) -> tuple[list[int], str | None]:
    """``(trial ids, next cursor)`` of a page from SQL; the count too when ``cached`` lacks it."""
    count = cached.counts.get(states)
    if count is None:
        count = cached.counts[states] = store.count_trials(conn, experiment_id, states=states)
    try:
        page = store.list_trials(conn, experiment_id, states=states, sort=sort, limit=limit, cursor=cursor,
                                 keys_only=True, count=count)
    except ValueError as exc:
        raise validation_error(("query", "cursor"), f"invalid cursor: {exc}", input_=cursor) from None
    return [row.id for row in page.items], page.next_cursor


@router.get("/{number}", operation_id="getTrial", response_model=TrialDetail, responses=_404)
def get_trial(
    exp: ExperimentDep,
    number: Annotated[int, Path(ge=-1, le=MAX_ID, description="the trial's number (-1: the pretrain trial)")],
    session: SessionDep,
    artifacts: ArtifactsDep,
    _token: CurrentToken,
    log_bytes: Annotated[int, Query(ge=0, le=MAX_LOG_BYTES, description="return at most the log's last N bytes")]
    = DEFAULT_LOG_BYTES,
) -> Any:
    """One trial with its metrics, error (traceback) and the tail of its log."""
    trial = store.get_trial(session, exp.id, number)
    if trial is None:
        raise not_found(f"experiment {exp.id} has no trial {number}")
    log, size, truncated = read_log_tail(artifacts, session, exp.id, number, log_bytes)
    out = TrialDetail.model_validate(trial, from_attributes=True)
    out.log, out.log_size, out.log_truncated = log, size, truncated
    return out
