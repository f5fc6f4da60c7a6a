"""The repository: every read and write of the service's tables goes through these functions.

**Transaction rule.** Functions take a :class:`~sqlalchemy.orm.Session` first, then keyword
arguments. They ``flush`` (so ids and constraint errors appear at once) but never ``commit``: the
caller owns the transaction (``service.db.session_scope``; one per API request; one per trial result
in the runner). Lease functions (:func:`claim_experiment`, :func:`renew_lease`,
:func:`release_lease`) should run in their own short transaction, committed right away: a lease is
only useful once others can see it.

**Concurrency.** Changes that can race between processes are conditional ``UPDATE``s
(compare-and-set on the row), correct under PostgreSQL's READ COMMITTED and SQLite's single writer
alike: state changes (``WHERE state = <the state we saw>``, retried after a re-read), leases
(``WHERE lease_owner IS NULL OR lease_expires_at < now``) and the runner's trial commits
(``WHERE lease_owner = <me>`` when ``lease_owner`` is passed, else :class:`LeaseLost`).
:func:`append_event` locks the experiment row (PostgreSQL), so an experiment's event ids become
visible in increasing order and a reader resuming "after id N" never skips one.

**States.** Every state change is checked with :mod:`service.states`; an illegal one raises
:class:`~service.states.IllegalTransition` naming both states. Missing experiments raise
:class:`NotFoundError` from the functions that must change one.

Trials, leases and events live in ``service.store_trials`` and are re-exported here, so callers
only ever import ``service.store``.

Example:
    >>> import os, tempfile
    >>> from service.db import make_session_factory, session_scope, upgrade
    >>> url = "sqlite:///" + os.path.join((tmp := tempfile.TemporaryDirectory()).name, "ps.db")
    >>> upgrade(url)
    >>> factory = make_session_factory(url)
    >>> with session_scope(factory) as s:
    ...     exp = create_experiment(s, spec={"version": 1}, name="demo", algorithm="agp", model="m",
    ...                             max_trials=2)
    ...     request_cancel(s, exp.id).state.value
    'cancelled'
    >>> with session_scope(factory) as s:
    ...     [e.kind for e in events_after(s, exp.id)]
    ['experiment_state', 'experiment_state']
    >>> factory.kw["bind"].dispose(); tmp.cleanup()
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.models import (
    SPEC_VERSION,
    ApiToken,
    Artifact,
    Event,
    Experiment,
    Trial,
    UploadedModel,
    utcnow,
)
from service.pagination import Page, SortKey, keyset_page
from service.states import ExperimentState, IllegalTransition, TrialState, check_transition
from service.store_trials import (
    _EXP,
    UNSET,
    LeaseLost,
    NotFoundError,
    Unset,
    _update_experiment,
    append_event,
    append_events,
    best_trial,
    claim_experiment,
    claimable_experiments,
    count_trials,
    events_after,
    get_trial,
    get_trials,
    leased_experiments,
    list_trials,
    record_trial_result,
    release_lease,
    renew_lease,
    set_generator_state,
    trial_rows,
    trials_stamp,
    upsert_trial,
)

__all__ = [
    "EVENT_KINDS",
    "ExperimentState",
    "TrialState",
    "UNSET",
    "IllegalTransition",
    "LeaseLost",
    "NotFoundError",
    "Page",
    "Unset",
    "add_artifact",
    "add_uploaded_model",
    "append_event",
    "append_events",
    "best_trial",
    "claim_experiment",
    "claimable_experiments",
    "count_trials",
    "create_experiment",
    "create_token",
    "delete_experiment",
    "delete_uploaded_model",
    "events_after",
    "get_artifact",
    "get_experiment",
    "get_trial",
    "get_trials",
    "get_uploaded_model",
    "get_uploaded_model_by_path",
    "leased_experiments",
    "list_artifacts",
    "list_experiments",
    "list_tokens",
    "list_trials",
    "list_uploaded_models",
    "record_trial_result",
    "release_lease",
    "renew_lease",
    "request_cancel",
    "request_resume",
    "revoke_token",
    "set_experiment_state",
    "set_generator_state",
    "tokens_exist",
    "trial_rows",
    "trials_stamp",
    "upsert_trial",
    "verify_token",
]

#: event kinds written by the service (``append_event`` accepts any short kind string).
EVENT_KINDS = (
    "experiment_state",
    "trial_started",
    "trial_finished",
    "trial_failed",
    "trial_discarded",
    "trial_progress",
    "best_changed",
    "log",
)
#: the token's secret part is 30 random bytes = 40 urlsafe characters.
TOKEN_PREFIX = "ps_"
_TOKEN_SHOWN_CHARS = 8
#: ``last_used_at`` is written at most this often, so authenticated reads stay reads.
_LAST_USED_RESOLUTION_S = 60.0

_EXPERIMENT_SORTS = {
    "created_at": SortKey(Experiment.created_at, dt.datetime, nullable=False),
    "name": SortKey(Experiment.name, str, nullable=False),
    "best_score": SortKey(Experiment.best_score, float, nullable=True),
    "state": SortKey(Experiment.state, ExperimentState, nullable=False),
}


# -- experiments ------------------------------------------------------------------------------------


def create_experiment(
    s: Session,
    *,
    spec: dict[str, Any],
    name: str,
    algorithm: str,
    model: str,
    max_trials: int | None,
    owner_token_id: int | None = None,
) -> Experiment:
    """Insert a ``queued`` experiment (and its first ``experiment_state`` event).

    ``spec`` is the validated spec as a plain JSON dict; its ``"version"`` key (default
    ``SPEC_VERSION``) is copied into ``spec_version``.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"spec: must be a JSON object, got {type(spec).__name__}")
    version = spec.get("version", SPEC_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"spec.version: must be an integer, got {version!r}")
    exp = Experiment(
        name=name,
        state=ExperimentState.QUEUED,
        spec=spec,
        spec_version=version,
        algorithm=algorithm,
        model=model,
        max_trials=max_trials,
        owner_token_id=owner_token_id,
        n_trials=0,
        cancel_requested=False,
    )
    s.add(exp)
    s.flush()
    append_event(s, exp.id, "experiment_state", {"state": exp.state.value, "previous": None})
    return exp


def get_experiment(s: Session, experiment_id: int) -> Experiment | None:
    """The experiment with this id, or None."""
    return s.get(Experiment, experiment_id)


def _require_experiment(s: Session, experiment_id: int) -> Experiment:
    exp = s.get(Experiment, experiment_id)
    if exp is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return exp


def list_experiments(
    s: Session,
    *,
    states: Sequence[ExperimentState | str] | None = None,
    algorithm: str | None = None,
    name_contains: str | None = None,
    sort: str = "-created_at",
    limit: int = 50,
    cursor: str | None = None,
) -> Page[Experiment]:
    """A page of experiments.

    Args:
        states: keep only these states (strings or enums; unknown → ``ValueError("states: ...")``).
        algorithm: keep only this algorithm name.
        name_contains: case-insensitive substring of the name (``%``/``_`` are literal).
        sort: ``created_at``, ``name``, ``best_score`` or ``state``; ``-`` prefix = descending; ties
            by id; experiments without a best score come last.
        limit: page size, 1..1000.
        cursor: ``next_cursor`` of the previous page (same filters and sort).
    """
    filters: list[sa.ColumnElement[bool]] = []
    if states is not None:
        filters.append(Experiment.state.in_(_parse_states(states, ExperimentState)))
    if algorithm is not None:
        filters.append(Experiment.algorithm == algorithm)
    if name_contains:
        filters.append(sa.func.lower(Experiment.name).contains(name_contains.lower(), autoescape=True))
    return keyset_page(
        s, Experiment, filters=filters, sort=sort, keys=_EXPERIMENT_SORTS, limit=limit, cursor=cursor
    )


def _parse_states(states: Iterable[Any], enum_cls: type[Any]) -> list[Any]:
    parsed = []
    for st in states:
        try:
            parsed.append(enum_cls(st))
        except ValueError:
            valid = ", ".join(m.value for m in enum_cls)
            raise ValueError(f"states: unknown state {st!r} (valid: {valid})") from None
    return parsed


def set_experiment_state(
    s: Session, exp: Experiment, to: ExperimentState, *, error: str | None = None
) -> None:
    """Move ``exp`` to state ``to`` and append an ``experiment_state`` event.

    A compare-and-set on the state: if another process changed it since ``exp`` was loaded, the row
    is re-read and the transition checked again against the new state. Side effects: ``running``
    sets ``started_at`` (first time); ``cancelling`` sets ``cancel_requested``; a terminal state sets
    ``finished_at`` and drops the lease; ``queued`` (resume) clears ``finished_at``, ``error``,
    ``cancel_requested`` and the lease. ``error`` is stored when given. Moving to the current state
    is a no-op (no event).

    Raises:
        IllegalTransition: the state machine does not allow the move.
        NotFoundError: the experiment was deleted.
    """
    to = ExperimentState(to)
    row = exp if exp in s else _require_experiment(s, exp.id)  # a detached exp is re-read (and kept in sync)
    for _ in range(5):
        if _transition_once(s, exp, row, to, error):
            return
        row = _require_experiment(s, exp.id)  # lost a race: the row was re-read; check again
    raise RuntimeError(f"experiment {exp.id}: state keeps changing under us")  # pragma: no cover


def _transition_once(s: Session, exp: Experiment, row: Experiment, to: ExperimentState, error: str | None) -> bool:
    """One compare-and-set of the state from ``row.state`` to ``to``; False if the row had changed."""
    current = row.state
    check_transition(current, to)
    if current == to:
        if error is not None and row.error != error:
            return _cas_update(s, exp, _EXP.c.state == current.value, {"error": error})
        return True
    values: dict[str, Any] = {"state": to.value}
    now = utcnow()
    if to is ExperimentState.RUNNING and row.started_at is None:
        values["started_at"] = now
    if to is ExperimentState.CANCELLING:
        values["cancel_requested"] = True
    if to.is_terminal():
        values.update(finished_at=now, lease_owner=None, lease_expires_at=None)
    if to is ExperimentState.QUEUED:
        values.update(finished_at=None, error=None, cancel_requested=False, lease_owner=None, lease_expires_at=None)
    if error is not None:
        values["error"] = error
    if not _cas_update(s, exp, _EXP.c.state == current.value, values):
        return False
    event = {"state": to.value, "previous": current.value}
    if error is not None:
        event["error"] = error
    append_event(s, exp.id, "experiment_state", event)
    return True


def _cas_update(s: Session, exp: Experiment, condition: sa.ColumnElement[bool], values: dict[str, Any]) -> bool:
    """``UPDATE experiments SET values WHERE id = exp.id AND condition``; sync ``exp`` when it matched.

    When it did not match, the session's copy of the row is re-read (``populate_existing``).
    """
    if _update_experiment(s, exp.id, values, where=[condition], obj=exp):
        return True
    if s.get(Experiment, exp.id, populate_existing=True) is None:
        raise NotFoundError(f"experiment {exp.id} not found")
    return False


def request_cancel(s: Session, experiment_id: int) -> Experiment:
    """Cancel: ``queued -> cancelled``; ``running -> cancelling`` (the runner finishes it).

    Already ``cancelling``/``cancelled``: unchanged. Finished experiments raise ``IllegalTransition``.
    """
    exp = _require_experiment(s, experiment_id)
    for _ in range(5):
        state = exp.state
        if state in (ExperimentState.CANCELLING, ExperimentState.CANCELLED):
            return exp
        # decided on the state we see; if it changes under us (queued -> running), decide again
        target = ExperimentState.CANCELLING if state is ExperimentState.RUNNING else ExperimentState.CANCELLED
        if _transition_once(s, exp, exp, target, None):
            return exp
        exp = _require_experiment(s, experiment_id)
    raise RuntimeError(f"experiment {experiment_id}: state keeps changing under us")  # pragma: no cover


def request_resume(s: Session, experiment_id: int) -> Experiment:
    """Resume: ``cancelled | failed -> queued``, keeping trials and ``generator_state``.

    Already ``queued``: unchanged. Other states raise ``IllegalTransition``.
    """
    exp = _require_experiment(s, experiment_id)
    set_experiment_state(s, exp, ExperimentState.QUEUED)
    return exp


def delete_experiment(s: Session, experiment_id: int) -> bool:
    """Delete the experiment and (cascade) its trials, events and artifact rows; False if absent.

    The caller deletes the artifact files (``ArtifactStore.delete_experiment``). A runner holding the
    lease notices on its next :func:`renew_lease` (returns False).
    """
    exp = s.get(Experiment, experiment_id)
    if exp is not None:
        s.expunge(exp)
    for model in (Trial, Event, Artifact):  # drop cached children of the deleted rows
        for obj in [o for o in s.identity_map.values() if isinstance(o, model)]:
            if obj.experiment_id == experiment_id:
                s.expunge(obj)
    result = s.execute(sa.delete(_EXP).where(_EXP.c.id == experiment_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- artifacts --------------------------------------------------------------------------------------


def _artifact_query(experiment_id: int, trial_number: int | None, kind: str) -> sa.Select[Any]:
    number_filter = Artifact.trial_number.is_(None) if trial_number is None else Artifact.trial_number == trial_number
    return sa.select(Artifact).where(Artifact.experiment_id == experiment_id, number_filter, Artifact.kind == kind)


def add_artifact(
    s: Session,
    *,
    experiment_id: int,
    trial_number: int | None,
    kind: str,
    path: str,
    size: int,
    content_type: str,
    sha256: str | None = None,
) -> Artifact:
    """Register (or replace) the artifact ``(experiment_id, trial_number, kind)``.

    ``path`` is relative to the experiment's artifact dir; ``trial_number=None`` = experiment-level.
    """
    if path.startswith("/") or "\\" in path or ".." in path.split("/"):
        raise ValueError(f"path: must be relative to the experiment's directory, got {path!r}")
    art: Artifact | None = s.scalars(_artifact_query(experiment_id, trial_number, kind)).first()
    if art is None:
        art = Artifact(experiment_id=experiment_id, trial_number=trial_number, kind=kind)
        s.add(art)
    art.path, art.size, art.content_type, art.sha256 = path, size, content_type, sha256
    art.created_at = utcnow()
    s.flush()
    return art


def get_artifact(s: Session, experiment_id: int, *, trial_number: int | None, kind: str) -> Artifact | None:
    """The artifact ``(experiment_id, trial_number, kind)`` or None."""
    art: Artifact | None = s.scalars(_artifact_query(experiment_id, trial_number, kind)).first()
    return art


def list_artifacts(
    s: Session, experiment_id: int, *, trial_number: int | None | Unset = UNSET
) -> list[Artifact]:
    """The experiment's artifacts: all (default), experiment-level (``None``) or one trial's."""
    stmt = sa.select(Artifact).where(Artifact.experiment_id == experiment_id)
    if trial_number is None:
        stmt = stmt.where(Artifact.trial_number.is_(None))
    elif not isinstance(trial_number, Unset):
        stmt = stmt.where(Artifact.trial_number == trial_number)
    return list(s.scalars(stmt.order_by(Artifact.trial_number, Artifact.kind, Artifact.id)))


# -- API tokens ---------------------------------------------------------------------------------------


def _hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_token(s: Session, *, name: str) -> tuple[ApiToken, str]:
    """Create a token: ``(row, plaintext)``. Only the sha256 is stored; show the plaintext once."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ValueError("name: must be a non-empty string of at most 200 chars")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(30)
    token = ApiToken(name=name.strip(), prefix=plaintext[:_TOKEN_SHOWN_CHARS], hash=_hash_token(plaintext))
    s.add(token)
    s.flush()
    return token, plaintext


def verify_token(s: Session, plaintext: str) -> ApiToken | None:
    """The live token whose secret is ``plaintext``, else None (unknown, malformed or revoked).

    Candidates are found by their shown prefix, then hashes are compared in constant time.
    ``last_used_at`` is updated (at most once a minute per token).
    """
    if not isinstance(plaintext, str) or not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > 256:
        return None
    digest = _hash_token(plaintext)
    found: ApiToken | None = None
    for token in s.scalars(sa.select(ApiToken).where(ApiToken.prefix == plaintext[:_TOKEN_SHOWN_CHARS])):
        if hmac.compare_digest(token.hash, digest) and token.revoked_at is None:
            found = token
    if found is not None:
        now = utcnow()
        if found.last_used_at is None or (now - found.last_used_at).total_seconds() > _LAST_USED_RESOLUTION_S:
            found.last_used_at = now
            s.flush()
    return found


def tokens_exist(s: Session) -> bool:
    """True once any token was created (then mutating calls need a valid one).

    Revoked tokens count: revoking a leaked last token must not open the server to everyone.
    """
    stmt = sa.select(ApiToken.id).limit(1)
    return s.execute(stmt).first() is not None


def list_tokens(s: Session) -> list[ApiToken]:
    """All tokens (revoked ones too), oldest first."""
    return list(s.scalars(sa.select(ApiToken).order_by(ApiToken.id)))


def revoke_token(s: Session, token_id: int) -> bool:
    """Revoke a token (idempotent); False if there is no such token."""
    token = s.get(ApiToken, token_id)
    if token is None:
        return False
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        s.flush()
    return True


# -- uploaded models --------------------------------------------------------------------------------


def add_uploaded_model(
    s: Session, *, name: str, factory: str, kwargs: dict[str, Any], path: str, size: int, sha256: str
) -> UploadedModel:
    """Register uploaded weights (``path`` relative to the artifacts root, under ``models/``)."""
    row = UploadedModel(name=name, factory=factory, kwargs=kwargs, path=path, size=size, sha256=sha256)
    s.add(row)
    s.flush()
    return row


def get_uploaded_model(s: Session, model_id: int) -> UploadedModel | None:
    """The uploaded model with this id, or None."""
    return s.get(UploadedModel, model_id)


def get_uploaded_model_by_path(s: Session, path: str) -> UploadedModel | None:
    """The uploaded model stored at ``path`` (relative to the artifacts root), or None."""
    return s.scalars(sa.select(UploadedModel).where(UploadedModel.path == path).order_by(UploadedModel.id)).first()


def list_uploaded_models(s: Session) -> list[UploadedModel]:
    """All uploaded models, oldest first."""
    return list(s.scalars(sa.select(UploadedModel).order_by(UploadedModel.id)))


def delete_uploaded_model(s: Session, model_id: int) -> bool:
    """Delete the row (the caller deletes the file); False if absent."""
    row = s.get(UploadedModel, model_id)
    if row is None:
        return False
    s.delete(row)
    s.flush()
    return True

