"""Keyset (cursor) pagination shared by the list functions of ``service.store``.

A page is ``ORDER BY <key> <dir>, id <dir>``; the cursor holds the last row's key and id, so the
next page starts with ``WHERE (key, id) > (:key, :id)`` (``<`` when descending) — an index range
scan, never an ``OFFSET``. Rows inserted meanwhile never shift a page.

NULL keys (a trial without a score) always come last, in both directions. They are read in a
second phase (``WHERE key IS NULL AND id > :id``), so each phase stays a plain index scan on both
SQLite and PostgreSQL (no ``NULLS LAST`` sort that an index cannot serve).

The cursor is opaque to clients: urlsafe base64 of a small JSON document that also names the
sort, so a cursor cannot be replayed against another sort. Bad cursors raise
``ValueError("cursor: ...")``.

Example:
    >>> c = encode_cursor("-score", phase=0, value=0.5, last_id=42)
    >>> decode_cursor(c, "-score", float)
    (0, 0.5, 42)
    >>> decode_cursor(c, "number", int)
    Traceback (most recent call last):
    ...
    ValueError: cursor: it was made for sort '-score', not 'number'
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute, Session

__all__ = ["MAX_LIMIT", "Page", "SortKey", "decode_cursor", "encode_cursor", "keyset_page", "parse_sort"]

T = TypeVar("T")
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: ``count`` is the total number of rows matching the filter.

    Example:
        >>> Page(items=[1, 2], count=5, next_cursor="abc").count
        5
    """

    items: list[T]
    count: int
    next_cursor: str | None


@dataclass(frozen=True)
class SortKey:
    """A sortable column: its name in ``sort=``, the column, the Python type of its values."""

    column: InstrumentedAttribute[Any]
    python_type: type
    nullable: bool


def parse_sort(sort: str, keys: Mapping[str, SortKey]) -> tuple[str, SortKey, bool]:
    """Split ``"-score"`` into ``("score", keys["score"], descending=True)``; unknown → ValueError."""
    if not isinstance(sort, str):
        raise ValueError(f"sort: must be a string, got {type(sort).__name__}")
    desc = sort.startswith("-")
    name = sort[1:] if desc else sort
    if name not in keys:
        valid = ", ".join(sorted(keys))
        raise ValueError(f"sort: unknown key {name!r} (valid: {valid}, with '-' for descending)")
    return name, keys[name], desc


def _to_json(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def encode_cursor(sort: str, *, phase: int, value: Any, last_id: int) -> str:
    """The opaque cursor after a row with sort key ``value`` and primary key ``last_id``."""
    doc = {"s": sort, "p": phase, "v": _to_json(value), "i": last_id}
    raw = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, python_type: type) -> tuple[int, Any, int]:
    """Decode a cursor made by :func:`encode_cursor` for ``sort``: ``(phase, value, last_id)``."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > 2048:
        raise ValueError("cursor: not a cursor returned by this API")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("cursor: not a cursor returned by this API") from None
    if not isinstance(doc, dict) or set(doc) != {"s", "p", "v", "i"}:
        raise ValueError("cursor: not a cursor returned by this API")
    if doc["s"] != sort:
        raise ValueError(f"cursor: it was made for sort {doc['s']!r}, not {sort!r}")
    phase, value, last_id = doc["p"], doc["v"], doc["i"]
    if phase not in (0, 1) or type(last_id) is not int:
        raise ValueError("cursor: not a cursor returned by this API")
    if phase == 1:
        return phase, None, last_id
    try:
        return phase, _from_json(value, python_type), last_id
    except (TypeError, ValueError):
        raise ValueError(f"cursor: bad sort value {value!r}") from None


def _from_json(value: Any, python_type: type) -> Any:
    if python_type is dt.datetime:
        if not isinstance(value, str):
            raise TypeError(value)
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(value)
        return parsed
    if issubclass(python_type, enum.Enum):
        return python_type(value)
    if python_type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(value)
        return float(value)
    if python_type is int:
        if type(value) is not int:
            raise TypeError(value)
        return value
    if python_type is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    raise TypeError(python_type)


def keyset_page(
    s: Session | Connection,
    model: type[T],
    *,
    filters: Sequence[sa.ColumnElement[bool]],
    sort: str,
    keys: Mapping[str, SortKey],
    limit: int,
    cursor: str | None,
    columns: Sequence[Any] | None = None,
    count: int | None = None,
) -> Page[Any]:
    """One page of ``model`` rows matching ``filters``, sorted by ``sort``, after ``cursor``.

    Args:
        columns: select these instead of whole ``model`` objects; the items are then result rows,
            which must include ``id`` and the sort key under their column names (``s`` may then be a
            plain ``Connection``).
        count: the number of matching rows when the caller knows it (no ``count(*)`` query then).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be an integer in 1..{MAX_LIMIT}, got {limit!r}")
    _, key, desc = parse_sort(sort, keys)
    pk: Any = model.id  # type: ignore[attr-defined]
    col: Any = key.column
    phase, value, last_id = (0, None, None) if cursor is None else decode_cursor(cursor, sort, key.python_type)

    if count is None:
        count = s.scalar(sa.select(sa.func.count()).select_from(model).where(*filters)) or 0

    def fetch(where: list[Any], order: Sequence[Any], n: int) -> list[Any]:
        stmt = (sa.select(model) if columns is None else sa.select(*columns)).where(*where).order_by(*order).limit(n)
        return list(s.scalars(stmt) if columns is None else s.execute(stmt))

    rows: list[Any] = []
    want = limit + 1  # one extra row tells whether there is a next page
    if phase == 0:
        where = list(filters)
        if key.nullable:
            where.append(col.is_not(None))
        if last_id is not None:
            after = sa.tuple_(col, pk)
            where.append(after < (value, last_id) if desc else after > (value, last_id))
        rows = fetch(where, (col.desc(), pk.desc()) if desc else (col.asc(), pk.asc()), want)
    if key.nullable and len(rows) < want:
        where = [*filters, col.is_(None)]
        if phase == 1 and last_id is not None:
            where.append(pk < last_id if desc else pk > last_id)
        rows += fetch(where, (pk.desc() if desc else pk.asc(),), want - len(rows))

    items = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        last_value = getattr(last, key.column.key)
        next_cursor = encode_cursor(
            sort, phase=0 if last_value is not None else 1, value=last_value, last_id=last.id  # type: ignore[attr-defined]
        )
    return Page(items=items, count=int(count), next_cursor=next_cursor)
