"""The runner builds each trial's TrialSpec the way ``run_search`` does (rewinding rule included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.artifacts import ArtifactStore
from service.runner_experiment import DefaultExecutorFactory, ExperimentDriver
from workers.spec import ExperimentSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-agp.yaml"


@pytest.mark.parametrize("reset_weight", [True, False])
def test_lottery_children_rewind_only_when_the_spec_asks(tmp_path: Path, reset_weight: bool) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["algorithm"] = {"name": "lottery_ticket", "total_iteration": 2, "reset_weight": reset_weight}
    spec = ExperimentSpec.from_dict(data)
    driver = ExperimentDriver(1, spec, None, pretrain_done=True, artifacts=ArtifactStore(tmp_path),
                              executor_factory=DefaultExecutorFactory(), trial_fn=None)
    try:
        first = driver.next_tasks(1)[0]
        assert driver.trial_spec(first).reset_weight is False  # no parent: nothing to rewind to
        child = {**first, "task_id": first["task_id"] + 1, "parent_id": first["task_id"],
                 "params": {**first.get("params", {}), "reset_weight": reset_weight}}
        assert driver.trial_spec(child).reset_weight is reset_weight
    finally:
        driver.close()
