"""Trials, events and experiment leases: the part of the repository the runner writes.

Import these through ``service.store`` (they are re-exported there); the transaction rule of that
module holds here too: functions flush, the caller commits.

Leases (see ``Runner`` in ``service.runner``): an experiment is driven by the runner whose
``owner`` id is in ``lease_owner`` while ``lease_expires_at`` is in the future.
:func:`claim_experiment` is one conditional ``UPDATE`` — of two runners racing for the same
experiment exactly one sees a matched row — :func:`renew_lease` is the heartbeat and
:func:`release_lease` gives the experiment back. Commit each right away.

Example:
    >>> import os, tempfile
    >>> from service import store
    >>> from service.db import make_session_factory, session_scope, upgrade
    >>> url = "sqlite:///" + os.path.join((tmp := tempfile.TemporaryDirectory()).name, "ps.db")
    >>> upgrade(url)
    >>> factory = make_session_factory(url)
    >>> with session_scope(factory) as s:
    ...     exp = store.create_experiment(s, spec={}, name="x", algorithm="agp", model="m", max_trials=1)
    >>> with session_scope(factory) as s:
    ...     claim_experiment(s, exp.id, owner="a", lease_seconds=30)
    True
    >>> with session_scope(factory) as s:
    ...     claim_experiment(s, exp.id, owner="b", lease_seconds=30)
    False
    >>> factory.kw["bind"].dispose(); tmp.cleanup()
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from service.models import Event, Experiment, Trial, utcnow
from service.pagination import Page, SortKey, keyset_page, parse_sort
from service.states import COUNTED_TRIAL_STATES, ExperimentState, TrialState, check_transition

__all__ = [
    "UNSET",
    "LeaseLost",
    "NotFoundError",
    "Unset",
    "append_event",
    "append_events",
    "best_trial",
    "claim_experiment",
    "claimable_experiments",
    "count_trials",
    "events_after",
    "get_trial",
    "get_trials",
    "leased_experiments",
    "list_trials",
    "record_trial_result",
    "release_lease",
    "renew_lease",
    "set_generator_state",
    "sync_experiment",
    "trial_rows",
    "trials_stamp",
    "upsert_trial",
]


class Unset(enum.Enum):
    """Type of :data:`UNSET`, the "argument not given" marker (``None`` is a real value: SQL NULL)."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


class NotFoundError(LookupError):
    """The experiment (or row) a write needs does not exist. The message names it."""


class LeaseLost(RuntimeError):
    """The caller no longer holds the experiment's lease (another runner took it over, or it ended)."""


_ACTIVE_EXPERIMENT_STATES = (
    ExperimentState.QUEUED.value,
    ExperimentState.RUNNING.value,
    ExperimentState.CANCELLING.value,
)
_TRIAL_SORTS = {
    "number": SortKey(Trial.number, int, nullable=False),
    "score": SortKey(Trial.score, float, nullable=True),
    "flops_ratio": SortKey(Trial.flops_ratio, float, nullable=True),
    "duration_s": SortKey(Trial.duration_s, float, nullable=True),
}
_EXP = cast(sa.Table, Experiment.__table__)
#: built once: every listed page runs it (a statement built per call costs more than SQLite running it)
_STAMP = sa.select(_EXP.c.created_at, _EXP.c.trials_version).where(_EXP.c.id == sa.bindparam("experiment_id"))


def sync_experiment(
    s: Session, experiment_id: int, values: Mapping[str, Any], *, obj: Experiment | None = None
) -> None:
    """Copy column values just written by a Core ``UPDATE`` onto loaded ``Experiment`` objects.

    Touches ``obj`` (even if detached) and the instance in ``s``'s identity map, as committed values
    (no new flush). Internal helper, public so the runner can reuse it.
    """
    targets = [obj] if obj is not None else []
    cached = s.identity_map.get(identity_key(Experiment, experiment_id))
    if cached is not None and cached is not obj:
        targets.append(cached)  # type: ignore[arg-type]
    for target in targets:
        for key, value in values.items():
            column_value = value
            if key == "state" and isinstance(value, str):
                column_value = ExperimentState(value)
            set_committed_value(target, key, column_value)


def _exp_id(exp: Experiment | int) -> int:
    return exp if isinstance(exp, int) else exp.id


def _update_experiment(
    s: Session,
    experiment_id: int,
    values: dict[str, Any],
    *,
    where: Sequence[sa.ColumnElement[bool]] = (),
    obj: Experiment | None = None,
) -> bool:
    """Conditional ``UPDATE experiments``; on a match sync loaded objects and return True."""
    s.flush()
    cols = [_EXP.c[name] for name in values if name in _EXP.c] + [_EXP.c.updated_at]
    stmt = sa.update(_EXP).where(_EXP.c.id == experiment_id, *where).values(**values).returning(*cols)
    row = s.execute(stmt).first()
    if row is None:
        return False
    sync_experiment(s, experiment_id, dict(zip([c.key for c in cols], row, strict=True)), obj=obj)
    return True


# -- events -------------------------------------------------------------------------------------------


def append_event(s: Session, experiment_id: int, kind: str, data: dict[str, Any]) -> Event:
    """Append an event to the experiment's log; its global ``id`` is the SSE event id.

    Locks the experiment row first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has a single
    writer anyway) so that one experiment's event ids commit in increasing order.

    Raises:
        NotFoundError: no such experiment.
        ValueError: ``kind`` or ``data`` malformed (message names the argument).
    """
    _check_event(kind, data)
    _lock_experiment(s, experiment_id)
    event = Event(experiment_id=experiment_id, kind=kind, data=data)
    s.add(event)
    s.flush()
    return event


def append_events(
    s: Session, experiment_id: int, events: Sequence[tuple[str, dict[str, Any]]], *, lease_owner: str | None = None
) -> None:
    """Append ``(kind, data)`` events in order, locking the experiment row once (see :func:`append_event`).

    With ``lease_owner``, the lock is a conditional ``UPDATE`` that only matches while this owner
    holds the lease, like :func:`record_trial_result` (else :class:`LeaseLost`): the runner opens
    each trial this way, so a runner that lost its lease cannot start one. (On SQLite a ``SELECT``
    would not do: the write lock is only taken at a transaction's first write.)

    Raises:
        LeaseLost, NotFoundError, ValueError (a malformed event).
    """
    for kind, data in events:
        _check_event(kind, data)
    if lease_owner is None:
        _lock_experiment(s, experiment_id)
    elif not _update_experiment(s, experiment_id, {}, where=[_EXP.c.lease_owner == lease_owner]):
        _raise_missing_or_lost(s, experiment_id, lease_owner)
    _insert_events(s, experiment_id, events)


def _lock_experiment(s: Session, experiment_id: int) -> None:
    s.flush()
    locked = s.execute(sa.select(_EXP.c.id).where(_EXP.c.id == experiment_id).with_for_update()).first()
    if locked is None:
        raise NotFoundError(f"experiment {experiment_id} not found")


def _insert_events(s: Session, experiment_id: int, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """One ``INSERT`` of the events, in order (the caller holds the experiment row's lock)."""
    if events:
        rows = [{"experiment_id": experiment_id, "kind": kind, "data": data} for kind, data in events]
        s.execute(sa.insert(cast(sa.Table, Event.__table__)), rows)


def _check_event(kind: str, data: dict[str, Any]) -> None:
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise ValueError(f"kind: must be a non-empty string of at most 64 chars, got {kind!r}")
    if not isinstance(data, dict):
        raise ValueError(f"data: must be a JSON object, got {type(data).__name__}")


#: the largest ``events.id`` (an ``INTEGER``: 32 bits on PostgreSQL, which refuses a larger parameter)
_MAX_EVENT_ID = 2**31 - 1


def events_after(s: Session, experiment_id: int, after_id: int = 0, limit: int = 500) -> list[Event]:
    """The experiment's events with ``id > after_id``, oldest first, at most ``limit``."""
    if after_id >= _MAX_EVENT_ID:  # a client's cursor past any id there can be (the API takes up to 2**62)
        return []
    stmt = (
        sa.select(Event)
        .where(Event.experiment_id == experiment_id, Event.id > after_id)
        .order_by(Event.id)
        .limit(limit)
    )
    return list(s.scalars(stmt))


# -- trials -------------------------------------------------------------------------------------------


def _parse_trial_states(states: Iterable[TrialState | str]) -> list[TrialState]:
    out = []
    for st in states:
        try:
            out.append(TrialState(st))
        except ValueError:
            valid = ", ".join(m.value for m in TrialState)
            raise ValueError(f"states: unknown state {st!r} (valid: {valid})") from None
    return out


def _trial_filters(experiment_id: int, states: Sequence[TrialState | str] | None) -> list[sa.ColumnElement[bool]]:
    filters: list[sa.ColumnElement[bool]] = [Trial.experiment_id == experiment_id]
    if states is not None:
        filters.append(Trial.state.in_(_parse_trial_states(states)))
    return filters


def list_trials(
    s: Session | Connection,
    experiment_id: int,
    *,
    states: Sequence[TrialState | str] | None = None,
    sort: str = "number",
    limit: int = 50,
    cursor: str | None = None,
    keys_only: bool = False,
    count: int | None = None,
) -> Page[Any]:
    """A page of the experiment's trials.

    Args:
        states: keep only these states (unknown → ``ValueError("states: ...")``).
        sort: ``number``, ``score``, ``flops_ratio`` or ``duration_s``; ``-`` = descending; ties by
            id; trials without the value (e.g. no score yet) come last.
        limit: page size, 1..1000.
        cursor: ``next_cursor`` of the previous page (same filters and sort); bad →
            ``ValueError("cursor: ...")``.
        keys_only: the items are ``(id, <sort key>)`` rows, not ``Trial`` objects (read from the
            sort's index alone; fetch what is not cached with :func:`trial_rows`).
        count: the total when the caller knows it (:func:`count_trials`), saving that query.
    """
    columns = (Trial.id, parse_sort(sort, _TRIAL_SORTS)[1].column) if keys_only else None
    return keyset_page(s, Trial, filters=_trial_filters(experiment_id, states), sort=sort, keys=_TRIAL_SORTS,
                       limit=limit, cursor=cursor, columns=columns, count=count)


def count_trials(
    s: Session | Connection, experiment_id: int, *, states: Sequence[TrialState | str] | None = None
) -> int:
    """How many trials the experiment has (in these states)."""
    stmt = sa.select(sa.func.count()).select_from(Trial).where(*_trial_filters(experiment_id, states))
    return int(s.scalar(stmt) or 0)


def trial_rows(s: Session | Connection, ids: Sequence[int], columns: Sequence[str]) -> list[Any]:
    """The trials with these primary keys as rows of ``id`` and ``columns`` (names of ``trials`` columns)."""
    table = cast(sa.Table, Trial.__table__)
    return list(s.execute(sa.select(table.c.id, *(table.c[name] for name in columns)).where(table.c.id.in_(ids))))


def trials_stamp(s: Session | Connection, experiment_id: int) -> tuple[dt.datetime, int] | None:
    """``(created_at, trials_version)`` of the experiment, or None if there is none.

    It changes whenever one of the experiment's trials is written (database triggers bump
    ``trials_version``), and ``created_at`` tells a re-used id apart: whatever was derived from the
    trials under one stamp stays valid exactly as long as the stamp does.
    """
    row = s.execute(_STAMP, {"experiment_id": experiment_id}).first()
    return (row[0], row[1]) if row is not None else None


def get_trial(s: Session, experiment_id: int, number: int) -> Trial | None:
    """The trial ``number`` of the experiment, or None."""
    stmt = sa.select(Trial).where(Trial.experiment_id == experiment_id, Trial.number == number)
    return s.scalars(stmt).first()


def get_trials(
    s: Session, experiment_id: int, *, states: Sequence[TrialState | str] | None = None
) -> list[Trial]:
    """All of the experiment's trials (optionally only these states), by number. Unpaged: for the runner."""
    stmt = sa.select(Trial).where(Trial.experiment_id == experiment_id)
    if states is not None:
        stmt = stmt.where(Trial.state.in_(_parse_trial_states(states)))
    return list(s.scalars(stmt.order_by(Trial.number)))


def best_trial(s: Session, experiment_id: int) -> Trial | None:
    """The trial named by ``experiments.best_trial_number``, or None (no best yet / no experiment)."""
    exp = s.get(Experiment, experiment_id)
    if exp is None or exp.best_trial_number is None:
        return None
    return get_trial(s, experiment_id, exp.best_trial_number)


def _finite_or_none(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number or None, got {value!r}")
    return float(value) if math.isfinite(value) else None


def upsert_trial(
    s: Session,
    experiment_id: int,
    *,
    number: int,
    state: TrialState,
    parent_number: int | None | Unset = UNSET,
    attempt: int | Unset = UNSET,
    params: dict[str, Any] | Unset = UNSET,
    config_list: list[Any] | None | Unset = UNSET,
    score: float | None | Unset = UNSET,
    metrics: dict[str, Any] | Unset = UNSET,
    requested_sparsity: Any | Unset = UNSET,
    achieved_sparsity: Any | Unset = UNSET,
    error: str | None | Unset = UNSET,
    worker: str | None | Unset = UNSET,
    started_at: dt.datetime | None | Unset = UNSET,
    finished_at: dt.datetime | None | Unset = UNSET,
    duration_s: float | None | Unset = UNSET,
    ask_seq: int | None | Unset = UNSET,
    tell_seq: int | None | Unset = UNSET,
    told: dict[str, Any] | None | Unset = UNSET,
    trial: Trial | None | Unset = UNSET,
) -> Trial:
    """Insert or update the trial ``(experiment_id, number)`` (pending/running rows, or any state).

    Only the given fields change (``UNSET`` = keep). An existing row's state change is checked
    (``IllegalTransition``). Filled in when not given: ``started_at`` on entering ``running``;
    ``finished_at`` and ``duration_s`` on entering a terminal state; ``attempt + 1`` and cleared
    timings on ``running -> pending`` (a retry). A non-finite ``score`` is stored as NULL;
    ``flops_ratio`` is copied from ``metrics["flops_ratio"]``. Does NOT touch the experiment row
    (use :func:`record_trial_result` for finished trials). ``ask_seq``/``tell_seq``/``told`` are the
    runner's generator journal (``service.runner_experiment``). ``trial``: the row if the caller
    just read it (``None``: it knows there is none), saving the lookup.
    """
    row, _ = _upsert(s, experiment_id, number=number, state=TrialState(state), fields=locals(), trial=trial)
    return row


_TRIAL_FIELDS = (
    "parent_number",
    "attempt",
    "params",
    "config_list",
    "score",
    "metrics",
    "requested_sparsity",
    "achieved_sparsity",
    "error",
    "worker",
    "started_at",
    "finished_at",
    "duration_s",
    "ask_seq",
    "tell_seq",
    "told",
)


def _upsert(
    s: Session, experiment_id: int, *, number: int, state: TrialState, fields: Mapping[str, Any],
    trial: Trial | None | Unset = UNSET,
) -> tuple[Trial, TrialState | None]:
    given = {k: fields[k] for k in _TRIAL_FIELDS if k in fields and fields[k] is not UNSET}
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueError(f"number: must be an integer, got {number!r}")
    if isinstance(trial, Unset):
        trial = get_trial(s, experiment_id, number)
    previous = trial.state if trial is not None else None
    if trial is None:
        trial = Trial(experiment_id=experiment_id, number=number, state=state, attempt=1, params={}, metrics={})
        s.add(trial)
    else:
        check_transition(trial.state, state)
        if previous is TrialState.RUNNING and state is TrialState.PENDING:
            given.setdefault("attempt", trial.attempt + 1)
            for key in ("started_at", "finished_at", "duration_s"):
                given.setdefault(key, None)
    if "score" in given:
        given["score"] = _finite_or_none(given["score"], "score")
    if "duration_s" in given:
        given["duration_s"] = _finite_or_none(given["duration_s"], "duration_s")
    for key, value in given.items():
        setattr(trial, key, value)
    trial.state = state
    if "metrics" in given:
        ratio = (given["metrics"] or {}).get("flops_ratio")
        trial.flops_ratio = _finite_or_none(ratio, "metrics.flops_ratio") if not isinstance(ratio, str) else None
    now = utcnow()
    if state is TrialState.RUNNING and trial.started_at is None:
        trial.started_at = now
    if state.is_terminal() and previous != state:
        if trial.finished_at is None:
            trial.finished_at = now
        if trial.duration_s is None and trial.started_at is not None:
            trial.duration_s = max(0.0, (trial.finished_at - trial.started_at).total_seconds())
    s.flush()
    return trial, previous


def record_trial_result(
    s: Session,
    exp: Experiment | int,
    *,
    number: int,
    state: TrialState,
    generator_state: dict[str, Any] | None | Unset = UNSET,
    events: Sequence[tuple[str, dict[str, Any]]] = (),
    best_number: int | None | Unset = UNSET,
    best_score: float | None | Unset = UNSET,
    best_flops_ratio: float | None | Unset = UNSET,
    lease_owner: str | None = None,
    **trial_fields: Any,
) -> Trial:
    """Record a trial's result and the generator's progress, in the caller's transaction.

    One call = everything that must commit together for a crash to lose or repeat nothing:

    1. the experiment row: ``generator_state`` when given (a checkpoint of the TaskGenerator after
       ``tell`` + runner bookkeeping; ``UNSET`` = unchanged), ``n_trials`` (+1 when the trial enters
       ``succeeded``/``failed`` for the first time), and ``best_trial_number``/``best_score``/
       ``best_flops_ratio`` when given (the caller decides the best by the objective's mode;
       ``UNSET`` = unchanged);
    2. the trial row, upserted by ``(experiment id, number)`` like :func:`upsert_trial`
       (``trial_fields`` are its keyword arguments: score, metrics, params, error, ``tell_seq`` and
       ``told`` of the runner's journal, ...);
    3. ``events``, appended in order, as ``(kind, data)`` pairs.

    Args:
        lease_owner: when given, the write only happens if this owner still holds the lease;
            otherwise :class:`LeaseLost` is raised (roll back, stop driving the experiment).

    Raises:
        LeaseLost, NotFoundError, IllegalTransition, ValueError (bad field). Roll back on any error.
    """
    unknown = set(trial_fields) - set(_TRIAL_FIELDS)
    if unknown:
        raise TypeError(f"record_trial_result: unknown trial field(s) {sorted(unknown)}")
    for kind, data in events:
        _check_event(kind, data)
    state = TrialState(state)
    experiment_id = _exp_id(exp)
    existing = get_trial(s, experiment_id, number)
    if existing is not None:
        check_transition(existing.state, state)  # before any write
    newly_finished = state in COUNTED_TRIAL_STATES and (existing is None or existing.state not in COUNTED_TRIAL_STATES)

    values: dict[str, Any] = {} if isinstance(generator_state, Unset) else {"generator_state": generator_state}
    if newly_finished:
        values["n_trials"] = _EXP.c.n_trials + 1
    for key, value in (
        ("best_trial_number", best_number),
        ("best_score", best_score),
        ("best_flops_ratio", best_flops_ratio),
    ):
        if value is not UNSET:
            values[key] = _finite_or_none(value, key) if key != "best_trial_number" else value
    where = [_EXP.c.lease_owner == lease_owner] if lease_owner is not None else []
    obj = exp if isinstance(exp, Experiment) else None
    if not _update_experiment(s, experiment_id, values, where=where, obj=obj):
        _raise_missing_or_lost(s, experiment_id, lease_owner)
    trial, _ = _upsert(s, experiment_id, number=number, state=state, fields=trial_fields, trial=existing)
    _insert_events(s, experiment_id, events)  # the UPDATE above holds the experiment row's lock
    return trial


def _raise_missing_or_lost(s: Session, experiment_id: int, lease_owner: str | None) -> None:
    owner = s.execute(sa.select(_EXP.c.lease_owner).where(_EXP.c.id == experiment_id)).first()
    if owner is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    raise LeaseLost(f"experiment {experiment_id}: lease held by {owner[0]!r}, not {lease_owner!r}")


def set_generator_state(
    s: Session, exp: Experiment | int, generator_state: dict[str, Any] | None, *, lease_owner: str | None = None
) -> None:
    """Store the generator's progress without a trial result (e.g. after ``ask()``).

    With ``lease_owner``, only if it still holds the lease (else :class:`LeaseLost`).
    """
    experiment_id = _exp_id(exp)
    where = [_EXP.c.lease_owner == lease_owner] if lease_owner is not None else []
    obj = exp if isinstance(exp, Experiment) else None
    if not _update_experiment(s, experiment_id, {"generator_state": generator_state}, where=where, obj=obj):
        _raise_missing_or_lost(s, experiment_id, lease_owner)


# -- leases -------------------------------------------------------------------------------------------


def _lease_free(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.or_(_EXP.c.lease_owner.is_(None), _EXP.c.lease_expires_at.is_(None), _EXP.c.lease_expires_at < now)


def _check_lease_args(owner: str, lease_seconds: float) -> None:
    if not isinstance(owner, str) or not owner or len(owner) > 200:
        raise ValueError(f"owner: must be a non-empty string of at most 200 chars, got {owner!r}")
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
        raise ValueError(f"lease_seconds: must be a positive number, got {lease_seconds!r}")


def claim_experiment(
    s: Session, experiment_id: int, *, owner: str, lease_seconds: float, now: dt.datetime | None = None
) -> bool:
    """Take the experiment's lease if it is free (or expired, or already ours); True if we got it.

    Only ``queued``, ``running`` and ``cancelling`` experiments can be claimed. The state is left
    alone (the runner moves ``queued -> running``). One atomic conditional ``UPDATE``: of several
    racing callers exactly one wins. Commit right after.
    """
    _check_lease_args(owner, lease_seconds)
    now = now or utcnow()
    values = {"lease_owner": owner, "lease_expires_at": now + dt.timedelta(seconds=lease_seconds)}
    where = [_EXP.c.state.in_(_ACTIVE_EXPERIMENT_STATES), sa.or_(_lease_free(now), _EXP.c.lease_owner == owner)]
    return _update_experiment(s, experiment_id, values, where=where)


def renew_lease(
    s: Session, experiment_id: int, *, owner: str, lease_seconds: float, now: dt.datetime | None = None
) -> bool:
    """Heartbeat: extend our lease. False when it is no longer ours (taken over, released,
    experiment finished or deleted) — then stop driving the experiment."""
    _check_lease_args(owner, lease_seconds)
    now = now or utcnow()
    values = {"lease_expires_at": now + dt.timedelta(seconds=lease_seconds)}
    where = [_EXP.c.lease_owner == owner, _EXP.c.state.in_(_ACTIVE_EXPERIMENT_STATES)]
    return _update_experiment(s, experiment_id, values, where=where)


def release_lease(s: Session, experiment_id: int, *, owner: str) -> bool:
    """Give the lease back (e.g. on shutdown) so another runner can claim at once; False if not ours."""
    values = {"lease_owner": None, "lease_expires_at": None}
    return _update_experiment(s, experiment_id, values, where=[_EXP.c.lease_owner == owner])


def claimable_experiments(s: Session, *, now: dt.datetime | None = None, limit: int = 10) -> list[int]:
    """Ids of experiments a runner could claim, oldest first: ``queued``, ``running`` or
    ``cancelling`` with no lease or an expired one (a crashed runner's experiments)."""
    now = now or utcnow()
    stmt = (
        sa.select(_EXP.c.id)
        .where(_EXP.c.state.in_(_ACTIVE_EXPERIMENT_STATES), _lease_free(now))
        .order_by(_EXP.c.id)
        .limit(limit)
    )
    return list(s.scalars(stmt))


def leased_experiments(s: Session, *, owner: str, now: dt.datetime | None = None) -> list[int]:
    """Ids of active experiments whose unexpired lease ``owner`` holds, oldest first."""
    now = now or utcnow()
    stmt = (
        sa.select(_EXP.c.id)
        .where(
            _EXP.c.lease_owner == owner,
            _EXP.c.lease_expires_at >= now,
            _EXP.c.state.in_(_ACTIVE_EXPERIMENT_STATES),
        )
        .order_by(_EXP.c.id)
    )
    return list(s.scalars(stmt))
