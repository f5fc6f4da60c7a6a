"""Fixtures of the service tests: one database per test, on SQLite and on PostgreSQL.

``db_url`` is parametrized over ``sqlite`` (a file in ``tmp_path``) and ``postgresql`` (a fresh
schema in a database ``prunesearch_test_<random>`` that this session creates on the server at
``PRUNESEARCH_TEST_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``, and drops at
the end — tests never touch anyone else's data), so a test that takes it is a contract test both
backends must pass. ``session_factory`` adds the migrated schema.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service import db, store
from service.models import Trial
from service.states import TrialState as TS

BACKENDS = ["sqlite", "postgresql"]
PG_ADMIN_URL = os.environ.get("PRUNESEARCH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_PG_HELP = (
    "PostgreSQL is not reachable at {url} ({error}). The service tests run against a real server: "
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(or point PRUNESEARCH_TEST_PG_URL at one; trust auth, any database to connect to)."
)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[sa.Engine]:
    """A fresh database ``prunesearch_test_<random>`` for this test session (dropped at the end),
    as an AUTOCOMMIT engine. Each test then gets its own schema in it (see :func:`fresh_database`)."""
    admin = sa.create_engine(db.normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"prunesearch_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(_PG_HELP.format(url=PG_ADMIN_URL, error=str(exc.orig).strip().splitlines()[0]), pytrace=False)
    engine = sa.create_engine(
        db.normalize_url(PG_ADMIN_URL).set(database=name), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def fresh_database(backend: str, directory: Path, pg: sa.Engine | None = None) -> Iterator[str]:
    """The URL of a new, empty database of ``backend``.

    SQLite: a file in ``directory``. PostgreSQL: a new schema ``t_<random>`` in the session's
    database ``pg``; the URL selects it (``options=-csearch_path=...``) and tags its connections
    (``application_name``), so the schema can be dropped even if a test leaks a connection. A schema
    costs ~20 ms where a database costs ~1.5 s (``DROP DATABASE`` forces a checkpoint).
    """
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'prunesearch.db'}"
        return
    assert pg is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = pg.url.update_query_dict({"application_name": schema, "options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with pg.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": schema},
            )
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def migrated_factory(url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on ``url`` after migrating it to head; its engine is disposed afterwards."""
    db.upgrade(url)
    factory = db.make_session_factory(url)
    try:
        yield factory
    finally:
        factory.kw["bind"].dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty database of each backend (not migrated)."""
    pg = request.getfixturevalue("pg_database") if request.param == "postgresql" else None
    with fresh_database(request.param, tmp_path, pg) as url:
        yield url


@pytest.fixture
def session_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on ``db_url`` with the schema migrated to head."""
    with migrated_factory(db_url) as factory:
        yield factory


@pytest.fixture(scope="session")
def origin_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Digits CNN weights trained for one epoch (a pretrain trial), so most runner tests skip pretraining."""
    from search.scheduling import Task
    from workers.spec import DataSpec, ModelSpec, TrialSettings, TrialSpec
    from workers.trial import run_trial

    folder = tmp_path_factory.mktemp("origin") / "pretrain"
    spec = TrialSpec(ModelSpec("search.zoo:digits_cnn"), DataSpec("digits"), "l1", {},
                     Task(-1, [], params={"pretrain": 1}).to_json(), artifact_dir=str(folder),
                     settings=TrialSettings())
    run_trial(spec)
    return str(folder / "weights.safetensors")


N_TRIALS = 10_000
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def _experiment(s: Session, name: str) -> int:
    exp = store.create_experiment(s, spec={"version": 1}, name=name, algorithm="agp", model="m", max_trials=None)
    return exp.id


@pytest.fixture(scope="module", params=BACKENDS)
def trials_10k(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``(session_factory, experiment id)`` of each backend: 10,000 bulk-inserted trials with tied and missing
    scores/durations, built once per backend and module (the tests using it only read)."""
    pg = request.getfixturevalue("pg_database") if request.param == "postgresql" else None
    with fresh_database(request.param, tmp_path_factory.mktemp("big"), pg) as url, \
            migrated_factory(url) as factory:
        rng = random.Random(0)
        with db.session_scope(factory) as s:
            exp_id = _experiment(s, "big")
            other_id = _experiment(s, "other")
            rows = []
            for n in rng.sample(range(N_TRIALS), N_TRIALS):  # ids not in number order
                done = n % 10 != 0
                rows.append({
                    "experiment_id": exp_id, "number": n, "attempt": 1, "params": {}, "metrics": {},
                    "state": TS.SUCCEEDED if done else TS.FAILED, "created_at": T0,
                    "score": round(rng.random(), 2) if done else None,  # ~100 ties per value
                    "flops_ratio": rng.choice([0.25, 0.5, 0.75]) if done else None,
                    "duration_s": float(n % 7) if n % 3 else None,
                })
            s.execute(sa.insert(Trial.__table__), rows)
            s.execute(sa.insert(Trial.__table__), [{**rows[0], "experiment_id": other_id, "number": 0}])
        if request.param == "postgresql":
            with factory.kw["bind"].connect() as conn:
                conn.execute(sa.text("ANALYZE trials"))
                conn.commit()
        yield factory, exp_id
