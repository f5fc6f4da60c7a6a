"""The JSON of ``GET /experiments/{id}/trials``, built once per trial and reused while trials do not change.

FastAPI validates a route's return value against its ``response_model`` (pydantic) and then
encodes it; for a page of 50 trials with their metrics that was most of the request's time. The
list route returns the bytes built here instead (it keeps ``response_model`` for the OpenAPI
schema; FastAPI passes a ``Response`` through untouched):

* :func:`trial_json` serialises one trial row with orjson: the fields of
  :class:`~service.schemas.TrialPublic` in its order, datetimes as pydantic writes them
  (``2030-01-01T00:00:00Z``) and non-finite floats as ``null`` (pydantic's default too);
* :class:`TrialJsonCache` keeps, per experiment, the JSON of the trials it served and the trial
  counts per state filter, for one ``store.trials_stamp``. A database trigger bumps the stamp's
  ``trials_version`` on every write to one of the experiment's trials, and the route reads the
  stamp before anything else, so whatever it finds under that stamp is at least as new as the
  request: a trial written before the request started is never served stale. Least recently
  listed experiments are dropped beyond ``max_bytes``.

Example:
    >>> cache = TrialJsonCache(max_bytes=1000)
    >>> entry = cache.experiment(1, stamp=("2030-01-01", 7))
    >>> cache.add(entry, {10: b'{"number":0}'})
    >>> cache.experiment(1, stamp=("2030-01-01", 7)).rows
    {10: b'{"number":0}'}
    >>> cache.experiment(1, stamp=("2030-01-01", 8)).rows  # a trial was written since
    {}
    >>> page_response([b'{"number":0}'], 1, None).body
    b'{"data":[{"number":0}],"count":1,"next_cursor":null}'
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Response

from service.schemas import TrialPublic

__all__ = ["DEFAULT_MAX_BYTES", "TRIAL_FIELDS", "ExperimentTrials", "TrialJsonCache", "page_response", "trial_cache",
           "trial_json"]

#: the columns a listed trial shows, in the order of :class:`~service.schemas.TrialPublic`.
TRIAL_FIELDS: tuple[str, ...] = tuple(TrialPublic.model_fields)
#: per API process: the JSON of ~40,000 listed trials (a 10,000-trial experiment takes ~8 MB).
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
#: roughly what a cached page's key and tuple take besides its ids and cursor.
_PAGE_OVERHEAD = 200


def trial_json(row: Sequence[Any]) -> bytes:
    """One trial as JSON, from a row of ``id`` followed by the :data:`TRIAL_FIELDS` columns."""
    values = dict(zip(TRIAL_FIELDS, row[1:], strict=True))
    try:
        return orjson.dumps(values, option=orjson.OPT_UTC_Z)
    except TypeError:  # what orjson cannot write (an integer beyond 64 bits in a JSON column): pydantic can
        return TrialPublic.model_validate(values).model_dump_json().encode()


def page_response(rows: Sequence[bytes], count: int, next_cursor: str | None) -> Response:
    """The ``{"data", "count", "next_cursor"}`` envelope around already serialised rows."""
    body = b'{"data":[%s],"count":%d,"next_cursor":%s}' % (b",".join(rows), count, orjson.dumps(next_cursor))
    return Response(body, media_type="application/json")


@dataclass
class ExperimentTrials:
    """What is cached for one experiment under one stamp.

    ``rows``: trial id -> its JSON; ``counts``: state filter -> number of trials; ``pages``: the
    query of a page (state filter, sort, limit, cursor) -> its trial ids and next cursor.
    """

    experiment_id: int
    stamp: Any
    rows: dict[int, bytes] = field(default_factory=dict)
    counts: dict[tuple[str, ...] | None, int] = field(default_factory=dict)
    pages: dict[tuple[Any, ...], tuple[list[int], str | None]] = field(default_factory=dict)
    size: int = 0


class TrialJsonCache:
    """Serialised trials of the most recently listed experiments (thread-safe; one per app)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, ExperimentTrials] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def experiment(self, experiment_id: int, stamp: Any) -> ExperimentTrials:
        """The experiment's entry for ``stamp``: an empty one when the cached one has another stamp."""
        with self._lock:
            entry = self._entries.get(experiment_id)
            if entry is None or entry.stamp != stamp:
                self._size -= entry.size if entry is not None else 0
                entry = self._entries[experiment_id] = ExperimentTrials(experiment_id, stamp)
            self._entries.move_to_end(experiment_id)
            return entry

    def add(self, entry: ExperimentTrials, rows: dict[int, bytes], page: tuple[Any, ...] | None = None,
            keys: tuple[list[int], str | None] | None = None) -> None:
        """Cache ``rows`` (trial id -> JSON) and the ``keys`` of ``page`` in ``entry``, then drop the least
        recently listed experiments beyond ``max_bytes``."""
        size = sum(len(b) for b in rows.values())
        with self._lock:
            if self._entries.get(entry.experiment_id) is not entry:
                return  # replaced meanwhile (a trial was written): nobody will look here again
            entry.rows.update(rows)
            if page is not None and keys is not None and page not in entry.pages:
                entry.pages[page] = keys
                size += 8 * len(keys[0]) + len(keys[1] or "") + _PAGE_OVERHEAD
            entry.size += size
            self._size += size
            while self._size > self.max_bytes and self._entries:  # whoever holds a dropped entry may still read it
                self._size -= self._entries.popitem(last=False)[1].size


def trial_cache(app_state: Any) -> TrialJsonCache:
    """The app's cache, made on first use."""
    cache = getattr(app_state, "trial_json_cache", None)
    if cache is None:
        cache = app_state.trial_json_cache = TrialJsonCache()
    return cache
