"""One claimed experiment in memory: its TaskGenerator, its executor and the trials in flight.

:class:`ExperimentDriver` is the SQL-free half of the runner. It does what
:class:`workers.local._Search` does for ``run_search`` (the pretrain trial first when the spec gives
no weights, pending tasks of a resumed search before new ones, one result at a time told to the
generator), but in small non-blocking pieces the :class:`service.runner.Runner` calls from
``step()``, and it persists nothing itself: the runner writes :meth:`state_json` into
``experiments.generator_state`` in the same transaction as each trial row.

Trials run with the runner's trial function (:func:`service.runner_trial.make_trial_fn`) and
write their artifacts to ``ArtifactStore.trial_dir(experiment_id, number)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from service.artifacts import PRETRAIN_NUMBER, ArtifactStore
from service.runner_db import decode_floats, encode_floats

__all__ = ["DefaultExecutorFactory", "ExecutorFactory", "ExperimentDriver", "Finished", "RUNNER_STATE_VERSION",
           "StateError"]

logger = logging.getLogger(__name__)

#: version of the JSON in ``experiments.generator_state`` written by this module.
RUNNER_STATE_VERSION = 1


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


class ExperimentDriver:
    """The in-memory side of one experiment a runner drives.

    Args:
        experiment_id: the experiment.
        spec: the experiment's validated spec (an :class:`~workers.spec.ExperimentSpec`).
        generator_state: ``experiments.generator_state`` (``None``: a fresh start).
        pretrain_done: the pretrain trial (number -1) already succeeded.
        artifacts: where trials write.
        executor_factory: builds this experiment's executor.
        trial_fn: the trial function the executor runs.
        on_progress: ``on_progress(number, event)`` for progress events of running trials.

    Raises:
        StateError: ``generator_state`` is of another version or another algorithm.
        Exception: whatever building the generator or the executor raises (a bad spec).
    """

    def __init__(
        self,
        experiment_id: int,
        spec: Any,
        generator_state: dict[str, Any] | None,
        *,
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
        self.generator = create_task_generator(
            spec.algorithm.name, spec.algorithm.params, origin_model=build_model(spec.model, spec.trial.seed),
            config_list=spec.pruner.config_list, best_result_mode=spec.objective.best_result_mode,
            constraints=spec.constraints.to_dict(), dummy_input=self.dummy_input,
        )
        if generator_state is not None:
            self._load(generator_state)
        entry = algorithm_entry(spec.algorithm.name)
        self.reset_weight = entry.reset_weight
        defaults = entry.task_pruners(spec.pruner.name) if entry.task_pruners is not None else {}
        self.task_pruners = {name: {**defaults.get(name, {}), **spec.pruner.task_pruners.get(name, {})}
                             for name in {*defaults, *spec.pruner.task_pruners}}
        self.needs_pretrain = (spec.model.weights is None and spec.trial.pretrain_epochs > 0 and not pretrain_done)
        #: tasks handed out before (a resumed search) that must run again, oldest first
        self.queue: list[dict[str, Any]] = [t.to_json() for t in self.generator.pending()]
        self.running: dict[int, _Running] = {}
        self.exhausted = False  # ask() gave nothing while nothing ran: the search is over
        #: the best trial number the runner last recorded in SQL (``best_changed`` events)
        self.best_number: int | None = None
        self._on_progress = on_progress
        self.executor = executor_factory(spec, trial_fn=trial_fn, on_progress=self._progress)

    # -- state ------------------------------------------------------------------------------------------
    def _load(self, state: dict[str, Any]) -> None:
        if state.get("version") != RUNNER_STATE_VERSION:
            raise StateError(f"generator_state: unsupported version {state.get('version')!r} "
                             f"(this runner reads version {RUNNER_STATE_VERSION})")
        try:
            self.generator.load_state_dict(decode_floats(state["generator"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"generator_state: does not fit algorithm {self.spec.algorithm.name!r}: {exc}") from None

    def state_json(self) -> dict[str, Any]:
        """What ``experiments.generator_state`` holds: the generator's ``state_dict`` (versioned).

        Non-finite floats (a NaN loss as the score) are encoded as ``{"$float": "nan"}``: JSON has no
        NaN and PostgreSQL's JSONB refuses it; :func:`~service.runner_db.decode_floats` restores them.
        """
        return {"version": RUNNER_STATE_VERSION, "generator": encode_floats(self.generator.state_dict())}

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
        """Up to ``n`` tasks (as JSON) to start now; the caller commits them, then :meth:`submit` s them."""
        if n <= 0:
            return []
        if self.needs_pretrain:
            if any(r.number == PRETRAIN_NUMBER for r in self.running.values()):
                return []
            from search.scheduling import Task  # noqa: PLC0415

            return [Task(PRETRAIN_NUMBER, [], params={"pretrain": self.spec.trial.pretrain_epochs}).to_json()]
        take, self.queue = self.queue[:n], self.queue[n:]
        if len(take) < n and not self.queue:
            take += [t.to_json() for t in self.generator.ask(n - len(take))]
        if not take and not self.running:
            self.exhausted = True
        return take

    def trial_spec(self, task: dict[str, Any]) -> Any:
        """The :class:`~workers.spec.TrialSpec` of ``task`` (artifacts in the store's trial folder)."""
        from workers.spec import ModelSpec, TrialSpec  # noqa: PLC0415
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
            task_pruners=self.task_pruners, reset_weight=self.reset_weight and parent is not None,
        )

    def submit(self, task: dict[str, Any], attempt: int) -> None:
        """Hand ``task`` to the executor (after the runner committed it as running)."""
        handle = self.executor.submit(self.trial_spec(task))
        self.running[handle.id] = _Running(handle, int(task["task_id"]), attempt, task)

    def requeue(self, task: dict[str, Any]) -> None:
        """Put back a task :meth:`next_tasks` gave out that could not be committed."""
        if int(task["task_id"]) != PRETRAIN_NUMBER:
            self.queue.insert(0, task)

    # -- results ----------------------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> list[Finished]:
        """Trials that finished (an in-process executor runs one inside this call)."""
        out = []
        for handle, result in self.executor.poll(timeout=timeout):
            run = self.running.pop(handle.id, None)
            if run is not None:
                out.append(Finished(run.number, run.attempt, result, run.task))
        return out

    def tell(self, finished: Finished) -> None:
        """Feed a finished trial to the generator (the pretrain trial goes nowhere but ``needs_pretrain``)."""
        if finished.number == PRETRAIN_NUMBER:
            if finished.result.ok:
                self.needs_pretrain = False
            return
        self.generator.tell(finished.result.to_task_result())

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
