"""Executors: where trials run. One protocol, two implementations.

:class:`Executor` is four methods: ``submit(trial_spec) -> handle``; ``poll(timeout)`` returns the
``(handle, TrialResult)`` pairs that finished since the last call, in the order they finished;
``cancel(handle, force=True)``; ``shutdown()``. A trial that raises comes back as a failed
:class:`~workers.trial.TrialResult` whose ``error`` is the traceback; executors never raise for
a trial's own failure. A cancelled trial is never reported.

* :class:`LocalExecutor` runs trials in this process, one at a time, inside ``poll`` (tests,
  laptops, debugging: breakpoints and profilers just work).
* :class:`RayExecutor` runs each trial as a Ray task with ``num_cpus`` / ``num_gpus``, on a
  cluster it connects to (``address``) or a local one it starts. A trial whose *worker process
  died* (OOM killer, node lost, segfault) is retried by Ray up to ``max_retries`` times; a trial
  that *raised* is not retried (it would raise again). ``timeout_s`` cancels a trial that runs
  too long and reports it failed.

Ray and token authentication: Ray 2.59+ turns on token auth (``RAY_AUTH_MODE=token``) for the
local cluster ``ray.init()`` starts and writes the token to ``~/.ray/auth_token``. To connect to a
separate head started with token auth, give this process the same token (``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH``, or the default file) and ``RAY_AUTH_MODE=token``; for a head started
without auth, set ``RAY_AUTH_MODE=disabled`` here too. ``RAY_AUTH_MODE`` must be the same on every
node. A mismatch surfaces as a connection error that says so.

Example:
    >>> import tempfile
    >>> from search.scheduling import Task
    >>> from workers.spec import DataSpec, ModelSpec, TrialSettings, TrialSpec
    >>> spec = TrialSpec(ModelSpec("search.zoo:digits_cnn"), DataSpec("digits"), "l1", {},
    ...                  Task(0, [{"op_names": ["conv1"], "sparse_ratio": 0.5}]).to_json(),
    ...                  artifact_dir=tempfile.mkdtemp(), settings=TrialSettings(finetune_epochs=0))
    >>> executor = LocalExecutor()
    >>> handle = executor.submit(spec)
    >>> [(h.trial_id, r.ok) for h, r in executor.poll()]
    [(0, True)]
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from workers.spec import TrialSpec

__all__ = ["Executor", "ExecutorError", "LocalExecutor", "RayExecutor", "TrialHandle", "execute_trial"]

logger = logging.getLogger(__name__)

#: ``trial_fn(spec, progress) -> TrialResult``; defaults to :func:`workers.trial.run_trial`.
TrialFn = Callable[..., Any]
#: ``on_progress(handle, event)`` for progress events of running trials.
ProgressSink = Callable[["TrialHandle", dict[str, Any]], None]

_ids = itertools.count(1)


class ExecutorError(RuntimeError):
    """An executor cannot do what it was asked (no GPU on the cluster, cannot connect, ...)."""


@dataclass(eq=False)
class TrialHandle:
    """A submitted trial. ``id`` is unique per process; ``trial_id`` is the task id."""

    trial_id: int
    spec: TrialSpec = field(repr=False)
    id: int = field(default_factory=lambda: next(_ids))
    submitted_at: float = field(default_factory=time.time)


@runtime_checkable
class Executor(Protocol):
    """Runs trials. See the module docstring for the contract."""

    def submit(self, spec: TrialSpec) -> TrialHandle:
        """Start (or queue) a trial; returns at once."""
        ...

    def poll(self, timeout: float | None = None) -> list[tuple[TrialHandle, Any]]:
        """Finished ``(handle, TrialResult)`` pairs; waits up to ``timeout`` s for the first (``None``: until one)."""
        ...

    def cancel(self, handle: TrialHandle, force: bool = True) -> bool:
        """Stop a queued or running trial; it will not be reported. False if it had finished.

        ``force``: kill the worker process running it (a trial stuck in native code stops too);
        ``False`` interrupts the trial instead and keeps the worker, warm, for the next trial
        (for trials stopped because their result is no longer needed).
        """
        ...

    def shutdown(self) -> None:
        """Cancel what runs and release resources (a Ray cluster this executor started)."""
        ...


def _default_trial_fn() -> TrialFn:
    from workers.trial import run_trial  # noqa: PLC0415 (torch only where trials run)

    return run_trial


def execute_trial(trial_fn: TrialFn | None, spec_json: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    """Run a trial and return its result as JSON; an exception becomes a failed result with its traceback.

    This is the function executors ship to workers: JSON in, JSON out, never raises for the trial.
    """
    spec = TrialSpec.from_json(spec_json)
    started = time.time()
    try:
        result = (trial_fn or _default_trial_fn())(spec, progress)
    except Exception as exc:
        from workers.trial import TrialResult  # noqa: PLC0415

        logger.warning("trial %d failed: %s: %s", spec.task_id, type(exc).__name__, exc)
        result = TrialResult.failed(spec.task_id, "".join(traceback.format_exception(exc)), artifact_dir=spec.artifact_dir,
                                    started_at=started, finished_at=time.time(), worker=f"{socket.gethostname()}:{os.getpid()}")
    return result.to_json()


def _result_from_json(data: dict[str, Any]) -> Any:
    from workers.trial import TrialResult  # noqa: PLC0415

    return TrialResult.from_json(data)


def _failed(handle: TrialHandle, error: str, **kwargs: Any) -> Any:
    from workers.trial import TrialResult  # noqa: PLC0415

    return TrialResult.failed(handle.trial_id, error, artifact_dir=handle.spec.artifact_dir, finished_at=time.time(), **kwargs)


# -- in-process ------------------------------------------------------------------------------------------


class LocalExecutor:
    """Runs trials in this process, one per :meth:`poll` call, in submission order.

    Args:
        trial_fn: ``trial_fn(spec, progress) -> TrialResult`` (default: :func:`workers.trial.run_trial`).
        on_progress: ``on_progress(handle, event)`` for each progress event.

    ``timeout_s`` is not supported in-process (a trial cannot be interrupted safely); use Ray.
    """

    def __init__(self, trial_fn: TrialFn | None = None, on_progress: ProgressSink | None = None) -> None:
        self.trial_fn = trial_fn
        self.on_progress = on_progress
        self._queue: collections.deque[TrialHandle] = collections.deque()

    def submit(self, spec: TrialSpec) -> TrialHandle:
        handle = TrialHandle(spec.task_id, spec)
        self._queue.append(handle)
        return handle

    def poll(self, timeout: float | None = None) -> list[tuple[TrialHandle, Any]]:
        if not self._queue:
            return []
        handle = self._queue.popleft()
        sink = self.on_progress
        progress = (lambda event: sink(handle, event)) if sink is not None else None
        return [(handle, _result_from_json(execute_trial(self.trial_fn, handle.spec.to_json(), progress)))]

    def cancel(self, handle: TrialHandle, force: bool = True) -> bool:
        if handle in self._queue:
            self._queue.remove(handle)
            return True
        return False

    def running(self) -> int:
        return len(self._queue)

    def shutdown(self) -> None:
        self._queue.clear()


# -- Ray ----------------------------------------------------------------------------------------------


def _ray_trial(trial_fn: TrialFn | None, spec_json: dict[str, Any], progress_queue: Any) -> dict[str, Any]:
    """The body of the Ray task (module level so workers import it instead of unpickling a closure)."""
    last = [0.0]

    def progress(event: dict[str, Any]) -> None:
        now = time.monotonic()
        if progress_queue is None or (event.get("phase") in ("pretrain", "finetune") and now - last[0] < 0.5):
            return  # throttled: a queue put is a round trip to an actor
        last[0] = now
        try:
            progress_queue.put_nowait((spec_json["task"]["task_id"], event))
        except Exception:  # full or gone: progress is best effort
            pass

    return execute_trial(trial_fn, spec_json, progress)


@dataclass(eq=False)
class _RayRun:
    handle: TrialHandle
    ref: Any
    started: float


class RayExecutor:
    """Runs each trial as a Ray task.

    Args:
        address: a running cluster (``'ray://host:10001'``, ``'host:6379'`` or ``'auto'``); ``None``
            starts a local Ray (or reuses the one this process already initialised).
        num_cpus_per_trial: CPUs each trial reserves (also its torch thread count).
        num_gpus_per_trial: GPUs each trial reserves (fractions share a GPU). Asking for GPUs a
            cluster does not have is an immediate :class:`ExecutorError`, not a task pending forever.
        max_retries: how often Ray restarts a trial whose worker process died. A trial that raised
            is never retried: it is reported failed with its traceback.
        timeout_s: per-trial wall-clock limit from submission; the trial is cancelled and failed.
        num_cpus: CPUs of the local Ray this executor starts (``None``: all).
        trial_fn: what a worker runs (default :func:`workers.trial.run_trial`); must be importable
            or picklable by value on the workers.
        on_progress: ``on_progress(handle, event)``; events reach the driver through a Ray queue
            (throttled to about two per second per trial).
        init_kwargs: more ``ray.init`` arguments (``runtime_env``, ``namespace``...).

    Artifacts are written to ``TrialSpec.artifact_dir`` by the worker: on a multi-node cluster
    that directory must be on a volume every node mounts at the same path.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus_per_trial: float = 1,
        num_gpus_per_trial: float = 0,
        max_retries: int = 2,
        timeout_s: float | None = None,
        *,
        num_cpus: int | None = None,
        trial_fn: TrialFn | None = None,
        on_progress: ProgressSink | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if num_cpus_per_trial <= 0 or num_gpus_per_trial < 0 or max_retries < 0:
            raise ValueError("num_cpus_per_trial must be > 0, num_gpus_per_trial and max_retries >= 0")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        import ray  # noqa: PLC0415 (optional dependency, imported where used)

        self._ray = ray
        self.num_cpus_per_trial = num_cpus_per_trial
        self.num_gpus_per_trial = num_gpus_per_trial
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.trial_fn = trial_fn
        self.on_progress = on_progress
        self._owns_ray = False
        if not ray.is_initialized():
            self._connect(address, num_cpus, dict(init_kwargs or {}))
        self._check_resources()
        self._remote = ray.remote(_ray_trial).options(
            num_cpus=num_cpus_per_trial, num_gpus=num_gpus_per_trial, max_retries=max_retries, retry_exceptions=False,
        )
        self._queue = None
        if on_progress is not None:
            from ray.util.queue import Queue  # noqa: PLC0415

            self._queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        self._runs: dict[Any, _RayRun] = {}
        self._by_handle: dict[int, _RayRun] = {}

    # -- setup --------------------------------------------------------------------------------------
    def _connect(self, address: str | None, num_cpus: int | None, init_kwargs: dict[str, Any]) -> None:
        ray = self._ray
        init_kwargs.setdefault("include_dashboard", False)
        init_kwargs.setdefault("logging_level", logging.WARNING)
        if address is None:
            init_kwargs["num_cpus"] = num_cpus
            self._owns_ray = True
        try:
            ray.init(address=address, **init_kwargs)
        except Exception as exc:
            self._owns_ray = False
            mode = os.environ.get("RAY_AUTH_MODE", "unset")
            hint = ""
            text = f"{type(exc).__name__}: {exc}"
            if address is not None and any(w in text.lower() for w in ("auth", "token", "unauthenticated", "permission")):
                hint = (f" (RAY_AUTH_MODE is {mode}; a head started with token auth needs RAY_AUTH_MODE=token and its "
                        "token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; one without needs "
                        "RAY_AUTH_MODE=disabled)")
            raise ExecutorError(f"cannot {'connect to Ray at ' + address if address else 'start a local Ray'}: {text}{hint}") from exc

    def _check_resources(self) -> None:
        resources = self._ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if self.num_gpus_per_trial > gpus:
            self.shutdown()
            raise ExecutorError(
                f"each trial asks for {self.num_gpus_per_trial:g} GPU(s) but the Ray cluster has {gpus:g}; "
                "set resources.gpus_per_trial: 0 or add a GPU worker"
            )
        if self.num_cpus_per_trial > cpus:
            self.shutdown()
            raise ExecutorError(f"each trial asks for {self.num_cpus_per_trial:g} CPUs but the Ray cluster has {cpus:g}")

    # -- the protocol -------------------------------------------------------------------------------
    def submit(self, spec: TrialSpec) -> TrialHandle:
        handle = TrialHandle(spec.task_id, spec)
        spec_json = spec.to_json()
        spec_json["num_threads"] = max(1, int(self.num_cpus_per_trial))
        ref = self._remote.remote(self.trial_fn, spec_json, self._queue)
        run = _RayRun(handle, ref, time.monotonic())
        self._runs[ref] = run
        self._by_handle[handle.id] = run
        return handle

    def _drain_progress(self) -> None:
        if self._queue is None or self.on_progress is None:
            return
        try:
            events = self._queue.get_nowait_batch(self._queue.qsize())
        except Exception:
            return
        handles = {run.handle.trial_id: run.handle for run in self._runs.values()}
        for trial_id, event in events:
            if trial_id in handles:
                self.on_progress(handles[trial_id], event)

    def _expired(self) -> list[tuple[TrialHandle, Any]]:
        if self.timeout_s is None:
            return []
        out = []
        now = time.monotonic()
        for ref, run in list(self._runs.items()):
            if now - run.started > self.timeout_s:
                self._forget(ref)
                self._ray.cancel(ref, force=True)
                out.append((run.handle, _failed(run.handle, f"TimeoutError: trial {run.handle.trial_id} ran longer "
                                                            f"than {self.timeout_s:g} s and was cancelled")))
        return out

    def _forget(self, ref: Any) -> _RayRun:
        run = self._runs.pop(ref)
        self._by_handle.pop(run.handle.id, None)
        return run

    def poll(self, timeout: float | None = None) -> list[tuple[TrialHandle, Any]]:
        ray = self._ray
        done: list[tuple[TrialHandle, Any]] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._drain_progress()
            done += self._expired()
            if not self._runs or done:
                return done
            wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
            # Return as soon as one trial is done (num_returns=1), plus any others done by then (timeout 0).
            ready, rest = ray.wait(list(self._runs), num_returns=1, timeout=wait)
            if ready and rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                run = self._forget(ref)
                done.append((run.handle, self._collect(run)))
            if done or (deadline is not None and time.monotonic() >= deadline):
                self._drain_progress()
                return done

    def _collect(self, run: _RayRun) -> Any:
        ray = self._ray
        try:
            return _result_from_json(ray.get(run.ref))
        except ray.exceptions.TaskCancelledError:
            return _failed(run.handle, "cancelled")
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError) as exc:
            return _failed(run.handle, f"{type(exc).__name__}: the worker died {self.max_retries + 1} time(s) "
                                       f"running trial {run.handle.trial_id}: {exc}", attempts=self.max_retries + 1)
        except Exception as exc:  # anything else Ray raises (the trial's own errors come back as results)
            return _failed(run.handle, "".join(traceback.format_exception(exc)))

    def cancel(self, handle: TrialHandle, force: bool = True) -> bool:
        run = self._by_handle.get(handle.id)
        if run is None:
            return False
        self._forget(run.ref)
        # force=False: Ray raises KeyboardInterrupt in the running task (the trial does not catch it) and the
        # worker process lives on; force=True kills the process (the next trial there starts a new one)
        self._ray.cancel(run.ref, force=force)
        return True

    def running(self) -> int:
        return len(self._runs)

    def shutdown(self) -> None:
        for ref in list(getattr(self, "_runs", {})):
            self._forget(ref)
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        queue = getattr(self, "_queue", None)
        if queue is not None:
            try:
                queue.shutdown()
            except Exception:
                pass
            self._queue = None
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False
