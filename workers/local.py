"""Run a whole search from a spec with any executor, resumable from a JSON state file.

:func:`run_search` is the loop the service's runner also follows, minus SQL: ask the algorithm
(a TaskGenerator from :mod:`search.algorithms.registry`) for tasks, hand them to the executor up
to ``resources.max_concurrent_trials``, tell the algorithm each result as it finishes, and after
every result write the generator's ``state_dict()`` and all results to ``out_dir/state.json``
(atomically), so ``resume=True`` continues after a crash without repeating finished trials
(trials that were running are run again). At the end the best trial's compact model is copied to
``out_dir/best/`` and exported to ``model.pt2`` (and ``model.onnx``).

A task the algorithm discards (NetAdapt's candidates run ahead of a decision that went the other
way, see ``TaskGenerator.discard``) is cancelled if it still runs, leaves ``trials`` and is listed
in ``SearchOutcome.discarded`` (event ``trial_discarded``).

When the spec gives no weights, a *pretrain* trial first trains the origin model
(``trial.pretrain_epochs``); every later trial starts from its weights.

Layout of ``out_dir``::

    spec.json                 the spec the search runs
    state.json                generator state + results (what resume reads)
    trials/pretrain/          the pretrain trial (weights.safetensors, ...)
    trials/<task_id>/         each trial's artifacts (see workers.trial)
    best/                     compact.json, model.safetensors, masks.safetensors, result.json, model.pt2, model.onnx

Example:
    >>> import tempfile
    >>> from workers.spec import ExperimentSpec
    >>> from workers.executors import LocalExecutor
    >>> spec = ExperimentSpec.from_dict({
    ...     "name": "doc", "model": {"factory": "search.zoo:digits_cnn"}, "data": {"name": "digits"},
    ...     "pruner": {"name": "l1", "config_list": [{"op_names": ["conv2"], "sparse_ratio": 0.5}]},
    ...     "algorithm": {"name": "linear", "total_iteration": 2},
    ...     "trial": {"finetune_epochs": 0, "pretrain_epochs": 1}})
    >>> outcome = run_search(spec, LocalExecutor(), tempfile.mkdtemp(), export_onnx=False)
    >>> [t.sparsity["conv2"] for t in outcome.trials], (outcome.best_dir / "compact.json").is_file()
    ([0.25, 0.5], True)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.executors import Executor, TrialHandle
from workers.spec import ExperimentSpec, TrialSpec, rewinds
from workers.trial import COMPACT_DIR, TrialResult

__all__ = ["SearchError", "SearchOutcome", "run_search", "STATE_FILE"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_VERSION = 1
PRETRAIN_ID = -1

#: ``on_event(event)``; ``event['type']`` is one of ``search_started``, ``trial_started``,
#: ``trial_finished``, ``search_finished``, ``export_failed``. (Progress *within* a trial goes to
#: the executor's ``on_progress``.)
EventFn = Callable[[dict[str, Any]], None]


class SearchError(RuntimeError):
    """The search cannot go on (the pretrain trial failed, the state does not match the spec...)."""


@dataclass
class SearchOutcome:
    """What a search produced.

    Attributes:
        trials: every finished trial (pretrain excluded), by task id.
        best: the best feasible trial by the objective (``None``: no trial succeeded).
        best_dir: ``out_dir/best`` with the compact model (``None`` without a best trial).
        exports: ``{'pt2': path, 'onnx': path}`` that were written.
        pretrain: the pretrain trial, if one ran.
        out_dir: the search folder.
        params: each trial's task parameters, by task id (``refine``, ``iteration``, ...).
        discarded: tasks the algorithm handed out ahead of a decision and then discarded, with why
            (not trials of the search; cancelled if they were still running).
    """

    trials: list[TrialResult]
    best: TrialResult | None
    best_dir: Path | None
    exports: dict[str, Path] = field(default_factory=dict)
    pretrain: TrialResult | None = None
    out_dir: Path | None = None
    params: dict[int, dict[str, Any]] = field(default_factory=dict)
    discarded: dict[int, str] = field(default_factory=dict)


def _atomic_write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _comparable(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """What must not change between a run and its resume (budget and resources may)."""
    out = json.loads(json.dumps(spec_dict))
    out.pop("resources", None)
    out.get("algorithm", {}).pop("max_trials", None)
    return out


class _Search:
    """The state of one search run (kept small: everything persistent goes through ``_save``)."""

    def __init__(self, spec: ExperimentSpec, executor: Executor, out_dir: Path, on_event: EventFn | None) -> None:
        from search.algorithms.registry import create_task_generator  # noqa: PLC0415
        from workers.trial import build_model, dummy_input_for  # noqa: PLC0415

        self.spec = spec
        self.executor = executor
        self.out_dir = out_dir
        self.on_event = on_event
        self.state_path = out_dir / STATE_FILE
        model = build_model(spec.model, spec.trial.seed)
        self.dummy_input = dummy_input_for(spec.model)
        self.generator = create_task_generator(
            spec.algorithm.name, spec.algorithm.params, origin_model=model, config_list=spec.pruner.config_list,
            best_result_mode=spec.objective.best_result_mode, constraints=spec.constraints.to_dict(),
            dummy_input=self.dummy_input,
        )
        from search.algorithms.registry import algorithm_entry  # noqa: PLC0415

        entry = algorithm_entry(spec.algorithm.name)
        self.reset_weight = entry.reset_weight
        defaults = entry.task_pruners(spec.pruner.name) if entry.task_pruners is not None else {}
        self.task_pruners = {name: {**defaults.get(name, {}), **spec.pruner.task_pruners.get(name, {})}
                             for name in {*defaults, *spec.pruner.task_pruners}}
        self.results: dict[int, TrialResult] = {}
        self.pretrain: TrialResult | None = None
        self.running: dict[int, TrialHandle] = {}

    # -- events and persistence ------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.warning("on_event callback failed", exc_info=True)

    def save(self) -> None:
        _atomic_write_json(self.state_path, {
            "version": STATE_VERSION,
            "spec": self.spec.to_dict(),
            "generator": self.generator.state_dict(),
            "pretrain": self.pretrain.to_json() if self.pretrain else None,
            "trials": [r.to_json() for r in sorted(self.results.values(), key=lambda r: r.task_id)],
            "saved_at": time.time(),
        })

    def load(self) -> None:
        state = json.loads(self.state_path.read_text())
        if state.get("version") != STATE_VERSION:
            raise SearchError(f"{self.state_path}: unsupported state version {state.get('version')!r}")
        if _comparable(state["spec"]) != _comparable(self.spec.to_dict()):
            raise SearchError(f"{self.state_path}: the spec changed since this search started (only resources and "
                              "algorithm.max_trials may change on resume); use a new output directory")
        self.generator.load_state_dict(state["generator"])
        self.pretrain = TrialResult.from_json(state["pretrain"]) if state.get("pretrain") else None
        self.results = {r["task_id"]: TrialResult.from_json(r) for r in state.get("trials", [])}

    # -- trials --------------------------------------------------------------------------------------
    def trial_dir(self, task_id: int) -> Path:
        return self.out_dir / "trials" / ("pretrain" if task_id == PRETRAIN_ID else str(task_id))

    def trial_spec(self, task: dict[str, Any]) -> TrialSpec:
        model = self.spec.model
        if self.pretrain is not None:
            from workers.spec import ModelSpec  # noqa: PLC0415
            from workers.trial import WEIGHTS_FILE  # noqa: PLC0415

            model = ModelSpec(model.factory, model.kwargs, str(self.trial_dir(PRETRAIN_ID) / WEIGHTS_FILE), model.input_shape)
        parent = task.get("parent_id")
        return TrialSpec(
            model=model, data=self.spec.data, pruner_name=self.spec.pruner.name, pruner_kwargs=self.spec.pruner.kwargs,
            task=task, artifact_dir=str(self.trial_dir(task["task_id"])),
            parent_artifact=str(self.trial_dir(parent)) if parent is not None else None,
            settings=self.spec.trial, objective_metric=self.spec.objective.metric,
            num_threads=self.spec.resources.num_threads, task_pruners=self.task_pruners,
            reset_weight=rewinds(self.reset_weight, task),
        )

    def submit(self, task: dict[str, Any]) -> None:
        handle = self.executor.submit(self.trial_spec(task))
        self.running[handle.id] = handle
        self.emit({"type": "trial_started", "task_id": task["task_id"], "params": task.get("params", {}),
                   "parent_id": task.get("parent_id")})

    def wait(self) -> list[tuple[TrialHandle, TrialResult]]:
        finished = []
        for handle, result in self.executor.poll(timeout=1.0):
            if self.running.pop(handle.id, None) is not None:
                finished.append((handle, result))
        return finished

    def run_pretrain(self) -> None:
        epochs = self.spec.trial.pretrain_epochs
        if self.spec.model.weights is not None or epochs == 0 or (self.pretrain is not None and self.pretrain.ok):
            return
        from search.scheduling import Task  # noqa: PLC0415

        self.pretrain = None
        self.submit(Task(PRETRAIN_ID, [], params={"pretrain": epochs}).to_json())
        while self.running:
            for _, result in self.wait():
                if not result.ok:
                    raise SearchError(f"the pretrain trial failed:\n{result.error}")
                self.pretrain = result
                self.save()
                self.emit({"type": "trial_finished", "task_id": PRETRAIN_ID, "result": result.to_json()})

    def loop(self) -> None:
        gen = self.generator
        limit = self.spec.resources.max_concurrent_trials
        # After a resume the tasks that were running are pending again: run them first.
        queue = [t.to_json() for t in gen.pending()]
        while True:
            free = limit - len(self.running)
            if free > 0:
                take, queue = queue[:free], queue[free:]
                for task in take:
                    self.submit(task)
                if len(take) < free and not queue:
                    for new in gen.ask(free - len(take)):
                        self.submit(new.to_json())
            if not self.running:
                break  # nothing runs and nothing more was handed out: the search is done
            for _, result in self.wait():
                gen.tell(result.to_task_result())
                if result.task_id not in gen.discarded:  # else discarded while it ran (its cancel came late)
                    self.results[result.task_id] = result
                    self.emit({"type": "trial_finished", "task_id": result.task_id, "result": result.to_json()})
                queue = self.drop_discarded(queue)
                self.save()

    def drop_discarded(self, queue: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Cancel the trials the generator discarded and forget their results; returns ``queue`` without them."""
        discarded = self.generator.discarded
        for handle_id, handle in list(self.running.items()):
            if handle.trial_id in discarded:
                self.executor.cancel(handle, force=False)  # interrupted; its worker stays warm for the next trial
                del self.running[handle_id]
                self.emit({"type": "trial_discarded", "task_id": handle.trial_id, "running": True,
                           "reason": discarded[handle.trial_id]})
        for task_id in [t for t in self.results if t in discarded]:
            del self.results[task_id]
            self.emit({"type": "trial_discarded", "task_id": task_id, "running": False, "reason": discarded[task_id]})
        return [t for t in queue if t["task_id"] not in discarded]


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """torch's exporters warn about things that do not concern a finished search (torchvision missing...)."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        onnx_logger.setLevel(level)


def _export_best(search: _Search, best: TrialResult, export_onnx: bool) -> tuple[Path, dict[str, Path]]:
    from search.speedup import export as export_mod  # noqa: PLC0415
    from search.speedup import load_compact_model  # noqa: PLC0415

    best_dir = search.out_dir / "best"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    shutil.copytree(Path(best.artifact_dir or search.trial_dir(best.task_id)) / COMPACT_DIR, best_dir)
    (best_dir / "result.json").write_text(json.dumps(best.to_json(), indent=1))
    exports: dict[str, Path] = {}
    model = load_compact_model(best_dir).eval()
    formats: list[tuple[str, str, Any]] = [("pt2", "model.pt2", export_mod.export_pt2)]
    if export_onnx and hasattr(export_mod, "export_onnx"):
        formats.append(("onnx", "model.onnx", export_mod.export_onnx))
    for key, name, fn in formats:
        try:
            with _quiet_exporters():
                exports[key] = Path(fn(model, search.dummy_input, best_dir / name))
        except Exception as exc:  # an export is a convenience; the safetensors compact model is the result
            logger.warning("could not export the best model to %s: %s", key, exc)
            search.emit({"type": "export_failed", "format": key, "error": f"{type(exc).__name__}: {exc}"})
    return best_dir, exports


def run_search(
    spec: ExperimentSpec,
    executor: Executor,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    on_event: EventFn | None = None,
    *,
    export_onnx: bool = True,
) -> SearchOutcome:
    """Run the search ``spec`` describes with ``executor``; see the module docstring.

    Args:
        spec: a validated experiment spec.
        executor: where trials run (:class:`~workers.executors.LocalExecutor`, :class:`~workers.executors.RayExecutor`).
        out_dir: the search folder (created).
        resume: continue the search whose state is in ``out_dir`` (a fresh start if there is none).
        on_event: ``on_event(event)`` for progress (see ``EventFn``).
        export_onnx: also export the best model to ONNX.

    Raises:
        SearchError: if ``out_dir`` holds another search (and not ``resume``), the spec changed
            since the run being resumed, or the pretrain trial failed.
    """
    out = Path(out_dir).resolve()  # workers (Ray) may run in another working directory
    out.mkdir(parents=True, exist_ok=True)
    search = _Search(spec, executor, out, on_event)
    if search.state_path.exists():
        if not resume:
            raise SearchError(f"{out} holds a search already; pass resume=True (--resume) to continue it, or use a new directory")
        search.load()
        logger.info("resuming %s: %d trials done, %d to re-run", out, len(search.results), len(search.generator.pending()))
    (out / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1))
    search.emit({"type": "search_started", "name": spec.name, "out_dir": str(out), "max_trials": search.generator.max_trials,
                 "done": len(search.results), "resumed": bool(search.results or search.pretrain)})
    try:
        search.run_pretrain()
        search.save()
        search.loop()
    finally:
        for handle in list(search.running.values()):
            executor.cancel(handle)
    best_task = search.generator.best_result()
    best = search.results.get(best_task.task_id) if best_task is not None else None
    best_dir: Path | None = None
    exports: dict[str, Path] = {}
    if best is not None:
        best_dir, exports = _export_best(search, best, export_onnx)
    outcome = SearchOutcome(
        trials=[search.results[k] for k in sorted(search.results)], best=best, best_dir=best_dir, exports=exports,
        pretrain=search.pretrain, out_dir=out,
        params={tid: dict(task.params) for tid, task in search.generator.tasks.items()},
        discarded=dict(search.generator.discarded),
    )
    search.emit({"type": "search_finished", "best_task_id": best.task_id if best else None,
                 "best_dir": str(best_dir) if best_dir else None, "trials": len(outcome.trials)})
    return outcome
