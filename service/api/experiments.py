"""``/experiments``: submit, list, get, cancel, resume, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError

from service import store
from service.api.deps import ArtifactsDep, CurrentToken, ExperimentDep, SessionDep, validation_error
from service.api.specs import SpecRejected, check_spec
from service.schemas import (
    ErrorResponse,
    ExperimentCreate,
    ExperimentPublic,
    ExperimentSort,
    Page,
    TransitionConflict,
)
from service.states import ExperimentState, IllegalTransition

__all__ = ["router", "transition_conflict"]

router = APIRouter(prefix="/experiments", tags=["experiments"])

Responses = dict[int | str, dict[str, Any]]
_404: Responses = {404: {"model": ErrorResponse, "description": "no such experiment"}}
_409: Responses = {409: {"model": TransitionConflict, "description": "illegal state transition"}}
_AUTH: Responses = {401: {"model": ErrorResponse, "description": "missing or invalid token"},
                    403: {"model": ErrorResponse, "description": "revoked token"}}
_NO_NUL = r"^[^\x00]*$"


def transition_conflict(exc: IllegalTransition) -> HTTPException:
    """409 ``{"detail": {"msg", "type": "illegal_transition", "from", "to"}}``."""
    return HTTPException(status.HTTP_409_CONFLICT, detail={
        "msg": str(exc), "type": "illegal_transition",
        "from": exc.from_state.value, "to": exc.to_state.value,
    })


def _resolve_upload(session: Any, artifacts: Any) -> Any:
    """``reference -> absolute path`` of an uploaded model (``None``: no upload has that reference)."""

    def resolve(reference: str) -> str | None:
        row = next((m for m in store.list_uploaded_models(session) if m.path == reference), None)
        return None if row is None else str(artifacts.root / row.path)

    return resolve


@router.post(
    "", operation_id="createExperiment", status_code=status.HTTP_201_CREATED, response_model=ExperimentPublic,
    responses={**_AUTH, 422: {"description": "the spec is invalid; `loc` is ['body', 'spec', <path>...]"}},
)
def create_experiment(body: ExperimentCreate, session: SessionDep, artifacts: ArtifactsDep, token: CurrentToken,
                      response: Response) -> Any:
    """Submit an experiment spec; it is validated fully and queued."""
    try:
        spec = check_spec(body.spec, resolve_weights=_resolve_upload(session, artifacts), max_trials=body.max_trials)
    except SpecRejected as exc:
        raise RequestValidationError([exc.to_error()]) from None
    from search.algorithms.registry import algorithm_entry  # noqa: PLC0415

    algorithm = algorithm_entry(spec.algorithm.name).name
    exp = store.create_experiment(
        session, spec=spec.to_dict(), name=spec.name, algorithm=algorithm, model=spec.model.factory,
        max_trials=spec.algorithm.params.get("max_trials"), owner_token_id=getattr(token, "id", None),
    )
    session.commit()
    response.headers["Location"] = f"/api/v1/experiments/{exp.id}"
    return exp


@router.get("", operation_id="listExperiments", response_model=Page[ExperimentPublic], responses=_AUTH)
def list_experiments(
    session: SessionDep,
    _token: CurrentToken,
    state: Annotated[list[ExperimentState] | None, Query(description="repeatable: ?state=queued&state=running")] = None,
    algorithm: Annotated[str | None, Query(max_length=64, pattern=_NO_NUL)] = None,
    q: Annotated[str | None, Query(max_length=200, pattern=_NO_NUL, description="name contains")] = None,
    sort: ExperimentSort = ExperimentSort.CREATED_AT_DESC,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000, description="`next_cursor` of the previous page")] = None,
) -> Any:
    """List experiments, newest first by default; filter by state, algorithm and name."""
    try:
        page = store.list_experiments(session, states=state or None, algorithm=algorithm, name_contains=q or None,
                                      sort=sort.value, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise validation_error(("query", "cursor"), f"invalid cursor: {exc}", input_=cursor) from None
    return Page[ExperimentPublic](data=[ExperimentPublic.model_validate(e) for e in page.items], count=page.count,
                                  next_cursor=page.next_cursor)


@router.get("/{experiment_id}", operation_id="getExperiment", response_model=ExperimentPublic,
            responses={**_404, **_AUTH})
def get_experiment(exp: ExperimentDep, _token: CurrentToken) -> Any:
    """One experiment with its state, progress and best score."""
    return exp


@router.post("/{experiment_id}/cancel", operation_id="cancelExperiment", response_model=ExperimentPublic,
             responses={**_404, **_409, **_AUTH})
def cancel_experiment(exp: ExperimentDep, session: SessionDep, _token: CurrentToken) -> Any:
    """Cancel: a queued experiment at once, a running one after its trials are stopped (state cancelling)."""
    if exp.state == ExperimentState.CANCELLING:
        return exp  # already on its way; cancelling twice is not an error
    try:
        exp = store.request_cancel(session, exp.id)
    except IllegalTransition as exc:
        session.rollback()
        raise transition_conflict(exc) from None
    session.commit()
    return exp


@router.post("/{experiment_id}/resume", operation_id="resumeExperiment", response_model=ExperimentPublic,
             responses={**_404, **_409, **_AUTH})
def resume_experiment(exp: ExperimentDep, session: SessionDep, _token: CurrentToken) -> Any:
    """Queue a cancelled or failed experiment again; finished trials are kept, the search continues."""
    try:
        exp = store.request_resume(session, exp.id)
    except IllegalTransition as exc:
        session.rollback()
        raise transition_conflict(exc) from None
    session.commit()
    return exp


@router.delete(
    "/{experiment_id}", operation_id="deleteExperiment", status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**_404, **_AUTH, 409: {"model": ErrorResponse, "description": "active; pass force=true"}},
)
def delete_experiment(
    exp: ExperimentDep, session: SessionDep, artifacts: ArtifactsDep, _token: CurrentToken,
    force: Annotated[bool, Query(description="cancel an active experiment first instead of answering 409")] = False,
) -> Response:
    """Delete an experiment, its trials, events and artifacts (409 while active unless force=true)."""
    if not exp.state.is_terminal():
        if not force:
            raise HTTPException(status.HTTP_409_CONFLICT, detail={
                "msg": f"experiment {exp.id} is {exp.state.value}; cancel it first or pass ?force=true",
                "type": "experiment_active", "state": exp.state.value,
            })
        if exp.state == ExperimentState.QUEUED or exp.state == ExperimentState.RUNNING:
            store.request_cancel(session, exp.id)
            session.commit()
    experiment_id = exp.id
    store.delete_experiment(session, experiment_id)
    session.commit()
    artifacts.delete_experiment(experiment_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
