"""``GET /experiments/{id}/events``: the experiment's events as Server-Sent Events (see :mod:`service.sse`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from service import store
from service.api.deps import CurrentToken, ExperimentDep, SessionDep, validation_error
from service.schemas import ErrorResponse
from service.sse import EventBatch, event_stream

__all__ = ["router"]

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["events"])

_BATCH = 500
_SSE_DOC = (
    "`text/event-stream`. First `retry: <ms>`, then one message per event: `id: <event id>`, "
    "`event: <kind>` (experiment_state, trial_started, trial_finished, trial_failed, trial_discarded, "
    "trial_progress, best_changed, log), `data: <JSON>`; `: keep-alive` comments while idle. After the "
    "experiment reached a terminal state and every event was sent: `event: end` with `data: {\"state\", \"last_event_id\"}` "
    "and the stream closes. Resume with the `Last-Event-ID` header or `?after=<id>`."
)


def _fetcher(request: Request, experiment_id: int) -> Any:
    factory = request.app.state.session_factory

    def fetch(after: int) -> EventBatch:
        with factory() as session:
            exp = store.get_experiment(session, experiment_id)
            if exp is None:
                return EventBatch(state=None)
            # read the state first: events committed with a terminal state are then surely in the batch
            state = exp.state
            events = store.events_after(session, experiment_id, after, limit=_BATCH)
            return EventBatch(
                events=[(e.id, e.kind, e.data if isinstance(e.data, dict) else {"value": e.data}) for e in events],
                state=state.value, terminal=state.is_terminal(),
            )

    return fetch


@router.get(
    "/events", operation_id="streamEvents", response_class=StreamingResponse,
    responses={200: {"description": _SSE_DOC, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
               404: {"model": ErrorResponse, "description": "no such experiment"}},
)
def stream_events(
    request: Request,
    exp: ExperimentDep,
    session: SessionDep,
    _token: CurrentToken,
    after: Annotated[int | None, Query(ge=0, le=2**62, description="send events with id > after")] = None,
    last_event_id: Annotated[str | None, Header(max_length=32, description="the id of the last event received")]
    = None,
) -> StreamingResponse:
    """Live events of an experiment (Server-Sent Events), resumable with Last-Event-ID."""
    cursor = after or 0
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise validation_error(("header", "last-event-id"), "must be a non-negative integer event id", input_=text)
        cursor = max(cursor, int(text))
    session.close()  # the stream polls with short sessions of its own; hold no connection while it runs
    state = request.app.state
    body = event_stream(_fetcher(request, exp.id), cursor, poll_s=state.sse_poll_s,
                        keepalive_s=state.sse_keepalive_s, retry_ms=state.sse_retry_ms, max_s=state.sse_max_s)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
