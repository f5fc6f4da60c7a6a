"""The experiment runner: claims experiments from SQL and drives their searches to the end.

A :class:`Runner` is steppable: :meth:`Runner.step` does one round and returns whether anything
happened, so tests drive it step by step and never sleep-poll; :meth:`Runner.run_forever` loops
it with a heartbeat thread (the FastAPI lifespan runs it in a thread; ``python -m service.runner``
runs it as a standalone worker process). One round:

1. **Leases.** Renew the leases this runner holds (every ``lease_seconds / 3``) and look at its
   experiments' rows: one that was deleted, taken over or finished elsewhere is dropped; one
   whose cancel was requested gets its running trials cancelled (rows ``cancelled``) and moves to
   ``cancelled``.
2. **Claim** ``queued`` experiments, and ``running``/``cancelling`` ones whose lease expired (a
   crashed runner's), while trial slots are free: an atomic conditional ``UPDATE``
   (``store.claim_experiment``), so of several replicas exactly one wins. The TaskGenerator is
   rebuilt from ``experiments.spec``, the checkpoint in ``generator_state`` and the journal of
   generator calls after it on the trial rows (:mod:`service.runner_experiment`); tasks that were
   handed out but never finished run again (same number, ``attempt + 1``); finished trials never
   run again.
3. **Submit** tasks round-robin across experiments up to the global limit
   (``settings.max_concurrent_trials``) and each experiment's ``resources.max_concurrent_trials``.
   Tasks are asked for one at a time (``ask(1)``), so what an algorithm hands out does not
   depend on how many slots happened to be free. The trial row (``running``, with the number of
   the generator call that handed the task out) and its ``trial_started`` event are committed,
   fenced by the lease, *before* the executor gets the task. When the spec gives no weights, the
   pretrain trial (number -1) runs first, as in :func:`workers.local.run_search`.
4. **Collect** finished trials. Each is committed in ONE transaction with its journal entry (the
   number of the ``tell`` and the exact result told), its events, the experiment's best and, every
   ``CHECKPOINT_EVERY_TELLS`` results or ``CHECKPOINT_EVERY_S`` seconds, a checkpoint of the
   generator (``store.record_trial_result``, fenced by the lease: a runner that lost its lease
   cannot write). The task that takes the freed slot is opened in the same transaction (one
   commit per trial). A trial that raised is ``failed`` with its traceback in ``error``; the
   search goes on. Tasks the generator *discards* (NetAdapt's candidates run ahead of a decision
   that went the other way, ``TaskGenerator.discard``) are cancelled if they still run, and their
   rows move to ``discarded`` (reason in ``error``, a ``trial_discarded`` event, no longer counted
   in ``n_trials``) in that same transaction; their slots are filled there too. A discarded
   trial never runs again, and a result it reports anyway is dropped.
5. **Finish** searches that are done: the best trial's compact model is exported to
   ``experiments/<id>/best/`` (``model.pt2``, ``model.onnx``, ``model.safetensors``,
   ``masks.safetensors``, ``compact.json``) and registered as artifacts with size, content type
   and sha256; an export failure is a ``log`` event, not a failed experiment.

Trials run through ``executor_factory(spec, trial_fn=..., on_progress=...)`` (one executor per
claimed experiment; default :class:`DefaultExecutorFactory`: in-process
:class:`~workers.executors.LocalExecutor`, or :class:`~workers.executors.RayExecutor` when
``settings.ray_address`` is set). With the in-process executor a trial runs inside ``step()``;
the heartbeat thread of :meth:`Runner.run_forever` keeps the leases alive meanwhile.

Example (the API's lifespan does the same in a thread)::

    runner = Runner(settings, session_factory, None, ArtifactStore(settings.artifacts_dir))
    stop = threading.Event()
    thread = threading.Thread(target=runner.run_forever, args=(stop,), daemon=True)
    thread.start()
    ...
    stop.set(); thread.join()      # releases the leases; another runner resumes the experiments
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service import db, store
from service._export import FORMATS, export_trial
from service.artifacts import PRETRAIN_NUMBER, ArtifactStore
from service.db import session_scope
from service.models import Experiment, utcnow
from service.runner_db import (
    discard_trials,
    finish_experiment,
    json_safe,
    load_journal,
    open_trial,
    record_finished,
    register_best_export,
)
from service.runner_experiment import (
    DefaultExecutorFactory,
    ExecutorFactory,
    ExperimentDriver,
    Finished,
    checkpoint_seq,
)
from service.runner_trial import count_starts, make_trial_fn
from service.settings import Settings
from service.states import ExperimentState, IllegalTransition, TrialState

__all__ = ["DefaultExecutorFactory", "Runner", "RunnerOptions", "main"]

logger = logging.getLogger(__name__)

#: minimum seconds between two ``trial_progress`` events of one trial while it trains.
PROGRESS_INTERVAL_S = 2.0
_DB_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError)


class _Drop(Exception):
    """Stop driving an experiment without touching SQL (lease lost, experiment deleted, DB down)."""


@dataclass(frozen=True)
class RunnerOptions:
    """Knobs of a :class:`Runner` that deployments rarely touch (tests do).

    Attributes:
        trial_fn: the trial function (default :func:`workers.trial.run_trial`); the runner wraps it
            to count attempts (:mod:`service.runner_trial`).
        export_formats: formats the best model is exported to (``pt2``, ``onnx``); the safetensors
            compact model is always there.
        clock: ``clock() -> aware UTC datetime`` for leases (tests move it forward to expire leases).
        poll_timeout: seconds ``step()`` waits for a finished trial per experiment (Ray; 0 = no wait).
        idle_sleep: seconds :meth:`Runner.run_forever` sleeps after a step that did nothing.
    """

    trial_fn: Any = None
    export_formats: Sequence[str] = FORMATS
    clock: Callable[[], Any] | None = None
    poll_timeout: float = 0.0
    idle_sleep: float = 0.25


class Runner:
    """Drives experiments from SQL to the end (see the module docstring).

    Args:
        settings: ``max_concurrent_trials`` (global limit of trials in flight), ``lease_seconds``,
            ``ray_address`` (for the default executor factory), ``artifacts_dir``.
        session_factory: a ``sessionmaker`` (``service.db.make_session_factory``).
        executor_factory: ``factory(spec, *, trial_fn, on_progress) -> Executor``
            (``None``: :class:`DefaultExecutorFactory` from the settings).
        artifact_store: where trials write (``None``: ``ArtifactStore(settings.artifacts_dir)``).
        owner_id: this runner's lease owner id (default ``host:pid:random``); unique per runner.
        options: the less common knobs (:class:`RunnerOptions`).

    Example:
        >>> import os, tempfile, threading
        >>> from pathlib import Path
        >>> from service.db import make_session_factory, upgrade
        >>> d = Path(tempfile.mkdtemp())
        >>> settings = Settings(database_url=f"sqlite:///{d}/ps.db", data_dir=d, artifacts_dir=d / "a")
        >>> upgrade(settings.database_url)
        >>> runner = Runner(settings, make_session_factory(settings.database_url), owner_id="doc")
        >>> runner.step()  # nothing queued
        False
        >>> stop = threading.Event(); stop.set()
        >>> runner.run_forever(stop)  # returns at once: stop is set
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        executor_factory: ExecutorFactory | None = None,
        artifact_store: ArtifactStore | None = None,
        *,
        owner_id: str | None = None,
        options: RunnerOptions | None = None,
    ) -> None:
        options = options or RunnerOptions()
        self.settings = settings
        self.session_factory = session_factory
        self.executor_factory = executor_factory or DefaultExecutorFactory(settings.ray_address)
        self.artifacts = artifact_store or ArtifactStore(settings.artifacts_dir)
        self.owner_id = owner_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.trial_fn = make_trial_fn(options.trial_fn)
        self.export_formats = tuple(options.export_formats)
        self.clock = options.clock or utcnow
        self.poll_timeout = options.poll_timeout
        self.idle_sleep = options.idle_sleep
        self.lease_seconds = float(settings.lease_seconds)
        self.max_trials_in_flight = int(settings.max_concurrent_trials)
        self.drivers: dict[int, ExperimentDriver] = {}
        #: ``time.monotonic()`` at the end of the last step (the API's heartbeat metric reads it).
        self.last_step_monotonic: float | None = None
        self._lock = threading.Lock()
        self._lost: set[int] = set()
        self._last_renew = 0.0
        self._progress_seen: dict[tuple[int, int], tuple[str | None, float]] = {}

    # -- the loop -------------------------------------------------------------------------------------
    def step(self) -> bool:
        """One round (see the module docstring); True if anything happened."""
        did = self._renew_if_due()
        did |= self._check_owned()
        did |= self._submit()
        if self.in_flight() < self.max_trials_in_flight and len(self.drivers) < self.max_trials_in_flight:
            if self._claim():
                did = True
                self._submit()
        did |= self._collect()
        did |= self._submit()
        did |= self._finish_done()
        self.last_step_monotonic = time.monotonic()
        return did

    def run_forever(self, stop_event: threading.Event) -> None:
        """Step until ``stop_event`` is set, with a heartbeat thread; then :meth:`close`.

        A step that raises (the database is unreachable...) is logged and retried, backing off up to
        10 s. With the in-process executor, stopping waits for the trial that runs.
        """
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat_loop, args=(beat_stop,), name="prunesearch-heartbeat",
                                daemon=True)
        beat.start()
        failures = 0
        try:
            while not stop_event.is_set():
                try:
                    busy = self.step()
                    failures = 0
                except Exception:
                    failures += 1
                    logger.exception("runner step failed (%d in a row); retrying", failures)
                    busy = False
                if not busy:  # back off while the database is unreachable
                    stop_event.wait(min(self.idle_sleep * 2 ** min(failures, 6), 10.0))
        finally:
            beat_stop.set()
            beat.join(timeout=10)
            self.close()

    def close(self) -> None:
        """Stop every experiment here: cancel its trials and release its lease (others resume it at once)."""
        for exp_id in list(self.drivers):
            self._drop(exp_id, release=True)
        close = getattr(self.executor_factory, "close", None)
        if callable(close):
            close()

    def in_flight(self) -> int:
        """Trials handed to executors and not reported yet, over all experiments."""
        return sum(len(d.running) for d in self.drivers.values())

    # -- leases ---------------------------------------------------------------------------------------
    def _heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_seconds / 3):
            try:
                self._renew(force=True)
            except Exception:
                logger.warning("lease renewal failed", exc_info=True)

    def _renew_if_due(self) -> bool:
        return self._renew(force=False)

    def _renew(self, *, force: bool) -> bool:
        with self._lock:
            if not force and time.monotonic() - self._last_renew < self.lease_seconds / 3:
                return False
            self._last_renew = time.monotonic()
            owned = list(self.drivers)
        lost = []
        for exp_id in owned:
            with session_scope(self.session_factory) as s:
                if not store.renew_lease(s, exp_id, owner=self.owner_id, lease_seconds=self.lease_seconds,
                                         now=self.clock()):
                    lost.append(exp_id)
        if lost:
            with self._lock:
                self._lost.update(lost)
        return False  # renewing is housekeeping, not progress

    def _check_owned(self) -> bool:
        """Drop experiments we lost; carry out requested cancels."""
        with self._lock:
            lost, self._lost = self._lost, set()
        did = False
        for exp_id in lost & set(self.drivers):
            logger.warning("experiment %d: lease lost; another runner drives it now", exp_id)
            self._drop(exp_id, release=False)
            did = True
        if not self.drivers:
            return did
        table = Experiment.__table__
        stmt = sa.select(table.c.id, table.c.state, table.c.cancel_requested, table.c.lease_owner).where(
            table.c.id.in_(list(self.drivers)))
        rows = db.read(self.session_factory, lambda conn: {r.id: r for r in conn.execute(stmt)})
        for exp_id in list(self.drivers):
            row = rows.get(exp_id)
            if row is None:  # deleted: the API removed its files; remove what our trials wrote since
                self._drop(exp_id, release=False)
                self.artifacts.delete_experiment(exp_id)
                did = True
            elif row.lease_owner != self.owner_id or ExperimentState(row.state).is_terminal():
                self._drop(exp_id, release=False)
                did = True
            elif row.cancel_requested or row.state == ExperimentState.CANCELLING.value:
                self._guarded(exp_id, self._cancel, exp_id)
                did = True
        return did

    def _claim(self) -> bool:
        free = self.max_trials_in_flight - len(self.drivers)
        with session_scope(self.session_factory) as s:
            candidates = [i for i in store.claimable_experiments(s, now=self.clock(), limit=free + 5)
                          if i not in self.drivers]
        claimed = False
        for exp_id in candidates:
            if len(self.drivers) >= self.max_trials_in_flight:
                break
            with session_scope(self.session_factory) as s:
                won = store.claim_experiment(s, exp_id, owner=self.owner_id, lease_seconds=self.lease_seconds,
                                             now=self.clock())
            if won:
                claimed = True
                logger.info("experiment %d: claimed by %s", exp_id, self.owner_id)
                self._guarded(exp_id, self._start_experiment, exp_id)
        return claimed

    # -- one experiment -------------------------------------------------------------------------------
    def _start_experiment(self, exp_id: int) -> None:
        from workers.spec import ExperimentSpec  # noqa: PLC0415

        with session_scope(self.session_factory) as s:
            exp = store.get_experiment(s, exp_id)
            if exp is None:
                raise _Drop("deleted")
            if exp.state is ExperimentState.CANCELLING or exp.cancel_requested:
                finish_experiment(s, exp_id, ExperimentState.CANCELLED)
                return
            try:
                store.set_experiment_state(s, exp, ExperimentState.RUNNING)
            except IllegalTransition:  # cancelled (or finished) between the claim and now
                store.release_lease(s, exp_id, owner=self.owner_id)
                return
            spec_dict, max_trials, state, best = exp.spec, exp.max_trials, exp.generator_state, exp.best_trial_number
            pretrain = store.get_trial(s, exp_id, PRETRAIN_NUMBER)
            pretrain_done = pretrain is not None and pretrain.state is TrialState.SUCCEEDED
            journal = load_journal(s, exp_id, after=checkpoint_seq(state))
        # Everything below may fail on a bad spec or state: _guarded turns that into a failed experiment.
        spec = ExperimentSpec.from_dict(spec_dict, check=False).with_max_trials(max_trials)
        driver = ExperimentDriver(
            exp_id, spec, state, journal=journal, pretrain_done=pretrain_done, artifacts=self.artifacts,
            executor_factory=self.executor_factory, trial_fn=self.trial_fn,
            on_progress=lambda number, event: self._on_progress(exp_id, number, event),
        )
        driver.best_number = best
        with self._lock:
            self.drivers[exp_id] = driver
        # the replay discarded the same tasks again; their rows are normally discarded already
        discarded = driver.take_discarded()
        if discarded:
            with session_scope(self.session_factory) as s:
                events = discard_trials(s, exp_id, discarded)
                if events:
                    store.append_events(s, exp_id, events, lease_owner=self.owner_id)

    def _submit(self) -> bool:
        """Hand out tasks round-robin, one per experiment per round, within both limits."""
        did, progress = False, True
        while progress and self.in_flight() < self.max_trials_in_flight:
            progress = False
            for exp_id, driver in list(self.drivers.items()):
                if self.in_flight() >= self.max_trials_in_flight:
                    break
                if exp_id in self.drivers and self._has_slot(driver):
                    if self._guarded(exp_id, self._submit_one, driver):
                        progress = did = True
        return did

    def _submit_one(self, driver: ExperimentDriver) -> bool:
        tasks = driver.next_tasks(1)
        discarded = driver.take_discarded()  # an ask may discard what ran ahead too
        if not tasks and not discarded:
            return False
        with session_scope(self.session_factory) as s:
            attempts, started = self._open_trials(s, driver, tasks)
            dropped = discard_trials(s, driver.experiment_id, discarded)
            store.append_events(s, driver.experiment_id, [*dropped, *started], lease_owner=self.owner_id)
            if discarded:  # the ask that discarded them may have handed out nothing: no row journals it
                store.set_generator_state(s, driver.experiment_id, driver.checkpoint(), lease_owner=self.owner_id)
        self._hand_out(driver, tasks, attempts)
        return True

    def _has_slot(self, driver: ExperimentDriver) -> bool:
        return self._free_slots(driver) > 0

    def _free_slots(self, driver: ExperimentDriver) -> int:
        """Trials ``driver`` may start now, within its own limit and the global one."""
        return max(0, min(driver.limit - len(driver.running), self.max_trials_in_flight - self.in_flight()))

    @staticmethod
    def _open_trials(s: Session, driver: ExperimentDriver,
                     tasks: list[dict[str, Any]]) -> tuple[dict[int, int], list[tuple[str, dict[str, Any]]]]:
        """In the caller's transaction, make the tasks' trial rows ``running``; returns number -> attempt and
        their ``trial_started`` events (the caller appends them, fenced by the lease)."""
        attempts, started = {}, []
        for task in tasks:
            number = int(task["task_id"])
            attempts[number] = open_trial(s, driver.experiment_id, task, ask_seq=driver.asked.get(number))
            started.append(("trial_started", json_safe({"number": number, "attempt": attempts[number],
                                                         "parent_number": task.get("parent_id"),
                                                         "params": task.get("params", {})})))
        return attempts, started

    @staticmethod
    def _hand_out(driver: ExperimentDriver, tasks: list[dict[str, Any]], attempts: dict[int, int]) -> None:
        """Give committed tasks to the executor (not those discarded since they were handed out: their rows are
        ``discarded`` in the same commit)."""
        for task in tasks:
            driver.asked.pop(int(task["task_id"]), None)
            if not driver.is_discarded(int(task["task_id"])):
                driver.submit(task, attempts[int(task["task_id"])])

    def _collect(self) -> bool:
        did = False
        for exp_id, driver in list(self.drivers.items()):
            finished = self._guarded(exp_id, driver.poll, self.poll_timeout) or []
            for item in finished:
                if exp_id in self.drivers:
                    self._guarded(exp_id, self._record, driver, item)
                    did = True
        return did

    def _record(self, driver: ExperimentDriver, item: Finished) -> None:
        """Commit a finished trial; the tasks that take its slot (and the slots of trials its result made the
        generator discard, cancelled here) are opened, and the discarded rows moved, in the same transaction."""
        exp_id, result, number = driver.experiment_id, item.result, item.number
        if driver.is_discarded(number):
            # discarded while it ran (reported in the same poll as the result that discarded it): its row is
            # discarded already and the generator would ignore the result, so nothing is told or written
            logger.info("experiment %d: trial %d finished after it was discarded; result dropped", exp_id, number)
            return
        told = driver.tell(item)
        discarded = driver.take_discarded()
        attempt = max(item.attempt, count_starts(self.artifacts.trial_dir(exp_id, number)), int(result.attempts))
        best = driver.best()
        checkpoint = driver.checkpoint() if told is not None and driver.checkpoint_due() else store.UNSET
        failed_pretrain = number == PRETRAIN_NUMBER and not result.ok
        tasks = driver.next_tasks(self._free_slots(driver)) if not failed_pretrain else []
        by_ask = driver.take_discarded()
        if by_ask:  # an ask that hands out nothing is journaled by no row: the checkpoint keeps these discards
            discarded.update(by_ask)
            checkpoint = driver.checkpoint()
        with session_scope(self.session_factory) as s:
            attempts, started = self._open_trials(s, driver, tasks)
            record_finished(s, self.artifacts, exp_id, number=number, attempt=attempt, result=result, told=told,
                            generator_state=checkpoint, best=best, previous_best=driver.best_number,
                            lease_owner=self.owner_id, more_events=() if discarded else started)
            if discarded:  # after its own row: whatever was told may be discarded
                store.append_events(s, exp_id, [*discard_trials(s, exp_id, discarded), *started])
            if failed_pretrain:
                finish_experiment(s, exp_id, ExperimentState.FAILED, error=f"the pretrain trial failed:\n{result.error}")
        driver.best_number = best.task_id if best is not None else None
        if failed_pretrain:
            self._drop(exp_id, release=False)
        self._hand_out(driver, tasks, attempts)

    def _finish_done(self) -> bool:
        did = False
        for exp_id, driver in list(self.drivers.items()):
            if driver.done:
                self._guarded(exp_id, self._finish, driver)
                did = True
        return did

    def _finish(self, driver: ExperimentDriver) -> None:
        exp_id = driver.experiment_id
        best = driver.best()
        results = list(driver.generator.results.values())
        if best is None and not any(r.ok for r in results):
            why = f"all {len(results)} trials failed (see their errors)" if results else "the search ran no trial"
            with session_scope(self.session_factory) as s:
                store.set_generator_state(s, exp_id, driver.checkpoint(), lease_owner=self.owner_id)
                finish_experiment(s, exp_id, ExperimentState.FAILED, error=why)
            self._drop(exp_id, release=False)
            return
        export, export_error = None, None
        if best is not None:
            trial_dir = self.artifacts.trial_dir(exp_id, best.task_id)
            try:
                export = export_trial(trial_dir, self.artifacts.best_dir(exp_id), driver.dummy_input,
                                      formats=self.export_formats, fallback_result=best.to_json())
            except Exception as exc:  # no compact model to export: the trials are still the result
                logger.warning("experiment %d: exporting the best trial failed", exp_id, exc_info=True)
                export_error = f"{type(exc).__name__}: {exc}"
        with session_scope(self.session_factory) as s:
            store.set_generator_state(s, exp_id, driver.checkpoint(), lease_owner=self.owner_id)
            if best is None:
                store.append_event(s, exp_id, "log", {"level": "warning", "message":
                                   "no trial satisfies the constraints; there is no best model to export"})
            else:
                register_best_export(s, self.artifacts, exp_id, export, export_error)
            exp = store.get_experiment(s, exp_id)
            # a cancel that came in while the last trial ran or the export was written wins
            cancelled = exp is not None and (exp.cancel_requested or exp.state is ExperimentState.CANCELLING)
            finish_experiment(s, exp_id, ExperimentState.CANCELLED if cancelled else ExperimentState.SUCCEEDED)
        logger.info("experiment %d: finished (best trial %s)", exp_id, best.task_id if best else None)
        self._drop(exp_id, release=False)

    def _cancel(self, exp_id: int) -> None:
        driver = self.drivers[exp_id]
        driver.cancel_all()
        with session_scope(self.session_factory) as s:
            store.set_generator_state(s, exp_id, driver.checkpoint(), lease_owner=self.owner_id)
            finish_experiment(s, exp_id, ExperimentState.CANCELLED)
        logger.info("experiment %d: cancelled", exp_id)
        self._drop(exp_id, release=False)

    def _fail(self, exp_id: int, error: str) -> None:
        driver = self.drivers.get(exp_id)
        if driver is not None:
            driver.cancel_all()
        try:
            with session_scope(self.session_factory) as s:
                # the lease check fences the write: a runner that lost the experiment must not fail it
                if not store.renew_lease(s, exp_id, owner=self.owner_id, lease_seconds=self.lease_seconds,
                                         now=self.clock()):
                    raise store.LeaseLost(f"experiment {exp_id}: lease lost")
                finish_experiment(s, exp_id, ExperimentState.FAILED, error=error)
        except (store.LeaseLost, store.NotFoundError, IllegalTransition, *_DB_ERRORS):
            logger.warning("experiment %d: could not record its failure", exp_id, exc_info=True)
        self._drop(exp_id, release=False)

    def _drop(self, exp_id: int, *, release: bool) -> None:
        """Forget an experiment here (cancel its trials); with ``release``, give its lease back."""
        with self._lock:
            driver = self.drivers.pop(exp_id, None)
        if driver is not None:
            driver.close()
        self._progress_seen = {k: v for k, v in self._progress_seen.items() if k[0] != exp_id}
        if release:
            try:
                with session_scope(self.session_factory) as s:
                    store.release_lease(s, exp_id, owner=self.owner_id)
            except Exception:  # the lease expires on its own
                logger.warning("experiment %d: could not release the lease", exp_id, exc_info=True)

    def _guarded(self, exp_id: int, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one experiment's piece of work; what goes wrong concerns that experiment only.

        Lease lost / deleted → drop it here; database unreachable → drop it and release the lease
        (it is claimed again, by us or another runner, and resumes from SQL); anything else (a bad
        spec, an algorithm or executor error) → the experiment fails with the traceback.
        """
        try:
            return fn(*args)
        except (_Drop, store.LeaseLost) as exc:
            logger.warning("experiment %d: dropped (%s)", exp_id, exc)
            self._drop(exp_id, release=False)
        except store.NotFoundError:
            self._drop(exp_id, release=False)
            self.artifacts.delete_experiment(exp_id)
        except _DB_ERRORS:
            logger.warning("experiment %d: database error; releasing it", exp_id, exc_info=True)
            self._drop(exp_id, release=True)
        except Exception as exc:
            logger.warning("experiment %d failed: %s: %s", exp_id, type(exc).__name__, exc)
            self._fail(exp_id, "".join(traceback.format_exception(exc)))
        return None

    def _on_progress(self, exp_id: int, number: int, event: dict[str, Any]) -> None:
        """A ``trial_progress`` event per phase change and at most every ``PROGRESS_INTERVAL_S`` in training."""
        phase = event.get("phase")
        if phase == "done":
            return  # trial_finished says it
        key, now = (exp_id, number), time.monotonic()
        last_phase, last_t = self._progress_seen.get(key, (None, 0.0))
        if phase == last_phase and now - last_t < PROGRESS_INTERVAL_S:
            return
        self._progress_seen[key] = (phase, now)
        data = json_safe({"number": number, **{k: v for k, v in event.items() if k != "task_id"}})
        try:
            with session_scope(self.session_factory) as s:
                store.append_event(s, exp_id, "trial_progress", data)
        except Exception:  # progress is best effort
            logger.debug("progress event of experiment %d lost", exp_id, exc_info=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.runner``: a standalone runner process (settings from ``PRUNESEARCH_*``)."""
    from service.db import make_session_factory, upgrade  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m service.runner", description=__doc__.splitlines()[0])
    parser.add_argument("--owner-id", help="lease owner id (default host:pid:random)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    upgrade(settings.database_url)
    runner = Runner(settings, make_session_factory(settings.database_url), owner_id=args.owner_id)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logger.info("runner %s started (database %s)", runner.owner_id, sa.engine.make_url(settings.database_url)
                .render_as_string(hide_password=True))
    runner.run_forever(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
