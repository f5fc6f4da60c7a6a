"""Server-Sent Events: the wire format and a polling stream that ends when the experiment is done.

The stream sends, in order: a ``retry:`` hint (milliseconds the client waits before reconnecting),
then one message per stored event::

    id: 42
    event: trial_finished
    data: {"number": 3, "score": 0.97, ...}

and a ``: keep-alive`` comment whenever nothing was sent for ``keepalive_s`` seconds (proxies drop
idle connections). Once the experiment is in a terminal state and every event was sent, a last
``event: end`` message (no ``id``, ``data: {"state": ...}``) is sent and the stream closes, so a
client can tell a finished stream from a dropped connection; on a drop (or when the server closes
a stream that has been open longer than its limit) it reconnects with the ``Last-Event-ID`` header
(or ``?after=``) and gets exactly the events it missed.

Example:
    >>> format_event(7, "log", {"line": "hi"})
    'id: 7\\nevent: log\\ndata: {"line":"hi"}\\n\\n'
    >>> format_comment("keep-alive")
    ': keep-alive\\n\\n'
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

__all__ = ["EventBatch", "event_stream", "format_comment", "format_event", "format_retry"]

logger = logging.getLogger(__name__)


def _one_line(text: str) -> str:
    # A data field must not contain a bare newline; compact JSON never does, but be safe for strings.
    return text.replace("\r", " ").replace("\n", " ")


def format_event(event_id: int | None, kind: str, data: Any) -> str:
    """One SSE message: ``id``, ``event`` and compact JSON ``data`` lines, then a blank line."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {_one_line(kind)}")
    lines.append(f"data: {_one_line(json.dumps(data, separators=(',', ':'), default=str))}")
    return "\n".join(lines) + "\n\n"


def format_comment(text: str) -> str:
    """An SSE comment line (ignored by clients; keeps the connection alive)."""
    return f": {_one_line(text)}\n\n"


def format_retry(milliseconds: int) -> str:
    """The reconnection-delay hint."""
    return f"retry: {int(milliseconds)}\n\n"


@dataclass
class EventBatch:
    """What one poll found: ``(id, kind, data)`` events after the cursor, and the experiment's state.

    ``state`` is ``None`` when the experiment no longer exists (deleted while streaming).
    """

    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    state: str | None = None
    terminal: bool = False


async def event_stream(
    fetch: Callable[[int], EventBatch],
    after: int,
    *,
    poll_s: float = 0.5,
    keepalive_s: float = 15.0,
    retry_ms: int = 3000,
    max_s: float | None = None,
) -> AsyncIterator[str]:
    """Yield SSE text for events with id > ``after`` until the experiment is terminal and drained.

    Args:
        fetch: ``fetch(after_id) -> EventBatch``, a blocking call (run in the thread pool).
        after: the last event id the client has (0: from the start).
        poll_s: seconds between polls while nothing new arrived.
        keepalive_s: send a comment after this long without a message.
        retry_ms: the ``retry:`` hint sent first.
        max_s: close the stream (without ``end``) after this long; the client reconnects and resumes.
    """
    yield format_retry(retry_ms)
    started = last_sent = time.monotonic()
    cursor = after
    while True:
        batch = await run_in_threadpool(fetch, cursor)
        for event_id, kind, data in batch.events:
            cursor = max(cursor, event_id)
            yield format_event(event_id, kind, data)
            last_sent = time.monotonic()
        if batch.events:
            continue  # drain everything before deciding to stop or to sleep
        if batch.state is None or batch.terminal:
            yield format_event(None, "end", {"state": batch.state, "last_event_id": cursor})
            return
        if max_s is not None and time.monotonic() - started >= max_s:
            return
        if time.monotonic() - last_sent >= keepalive_s:
            yield format_comment("keep-alive")
            last_sent = time.monotonic()
        await anyio.sleep(poll_s)
