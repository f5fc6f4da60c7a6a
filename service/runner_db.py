"""The runner's writes (and its journal read) that ``service.store`` does not have as one function.

Each function takes the caller's session (the caller owns the transaction, as in
``service.store``) and builds on the store's functions; the only direct ORM use is
:func:`open_trial` replacing a row whose trial runs again after it ended without a result the
generator saw (see there), :func:`discard_trials` selecting the rows of discarded tasks and
correcting ``n_trials``, and :func:`load_journal` reading the generator journal off the trial rows.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import store
from service._export import EXPORT_FILES, BestExport
from service.artifacts import PRETRAIN_NUMBER, ArtifactStore, content_type_for
from service.models import Artifact, Experiment, Trial
from service.states import COUNTED_TRIAL_STATES, ExperimentState, TrialState

__all__ = ["JournalEntry", "cancel_open_trials", "decode_floats", "discard_trials", "encode_floats",
           "finish_experiment", "json_safe", "load_journal", "open_trial", "record_finished", "register_best_export",
           "requested_sparsity", "task_fields", "timestamp"]

_OPEN = (TrialState.PENDING, TrialState.RUNNING)


def timestamp(seconds: float | None) -> dt.datetime | None:
    """An epoch time from a worker (``TrialResult.started_at``) as an aware UTC datetime."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


_FLOAT_KEY = "$float"


def encode_floats(obj: Any) -> Any:
    """``obj`` with every non-finite float as ``{"$float": "nan" | "inf" | "-inf"}`` (reversible).

    Example:
        >>> encode_floats({"score": float("nan"), "xs": [1.0, float("-inf")]})
        {'score': {'$float': 'nan'}, 'xs': [1.0, {'$float': '-inf'}]}
        >>> decode_floats(encode_floats([float("inf")]))
        [inf]
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return {_FLOAT_KEY: repr(obj)}
    if isinstance(obj, Mapping):
        return {k: encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode_floats(v) for v in obj]
    return obj


def decode_floats(obj: Any) -> Any:
    """Undo :func:`encode_floats`."""
    if isinstance(obj, Mapping):
        if len(obj) == 1 and isinstance(obj.get(_FLOAT_KEY), str):
            return float(obj[_FLOAT_KEY])
        return {k: decode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_floats(v) for v in obj]
    return obj


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` (metrics and events: JSON has no NaN).

    Example:
        >>> json_safe({"loss": float("nan"), "accuracy": 0.9})
        {'loss': None, 'accuracy': 0.9}
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def requested_sparsity(config_list: list[dict[str, Any]]) -> dict[str, float]:
    """What a task's config list asks for: ``{op name or selector: ratio}``.

    Example:
        >>> requested_sparsity([{"op_names": ["conv1"], "sparse_ratio": 0.3},
        ...                     {"op_types": ["Linear"], "sparse_ratio": 0.5}])
        {'conv1': 0.3, 'op_types=Linear': 0.5}
    """
    out: dict[str, float] = {}
    for i, sub in enumerate(config_list):
        ratio = next((sub[k] for k in ("sparse_ratio", "sparsity", "sparsity_per_layer", "total_sparsity")
                      if isinstance(sub.get(k), int | float) and not isinstance(sub.get(k), bool)), None)
        if ratio is None:
            continue
        if sub.get("op_names"):
            for name in sub["op_names"]:
                out[str(name)] = float(ratio)
        elif sub.get("op_types"):
            out["op_types=" + ",".join(map(str, sub["op_types"]))] = float(ratio)
        else:
            out[f"config_list[{i}]"] = float(ratio)
    return out


def task_fields(task: Mapping[str, Any]) -> dict[str, Any]:
    """The trial row's ``parent_number``, ``params`` and ``config_list`` of a task (``Task.to_json()``)."""
    return json_safe({
        "parent_number": task.get("parent_id"),
        "params": dict(task.get("params") or {}),
        "config_list": list(task.get("config_list") or []),
    })


def _row_fields(task: Mapping[str, Any]) -> dict[str, Any]:
    fields = task_fields(task)
    if task["task_id"] != PRETRAIN_NUMBER:
        fields["requested_sparsity"] = requested_sparsity(fields["config_list"])
    return fields


def open_trial(s: Session, experiment_id: int, task: Mapping[str, Any], *, ask_seq: int | None = None) -> int:
    """Make the trial row of ``task`` ``running`` for a new attempt; returns the attempt number.

    ``ask_seq`` is the generator call that handed the task out just now (the journal, see
    ``service.runner_experiment``); a task that runs again keeps the number its row has.

    * no row: a new one, attempt 1;
    * ``running``/``pending`` (left by a runner that crashed or stopped): ``running -> pending``
      (the store bumps ``attempt``) ``-> running``;
    * ``cancelled`` (the experiment was cancelled, then resumed) or a ``failed`` pretrain trial (a
      resumed experiment trains again): these trials never reached the generator, so they run
      again under the same number. The state machine has no edge out of a terminal state, so the
      row is replaced by a fresh ``running`` one whose attempt continues the count.

    Raises:
        ValueError: the row is ``succeeded`` (or a failed prune trial): it was told to the
            generator and must never run again; or ``discarded``: the generator took its task out of
            the search (a resumed search never hands it out again).
    """
    number = int(task["task_id"])
    fields = _row_fields(task)
    # a task the generator just handed out is new: its number never had a row (every task handed out
    # before is journaled with its row, and replayed on resume, so it is pending, not asked again)
    row = store.get_trial(s, experiment_id, number) if ask_seq is None else None
    if row is None:
        return store.upsert_trial(s, experiment_id, number=number, state=TrialState.RUNNING, attempt=1,
                                  ask_seq=ask_seq, **fields, trial=None).attempt
    if row.state in _OPEN:
        if row.state is TrialState.RUNNING:
            store.upsert_trial(s, experiment_id, number=number, state=TrialState.PENDING, trial=row)
        trial = store.upsert_trial(s, experiment_id, number=number, state=TrialState.RUNNING, **fields,
                                   score=None, metrics={}, achieved_sparsity=None, error=None, worker=None, trial=row)
        return trial.attempt
    rerun = row.state is TrialState.CANCELLED or (row.state is TrialState.FAILED and number == PRETRAIN_NUMBER)
    if not rerun:
        raise ValueError(f"trial {number} of experiment {experiment_id} is {row.state.value}: it must not run again")
    attempt, kept_seq = row.attempt + 1, row.ask_seq
    if row.state in COUNTED_TRIAL_STATES:  # it was counted in n_trials; its re-run will be
        _count_trials(s, experiment_id, -1)
    s.delete(row)
    s.flush()
    return store.upsert_trial(s, experiment_id, number=number, state=TrialState.RUNNING, attempt=attempt,
                              ask_seq=kept_seq, **fields, trial=None).attempt


@dataclass(frozen=True)
class JournalEntry:
    """A trial row's part of the generator journal (see ``service.runner_experiment``).

    Attributes:
        number: the trial (= task id).
        ask_seq: the call that handed its task out (``None``: not journaled).
        tell_seq: the call that told its result (``None``: not told, or not journaled).
        told: the result told, as ``TaskResult.to_json()`` with non-finite floats encoded.
        task: the task as the row stores it (:func:`task_fields`).
    """

    number: int
    ask_seq: int | None
    tell_seq: int | None
    told: dict[str, Any] | None
    task: dict[str, Any]


def load_journal(s: Session, experiment_id: int, *, after: int) -> list[JournalEntry]:
    """The journal entries of the experiment's generator calls numbered ``after`` or later."""
    t = cast(sa.Table, Trial.__table__)
    stmt = sa.select(t.c.number, t.c.ask_seq, t.c.tell_seq, t.c.told, t.c.parent_number, t.c.params,
                     t.c.config_list).where(t.c.experiment_id == experiment_id,
                                            sa.or_(t.c.ask_seq >= after, t.c.tell_seq >= after))
    return [JournalEntry(row.number, row.ask_seq, row.tell_seq, row.told,
                         {"parent_number": row.parent_number, "params": row.params, "config_list": row.config_list})
            for row in s.execute(stmt)]


def record_finished(
    s: Session,
    artifacts: ArtifactStore,
    experiment_id: int,
    *,
    number: int,
    attempt: int,
    result: Any,
    told: tuple[int, dict[str, Any]] | None,
    best: Any,
    previous_best: int | None,
    lease_owner: str,
    generator_state: dict[str, Any] | store.Unset = store.UNSET,
    more_events: Sequence[tuple[str, dict[str, Any]]] = (),
) -> None:
    """Commit-side of one finished trial (``store.record_trial_result``, fenced by the lease).

    Writes the trial row (``succeeded``/``failed`` with the traceback; ``told`` is its journal entry,
    ``(tell_seq, result told)``, ``None`` for the pretrain trial), a checkpoint of the generator when
    given, the experiment's best (and a ``best_changed`` event when the best trial changed), a
    ``trial_finished``/``trial_failed`` event followed by ``more_events``, and registers the trial's
    ``trial.log`` and ``result.json`` as artifacts. ``result`` is a :class:`~workers.trial.TrialResult`; ``best``
    the generator's best :class:`~search.scheduling.TaskResult` after ``tell``.
    """
    if result.ok:
        events = [("trial_finished", {"number": number, "attempt": attempt, "score": result.score,
                                      "metrics": dict(result.metrics), "duration_s": result.seconds})]
    else:
        last = (result.error or "").strip().splitlines()[-1:] or ["error"]
        events = [("trial_failed", {"number": number, "attempt": attempt, "error": last[0]})]
    best_number = best.task_id if best is not None else None
    best_fields: dict[str, Any] = {}
    if best_number != previous_best:
        flops = best.metrics.get("flops_ratio") if best is not None else None
        score = best.score if best is not None else None
        best_fields = {"best_number": best_number, "best_score": score, "best_flops_ratio": flops}
        events.append(("best_changed", {"number": best_number, "score": score, "flops_ratio": flops,
                                        "previous": previous_best}))
    elif best is not None:
        best_fields = {"best_score": best.score}
    store.record_trial_result(
        s, experiment_id, number=number, state=TrialState.SUCCEEDED if result.ok else TrialState.FAILED,
        generator_state=generator_state, events=[*((k, json_safe(d)) for k, d in events), *more_events],
        lease_owner=lease_owner,
        tell_seq=told[0] if told else None, told=told[1] if told else None,
        attempt=attempt, score=result.score, metrics=json_safe(dict(result.metrics)),
        achieved_sparsity=json_safe(dict(result.sparsity)), error=result.error, worker=result.worker,
        started_at=timestamp(result.started_at), finished_at=timestamp(result.finished_at),
        duration_s=result.seconds, **best_fields,
    )
    folder = artifacts.trial_dir(experiment_id, number)
    for kind, name in (("log", "trial.log"), ("result", "result.json")):
        path = folder / name
        if path.is_file():
            rel = artifacts.relpath(experiment_id, path)
            store.add_artifact(s, experiment_id=experiment_id, trial_number=number, kind=kind, path=rel,
                               size=path.stat().st_size, content_type=content_type_for(rel))


def _count_trials(s: Session, experiment_id: int, delta: int) -> None:
    """Add ``delta`` to ``experiments.n_trials`` (rows that stop or start counting as trials of the search)."""
    table = cast(sa.Table, Experiment.__table__)
    s.execute(sa.update(table).where(table.c.id == experiment_id).values(n_trials=table.c.n_trials + delta))


def discard_trials(s: Session, experiment_id: int, discarded: Mapping[int, str]) -> list[tuple[str, dict[str, Any]]]:
    """Move the rows of tasks the generator discarded to ``discarded``; returns their events (the caller appends them).

    ``discarded`` maps trial numbers to the generator's reason (``TaskGenerator.discarded``). The
    reason goes to the row's ``error`` as ``discarded: <reason>`` (after the traceback a failed trial
    already had). A row that finished while its task was tentative no longer counts in
    ``experiments.n_trials``; one still ``pending``/``running`` was cancelled by the caller. The
    journal fields (``ask_seq``, ``tell_seq``, ``told``) stay: a resumed generator replays the calls
    and discards the task again. Rows already ``discarded`` (a resumed runner reconciling) and
    numbers without a row are skipped. Each row moved gets a ``trial_discarded`` event
    ``{number, reason, running}`` (``running``: it was in flight, never counted as finished).
    """
    events: list[tuple[str, dict[str, Any]]] = []
    if not discarded:
        return events
    stmt = sa.select(Trial).where(Trial.experiment_id == experiment_id, Trial.number.in_(list(discarded)),
                                  Trial.state != TrialState.DISCARDED).order_by(Trial.number)
    counted = 0
    for row in list(s.scalars(stmt)):
        reason = discarded[row.number]
        note = f"discarded: {reason}"
        running = row.state in _OPEN
        counted += row.state in COUNTED_TRIAL_STATES
        store.upsert_trial(s, experiment_id, number=row.number, state=TrialState.DISCARDED, trial=row,
                           error=f"{row.error.rstrip()}\n\n{note}" if row.error else note)
        events.append(("trial_discarded", {"number": row.number, "reason": reason, "running": running}))
    if counted:
        _count_trials(s, experiment_id, -counted)
    return events


def cancel_open_trials(s: Session, experiment_id: int) -> list[int]:
    """Mark the experiment's ``pending``/``running`` trials ``cancelled``; returns their numbers."""
    numbers = []
    for row in store.get_trials(s, experiment_id, states=list(_OPEN)):
        store.upsert_trial(s, experiment_id, number=row.number, state=TrialState.CANCELLED)
        numbers.append(row.number)
    return numbers


def finish_experiment(s: Session, experiment_id: int, to: ExperimentState, *, error: str | None = None) -> Experiment:
    """Cancel the open trials, then move the experiment to the terminal state ``to`` (drops the lease).

    Raises:
        store.NotFoundError: the experiment was deleted.
    """
    exp = store.get_experiment(s, experiment_id)
    if exp is None:
        raise store.NotFoundError(f"experiment {experiment_id} not found")
    cancelled = cancel_open_trials(s, experiment_id)
    if cancelled:
        store.append_event(s, experiment_id, "log", {"level": "info", "message": f"cancelled trials {cancelled}",
                                                     "cancelled_trials": cancelled})
    store.set_experiment_state(s, exp, to, error=error)
    return exp


def register_best_export(s: Session, artifacts: ArtifactStore, experiment_id: int, export: BestExport | None,
                         error: str | None = None) -> None:
    """Register the files of ``best/`` as experiment-level artifacts (size, content type, sha256).

    Rows of kinds that this export did not produce (an earlier export's ``onnx`` when ONNX failed
    this time) are deleted, so no row points at a file that is gone. Each failed format, and
    ``error`` (the export as a whole failed), become ``log`` events with ``level: warning``.
    """
    files = export.files if export is not None else {}
    for kind, path in files.items():
        rel = artifacts.relpath(experiment_id, path)
        store.add_artifact(s, experiment_id=experiment_id, trial_number=None, kind=kind, path=rel,
                           size=artifacts.size(experiment_id, rel), content_type=content_type_for(rel),
                           sha256=artifacts.sha256(experiment_id, rel))
    stale = [k for k in EXPORT_FILES if k not in files]
    if stale:
        s.execute(sa.delete(Artifact).where(Artifact.experiment_id == experiment_id, Artifact.trial_number.is_(None),
                                            Artifact.kind.in_(stale)))
    failures = dict(export.failures) if export is not None else {}
    for fmt, message in failures.items():
        store.append_event(s, experiment_id, "log", {
            "level": "warning", "message": f"could not export the best model to {fmt}: {message}",
            "export_failed": fmt, "error": message})
    if error is not None:
        store.append_event(s, experiment_id, "log", {
            "level": "warning", "message": f"could not export the best model: {error}", "export_failed": "all",
            "error": error})
