"""Factories shared by the API tests: an app with the runner off, rows written through the store."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

from service import store
from service.app import create_app
from service.db import session_scope
from service.settings import Settings
from service.states import ExperimentState, TrialState

#: a small valid spec (digits CNN, a few AGP steps); deep validation takes well under a second
SPEC: dict[str, Any] = {
    "name": "digits-cnn-agp",
    "model": {"factory": "search.zoo:digits_cnn"},
    "data": {"name": "digits"},
    "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
    "algorithm": {"name": "agp", "total_iteration": 3},
    "trial": {"finetune_epochs": 0, "pretrain_epochs": 0},
}


def spec(**overrides: Any) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    out.update(copy.deepcopy(overrides))
    return out


def make_settings(db_url: str, tmp: Path, **overrides: Any) -> Settings:
    values = dict(database_url=db_url, data_dir=tmp, artifacts_dir=tmp / "artifacts", runner=False)
    values.update(overrides)
    return Settings(**values)


def make_app(db_url: str, tmp: Path, **overrides: Any) -> Any:
    app = create_app(make_settings(db_url, tmp, **overrides), start_runner=False)
    app.state.sse_poll_s = 0.02
    return app


def insert_experiment(app: Any, *, name: str = "exp", algorithm: str = "agp", state: ExperimentState | None = None,
                      created_spec: dict[str, Any] | None = None) -> int:
    """An experiment inserted through the store (no spec validation), moved to ``state`` legally."""
    with session_scope(app.state.session_factory) as s:
        exp = store.create_experiment(s, spec=created_spec or spec(name=name), name=name, algorithm=algorithm,
                                      model="search.zoo:digits_cnn", max_trials=None)
        path = {
            None: [], ExperimentState.QUEUED: [],
            ExperimentState.RUNNING: [ExperimentState.RUNNING],
            ExperimentState.CANCELLING: [ExperimentState.RUNNING, ExperimentState.CANCELLING],
            ExperimentState.SUCCEEDED: [ExperimentState.RUNNING, ExperimentState.SUCCEEDED],
            ExperimentState.FAILED: [ExperimentState.RUNNING, ExperimentState.FAILED],
            ExperimentState.CANCELLED: [ExperimentState.CANCELLED],
        }[state]
        for to in path:
            store.set_experiment_state(s, exp, to)
        return exp.id


def set_state(app: Any, experiment_id: int, to: ExperimentState) -> None:
    with session_scope(app.state.session_factory) as s:
        store.set_experiment_state(s, store.get_experiment(s, experiment_id), to)


def insert_trials(app: Any, experiment_id: int, n: int, *, best: int | None = None, failed: tuple[int, ...] = ()) -> None:
    """``n`` finished trials: trial i scores i/n, has flops_ratio 1 - i/(2n) and lasts (n - i) s."""
    with session_scope(app.state.session_factory) as s:
        for i in range(n):
            state = TrialState.FAILED if i in failed else TrialState.SUCCEEDED
            fields: dict[str, Any] = dict(
                params={"i": i}, config_list=[{"op_types": ["Conv2d"], "sparse_ratio": 0.1 * (i % 9)}],
                metrics={"accuracy": i / n, "flops_ratio": 1 - i / (2 * n)}, duration_s=float(n - i),
                score=None if state is TrialState.FAILED else i / n,
                error="Traceback (most recent call last):\nValueError: boom" if state is TrialState.FAILED else None,
            )
            is_best = best == i
            store.record_trial_result(
                s, experiment_id, number=i, state=state, generator_state={"step": i},
                events=[("trial_finished", {"number": i})],
                **({"best_number": i, "best_score": i / n, "best_flops_ratio": 1 - i / (2 * n)} if is_best else {}),
                **fields,
            )


def add_export(app: Any, experiment_id: int, fmt: str, content: bytes, *, relpath: str | None = None) -> Path:
    """Write a best-model export file and register it as an artifact, as the runner does."""
    from service.artifacts import content_type_for

    names = {"pt2": "model.pt2", "onnx": "model.onnx", "safetensors": "model.safetensors", "masks": "masks.safetensors"}
    relpath = relpath or f"best/{names[fmt]}"
    path = app.state.artifacts.resolve(experiment_id, relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with session_scope(app.state.session_factory) as s:
        store.add_artifact(s, experiment_id=experiment_id, trial_number=None, kind=fmt, path=relpath,
                           size=len(content), content_type=content_type_for(path),
                           sha256=hashlib.sha256(content).hexdigest())
    return path


def create_token(app: Any, name: str = "ci") -> tuple[int, str]:
    with session_scope(app.state.session_factory) as s:
        row, plaintext = store.create_token(s, name=name)
        return row.id, plaintext


def revoke_token(app: Any, token_id: int) -> None:
    with session_scope(app.state.session_factory) as s:
        store.revoke_token(s, token_id)


def errors_at(response: Any) -> list[list[Any]]:
    """The ``loc`` of every error of a 422 response."""
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]
