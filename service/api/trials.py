"""``/experiments/{id}/trials``: list (filter, sort, cursor) and one trial with the tail of its log."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from service import store
from service.api.deps import (
    ArtifactsDep,
    CurrentToken,
    ExperimentDep,
    SessionDep,
    not_found,
    validation_error,
)
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
def list_trials(
    exp: ExperimentDep,
    session: SessionDep,
    _token: CurrentToken,
    state: Annotated[list[TrialState] | None, Query(description="repeatable: ?state=succeeded&state=failed")] = None,
    sort: TrialSort = TrialSort.NUMBER,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000, description="`next_cursor` of the previous page")] = None,
) -> Any:
    """List an experiment's trials (sort by number, score, flops_ratio or duration_s; '-' = descending)."""
    try:
        page = store.list_trials(session, exp.id, states=state or None, sort=sort.value, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise validation_error(("query", "cursor"), f"invalid cursor: {exc}", input_=cursor) from None
    return Page[TrialPublic](data=[TrialPublic.model_validate(t) for t in page.items], count=page.count,
                             next_cursor=page.next_cursor)


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
