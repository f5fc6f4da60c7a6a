"""Contract suite of the SQL storage layer: every test that takes ``db_url``/``session_factory`` runs
on SQLite and on PostgreSQL (see ``conftest.py``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import multiprocessing.synchronize
import threading
import warnings

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session, sessionmaker

from service import db, store
from service.models import ApiToken, Artifact, Base, Event, Experiment, Trial
from service.states import ExperimentState as ES
from service.states import IllegalTransition
from service.states import TrialState as TS

UTC = dt.timezone.utc
T0 = dt.datetime(2030, 1, 1, tzinfo=UTC)


def new_experiment(s: Session, name: str = "exp", algorithm: str = "agp", **kw) -> Experiment:
    return store.create_experiment(s, spec={"version": 1, "name": name}, name=name, algorithm=algorithm,
                                   model="search.zoo:digits_cnn", max_trials=kw.pop("max_trials", 5), **kw)


def make_running(factory: sessionmaker[Session], **kw) -> int:
    with db.session_scope(factory) as s:
        exp = new_experiment(s, **kw)
        store.set_experiment_state(s, exp, ES.RUNNING)
        return exp.id


# -- schema & engine -------------------------------------------------------------------------------


def test_migration_creates_exactly_the_orm_schema(session_factory):
    engine = session_factory.kw["bind"]
    db.upgrade(engine.url)  # a second upgrade is a no-op
    with engine.connect() as conn, warnings.catch_warnings():
        # SQLite cannot reflect the expression index of `artifacts`; test_artifact_unique_with_null_trial covers it
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    assert diff == []
    assert version == ["0002"]


def _trials_version(s: Session, exp_id: int) -> int:
    return s.execute(sa.select(Experiment.trials_version).where(Experiment.id == exp_id)).scalar_one()


def test_trials_version_changes_with_every_trial_write_whoever_writes(session_factory):
    """The database maintains it (triggers), so Core inserts and raw SQL bump it too; other experiments keep theirs."""
    with db.session_scope(session_factory) as s:
        exp_id, other_id = new_experiment(s).id, new_experiment(s).id
    seen = []
    writes = [
        lambda s: store.upsert_trial(s, exp_id, number=0, state=TS.RUNNING),
        lambda s: store.upsert_trial(s, exp_id, number=0, state=TS.SUCCEEDED, score=0.5),
        lambda s: s.execute(sa.insert(Trial.__table__), [
            {"experiment_id": exp_id, "number": n, "attempt": 1, "state": "pending", "params": {}, "metrics": {},
             "created_at": T0} for n in (1, 2)]),
        lambda s: s.execute(sa.text("UPDATE trials SET worker = 'w' WHERE number = 1")),
        lambda s: s.execute(sa.delete(Trial).where(Trial.number == 2)),
    ]
    for write in writes:
        with db.session_scope(session_factory) as s:
            write(s)
        with session_factory() as s:
            seen.append(_trials_version(s, exp_id))
            assert _trials_version(s, other_id) == 0
    assert seen == sorted(set(seen)) and seen[0] > 0  # strictly increasing


def _upgrade_in_child(url: str, start: multiprocessing.synchronize.Event) -> None:
    start.wait(30)
    db.upgrade(url)


def test_upgrade_is_safe_when_two_processes_start_at_once(db_url):
    ctx = multiprocessing.get_context("fork")  # real processes, without paying for a new interpreter
    start = ctx.Event()
    procs = [ctx.Process(target=_upgrade_in_child, args=(db_url, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == ["0002"]
        assert set(Base.metadata.tables) <= set(sa.inspect(conn).get_table_names())
    engine.dispose()


def test_normalize_url_picks_psycopg3_and_rejects_other_drivers():
    assert db.normalize_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert db.normalize_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    with pytest.raises(ValueError, match="database_url: unsupported driver 'mysql'"):
        db.normalize_url("mysql://u@h/d")
    with pytest.raises(ValueError, match="database_url: in-memory SQLite"):
        db.make_engine("sqlite://")


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(session_factory):
    engine = session_factory.kw["bind"]
    if engine.dialect.name != "sqlite":
        assert engine.dialect.driver == "psycopg"
        return
    with engine.connect() as conn:
        pragma = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "busy_timeout", "foreign_keys")}
    assert pragma == {"journal_mode": "wal", "busy_timeout": db.SQLITE_BUSY_TIMEOUT_MS, "foreign_keys": 1}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_read_gets_a_fresh_connection_when_its_pooled_one_died(session_factory):
    """``db.read`` skips the pre-ping round trip: a connection the server killed is replaced on first use."""
    backend_pid = "SELECT pg_backend_pid()"
    first = db.read(session_factory, lambda conn: conn.exec_driver_sql(backend_pid).scalar())
    with session_factory() as s:  # the server ends the pooled connection (as a restart would)
        assert s.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
    second = db.read(session_factory, lambda conn: conn.exec_driver_sql(backend_pid).scalar())
    assert second != first


def test_timestamps_round_trip_as_aware_utc(session_factory):
    with db.session_scope(session_factory) as s:
        exp_id = new_experiment(s).id
    with session_factory() as s:
        exp = store.get_experiment(s, exp_id)
        assert exp.created_at.tzinfo is not None and exp.created_at.utcoffset() == dt.timedelta(0)
        assert abs((dt.datetime.now(UTC) - exp.created_at).total_seconds()) < 60


def test_delete_experiment_cascades_to_trials_events_and_artifacts(session_factory):
    with db.session_scope(session_factory) as s:
        exp_id, other_id = new_experiment(s).id, new_experiment(s, name="other").id
        store.upsert_trial(s, exp_id, number=0, state=TS.PENDING)
        store.add_artifact(s, experiment_id=exp_id, trial_number=0, kind="log", path="trials/0/log.txt",
                           size=3, content_type="text/plain")
    with db.session_scope(session_factory) as s:
        assert store.delete_experiment(s, exp_id) is True
        assert store.delete_experiment(s, exp_id) is False
    with session_factory() as s:
        for model in (Trial, Event, Artifact):
            assert s.scalar(sa.select(sa.func.count()).select_from(model).where(model.experiment_id == exp_id)) == 0
        assert store.get_experiment(s, other_id) is not None
        assert len(store.events_after(s, other_id)) == 1


# -- states -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frm", "to", "legal"), [
    (ES.QUEUED, ES.RUNNING, True), (ES.QUEUED, ES.CANCELLED, True), (ES.RUNNING, ES.CANCELLING, True),
    (ES.CANCELLING, ES.CANCELLED, True), (ES.FAILED, ES.QUEUED, True), (ES.CANCELLED, ES.QUEUED, True),
    (ES.QUEUED, ES.SUCCEEDED, False), (ES.SUCCEEDED, ES.QUEUED, False), (ES.CANCELLING, ES.RUNNING, False),
    (TS.RUNNING, TS.PENDING, True), (TS.PENDING, TS.SUCCEEDED, False), (TS.SUCCEEDED, TS.RUNNING, False),
    # a task run ahead of a decision that went the other way: from in flight, or after its result was told
    (TS.RUNNING, TS.DISCARDED, True), (TS.SUCCEEDED, TS.DISCARDED, True), (TS.FAILED, TS.DISCARDED, True),
    (TS.DISCARDED, TS.RUNNING, False), (TS.DISCARDED, TS.SUCCEEDED, False),
])
def test_state_machine_transitions(frm, to, legal):
    assert frm.can_go(to) is legal


def test_terminal_states():
    assert {s for s in ES if s.is_terminal()} == {ES.SUCCEEDED, ES.FAILED, ES.CANCELLED}
    assert {s for s in TS if s.is_terminal()} == {TS.SUCCEEDED, TS.FAILED, TS.CANCELLED, TS.DISCARDED}


def test_illegal_experiment_transition_raises_and_changes_nothing(session_factory):
    with db.session_scope(session_factory) as s:
        exp = new_experiment(s)
        with pytest.raises(IllegalTransition, match="queued -> succeeded") as info:
            store.set_experiment_state(s, exp, ES.SUCCEEDED)
        assert (info.value.from_state, info.value.to_state) == (ES.QUEUED, ES.SUCCEEDED)
        exp_id = exp.id
    with session_factory() as s:
        assert store.get_experiment(s, exp_id).state is ES.QUEUED
        assert [e.data["state"] for e in store.events_after(s, exp_id)] == ["queued"]


def test_state_changes_set_timestamps_and_append_events(session_factory):
    exp_id = make_running(session_factory)
    with db.session_scope(session_factory) as s:
        exp = store.get_experiment(s, exp_id)
        assert exp.started_at is not None and exp.finished_at is None
        store.set_experiment_state(s, exp, ES.FAILED, error="Traceback: boom")
    with session_factory() as s:
        exp = store.get_experiment(s, exp_id)
        assert (exp.state, exp.error) == (ES.FAILED, "Traceback: boom")
        assert exp.finished_at >= exp.started_at
        events = store.events_after(s, exp_id)
        assert [(e.data["previous"], e.data["state"]) for e in events] == [
            (None, "queued"), ("queued", "running"), ("running", "failed")]
        assert events[-1].data["error"] == "Traceback: boom"


def test_cancel_and_resume(session_factory):
    with db.session_scope(session_factory) as s:
        queued = new_experiment(s)
        assert store.request_cancel(s, queued.id).state is ES.CANCELLED
        assert store.request_cancel(s, queued.id).state is ES.CANCELLED  # idempotent
    running_id = make_running(session_factory)
    with db.session_scope(session_factory) as s:
        store.upsert_trial(s, running_id, number=0, state=TS.RUNNING)
        store.set_generator_state(s, running_id, {"version": 1, "done": [0]})
        exp = store.request_cancel(s, running_id)
        assert (exp.state, exp.cancel_requested) == (ES.CANCELLING, True)
        store.set_experiment_state(s, exp, ES.CANCELLED)
    with db.session_scope(session_factory) as s:
        exp = store.request_resume(s, running_id)
        assert (exp.state, exp.cancel_requested, exp.finished_at) == (ES.QUEUED, False, None)
        assert exp.generator_state == {"version": 1, "done": [0]}
        assert store.get_trial(s, running_id, 0) is not None
        store.set_experiment_state(s, exp, ES.RUNNING)
        with pytest.raises(IllegalTransition, match="running -> queued"):
            store.request_resume(s, running_id)
        with pytest.raises(store.NotFoundError, match="experiment 999999 not found"):
            store.request_cancel(s, 999999)


def test_cancel_of_a_finished_experiment_is_illegal(session_factory):
    exp_id = make_running(session_factory)
    with db.session_scope(session_factory) as s:
        store.set_experiment_state(s, store.get_experiment(s, exp_id), ES.SUCCEEDED)
    with session_factory() as s, pytest.raises(IllegalTransition, match="succeeded -> cancelled"):
        store.request_cancel(s, exp_id)


def test_state_change_rechecks_a_concurrently_changed_row(session_factory):
    exp_id = make_running(session_factory)
    with session_factory() as api, session_factory() as runner:
        stale = store.get_experiment(api, exp_id)
        assert stale.state is ES.RUNNING
        api.commit()  # end the read transaction; the object stays loaded (and stale)
        store.set_experiment_state(runner, store.get_experiment(runner, exp_id), ES.SUCCEEDED)
        runner.commit()
        with pytest.raises(IllegalTransition, match="succeeded -> cancelling"):
            store.set_experiment_state(api, stale, ES.CANCELLING)
        api.rollback()
    with session_factory() as s:
        assert store.get_experiment(s, exp_id).state is ES.SUCCEEDED


def test_cancel_decides_again_when_the_runner_started_the_experiment_meanwhile(session_factory):
    with db.session_scope(session_factory) as s:
        exp_id = new_experiment(s).id
    with session_factory() as api, session_factory() as runner:
        assert store.get_experiment(api, exp_id).state is ES.QUEUED  # cached, soon stale
        api.commit()
        store.set_experiment_state(runner, store.get_experiment(runner, exp_id), ES.RUNNING)
        runner.commit()
        exp = store.request_cancel(api, exp_id)  # queued -> cancelled would skip the runner
        assert (exp.state, exp.cancel_requested) == (ES.CANCELLING, True)
        api.commit()
    with session_factory() as s:
        assert [e.data["state"] for e in store.events_after(s, exp_id)] == ["queued", "running", "cancelling"]


# -- pagination -------------------------------------------------------------------------------------


def page_through(fetch, limit):
    items, cursor, counts = [], None, set()
    while True:
        page = fetch(limit=limit, cursor=cursor)
        items += page.items
        counts.add(page.count)
        if page.next_cursor is None:
            return items, counts
        cursor = page.next_cursor


def test_list_experiments_filters_sorts_and_counts(session_factory):
    with db.session_scope(session_factory) as s:
        for i in range(7):
            exp = new_experiment(s, name=f"Run_{i % 3}%", algorithm="agp" if i % 2 else "linear")
            exp.created_at = T0 + dt.timedelta(minutes=i % 4)  # ties: the id decides
            exp.best_score = None if i % 3 == 0 else float(i % 2)
            if i >= 5:
                store.request_cancel(s, exp.id)
    with session_factory() as s:
        all_exps = list(s.scalars(sa.select(Experiment)))
        newest = sorted(all_exps, key=lambda e: (e.created_at, e.id), reverse=True)
        got, counts = page_through(lambda **kw: store.list_experiments(s, **kw), limit=2)
        assert [e.id for e in got] == [e.id for e in newest] and counts == {7}
        by_score, _ = page_through(lambda **kw: store.list_experiments(s, sort="-best_score", **kw), limit=3)
        scored = sorted((e for e in all_exps if e.best_score is not None), key=lambda e: (e.best_score, e.id), reverse=True)
        nulls = sorted((e for e in all_exps if e.best_score is None), key=lambda e: e.id, reverse=True)
        assert [e.id for e in by_score] == [e.id for e in scored + nulls]
        page = store.list_experiments(s, states=["cancelled"], algorithm="linear", name_contains="run_0%")
        assert [e.name for e in page.items] == ["Run_0%"] and page.count == 1
        assert store.list_experiments(s, name_contains="n_1%", limit=1).count == 2
        assert store.list_experiments(s, name_contains="x%").count == 0  # % is literal
        for bad, message in [({"sort": "size"}, "sort: unknown key 'size'"), ({"limit": 0}, "limit:"),
                             ({"states": ["done"]}, "states: unknown state 'done'"),
                             ({"cursor": "not-a-cursor"}, "cursor:")]:
            with pytest.raises(ValueError, match=message):
                store.list_experiments(s, **bad)
        cursor = store.list_experiments(s, limit=1).next_cursor
        with pytest.raises(ValueError, match="cursor: it was made for sort '-created_at', not 'name'"):
            store.list_experiments(s, sort="name", cursor=cursor)


@pytest.fixture(scope="module")
def trials_10k_rows(trials_10k):
    """The 10,000 trials as plain tuples (cheap to sort in Python), loaded once per backend."""
    session_factory, exp_id = trials_10k
    cols = (Trial.id, Trial.number, Trial.score, Trial.flops_ratio, Trial.duration_s, Trial.state)
    with session_factory() as s:
        return [row._asdict() for row in s.execute(sa.select(*cols).where(Trial.experiment_id == exp_id))]


def expected_order(rows, key, desc):
    present = sorted((r for r in rows if r[key] is not None), key=lambda r: (r[key], r["id"]), reverse=desc)
    absent = sorted((r for r in rows if r[key] is None), key=lambda r: r["id"], reverse=desc)
    return [r["id"] for r in present + absent]


N_TRIALS = 10_000  # conftest.trials_10k


@pytest.mark.parametrize("sort", ["number", "score", "-score", "flops_ratio", "-duration_s"])
def test_paging_10k_trials_yields_each_once_in_order(trials_10k, trials_10k_rows, sort):
    session_factory, exp_id = trials_10k
    with session_factory() as s:
        got, counts = page_through(lambda **kw: store.list_trials(s, exp_id, sort=sort, **kw), limit=1000)
        assert counts == {N_TRIALS}
        assert [t.id for t in got] == expected_order(trials_10k_rows, sort.lstrip("-"), sort.startswith("-"))
        failed, counts = page_through(
            lambda **kw: store.list_trials(s, exp_id, states=[TS.FAILED], sort=sort, **kw), limit=300)
        expected = [r for r in trials_10k_rows if r["state"] is TS.FAILED]
        assert counts == {len(expected)} == {N_TRIALS // 10}
        assert [t.id for t in failed] == expected_order(expected, sort.lstrip("-"), sort.startswith("-"))


def test_trial_page_query_is_an_index_scan_without_offset(trials_10k):
    session_factory, exp_id = trials_10k
    engine = session_factory.kw["bind"]
    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM trials" in statement and "count(" not in statement:
            captured.append((statement, parameters))

    with session_factory() as s:
        cursor = store.list_trials(s, exp_id, sort="-score", limit=50).next_cursor
        sa.event.listen(engine, "before_cursor_execute", capture)
        try:
            page = store.list_trials(s, exp_id, sort="-score", limit=50, cursor=cursor)
        finally:
            sa.event.remove(engine, "before_cursor_execute", capture)
        assert len(page.items) == 50
        (statement, params), = captured  # one query: the page did not reach the NULL scores
        # keyset, not OFFSET (SQLAlchemy's SQLite dialect always renders "LIMIT ? OFFSET ?", with 0)
        assert "OFFSET" not in statement.upper() or params[-1] == 0
        prefix = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
        plan = "\n".join(str(r[-1]) for r in s.connection().exec_driver_sql(prefix + statement, params))
    assert "ix_trials_experiment_id_score_id" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort " not in plan, plan  # the index gives the order


def test_keyset_pages_are_stable_under_inserts(session_factory):
    with db.session_scope(session_factory) as s:
        exp_id = new_experiment(s).id
        for n in range(0, 20, 2):
            store.upsert_trial(s, exp_id, number=n, state=TS.PENDING)
    with session_factory() as s:
        first = store.list_trials(s, exp_id, limit=4)
        for n in (1, 3, 21):  # one before the cursor, two after
            store.upsert_trial(s, exp_id, number=n, state=TS.PENDING)
        rest, _ = page_through(lambda **kw: store.list_trials(s, exp_id, **kw) if kw["cursor"] else first, limit=4)
        assert [t.number for t in rest] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 21]


# -- trials, results, events ------------------------------------------------------------------------


def test_record_trial_result_commits_trial_progress_best_and_events_together(session_factory):
    exp_id = make_running(session_factory)
    with db.session_scope(session_factory) as s:
        store.upsert_trial(s, exp_id, number=0, state=TS.PENDING, params={"lr": 0.1}, config_list=[{"sparse_ratio": 0.5}])
        t = store.upsert_trial(s, exp_id, number=0, state=TS.RUNNING, worker="w1")
        assert t.started_at is not None
    with db.session_scope(session_factory) as s:
        exp = store.get_experiment(s, exp_id)
        trial = store.record_trial_result(
            s, exp, number=0, state=TS.SUCCEEDED, score=0.9, metrics={"accuracy": 0.9, "flops_ratio": 0.4},
            generator_state={"version": 1, "told": [0]}, best_number=0, best_score=0.9, best_flops_ratio=0.4,
            events=[("trial_finished", {"number": 0}), ("best_changed", {"number": 0})])
        assert (exp.n_trials, exp.best_trial_number, exp.generator_state) == (1, 0, {"version": 1, "told": [0]})
        assert trial.duration_s is not None and trial.flops_ratio == 0.4
    with session_factory() as s:
        exp = store.get_experiment(s, exp_id)
        assert (exp.n_trials, exp.best_score, exp.best_flops_ratio) == (1, 0.9, 0.4)
        best = store.best_trial(s, exp_id)
        assert (best.number, best.params, best.worker, best.state) == (0, {"lr": 0.1}, "w1", TS.SUCCEEDED)
        assert [e.kind for e in store.events_after(s, exp_id)][-2:] == ["trial_finished", "best_changed"]
        # recording the same finished trial again does not count it twice
        store.record_trial_result(s, exp_id, number=0, state=TS.SUCCEEDED, generator_state={"version": 1})
        assert store.get_experiment(s, exp_id).n_trials == 1


def test_record_trial_result_rolled_back_leaves_no_trace(session_factory):
    exp_id = make_running(session_factory)
    with session_factory() as s:
        store.record_trial_result(s, exp_id, number=3, state=TS.FAILED, error="Traceback ...",
                                  generator_state={"version": 1, "x": 1}, events=[("trial_failed", {"number": 3})])
        s.rollback()
    with session_factory() as s:
        exp = store.get_experiment(s, exp_id)
        assert (exp.n_trials, exp.generator_state, store.get_trial(s, exp_id, 3)) == (0, None, None)
        assert [e.kind for e in store.events_after(s, exp_id)] == ["experiment_state", "experiment_state"]


def test_record_trial_result_refuses_a_runner_that_lost_its_lease(session_factory):
    exp_id = make_running(session_factory)
    with db.session_scope(session_factory) as s:
        assert store.claim_experiment(s, exp_id, owner="new", lease_seconds=60)
    with session_factory() as s:
        with pytest.raises(store.LeaseLost, match="lease held by 'new', not 'old'"):
            store.record_trial_result(s, exp_id, number=0, state=TS.SUCCEEDED, score=1.0,
                                      generator_state={"v": 1}, lease_owner="old")
        s.rollback()
        assert store.get_trial(s, exp_id, 0) is None
        store.record_trial_result(s, exp_id, number=0, state=TS.SUCCEEDED, generator_state={"v": 1}, lease_owner="new")
        assert store.get_experiment(s, exp_id).n_trials == 1


def test_trial_transitions_are_enforced_and_retries_bump_attempt(session_factory):
    exp_id = make_running(session_factory)
    with db.session_scope(session_factory) as s:
        store.upsert_trial(s, exp_id, number=-1, state=TS.RUNNING)
        retried = store.upsert_trial(s, exp_id, number=-1, state=TS.PENDING)
        assert (retried.attempt, retried.started_at) == (2, None)
        store.upsert_trial(s, exp_id, number=-1, state=TS.RUNNING)
        store.upsert_trial(s, exp_id, number=-1, state=TS.SUCCEEDED, score=float("nan"))
        with pytest.raises(IllegalTransition, match="trial state: illegal transition succeeded -> running"):
            store.upsert_trial(s, exp_id, number=-1, state=TS.RUNNING)
        with pytest.raises(IllegalTransition):
            store.record_trial_result(s, exp_id, number=-1, state=TS.FAILED, generator_state=None)
    with session_factory() as s:
        t = store.get_trial(s, exp_id, -1)
        assert (t.state, t.attempt, t.score) == (TS.SUCCEEDED, 2, None)
        assert [t.number for t in store.get_trials(s, exp_id, states=["succeeded"])] == [-1]


def test_events_have_global_increasing_ids_and_resume_after_an_id(session_factory):
    with db.session_scope(session_factory) as s:
        a, b = new_experiment(s).id, new_experiment(s).id
        for i in range(5):
            store.append_event(s, a, "log", {"i": i})
            store.append_event(s, b, "log", {"i": i})
        with pytest.raises(ValueError, match="kind:"):
            store.append_event(s, a, "", {})
        with pytest.raises(store.NotFoundError):
            store.append_event(s, 999999, "log", {})
    with session_factory() as s:
        events = store.events_after(s, a)
        ids = [e.id for e in events]
        assert ids == sorted(ids) and len(ids) == 6
        assert set(ids).isdisjoint(e.id for e in store.events_after(s, b))
        assert [e.data["i"] for e in store.events_after(s, a, after_id=ids[3])] == [3, 4]
        assert [e.data["i"] for e in store.events_after(s, a, after_id=ids[0], limit=2)] == [0, 1]


# -- leases ----------------------------------------------------------------------------------------


def test_two_sessions_racing_for_a_lease_exactly_one_wins(session_factory):
    exp_id = make_running(session_factory)
    first, second = session_factory(), session_factory()
    result: dict[str, bool] = {}
    try:
        assert store.claim_experiment(first, exp_id, owner="a", lease_seconds=30)  # holds the row, uncommitted

        def claim_b() -> None:
            result["b"] = store.claim_experiment(second, exp_id, owner="b", lease_seconds=30)
            second.commit()

        thread = threading.Thread(target=claim_b)
        thread.start()  # b blocks on a's row lock (PostgreSQL) / the write lock (SQLite)
        first.commit()
        thread.join(timeout=60)
        assert result == {"b": False}
    finally:
        first.close()
        second.close()
    with session_factory() as s:
        assert store.get_experiment(s, exp_id).lease_owner == "a"


def test_many_runners_claiming_at_once_one_wins(session_factory):
    exp_id = make_running(session_factory)
    barrier = threading.Barrier(6)
    wins: list[str] = []

    def runner(owner: str) -> None:
        with session_factory() as s:
            barrier.wait()
            if store.claim_experiment(s, exp_id, owner=owner, lease_seconds=30):
                wins.append(owner)
            s.commit()

    threads = [threading.Thread(target=runner, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(wins) == 1


def test_lease_lifecycle_expiry_takeover_and_claimable(session_factory):
    with db.session_scope(session_factory) as s:
        queued = new_experiment(s).id
        done = new_experiment(s).id
        store.request_cancel(s, done)
    running = make_running(session_factory)
    with db.session_scope(session_factory) as s:
        assert store.claimable_experiments(s, now=T0) == [queued, running]
        assert store.claim_experiment(s, running, owner="a", lease_seconds=30, now=T0)
        assert not store.claim_experiment(s, done, owner="a", lease_seconds=30, now=T0)  # terminal
        assert store.claimable_experiments(s, now=T0 + dt.timedelta(seconds=10)) == [queued]
        assert store.leased_experiments(s, owner="a", now=T0) == [running]
        assert not store.claim_experiment(s, running, owner="b", lease_seconds=30, now=T0 + dt.timedelta(seconds=10))
        assert store.renew_lease(s, running, owner="a", lease_seconds=30, now=T0 + dt.timedelta(seconds=20))
        assert store.get_experiment(s, running).lease_expires_at == T0 + dt.timedelta(seconds=50)
        # a crashed runner's lease expires: the experiment is claimable and another runner takes it over
        later = T0 + dt.timedelta(seconds=51)
        assert store.claimable_experiments(s, now=later) == [queued, running]
        assert store.claim_experiment(s, running, owner="b", lease_seconds=30, now=later)
        assert not store.renew_lease(s, running, owner="a", lease_seconds=30, now=later)
        assert not store.release_lease(s, running, owner="a")
        assert store.release_lease(s, running, owner="b")
        assert store.claimable_experiments(s, now=later, limit=1) == [queued]
        with pytest.raises(ValueError, match="lease_seconds:"):
            store.claim_experiment(s, queued, owner="a", lease_seconds=0)


def test_finishing_an_experiment_drops_its_lease(session_factory):
    exp_id = make_running(session_factory)
    with db.session_scope(session_factory) as s:
        assert store.claim_experiment(s, exp_id, owner="a", lease_seconds=30)
        store.set_experiment_state(s, store.get_experiment(s, exp_id), ES.SUCCEEDED)
        assert not store.renew_lease(s, exp_id, owner="a", lease_seconds=30)
    with session_factory() as s:
        exp = store.get_experiment(s, exp_id)
        assert (exp.lease_owner, exp.lease_expires_at) == (None, None)


# -- artifacts, tokens, uploads ---------------------------------------------------------------------


def test_artifacts_upsert_per_trial_and_kind(session_factory):
    with db.session_scope(session_factory) as s:
        exp_id = new_experiment(s).id
        for size in (1, 2):  # registering again replaces
            store.add_artifact(s, experiment_id=exp_id, trial_number=None, kind="onnx", path="best/model.onnx",
                               size=size, content_type="application/octet-stream")
        store.add_artifact(s, experiment_id=exp_id, trial_number=4, kind="log", path="trials/4/log.txt",
                           size=5, content_type="text/plain", sha256="ab" * 32)
        with pytest.raises(ValueError, match="path: must be relative"):
            store.add_artifact(s, experiment_id=exp_id, trial_number=4, kind="log", path="../../etc/passwd",
                               size=1, content_type="text/plain")
    with session_factory() as s:
        assert store.get_artifact(s, exp_id, trial_number=None, kind="onnx").size == 2
        assert store.get_artifact(s, exp_id, trial_number=4, kind="onnx") is None
        assert [a.kind for a in store.list_artifacts(s, exp_id)] == ["log", "onnx"] or \
            [a.kind for a in store.list_artifacts(s, exp_id)] == ["onnx", "log"]
        assert [a.kind for a in store.list_artifacts(s, exp_id, trial_number=None)] == ["onnx"]
        assert [a.path for a in store.list_artifacts(s, exp_id, trial_number=4)] == ["trials/4/log.txt"]


def test_artifact_unique_with_null_trial_is_enforced_by_the_database(session_factory):
    with db.session_scope(session_factory) as s:
        exp_id = new_experiment(s).id
    row = {"experiment_id": exp_id, "trial_number": None, "kind": "pt2", "path": "best/model.pt2", "size": 1,
           "content_type": "application/octet-stream", "created_at": T0}
    with session_factory() as s:
        s.execute(sa.insert(Artifact), [row])
        with pytest.raises(sa.exc.IntegrityError):
            s.execute(sa.insert(Artifact), [row])


def test_tokens_are_hashed_shown_once_and_revocable(session_factory):
    with db.session_scope(session_factory) as s:
        assert not store.tokens_exist(s)
        token, plaintext = store.create_token(s, name="ci")
        other, _ = store.create_token(s, name="laptop")
        token_id = token.id
    assert plaintext.startswith("ps_") and len(plaintext) == 43
    with db.session_scope(session_factory) as s:
        row = s.get(ApiToken, token_id)
        assert row.hash == hashlib.sha256(plaintext.encode()).hexdigest() and row.prefix == plaintext[:8]
        assert plaintext not in {row.name, row.prefix, row.hash}
        assert store.tokens_exist(s)
        assert store.verify_token(s, plaintext).id == token_id
        assert store.verify_token(s, plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
        assert store.verify_token(s, "") is None
        assert [t.name for t in store.list_tokens(s)] == ["ci", "laptop"]
    with db.session_scope(session_factory) as s:
        assert s.get(ApiToken, token_id).last_used_at is not None
        assert store.revoke_token(s, token_id) and store.revoke_token(s, other.id)
        assert not store.revoke_token(s, 999999)
    with session_factory() as s:
        assert store.verify_token(s, plaintext) is None
        assert store.tokens_exist(s)  # all revoked: auth stays on, nothing verifies


def test_uploaded_models(session_factory):
    with db.session_scope(session_factory) as s:
        row = store.add_uploaded_model(s, name="r18", factory="search.zoo:resnet18", kwargs={"num_classes": 10},
                                       path="models/1.safetensors", size=123, sha256="cd" * 32)
    with db.session_scope(session_factory) as s:
        assert store.get_uploaded_model(s, row.id).kwargs == {"num_classes": 10}
        assert store.get_uploaded_model_by_path(s, "models/1.safetensors").id == row.id
        assert [m.name for m in store.list_uploaded_models(s)] == ["r18"]
        assert store.delete_uploaded_model(s, row.id) and store.get_uploaded_model(s, row.id) is None


def test_settings_from_env_defaults_and_errors(tmp_path):
    from service.settings import Settings, SettingsError

    s = Settings.from_env({"PRUNESEARCH_DATA_DIR": str(tmp_path), "PRUNESEARCH_RUNNER": "off"})
    assert s.database_url == f"sqlite:///{tmp_path / 'prunesearch.db'}"
    assert (s.artifacts_dir, s.ray_address, s.max_concurrent_trials, s.lease_seconds, s.runner) == (
        tmp_path / "artifacts", None, 2, 30.0, False)
    assert s.max_upload_bytes == 512 * 1024 * 1024
    pg = Settings.from_env({"PRUNESEARCH_DATABASE_URL": "postgresql://u@db/ps", "PRUNESEARCH_RAY_ADDRESS": "local"})
    assert (pg.database_url, pg.ray_address) == ("postgresql://u@db/ps", "local")
    for name, value in [("MAX_CONCURRENT_TRIALS", "0"), ("MAX_UPLOAD_BYTES", "1e9"), ("RUNNER", "maybe")]:
        with pytest.raises(SettingsError, match=f"PRUNESEARCH_{name}: "):
            Settings.from_env({f"PRUNESEARCH_{name}": value})
