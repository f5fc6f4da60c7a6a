"""SQLAlchemy 2.0 ORM models of the service's tables.

One module, six tables: ``experiments``, ``trials``, ``events``, ``artifacts``, ``api_tokens`` and
``uploaded_models``. The schema itself is created by the Alembic migrations in
``service/migrations`` (``service.db.upgrade``); a test checks that they match these models.

Conventions:

* integer autoincrement primary keys; children reference ``experiments.id`` with ``ON DELETE CASCADE``
  (SQLite enforces it because ``service.db`` turns ``foreign_keys`` on);
* timestamps are timezone-aware UTC on both backends (:class:`UTCDateTime`; naive values are taken
  as UTC);
* states are stored as their string value (:class:`StrEnumType`), not as native enums, so adding a
  state is a data change, not an ``ALTER TYPE``;
* JSON columns are JSONB on PostgreSQL; a Python ``None`` is SQL ``NULL``. JSON values are not
  mutation-tracked: assign a new dict/list instead of changing one in place.

Example:
    >>> from service.states import ExperimentState
    >>> exp = Experiment(name="demo", state=ExperimentState.QUEUED, spec={}, algorithm="agp",
    ...                  model="search.zoo:digits_cnn")
    >>> exp.state.is_terminal()
    False
    >>> sorted(Base.metadata.tables)
    ['api_tokens', 'artifacts', 'events', 'experiments', 'trials', 'uploaded_models']
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.states import ExperimentState, TrialState

__all__ = [
    "ApiToken",
    "Artifact",
    "Base",
    "Event",
    "Experiment",
    "StrEnumType",
    "Trial",
    "UTCDateTime",
    "UploadedModel",
    "utcnow",
]

#: schema version of ``experiments.spec`` written by this code (the ``spec_version`` column).
SPEC_VERSION = 1
#: sentinel that stands for "experiment-level" (``trial_number IS NULL``) in the artifacts unique index.
_EXPERIMENT_LEVEL = -(2**31)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    SQLite has no time zone type: values are stored as UTC text, so string comparisons (leases)
    order correctly; PostgreSQL stores ``timestamptz``. Naive inputs are taken as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


E = TypeVar("E", bound=enum.Enum)


class StrEnumType(sa.types.TypeDecorator[E], Generic[E]):
    """A Python enum stored as its string value in a ``VARCHAR(length)`` column."""

    impl = sa.String(16)
    cache_ok = True

    def __init__(self, enum_cls: type[E], length: int = 16) -> None:
        super().__init__(length)
        self.enum_cls = enum_cls

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(self.enum_cls(value).value)  # raises ValueError for an unknown state

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_cls(value)

    @property
    def python_type(self) -> type[E]:
        return self.enum_cls


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of every service table."""

    type_annotation_map = {dt.datetime: UTCDateTime()}


class Experiment(Base):
    """One submitted search: its spec, state, lease and denormalised progress.

    ``n_trials`` counts finished trials (``succeeded``/``failed``; not the ``discarded`` ones, which
    are no trials of the search); ``best_*`` mirror the best trial (the runner sets them);
    ``generator_state`` is a checkpoint of the TaskGenerator's ``state_dict`` plus the runner's
    bookkeeping (versioned JSON; the calls after it are journaled on the trial rows, see
    ``service.runner_experiment``). ``lease_owner``/``lease_expires_at`` say which runner drives it (see
    ``store.claim_experiment``). ``trials_version`` changes whenever one of its trials is inserted,
    updated or deleted: database triggers maintain it (migration ``0002``), so read it with a query,
    not from a loaded object.

    Example:
        >>> Experiment(name="x", state=ExperimentState.QUEUED, spec={}, algorithm="agp", model="m").name
        'x'
    """

    __tablename__ = "experiments"
    __table_args__ = (
        sa.Index("ix_experiments_state_id", "state", "id"),
        sa.Index("ix_experiments_created_at_id", "created_at", "id"),
        sa.Index("ix_experiments_name_id", "name", "id"),
        sa.Index("ix_experiments_best_score_id", "best_score", "id"),
        sa.Index("ix_experiments_lease_expires_at", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    state: Mapped[ExperimentState] = mapped_column(StrEnumType(ExperimentState))
    spec: Mapped[dict[str, Any]] = mapped_column(_json())
    spec_version: Mapped[int] = mapped_column(sa.Integer, default=SPEC_VERSION)
    algorithm: Mapped[str] = mapped_column(sa.String(64))
    model: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    best_trial_number: Mapped[int | None] = mapped_column(sa.Integer)
    best_score: Mapped[float | None] = mapped_column(sa.Float)
    best_flops_ratio: Mapped[float | None] = mapped_column(sa.Float)
    n_trials: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_trials: Mapped[int | None] = mapped_column(sa.Integer)
    generator_state: Mapped[dict[str, Any] | None] = mapped_column(_json())
    lease_owner: Mapped[str | None] = mapped_column(sa.String(200))
    lease_expires_at: Mapped[dt.datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    owner_token_id: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey("api_tokens.id", ondelete="SET NULL")
    )
    trials_version: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")

    def __repr__(self) -> str:
        return f"Experiment(id={self.id!r}, name={self.name!r}, state={getattr(self.state, 'value', None)!r})"


class Trial(Base):
    """One trial of an experiment, keyed by ``(experiment_id, number)``.

    ``number`` is the generator's task id (``-1`` = the pretrain trial); ``attempt`` starts at 1 and
    grows when a lost worker's trial is retried. ``flops_ratio`` is denormalised from
    ``metrics['flops_ratio']`` so trials can be sorted by it with an index. ``ask_seq``/``tell_seq``
    place the handing out of its task and the telling of its result in the sequence of the
    generator's calls, and ``told`` is the exact result told (the runner's journal; NULL for the
    pretrain trial and for rows written before the journal existed).

    Example:
        >>> Trial(experiment_id=1, number=0, state=TrialState.PENDING).state.value
        'pending'
    """

    __tablename__ = "trials"
    __table_args__ = (
        sa.UniqueConstraint("experiment_id", "number", name="uq_trials_experiment_id_number"),
        sa.Index("ix_trials_experiment_id_state", "experiment_id", "state"),
        sa.Index("ix_trials_experiment_id_score_id", "experiment_id", "score", "id"),
        sa.Index("ix_trials_experiment_id_flops_ratio_id", "experiment_id", "flops_ratio", "id"),
        sa.Index("ix_trials_experiment_id_duration_s_id", "experiment_id", "duration_s", "id"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(sa.Integer, sa.ForeignKey("experiments.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(sa.Integer)
    parent_number: Mapped[int | None] = mapped_column(sa.Integer)
    attempt: Mapped[int] = mapped_column(sa.Integer, default=1)
    state: Mapped[TrialState] = mapped_column(StrEnumType(TrialState))
    params: Mapped[dict[str, Any]] = mapped_column(_json(), default=dict)
    config_list: Mapped[list[Any] | None] = mapped_column(_json())
    score: Mapped[float | None] = mapped_column(sa.Float)
    flops_ratio: Mapped[float | None] = mapped_column(sa.Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(_json(), default=dict)
    requested_sparsity: Mapped[Any | None] = mapped_column(_json())
    achieved_sparsity: Mapped[Any | None] = mapped_column(_json())
    error: Mapped[str | None] = mapped_column(sa.Text)
    worker: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    duration_s: Mapped[float | None] = mapped_column(sa.Float)
    ask_seq: Mapped[int | None] = mapped_column(sa.Integer)
    tell_seq: Mapped[int | None] = mapped_column(sa.Integer)
    told: Mapped[dict[str, Any] | None] = mapped_column(_json(), deferred=True)

    def __repr__(self) -> str:
        return (
            f"Trial(experiment_id={self.experiment_id!r}, number={self.number!r}, "
            f"state={getattr(self.state, 'value', None)!r})"
        )


class Event(Base):
    """An entry of an experiment's event log; ``id`` is global and is the SSE event id.

    Example:
        >>> Event(experiment_id=1, kind="log", data={"msg": "hi"}).kind
        'log'
    """

    __tablename__ = "events"
    # AUTOINCREMENT on SQLite: ids are never reused, even after the newest rows were deleted
    __table_args__ = (sa.Index("ix_events_experiment_id_id", "experiment_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(sa.Integer, sa.ForeignKey("experiments.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(sa.String(64))
    data: Mapped[dict[str, Any]] = mapped_column(_json(), default=dict)


class Artifact(Base):
    """A file of an experiment; ``path`` is relative to the experiment's artifact directory.

    ``trial_number`` NULL = experiment-level (e.g. the best model's exports). At most one artifact per
    ``(experiment_id, trial_number, kind)``, NULL counting as one value (an expression index).

    Example:
        >>> Artifact(experiment_id=1, trial_number=None, kind="onnx", path="best/model.onnx", size=1,
        ...          content_type="application/octet-stream").kind
        'onnx'
    """

    __tablename__ = "artifacts"
    __table_args__ = (
        sa.Index(
            "uq_artifacts_experiment_trial_kind",
            "experiment_id",
            sa.func.coalesce(sa.column("trial_number"), sa.literal_column(str(_EXPERIMENT_LEVEL))),
            "kind",
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(sa.Integer, sa.ForeignKey("experiments.id", ondelete="CASCADE"))
    trial_number: Mapped[int | None] = mapped_column(sa.Integer)
    kind: Mapped[str] = mapped_column(sa.String(32))
    path: Mapped[str] = mapped_column(sa.String(1024))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    content_type: Mapped[str] = mapped_column(sa.String(128))
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token. Only the sha256 of the secret is stored; ``prefix`` is shown in listings.

    Example:
        >>> ApiToken(name="ci", prefix="ps_abcde", hash="0" * 64).revoked_at is None
        True
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    prefix: Mapped[str] = mapped_column(sa.String(16), index=True)
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class UploadedModel(Base):
    """Uploaded safetensors weights for a catalog architecture; ``path`` is under ``<artifacts>/models/``.

    Example:
        >>> UploadedModel(name="r18", factory="search.zoo:resnet18", kwargs={}, path="models/1.safetensors",
        ...               size=10, sha256="0" * 64).factory
        'search.zoo:resnet18'
    """

    __tablename__ = "uploaded_models"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    factory: Mapped[str] = mapped_column(sa.String(200))
    kwargs: Mapped[dict[str, Any]] = mapped_column(_json(), default=dict)
    path: Mapped[str] = mapped_column(sa.String(1024))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
