"""Dependencies shared by the routers, as ``Annotated`` aliases (``SessionDep``, ``CurrentToken``...).

The app factory puts the process-wide objects on ``app.state``: ``settings``, ``session_factory``,
``artifacts`` (an :class:`~service.artifacts.ArtifactStore`) and ``auth_policy``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service import store
from service.artifacts import ArtifactStore
from service.auth import AuthPolicy, authenticate
from service.models import ApiToken, Experiment
from service.schemas import MAX_ID
from service.settings import Settings

__all__ = [
    "ArtifactsDep",
    "CurrentToken",
    "ExperimentDep",
    "ExperimentId",
    "SessionDep",
    "SettingsDep",
    "authorize",
    "experiment_or_404",
    "get_session",
]

# Declares the scheme in OpenAPI; the policy itself is in :func:`authorize`.
_bearer = HTTPBearer(auto_error=False, description="a token from `prunesearch token create`")


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, rolled back if the route raises (routes commit what they change)."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts  # type: ignore[no-any-return]


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> ApiToken | None:
    """The caller's token (``None`` if none was needed); 401/403 as :mod:`service.auth` describes.

    Every route runs this, so a request that needs no token (a read, unless ``auth_read``) is
    answered here in the event loop: no session, no hop to the thread pool. A token is checked in
    the thread pool, in a session of its own (``authenticate`` commits its ``last_used_at``).
    """
    policy: AuthPolicy = request.app.state.auth_policy
    if not policy.needs_token(request.method):
        return None
    header = request.headers.get("authorization")
    return await run_in_threadpool(_authenticate, request.app.state.session_factory, header)


def _authenticate(session_factory: Any, authorization: str | None) -> ApiToken | None:
    with session_factory() as session:
        return authenticate(session, authorization, required=True)  # type: ignore[no-any-return]


CurrentToken = Annotated[ApiToken | None, Depends(authorize)]


def experiment_or_404(session: Session, experiment_id: int) -> Experiment:
    """The experiment, or a 404 ``{"detail": "experiment <id> not found"}``."""
    exp = store.get_experiment(session, experiment_id) if 0 < experiment_id <= MAX_ID else None
    if exp is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"experiment {experiment_id} not found")
    return exp


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=what)


def validation_error(loc: tuple[Any, ...] | list[Any], msg: str, type_: str = "value_error", input_: Any = None) -> Any:
    """A ``RequestValidationError`` in FastAPI's 422 shape, located at ``loc`` (``('query', 'cursor')``)."""
    from fastapi.exceptions import RequestValidationError  # noqa: PLC0415

    return RequestValidationError([{"type": type_, "loc": tuple(loc), "msg": msg, "input": input_}])


ExperimentId = Annotated[int, Path(ge=1, le=MAX_ID, description="the experiment's id")]


def _experiment_dep(experiment_id: ExperimentId, session: SessionDep) -> Experiment:
    return experiment_or_404(session, experiment_id)


ExperimentDep = Annotated[Experiment, Depends(_experiment_dep)]
