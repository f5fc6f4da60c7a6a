"""Engines, sessions and migrations for SQLite and PostgreSQL.

* :func:`normalize_url` — ``postgresql://`` / ``postgres://`` become ``postgresql+psycopg://`` (psycopg 3).
* :func:`make_engine` — SQLite gets WAL, a busy timeout and ``foreign_keys=ON`` on every connection
  (so ``ON DELETE CASCADE`` works); PostgreSQL gets ``pool_pre_ping``.
* :func:`make_session_factory` — a ``sessionmaker`` with ``expire_on_commit=False`` (objects stay
  readable after the caller commits, e.g. to serialise them in an API response).
* :func:`session_scope` — commit on success, roll back on error; :func:`read` — a function run on
  a connection in autocommit mode, for hot read paths.
* :func:`upgrade` — Alembic to head; idempotent, and safe when several processes start at once
  (PostgreSQL: a session-level advisory lock; SQLite: ``BEGIN IMMEDIATE`` + the busy timeout).

Example:
    >>> import tempfile, os
    >>> url = "sqlite:///" + os.path.join((tmp := tempfile.TemporaryDirectory()).name, "ps.db")
    >>> upgrade(url)
    >>> factory = make_session_factory(url)
    >>> with session_scope(factory) as s:
    ...     from service import store
    ...     exp = store.create_experiment(s, spec={}, name="demo", algorithm="agp", model="m", max_trials=3)
    >>> with session_scope(factory) as s:
    ...     store.get_experiment(s, exp.id).name
    'demo'
    >>> factory.kw["bind"].dispose(); tmp.cleanup()
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "MIGRATIONS_DIR",
    "SQLITE_BUSY_TIMEOUT_MS",
    "alembic_config",
    "make_engine",
    "make_session_factory",
    "normalize_url",
    "read",
    "session_scope",
    "upgrade",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: how long a SQLite writer waits for the database lock before failing with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: key of the PostgreSQL advisory lock held while migrating ("prunesea" in ASCII).
_PG_MIGRATION_LOCK = 0x7072756E65736561


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the psycopg 3 driver for PostgreSQL.

    Example:
        >>> normalize_url("postgresql://u@127.0.0.1:5432/test").render_as_string(hide_password=False)
        'postgresql+psycopg://u@127.0.0.1:5432/test'
        >>> normalize_url("sqlite:///x.db").drivername
        'sqlite'
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"database_url: cannot parse {str(url)!r}: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        raise ValueError(
            f"database_url: unsupported driver {parsed.drivername!r} (use sqlite:///... or postgresql://...)"
        )
    return parsed


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # durable with WAL, much faster than FULL
    finally:
        cur.close()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the per-backend settings above.

    Extra ``kwargs`` go to :func:`sqlalchemy.create_engine`. The parent directory of a SQLite file is
    created if needed. In-memory SQLite is refused: every connection would see its own empty database.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if not db or db == ":memory:" or db.startswith("file::memory:"):
            raise ValueError("database_url: in-memory SQLite is not supported; use a file (sqlite:///path.db)")
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(parsed, **kwargs)


def make_session_factory(url_or_engine: str | URL | Engine, **engine_kwargs: Any) -> sessionmaker[Session]:
    """A ``sessionmaker`` bound to an engine (built with :func:`make_engine` from a URL)."""
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine, **engine_kwargs)
    return sessionmaker(bind=engine, expire_on_commit=False)


def read(factory: sessionmaker[Session], fn: Callable[[Connection], T]) -> T:
    """``fn(conn)`` on a pooled connection in autocommit mode, for reads that need no transaction.

    The cheapest way to run a few Core ``SELECT``s (each sees what was committed when it starts): no
    ORM session, no ``BEGIN``/``ROLLBACK``, and no ``pool_pre_ping`` round trip, since the reads come
    from a sibling pool without it (:func:`_reader`). A connection found dead instead (the server
    restarted) is thrown away and ``fn`` runs once more on a fresh one, so ``fn`` must only read.
    Hot read paths use it: every page of ``GET /experiments/{id}/trials``, the runner's look at its
    experiments in every step.
    """
    reader = _reader(factory.kw["bind"])

    def once() -> T:
        with reader.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return fn(conn)

    try:
        return once()
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        logger.info("a pooled connection was dead (%s); reading again on a fresh one", type(exc.orig).__name__)
    return once()


_readers: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def _reader(engine: Engine) -> Engine:
    """``engine`` itself, or when its pool pings before each checkout, a sibling engine without the ping
    (made once, disposed with ``engine``)."""
    if not getattr(engine.pool, "_pre_ping", False):
        return engine
    with _readers_lock:
        reader = _readers.get(engine)
        if reader is None:
            reader = _readers[engine] = make_engine(engine.url, pool_pre_ping=False)
            sa.event.listen(engine, "engine_disposed", lambda _engine: reader.dispose())
    return reader


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back on an exception."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str | URL | None = None) -> Any:
    """A programmatic Alembic ``Config`` for the packaged migrations (no alembic.ini needed).

    Used by :func:`upgrade`; handy for ``alembic`` commands from Python, e.g.
    ``alembic.command.history(alembic_config())``.
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def upgrade(url: str | URL | Engine, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the newest).

    Idempotent (a database already at head is left alone) and safe when several processes call it
    at once: on PostgreSQL the migration runs under a session-level advisory lock; on SQLite inside
    ``BEGIN IMMEDIATE``, so the second process waits (busy timeout) and then finds nothing to do.
    """
    from alembic import command

    engine = url if isinstance(url, Engine) else make_engine(url, poolclass=sa.pool.NullPool)
    cfg = alembic_config()
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_lock(_PG_MIGRATION_LOCK)))
                conn.commit()
                try:
                    command.upgrade(cfg, revision)
                    conn.commit()
                finally:
                    conn.rollback()
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(_PG_MIGRATION_LOCK)))
                    conn.commit()
            else:
                # take SQLite's write lock first: the version check and the DDL then happen atomically
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    command.upgrade(cfg, revision)
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
    finally:
        if not isinstance(url, Engine):
            engine.dispose()
    logger.debug("database at %s migrated to %s", engine.url.render_as_string(hide_password=True), revision)
