"""run_trial: a pure function of its spec that leaves loadable, pickle-free artifacts; and the spec itself."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch

from search.pruning import load_masks
from search.scheduling import Task
from search.speedup import load_compact_model
from search.zoo import get_dataset
from workers.spec import DataSpec, ExperimentSpec, ModelSpec, SpecError, TrialSettings, TrialSpec
from workers.trial import COMPACT_DIR, MASKS_FILE, WEIGHTS_FILE, TrialResult, _evaluate, run_trial

pytestmark = pytest.mark.usefixtures("single_thread")

CONV = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]


def make_spec(artifact_dir: Path, task: Task, *, weights: str | None = None, parent: Path | None = None,
              pruner: str = "l1", pruner_kwargs: dict | None = None, **settings) -> TrialSpec:
    return TrialSpec(
        model=ModelSpec("search.zoo:digits_cnn", weights=weights),
        data=DataSpec("digits"),
        pruner_name=pruner,
        pruner_kwargs=dict(pruner_kwargs or {}),
        task=task.to_json(),
        artifact_dir=str(artifact_dir),
        parent_artifact=str(parent) if parent else None,
        settings=TrialSettings(**{"finetune_epochs": 1, **settings}),
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> TrialResult:
    """A pretrain trial: the digits CNN trained for two epochs (its weights are the origin of later trials)."""
    out = tmp_path_factory.mktemp("pretrain")
    return run_trial(make_spec(out, Task(-1, [], params={"pretrain": 2})))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, pretrained) -> TrialResult:
    out = tmp_path_factory.mktemp("pruned")
    return run_trial(make_spec(out, Task(0, CONV), weights=str(Path(pretrained.artifact_dir) / WEIGHTS_FILE)))


def test_pretrain_trial_trains_the_origin_model(pretrained):
    assert pretrained.ok
    assert pretrained.metrics["accuracy"] > 0.9
    assert pretrained.metrics["flops_ratio"] == 1.0 and pretrained.sparsity == {}


def test_run_trial_is_deterministic_for_a_seed(tmp_path, pretrained):
    weights = str(Path(pretrained.artifact_dir) / WEIGHTS_FILE)
    a = run_trial(make_spec(tmp_path / "a", Task(0, CONV), weights=weights))
    b = run_trial(make_spec(tmp_path / "b", Task(0, CONV), weights=weights))
    timing = {"seconds"}
    assert {k: v for k, v in a.metrics.items() if k not in timing} == {k: v for k, v in b.metrics.items() if k not in timing}
    assert a.sparsity == b.sparsity
    wa = load_compact_model(tmp_path / "a" / COMPACT_DIR).state_dict()
    wb = load_compact_model(tmp_path / "b" / COMPACT_DIR).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_another_seed_trains_differently(tmp_path, pretrained):
    weights = str(Path(pretrained.artifact_dir) / WEIGHTS_FILE)
    a = run_trial(make_spec(tmp_path / "a", Task(0, CONV), weights=weights, seed=0))
    b = run_trial(make_spec(tmp_path / "b", Task(0, CONV), weights=weights, seed=1))
    assert a.metrics["loss"] != b.metrics["loss"]


def test_artifacts_exist_and_load_without_unpickling(pruned, monkeypatch):
    folder = Path(pruned.artifact_dir)
    for name in (WEIGHTS_FILE, MASKS_FILE, "result.json", "trial.log", f"{COMPACT_DIR}/compact.json",
                 f"{COMPACT_DIR}/model.safetensors"):
        assert (folder / name).is_file(), name

    def no_pickle(*args, **kwargs):
        raise AssertionError("artifacts must load without unpickling")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    masks = load_masks(folder / MASKS_FILE)
    compact = load_compact_model(folder / COMPACT_DIR)
    assert set(masks) >= {"conv1", "conv2", "conv3"}
    assert compact.conv2.out_channels == 32
    assert json.loads((folder / "result.json").read_text())["task_id"] == 0
    assert "trial 0 done" in (folder / "trial.log").read_text()


def test_compact_model_reproduces_the_reported_accuracy(pruned):
    compact = load_compact_model(Path(pruned.artifact_dir) / COMPACT_DIR)
    accuracy, loss = _evaluate(compact, get_dataset("digits"), torch.device("cpu"))
    assert accuracy == pytest.approx(pruned.metrics["accuracy"], abs=1e-9)
    assert loss == pytest.approx(pruned.metrics["loss"], rel=1e-4)
    assert pruned.score == pruned.metrics["accuracy"]
    assert pruned.metrics["flops_ratio"] < 0.5 and pruned.metrics["params_ratio"] < 0.5


def test_a_child_keeps_its_parents_masks(tmp_path, pretrained):
    weights = str(Path(pretrained.artifact_dir) / WEIGHTS_FILE)
    parent = run_trial(make_spec(tmp_path / "p", Task(0, [{"op_types": ["Conv2d"], "sparse_ratio": 0.25}]), weights=weights))
    child = run_trial(make_spec(tmp_path / "c", Task(1, CONV, parent_id=0), weights=weights, parent=tmp_path / "p"))
    parent_masks, child_masks = load_masks(tmp_path / "p" / MASKS_FILE), load_masks(tmp_path / "c" / MASKS_FILE)
    for module, targets in parent_masks.items():
        for target, mask in targets.items():
            assert not (child_masks[module][target][mask == 0]).any(), f"{module}.{target} was unmasked"
    assert child.sparsity["conv2"] == 0.5 and parent.sparsity["conv2"] == 0.25
    # what the child saved is masked: its weights are zero where its masks are
    state = load_compact_model(tmp_path / "c" / COMPACT_DIR).state_dict()
    assert state["conv2.weight"].shape[0] == 32


def test_reset_weight_puts_the_parents_masks_on_the_origin_weights(tmp_path, pretrained):
    from safetensors.torch import load_file

    weights = Path(pretrained.artifact_dir) / WEIGHTS_FILE
    run_trial(make_spec(tmp_path / "p", Task(0, [{"op_types": ["Conv2d"], "sparse_ratio": 0.25}]), weights=str(weights)))
    spec = make_spec(tmp_path / "c", Task(1, [], parent_id=0), weights=str(weights), parent=tmp_path / "p",
                     finetune_epochs=0)
    run_trial(TrialSpec(**{**spec.__dict__, "reset_weight": True}))
    origin, child = load_file(str(weights)), load_file(str(tmp_path / "c" / WEIGHTS_FILE))
    masks = load_masks(tmp_path / "p" / MASKS_FILE)
    assert torch.equal(child["conv2.weight"], origin["conv2.weight"] * masks["conv2"]["weight"])
    assert torch.equal(child["fc.weight"], origin["fc.weight"])


def test_a_task_may_ask_for_another_pruner(tmp_path, pretrained):
    spec = make_spec(tmp_path, Task(0, CONV, params={"pruner": "admm"}), finetune_epochs=0,
                     weights=str(Path(pretrained.artifact_dir) / WEIGHTS_FILE))
    spec = TrialSpec(**{**spec.__dict__, "task_pruners": {"admm": {"iterations": 1, "training_steps": 2,
                                                                    "granularity": "coarse-grained"}}})
    result = run_trial(spec)
    assert result.sparsity["conv2"] == 0.5 and "pruned with admm" in (tmp_path / "trial.log").read_text()


def test_progress_reports_epochs_steps_and_loss(tmp_path, pretrained):
    events = []
    run_trial(make_spec(tmp_path, Task(0, CONV), weights=str(Path(pretrained.artifact_dir) / WEIGHTS_FILE),
                        finetune_epochs=2), events.append)
    training = [e for e in events if e["phase"] == "finetune"]
    assert {e["epoch"] for e in training} == {0, 1}
    assert [e["step"] for e in training] == list(range(len(training)))
    assert all(e["loss"] > 0 for e in training)
    assert [e["phase"] for e in events if e["phase"] != "finetune"] == ["prune", "evaluate", "speedup", "done"]


def test_a_data_dependent_pruner_gets_an_evaluator(tmp_path, pretrained):
    result = run_trial(make_spec(tmp_path, Task(0, CONV), weights=str(Path(pretrained.artifact_dir) / WEIGHTS_FILE),
                                 pruner="taylor", pruner_kwargs={"training_steps": 3}, finetune_epochs=0))
    assert result.sparsity["conv1"] == 0.5


def test_a_weights_only_pt_file_is_an_origin(tmp_path, pretrained):
    from safetensors.torch import load_file

    state = load_file(str(Path(pretrained.artifact_dir) / WEIGHTS_FILE))
    torch.save(state, tmp_path / "origin.pt")
    result = run_trial(make_spec(tmp_path / "t", Task(-1, [], params={"pretrain": 0}), weights=str(tmp_path / "origin.pt")))
    assert result.metrics["accuracy"] == pytest.approx(pretrained.metrics["accuracy"])


def test_trial_spec_and_result_round_trip_through_json(pruned):
    spec = make_spec(Path("/tmp/x"), Task(3, CONV, parent_id=2), weights="w.safetensors", parent=Path("/tmp/p"))
    assert TrialSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert TrialResult.from_json(json.loads(json.dumps(pruned.to_json()))) == pruned
    assert spec.kind == "prune" and make_spec(Path("/x"), Task(-1, [], params={"pretrain": 1})).kind == "pretrain"


# -- the experiment spec ------------------------------------------------------------------------------

BASE = {
    "name": "t",
    "model": {"factory": "search.zoo:digits_cnn"},
    "data": {"name": "digits"},
    "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
    "algorithm": {"name": "agp", "total_iteration": 3},
}


def test_experiment_spec_round_trips_through_to_dict():
    spec = ExperimentSpec.from_dict({**BASE, "constraints": {"max_flops_ratio": 0.5}, "trial": {"lr": 1}})
    assert ExperimentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.trial.lr == 1.0 and spec.constraints.max_flops_ratio == 0.5


def _set(path: str, value):
    def mutate(d):
        keys = path.split(".")
        for key in keys[:-1]:
            d = d.setdefault(key, {}) if not key.isdigit() else d[int(key)]
        d[keys[-1]] = value
    return mutate


@pytest.mark.parametrize(("mutate", "path", "words"), [
    (_set("algorithm.total_iteration", 0), "algorithm.total_iteration", "must be a positive int"),
    (_set("algorithm.total_iteraton", 3), "algorithm.total_iteraton", "did you mean 'total_iteration'"),
    (_set("algorithm.name", "agpp"), "algorithm.name", "did you mean 'agp'"),
    (_set("pruner.config_list.0.sparse_raito", 0.3), "pruner.config_list[0].sparse_raito", "unknown key"),
    (_set("pruner.name", "l3"), "pruner.name", "unknown pruner 'l3'; valid: "),
    (_set("pruner.name", "taylor"), "pruner.kwargs.training_steps", "required"),
    (_set("model.factory", "resnt18"), "model.factory", "unknown model 'resnt18'; valid: "),
    (_set("model.kwargs", {"num_clases": 3}), "model.kwargs.num_clases", "did you mean 'num_classes'"),
    (_set("model.weights", "missing.safetensors"), "model.weights", "no such file"),
    (_set("data.name", "digitz"), "data.name", "unknown dataset 'digitz'; valid: "),
    (_set("trial.lr", 0), "trial.lr", "positive number"),
    (_set("trial.device", "tpu"), "trial.device", "auto, cpu"),
    (_set("resources.max_concurrent_trials", 0), "resources.max_concurrent_trials", "positive int"),
    (_set("constraints.max_flops_ratio", 1.5), "constraints.max_flops_ratio", "(0, 1]"),
    (_set("objective.metric", "latency_ms"), "objective.metric", "measure_latency"),
    (_set("surprise", 1), "surprise", "unknown key"),
])
def test_a_bad_spec_is_a_spec_error_naming_its_path(mutate, path, words):
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(data)
    assert info.value.path == path
    assert words in info.value.message
    assert str(info.value).startswith(f"{path}: ")


def test_a_tracing_pruner_gets_the_models_dummy_input(tmp_path, pretrained):
    result = run_trial(make_spec(tmp_path, Task(0, CONV), weights=str(Path(pretrained.artifact_dir) / WEIGHTS_FILE),
                                 pruner="group_l1", finetune_epochs=0))
    assert result.sparsity["conv1"] == 0.5 and result.sparsity["conv2"] == 0.5
    assert "pruned with group_l1" in (tmp_path / "trial.log").read_text()
