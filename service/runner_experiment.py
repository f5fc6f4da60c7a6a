"""One claimed experiment in memory: its TaskGenerator, its executor and the trials in flight.

:class:`ExperimentDriver` is the SQL-free half of the runner. It does what
:class:`workers.local._Search` does for ``run_search`` (the pretrain trial first when the spec gives
no weights, pending tasks of a resumed search before new ones, one result at a time told to the
generator), but in small non-blocking pieces the :class:`service.runner.Runner` calls from
``step()``, and it persists nothing itself.

Its generator is a :class:`JournaledGenerator`: every call that hands out a task or tells a result
gets a sequence number, which the runner stores on the trial row in the same transaction as the
row (``ask_seq``; ``tell_seq`` with the exact result told). The generator's full ``state_dict``
grows with every result, so it is only checkpointed into ``experiments.generator_state`` now and
then (:meth:`ExperimentDriver.checkpoint_due`); a resumed experiment loads the checkpoint and
replays the journaled calls after it, ending exactly where the last committed call left it.

A task the algorithm hands out ahead of a decision and then discards (NetAdapt running ahead,
``TaskGenerator.discard``) leaves the search: :meth:`ExperimentDriver.take_discarded` cancels it if
it still runs and drops it from the queue, and the runner moves its row to ``discarded``. Such a
task's result is never told (the generator would ignore it), so it is not journaled either; the
journaled calls that discarded it repeat the discard when a resumed experiment replays them.

Trials run with the runner's trial function (:func:`service.runner_trial.make_trial_fn`) and
write their artifacts to ``ArtifactStore.trial_dir(experiment_id, number)``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.artifacts import PRETRAIN_NUMBER, ArtifactStore
from service.runner_db import JournalEntry, decode_floats, encode_floats, task_fields

__all__ = ["CHECKPOINT_EVERY_S", "CHECKPOINT_EVERY_TELLS", "DefaultExecutorFactory", "ExecutorFactory",
           "ExperimentDriver", "Finished", "JournaledGenerator", "RUNNER_STATE_VERSION", "StateError", "checkpoint_seq"]

logger = logging.getLogger(__name__)

#: version of the JSON in ``experiments.generator_state`` written by this module (1: a full state
#: written with every trial, no ``seq``; still read).
RUNNER_STATE_VERSION = 2
#: a checkpoint is due after this many results told since the last one...
CHECKPOINT_EVERY_TELLS = 50
#: ... or after this many seconds (then at the next result).
CHECKPOINT_EVERY_S = 30.0


class StateError(ValueError):
    """The stored generator state does not belong to this spec / this version of the runner."""


class ExecutorFactory(Protocol):
    """``factory(spec, *, trial_fn, on_progress) -> Executor``: one executor per claimed experiment.

    ``trial_fn`` is what the executor must run for each trial (the runner's counting wrapper of
    :func:`workers.trial.run_trial`); ``on_progress(handle, event)`` receives progress events.
    The executor is shut down when the experiment is released.
    """

    def __call__(self, spec: Any, *, trial_fn: Any, on_progress: Any) -> Any: ...


class DefaultExecutorFactory:
    """Executors from the settings: in-process when ``ray_address`` is None, else one Ray connection.

    With Ray, every claimed experiment gets its own :class:`~workers.executors.RayExecutor` with the
    spec's ``resources`` (CPUs/GPUs per trial, retries of dead workers, timeout) on one shared
    connection (``"local"`` starts a local Ray; anything else is an address). :meth:`close` ends a
    Ray this factory started.
    """

    def __init__(self, ray_address: str | None = None) -> None:
        self.ray_address = ray_address
        self._started_ray = False

    def __call__(self, spec: Any, *, trial_fn: Any, on_progress: Any) -> Any:
        from workers.executors import LocalExecutor, RayExecutor  # noqa: PLC0415

        if self.ray_address is None:
            return LocalExecutor(trial_fn=trial_fn, on_progress=on_progress)
        self._connect()
        res = spec.resources
        return RayExecutor(num_cpus_per_trial=res.cpus_per_trial, num_gpus_per_trial=res.gpus_per_trial,
                           max_retries=res.max_retries, timeout_s=res.trial_timeout_s, trial_fn=trial_fn,
                           on_progress=on_progress)

    def _connect(self) -> None:
        import ray  # noqa: PLC0415

        from workers.executors import ExecutorError  # noqa: PLC0415

        if ray.is_initialized():
            return
        address = None if self.ray_address == "local" else self.ray_address
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except Exception as exc:
            raise ExecutorError(f"cannot connect to Ray at {self.ray_address!r}: {type(exc).__name__}: {exc}") from exc
        self._started_ray = True

    def close(self) -> None:
        if self._started_ray:
            import ray  # noqa: PLC0415

            ray.shutdown()
            self._started_ray = False


@dataclass
class Finished:
    """A trial the executor reported: its number, the attempt the runner gave it, the TrialResult."""

    number: int
    attempt: int
    result: Any
    task: dict[str, Any]


@dataclass
class _Running:
    handle: Any
    number: int
    attempt: int
    task: dict[str, Any]


def checkpoint_seq(state: dict[str, Any] | None) -> int:
    """How many journaled calls the checkpoint ``state`` contains (the replay starts after them)."""
    return int(state.get("seq", 0)) if isinstance(state, dict) else 0


class JournaledGenerator:
    """A TaskGenerator whose calls are numbered, so that a checkpoint plus the calls after it rebuild it.

    Each :meth:`ask` that hands out a task and each :meth:`tell` is one call with a sequence number
    (``seq``). A run of asks that hand out nothing counts as one call too: such an ask may change the
    generator (AMC learns from the results told since its last ask; annealing opens its next round)
    and asking again changes nothing more, so it is replayed once. The runner stores the numbers on
    the trial rows with the rows themselves; :meth:`checkpoint` is the generator's ``state_dict`` with
    the number of calls it contains.

    A generator built from a checkpoint and the journal replays the calls after the checkpoint in
    order (a number nobody stored was a run of empty asks) and checks that every replayed ask hands
    out exactly what the journal says it did: the algorithms are deterministic functions of the
    calls (their random state is part of ``state_dict``), and one that is not is an error here, not
    a silently different search.

    Args:
        generator: a fresh TaskGenerator.
        state: a checkpoint (``None``: a fresh start).
        journal: the journal entries of calls from the checkpoint on, in any order.
        algorithm: the algorithm's name, for error messages.

    Raises:
        StateError: the checkpoint does not fit, or the replay does not repeat the journal.
    """

    def __init__(self, generator: Any, state: dict[str, Any] | None, journal: Sequence[JournalEntry] = (), *,
                 algorithm: str = "") -> None:
        self.generator = generator
        self.algorithm = algorithm
        #: calls made so far (the next call's number)
        self.seq = 0
        #: the last call was an ask that handed out nothing
        self.idle = False
        if state is not None:
            self._load(state)
        self._replay(journal)

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("version") not in (1, RUNNER_STATE_VERSION):
            raise StateError(f"generator_state: unsupported version {state.get('version')!r} "
                             f"(this runner reads versions 1 and {RUNNER_STATE_VERSION})")
        try:
            self.generator.load_state_dict(decode_floats(state["generator"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"generator_state: does not fit algorithm {self.algorithm!r}: {exc}") from None
        self.seq = checkpoint_seq(state)

    def _replay(self, journal: Sequence[JournalEntry]) -> None:
        calls: dict[int, tuple[str, JournalEntry]] = {}
        for entry in journal:
            if entry.ask_seq is not None and entry.ask_seq >= self.seq:
                calls[entry.ask_seq] = ("ask", entry)
            if entry.tell_seq is not None and entry.tell_seq >= self.seq:
                calls[entry.tell_seq] = ("tell", entry)
        end = max(calls, default=self.seq - 1) + 1
        while self.seq < end:
            call = calls.get(self.seq)  # None: a run of asks that handed out nothing
            if call is not None and call[0] == "tell":
                if call[1].told is None:
                    raise StateError(f"generator_state: trial {call[1].number} has tell_seq {self.seq} but no result")
                self._tell(decode_floats(call[1].told))
                continue
            asked = self.ask()
            expected = None if call is None else (call[1].number, call[1].task)
            if not _same_task(asked, expected):
                raise StateError(
                    f"generator_state: replaying call {self.seq - 1} of algorithm {self.algorithm!r} handed out "
                    f"{_describe(asked)}, but the journal has {_describe(expected)}: the search did not repeat "
                    "itself from its checkpoint")

    def ask(self) -> tuple[int, dict[str, Any]] | None:
        """``(task id, task JSON)`` of the next task, or None (nothing to hand out now)."""
        tasks = self.generator.ask(1)
        if not tasks:
            if not self.idle:
                self.idle = True
                self.seq += 1
            return None
        self.idle = False
        self.seq += 1
        return tasks[0].task_id, tasks[0].to_json()

    def tell(self, result: Any) -> tuple[int, dict[str, Any]]:
        """Tell a ``TaskResult``; returns ``(its call number, the result's JSON as the journal keeps it)``."""
        return self._tell(result.to_json())

    def _tell(self, told: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        from search.scheduling import TaskResult  # noqa: PLC0415

        self.generator.tell(TaskResult.from_json(told))
        self.idle = False
        self.seq += 1
        return self.seq - 1, encode_floats(told)

    def checkpoint(self) -> dict[str, Any]:
        """What ``experiments.generator_state`` holds: the generator's ``state_dict`` after ``seq`` calls.

        Non-finite floats (a NaN loss as the score) are encoded as ``{"$float": "nan"}``: JSON has no
        NaN and PostgreSQL's JSONB refuses it; :func:`~service.runner_db.decode_floats` restores them.
        """
        return {"version": RUNNER_STATE_VERSION, "seq": self.seq,
                "generator": encode_floats(self.generator.state_dict())}


def _same_task(asked: tuple[int, dict[str, Any]] | None, expected: tuple[int, dict[str, Any]] | None) -> bool:
    if asked is None or expected is None:
        return asked is expected
    stored = json.loads(json.dumps(task_fields(asked[1])))  # as SQL gives it back: string keys, lists
    return asked[0] == expected[0] and _same_json(stored, expected[1])


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON (numbers by value: PostgreSQL's JSONB may hand ``2.0`` back as ``2``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


def _describe(task: tuple[int, dict[str, Any]] | None) -> str:
    return "nothing" if task is None else f"task {task[0]} {task[1]}"


class ExperimentDriver:
    """The in-memory side of one experiment a runner drives.

    Args:
        experiment_id: the experiment.
        spec: the experiment's validated spec (an :class:`~workers.spec.ExperimentSpec`).
        generator_state: ``experiments.generator_state``, the last checkpoint (``None``: none yet).
        journal: the journal entries from the checkpoint on (``service.runner_db.load_journal``).
        pretrain_done: the pretrain trial (number -1) already succeeded.
        artifacts: where trials write.
        executor_factory: builds this experiment's executor.
        trial_fn: the trial function the executor runs.
        on_progress: ``on_progress(number, event)`` for progress events of running trials.

    Raises:
        StateError: ``generator_state`` is of another version or another algorithm, or the journal
            after it does not replay.
        Exception: whatever building the generator or the executor raises (a bad spec).
    """

    def __init__(
        self,
        experiment_id: int,
        spec: Any,
        generator_state: dict[str, Any] | None,
        *,
        journal: Sequence[JournalEntry] = (),
        pretrain_done: bool,
        artifacts: ArtifactStore,
        executor_factory: ExecutorFactory,
        trial_fn: Any,
        on_progress: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        from search.algorithms.registry import algorithm_entry, create_task_generator  # noqa: PLC0415
        from workers.trial import build_model, dummy_input_for  # noqa: PLC0415

        self.experiment_id = experiment_id
        self.spec = spec
        self.artifacts = artifacts
        self.dummy_input = dummy_input_for(spec.model)
        generator = create_task_generator(
            spec.algorithm.name, spec.algorithm.params, origin_model=build_model(spec.model, spec.trial.seed),
            config_list=spec.pruner.config_list, best_result_mode=spec.objective.best_result_mode,
            constraints=spec.constraints.to_dict(), dummy_input=self.dummy_input,
        )
        self.journaled = JournaledGenerator(generator, generator_state, journal, algorithm=spec.algorithm.name)
        self.generator = generator
        entry = algorithm_entry(spec.algorithm.name)
        self.reset_weight = entry.reset_weight
        defaults = entry.task_pruners(spec.pruner.name) if entry.task_pruners is not None else {}
        self.task_pruners = {name: {**defaults.get(name, {}), **spec.pruner.task_pruners.get(name, {})}
                             for name in {*defaults, *spec.pruner.task_pruners}}
        self.needs_pretrain = (spec.model.weights is None and spec.trial.pretrain_epochs > 0 and not pretrain_done)
        #: tasks handed out before (a resumed search) that must run again, oldest first
        self.queue: list[dict[str, Any]] = [t.to_json() for t in self.generator.pending()]
        #: task id -> the call that handed it out, for tasks :meth:`next_tasks` gave and the runner has not stored
        self.asked: dict[int, int] = {}
        self.running: dict[int, _Running] = {}
        self.exhausted = False  # ask() gave nothing while nothing ran: the search is over
        #: the best trial number the runner last recorded in SQL (``best_changed`` events)
        self.best_number: int | None = None
        #: discarded tasks :meth:`take_discarded` already returned
        self._discards_taken: set[int] = set()
        self._told_since_checkpoint = sum(e.tell_seq is not None for e in journal)
        self._checkpoint_at = time.monotonic()
        self._on_progress = on_progress
        self.executor = executor_factory(spec, trial_fn=trial_fn, on_progress=self._progress)

    # -- state ------------------------------------------------------------------------------------------
    def checkpoint_due(self) -> bool:
        """Whether to write a checkpoint with the next result (enough results or time since the last)."""
        return (self._told_since_checkpoint >= CHECKPOINT_EVERY_TELLS
                or time.monotonic() - self._checkpoint_at >= CHECKPOINT_EVERY_S)

    def checkpoint(self) -> dict[str, Any]:
        """The generator's state for ``experiments.generator_state`` (:meth:`JournaledGenerator.checkpoint`)."""
        self._told_since_checkpoint, self._checkpoint_at = 0, time.monotonic()
        return self.journaled.checkpoint()

    @property
    def limit(self) -> int:
        """This experiment's own concurrency limit (``resources.max_concurrent_trials``)."""
        return int(self.spec.resources.max_concurrent_trials)

    @property
    def done(self) -> bool:
        """Nothing runs, nothing waits and the generator will hand out nothing more."""
        if self.running or self.queue or self.needs_pretrain:
            return False
        return self.exhausted or self.generator.is_done()

    def best(self) -> Any:
        """The generator's best :class:`~search.scheduling.TaskResult` (``None``: no feasible success)."""
        return self.generator.best_result()

    # -- handing out ------------------------------------------------------------------------------------
    def next_tasks(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` tasks (as JSON) to start now; the caller commits them, then :meth:`submit` s them.

        A task the generator handed out just now has its call number in :attr:`asked` (the trial row
        keeps it as ``ask_seq``).
        """
        if n <= 0:
            return []
        if self.needs_pretrain:
            if any(r.number == PRETRAIN_NUMBER for r in self.running.values()):
                return []
            from search.scheduling import Task  # noqa: PLC0415

            return [Task(PRETRAIN_NUMBER, [], params={"pretrain": self.spec.trial.pretrain_epochs}).to_json()]
        take, self.queue = self.queue[:n], self.queue[n:]
        while len(take) < n and not self.queue:
            call = self.journaled.seq
            asked = self.journaled.ask()
            if asked is None:
                break
            self.asked[asked[0]] = call
            take.append(asked[1])
        if not take and not self.running:
            self.exhausted = True
        return take

    def trial_spec(self, task: dict[str, Any]) -> Any:
        """The :class:`~workers.spec.TrialSpec` of ``task`` (artifacts in the store's trial folder)."""
        from workers.spec import ModelSpec, TrialSpec, rewinds  # noqa: PLC0415
        from workers.trial import WEIGHTS_FILE  # noqa: PLC0415

        spec = self.spec
        model = spec.model
        if model.weights is None and spec.trial.pretrain_epochs > 0 and task["task_id"] != PRETRAIN_NUMBER:
            weights = self.artifacts.trial_dir(self.experiment_id, PRETRAIN_NUMBER) / WEIGHTS_FILE
            model = ModelSpec(model.factory, model.kwargs, str(weights), model.input_shape)
        parent = task.get("parent_id")
        return TrialSpec(
            model=model, data=spec.data, pruner_name=spec.pruner.name, pruner_kwargs=spec.pruner.kwargs,
            task=task, artifact_dir=str(self.artifacts.trial_dir(self.experiment_id, int(task["task_id"]))),
            parent_artifact=str(self.artifacts.trial_dir(self.experiment_id, parent)) if parent is not None else None,
            settings=spec.trial, objective_metric=spec.objective.metric, num_threads=spec.resources.num_threads,
            task_pruners=self.task_pruners, reset_weight=rewinds(self.reset_weight, task),
        )

    def submit(self, task: dict[str, Any], attempt: int) -> None:
        """Hand ``task`` to the executor (after the runner committed it as running)."""
        handle = self.executor.submit(self.trial_spec(task))
        self.running[handle.id] = _Running(handle, int(task["task_id"]), attempt, task)

    # -- results ----------------------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> list[Finished]:
        """Trials that finished (an in-process executor runs one inside this call)."""
        out = []
        for handle, result in self.executor.poll(timeout=timeout):
            run = self.running.pop(handle.id, None)
            if run is not None:
                out.append(Finished(run.number, run.attempt, result, run.task))
        return out

    def tell(self, finished: Finished) -> tuple[int, dict[str, Any]] | None:
        """Feed a finished trial to the generator; returns ``(tell_seq, told)`` for its row (``None`` for the
        pretrain trial, which goes nowhere but ``needs_pretrain``)."""
        if finished.number == PRETRAIN_NUMBER:
            if finished.result.ok:
                self.needs_pretrain = False
            return None
        self._told_since_checkpoint += 1
        return self.journaled.tell(finished.result.to_task_result())

    def is_discarded(self, number: int) -> bool:
        """Whether the generator discarded task ``number`` (its result, if one comes, is not told)."""
        return number in self.generator.discarded

    def take_discarded(self) -> dict[int, str]:
        """The tasks the generator discarded since the last call (all of them at the first), number -> reason.

        Those still in flight are cancelled in the executor and leave :attr:`running` (their slots are
        free); those waiting to run again leave :attr:`queue`. The caller moves their rows to
        ``discarded`` (``service.runner_db.discard_trials``; rows already there are skipped).
        """
        new = {n: r for n, r in self.generator.discarded.items() if n not in self._discards_taken}
        if not new:
            return {}
        for handle_id, run in list(self.running.items()):
            if run.number in new:
                try:
                    self.executor.cancel(run.handle, force=False)  # interrupted; its worker stays warm
                except Exception:  # already gone; if it still reports, poll() drops it (not in running)
                    logger.debug("cancel of discarded trial %d failed", run.number, exc_info=True)
                del self.running[handle_id]
        self.queue = [t for t in self.queue if int(t["task_id"]) not in new]
        self._discards_taken.update(new)
        return new

    def _progress(self, handle: Any, event: dict[str, Any]) -> None:
        run = self.running.get(handle.id)
        if run is not None and self._on_progress is not None:
            self._on_progress(run.number, event)

    # -- teardown ---------------------------------------------------------------------------------------
    def cancel_all(self) -> list[int]:
        """Cancel every trial in flight; returns their numbers. Their tasks stay pending in the generator."""
        numbers = []
        for run in list(self.running.values()):
            try:
                self.executor.cancel(run.handle)
            except Exception:  # already gone; it will not be reported either way
                logger.debug("cancel of trial %d failed", run.number, exc_info=True)
            numbers.append(run.number)
        self.running.clear()
        return numbers

    def close(self) -> None:
        """Cancel what runs and shut the executor down."""
        self.cancel_all()
        try:
            self.executor.shutdown()
        except Exception:
            logger.warning("executor shutdown of experiment %d failed", self.experiment_id, exc_info=True)
