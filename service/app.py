"""The FastAPI application factory.

``create_app(settings)`` builds the app: routers under ``/api/v1`` (experiments, trials, best,
events, models, catalog), ``/healthz`` and ``/metrics`` at the root. On startup the lifespan migrates
the database to head (``service.db.upgrade``) and, unless ``start_runner=False`` or
``PRUNESEARCH_RUNNER=off``, starts the experiment runner in a background thread; on shutdown it
stops the runner and waits for it.

Every error body is JSON ``{"detail": ...}``; validation errors use FastAPI's 422 shape
(``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from fastapi.testclient import TestClient
    >>> from service.settings import Settings
    >>> d = Path(tempfile.mkdtemp())
    >>> app = create_app(Settings(database_url=f"sqlite:///{d}/ps.db", data_dir=d, artifacts_dir=d / "a"),
    ...                  start_runner=False)
    >>> with TestClient(app) as client:
    ...     client.get("/healthz").json()["status"], client.get("/api/v1/experiments").json()["count"]
    ('ok', 0)
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service import db
from service.api import best, catalog, events, experiments, models, system, trials, web
from service.api.deps import authorize
from service.api.limits import MAX_JSON_BODY, BodyLimitMiddleware
from service.artifacts import ArtifactStore
from service.auth import AuthPolicy, auth_read_from_env
from service.settings import Settings
from service.states import IllegalTransition

__all__ = ["API_PREFIX", "create_app"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def _version() -> str:
    try:
        return metadata.version("prunesearch")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def _start_runner(app: FastAPI) -> Callable[[], None] | None:
    """Start ``service.runner.Runner.run_forever`` in a thread; return a function that stops it.

    ``None`` (with a log line) when ``service.runner`` is not importable in this installation.
    """
    try:
        from service import runner as runner_module  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name not in ("service.runner",):
            raise
        logger.warning("service.runner is not available; this API process runs no experiments")
        return None
    state = app.state
    runner = runner_module.Runner(state.settings, state.session_factory, None, state.artifacts)
    stop = threading.Event()
    beat = {"t": time.monotonic()}
    state.runner = runner
    state.runner_heartbeat = lambda: getattr(runner, "last_step_monotonic", None) or beat["t"]

    def loop() -> None:
        try:
            runner.run_forever(stop)
        except Exception:
            logger.exception("the runner thread died")

    thread = threading.Thread(target=loop, name="prunesearch-runner", daemon=True)
    thread.start()
    logger.info("runner started in thread %s", thread.name)

    def stopper() -> None:
        stop.set()
        thread.join(timeout=max(30.0, state.settings.lease_seconds))
        if thread.is_alive():
            logger.warning("the runner thread did not stop in time")
        state.runner = None
        state.runner_heartbeat = None

    return stopper


def _install_error_handlers(app: FastAPI) -> None:
    from service import store  # noqa: PLC0415

    @app.exception_handler(IllegalTransition)
    async def _illegal(request: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"detail": {"msg": str(exc), "type": "illegal_transition", "from": exc.from_state.value,
                                        "to": exc.to_state.value}}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(store.NotFoundError)
    async def _gone(request: Request, exc: Exception) -> JSONResponse:
        # deleted by someone else between our read and our write
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


def create_app(settings: Settings | None = None, *, start_runner: bool = True) -> FastAPI:
    """Build the API app.

    Args:
        settings: defaults to ``Settings.from_env()``.
        start_runner: start the experiment runner thread (also needs ``settings.runner``).
    """
    settings = settings if settings is not None else Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(db.upgrade, settings.database_url)
        # Start-up objects (modules, the app, SQLAlchemy metadata) live as long as the process: keep them out
        # of the cyclic collector's full passes, which otherwise pause a request for 20-90 ms now and then.
        gc.freeze()
        stopper = _start_runner(app) if start_runner and settings.runner else None
        try:
            yield
        finally:
            if stopper is not None:
                await run_in_threadpool(stopper)
            app.state.session_factory.kw["bind"].dispose()

    app = FastAPI(
        title="prunesearch", version=_version(), lifespan=lifespan,
        description="AutoML pruning search: submit experiments, watch trials, download the best compact model.",
        openapi_url=f"{API_PREFIX}/openapi.json", docs_url=f"{API_PREFIX}/docs", redoc_url=None,
    )
    state = app.state
    state.settings = settings
    state.session_factory = db.make_session_factory(settings.database_url)
    state.artifacts = ArtifactStore(settings.artifacts_dir)
    auth_read = getattr(settings, "auth_read", None)
    state.auth_policy = AuthPolicy(auth_read=auth_read_from_env() if auth_read is None else bool(auth_read))
    state.sse_poll_s, state.sse_keepalive_s, state.sse_retry_ms, state.sse_max_s = 0.5, 15.0, 3000, None
    state.runner, state.runner_heartbeat = None, None
    state.metrics = system.AppMetrics(state)

    guarded = [Depends(authorize)]
    for module in (experiments, trials, best, events, models, catalog):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=guarded)
    app.include_router(system.router)
    app.include_router(web.router)  # the UI: pages and static files are public; its data route checks auth itself
    _install_error_handlers(app)
    upload_path = f"{API_PREFIX}/models"
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_JSON_BODY,
                       exempt=lambda scope: scope["path"].rstrip("/") == upload_path)
    app.add_middleware(system.MetricsMiddleware, metrics=state.metrics)
    return app
