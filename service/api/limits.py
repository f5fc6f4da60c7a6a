"""A request-body size limit for the JSON routes (uploads have their own, larger one).

A declared ``Content-Length`` over the limit is answered 413 before anything is read; a body that
streams past it (chunked) is cut off: the client gets the 413 and the app sees a disconnect, and
whatever the app tries to send afterwards is dropped.

Example:
    >>> BodyLimitMiddleware(app=None, max_bytes=10).max_bytes
    10
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_JSON_BODY", "BodyLimitMiddleware"]

#: Largest JSON body accepted (a spec is a few KiB).
MAX_JSON_BODY = 1024 * 1024


async def _send_413(send: Any, max_bytes: int) -> None:
    body = json.dumps({"detail": f"request body larger than {max_bytes} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Pure ASGI middleware refusing request bodies over ``max_bytes`` with 413 (unless ``exempt(scope)``)."""

    def __init__(self, app: Any, max_bytes: int = MAX_JSON_BODY,
                 exempt: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt or (lambda scope: False)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        state = {"seen": 0, "answered": False}

        async def limited_receive() -> Any:
            if state["answered"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["answered"] = True
                    await _send_413(send, self.max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Any) -> None:
            if not state["answered"]:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["answered"]:
                raise  # a real error; the 413 case only ends in the disconnect we caused
