"""Property-based fuzzing of every operation of the OpenAPI schema: no input makes the API answer 5xx.

Schemathesis generates requests from ``/api/v1/openapi.json`` (valid and invalid ones) and sends them
to the ASGI app in-process (runner off), once over SQLite and once over PostgreSQL. The database holds a finished experiment with
trials, a log and exports; every other generated case whose ids are well-formed is pointed at it
(and at one of its trials), so the handlers run on real rows instead of answering 404 to random
ids. DELETE keeps its random ids, so the seeded experiment survives the run. Examples per operation
are bounded so the whole run stays well under a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from service.states import ExperimentState
from tests.service.api_helpers import add_export, insert_experiment, insert_trials, make_app, set_state

MAX_EXAMPLES = 15
_turn = {"n": 0}


@pytest.fixture
def fuzzed_app(db_url: str, tmp_path: Path) -> Any:
    app = make_app(db_url, tmp_path)
    app.state.sse_max_s = 0.3  # experiments the fuzzer creates stay queued: bound their event streams
    with TestClient(app):  # runs the lifespan: migrations
        pass
    exp = insert_experiment(app, name="seeded", state=ExperimentState.RUNNING)
    insert_trials(app, exp, 5, best=4, failed=(1,))
    set_state(app, exp, ExperimentState.SUCCEEDED)
    log = app.state.artifacts.trial_dir(exp, 0) / "trial.log"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1 loss 0.5\n" * 100)
    for fmt in ("pt2", "onnx", "safetensors", "masks"):
        add_export(app, exp, fmt, f"{fmt} bytes".encode())
    app.state.seeded_experiment = exp
    return app


def _as_int(value: Any) -> int | None:
    """A generated path value as an int (schemathesis hands them over as strings), else None."""
    text = str(value)
    return int(text) if text.lstrip("-").isdigit() and len(text) < 12 else None


def _aim_at_seeded_rows(case: Any, experiment_id: int) -> None:
    params = case.path_parameters or {}
    _turn["n"] += 1
    generated = _as_int(params.get("experiment_id"))
    if generated is None:
        return
    if case.method == "DELETE":
        if generated == experiment_id:
            params["experiment_id"] = str(experiment_id + 1_000_000)  # keep the seeded rows for the other operations
        return
    if _turn["n"] % 2:
        return
    params["experiment_id"] = str(experiment_id)
    number = _as_int(params.get("number"))
    if number is not None:
        params["number"] = str(number % 6 - 1)  # -1 (no pretrain trial here: 404) .. 4


@pytest.fixture
def api_schema(fuzzed_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", fuzzed_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_no_input_makes_the_api_fail_with_5xx(case: Any, fuzzed_app: Any) -> None:
    _aim_at_seeded_rows(case, fuzzed_app.state.seeded_experiment)
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
