"""``/healthz`` and ``/metrics`` (Prometheus text), outside the ``/api/v1`` prefix.

Metrics (a registry per app, so several apps in one process do not clash):

* ``prunesearch_experiments{state}`` and ``prunesearch_trials{state}``: counts read from SQL at scrape time;
* ``prunesearch_runner_heartbeat_age_seconds``: seconds since this process's runner last stepped
  (absent when no runner runs in this process);
* ``prunesearch_http_request_duration_seconds{method,operation,status}``: request latency histogram
  by the route's operation id (``getExperiment``; ``unmatched`` for unknown paths), so ids in paths
  do not explode the label set; SSE streams are not timed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.models import Experiment, Trial
from service.schemas import ErrorResponse, Health
from service.states import ExperimentState, TrialState

__all__ = ["AppMetrics", "MetricsMiddleware", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["system"])


class _StateCollector(Collector):
    def __init__(self, app_state: Any) -> None:
        self.app_state = app_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        experiments = GaugeMetricFamily("prunesearch_experiments", "Experiments by state", labels=["state"])
        trials = GaugeMetricFamily("prunesearch_trials", "Trials by state", labels=["state"])
        try:
            with self.app_state.session_factory() as session:
                exp_counts = dict(session.execute(sa.select(Experiment.state, sa.func.count()).group_by(Experiment.state)).all())
                trial_counts = dict(session.execute(sa.select(Trial.state, sa.func.count()).group_by(Trial.state)).all())
        except Exception as exc:  # a scrape must not fail because the database is down; /healthz says so
            logger.warning("metrics: cannot read counts: %s", exc)
            exp_counts, trial_counts = {}, {}
        for st in ExperimentState:
            experiments.add_metric([st.value], exp_counts.get(st, 0))
        for ts in TrialState:
            trials.add_metric([ts.value], trial_counts.get(ts, 0))
        yield experiments
        yield trials
        beat = getattr(self.app_state, "runner_heartbeat", None)
        if beat is not None:
            age = GaugeMetricFamily("prunesearch_runner_heartbeat_age_seconds",
                                    "Seconds since this process's runner last completed a step")
            age.add_metric([], max(0.0, time.monotonic() - beat()))
            yield age


class AppMetrics:
    """The per-app Prometheus registry and its request histogram."""

    def __init__(self, app_state: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "prunesearch_http_request_duration_seconds", "HTTP request latency",
            ["method", "operation", "status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.registry.register(_StateCollector(app_state))


class MetricsMiddleware:
    """Pure ASGI middleware timing each HTTP request (SSE responses excluded)."""

    def __init__(self, app: Any, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info: dict[str, Any] = {"status": 500, "stream": False}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
                headers = dict(message.get("headers") or [])
                info["stream"] = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not info["stream"]:
                route = scope.get("route")
                operation = getattr(route, "operation_id", None) or getattr(route, "name", None) or "unmatched"
                self.metrics.requests.labels(scope["method"], operation, str(info["status"])).observe(
                    time.perf_counter() - started)


@router.get("/healthz", operation_id="healthz", response_model=Health,
            responses={503: {"model": ErrorResponse, "description": "the database is unreachable"}})
def healthz(request: Request) -> Any:
    """Liveness and database reachability."""
    try:
        with request.app.state.session_factory() as session:
            session.execute(sa.text("SELECT 1"))
    except Exception as exc:
        logger.warning("healthz: database unreachable: %s", exc)
        return JSONResponse({"detail": f"database unreachable: {type(exc).__name__}"}, status_code=503)
    return Health(status="ok", database="ok", version=request.app.version)


@router.get("/metrics", operation_id="metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(request: Request) -> Response:
    """Prometheus metrics: experiments and trials by state, request latency, runner heartbeat age."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
