"""Bearer-token authentication of the REST API.

Policy:

* no token exists (a fresh install): the API is open;
* once a token exists (``prunesearch token create``), every mutating call (POST, PUT, PATCH,
  DELETE) needs ``Authorization: Bearer <token>``: a missing, malformed or unknown token is
  **401** (with ``WWW-Authenticate: Bearer``), a revoked token is **403**;
* reads (GET, HEAD) stay open unless ``PRUNESEARCH_AUTH_READ=1`` (then they need a token too).

Example:
    >>> parse_bearer("Bearer ps_abc"), parse_bearer("bearer  ps_abc "), parse_bearer("Basic dXNlcg==")
    ('ps_abc', 'ps_abc', None)
    >>> token_hash("ps_x") == token_hash("ps_x")
    True
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from fastapi import HTTPException, status

__all__ = ["AuthPolicy", "auth_read_from_env", "authenticate", "parse_bearer", "token_hash"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None`` if it is not one."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        return None
    return value


def token_hash(plaintext: str) -> str:
    """Hex sha256 of a token's secret (what ``api_tokens.hash`` holds)."""
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


def auth_read_from_env(env: Any = None) -> bool:
    """``PRUNESEARCH_AUTH_READ`` as a bool (default off)."""
    env = os.environ if env is None else env
    return str(env.get("PRUNESEARCH_AUTH_READ", "")).strip().lower() in ("1", "on", "true", "yes")


class AuthPolicy:
    """Which requests need a token. ``auth_read``: reads need one too (when tokens exist)."""

    def __init__(self, *, auth_read: bool = False) -> None:
        self.auth_read = auth_read

    def needs_token(self, method: str) -> bool:
        return self.auth_read or method.upper() not in SAFE_METHODS


def _unauthorized(message: str, error: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": f'Bearer realm="prunesearch", error="{error}"'},
    )


def authenticate(session: Any, authorization: str | None, *, required: bool) -> Any | None:
    """The caller's :class:`~service.models.ApiToken`, or ``None`` when no token is needed.

    Args:
        session: an open SQLAlchemy session.
        authorization: the raw ``Authorization`` header.
        required: whether this request needs a token (see :class:`AuthPolicy`).

    Raises:
        HTTPException: 401 (missing / malformed / unknown token) or 403 (revoked token).
    """
    import sqlalchemy as sa  # noqa: PLC0415

    from service import store  # noqa: PLC0415
    from service.models import ApiToken  # noqa: PLC0415

    if not required:
        return None  # reads are open: a token, if sent, is not even looked at (and no query is made)
    if not store.tokens_exist(session):
        return None
    plaintext = parse_bearer(authorization)
    if plaintext is None:
        if authorization:
            raise _unauthorized("malformed Authorization header; expected 'Bearer <token>'", "invalid_request")
        raise _unauthorized("this server requires a bearer token for this call", "invalid_request")
    token = store.verify_token(session, plaintext)
    if token is not None:
        session.commit()  # verify_token stamps last_used_at
        return token
    known = session.scalar(sa.select(ApiToken).where(ApiToken.hash == token_hash(plaintext)))
    if known is not None and known.revoked_at is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"token {known.prefix!r} was revoked")
    raise _unauthorized("invalid bearer token", "invalid_token")
