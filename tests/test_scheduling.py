"""The TaskGenerator contract and the in-process PruningScheduler.

The generator tests drive small generators defined here with hand-made results, so every decision
(budget, best result, state) is checked exactly. The scheduler tests run a three-layer MLP with
finetuners that change weights in ways a test can recognise (adding 1 to the last bias, rescaling
rows), so "started from the parent's model" or "rewound to the origin" is visible in the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from search.algorithms import LinearTaskGenerator
from search.pruning import LevelPruner
from search.pruning.io import load_masks, load_state_dict
from search.pruning.registry import PRUNERS
from search.scheduling import (
    Constraints,
    Proposal,
    PruningScheduler,
    Task,
    TaskGenerator,
    TaskResult,
    TaskStatus,
    best_of,
)

pytestmark = pytest.mark.usefixtures("single_thread")

Masks = dict[str, dict[str, torch.Tensor]]


# -- generators and models for the tests ---------------------------------------------------------------
class RandomRatios(TaskGenerator):
    """Proposes as many tasks as asked, each with a ratio drawn from the generator's RNG."""

    def _propose(self, n: int) -> list[Proposal]:
        return [Proposal([{"op_names": ["0"], "sparse_ratio": round(self.rng.uniform(0.1, 0.9), 6)}])
                for _ in range(n)]


class Scripted(TaskGenerator):
    """Hands out a fixed list of proposals in order, one ``ask`` slot each."""

    def __init__(self, script: list[Proposal], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script = script
        self.position = 0

    def _propose(self, n: int) -> list[Proposal]:
        out = self.script[self.position:self.position + n]
        self.position += len(out)
        return out

    def _finished(self) -> bool:
        return self.position >= len(self.script)

    def _keep_models(self) -> list[int]:  # a child may start from any earlier task
        return list(self.results)

    def _algo_state(self) -> dict[str, Any]:
        return {"position": self.position}

    def _load_algo_state(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).eval()


def ratio(value: float, layer: str = "0") -> list[dict[str, Any]]:
    return [{"op_names": [layer], "sparse_ratio": value}]


def add_one_to_last_bias(model: nn.Module) -> None:
    """A 'finetune' whose effect is countable: each call adds 1 to the output layer's bias."""
    with torch.no_grad():
        model[4].bias.add_(1.0)


def masked_rows(masks: Masks, layer: str = "0") -> set[int]:
    return {int(i) for i in (masks[layer]["weight"] == 0).all(dim=1).nonzero().flatten()}


def masked_positions(masks: Masks, layer: str = "0") -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in idx) for idx in (masks[layer]["weight"] == 0).nonzero()}


def tell_all(gen: TaskGenerator, scores: list[float | None], **kwargs: Any) -> list[Task]:
    tasks = gen.ask(len(scores))
    for task, score in zip(tasks, scores, strict=True):
        gen.tell(TaskResult(task.task_id, score=score, **kwargs))
    return tasks


# -- ask / tell -----------------------------------------------------------------------------------------
def test_ask_hands_out_no_more_than_the_remaining_budget() -> None:
    gen = RandomRatios(log_dir=None, max_trials=3)
    first, second = gen.ask(2), gen.ask(5)
    assert [t.task_id for t in first] == [0, 1] and [t.task_id for t in second] == [2]
    assert gen.ask(1) == [] and gen.next() is None
    assert all(t.status is TaskStatus.RUNNING for t in first + second)


def test_pending_lists_the_tasks_handed_out_without_a_result() -> None:
    gen = RandomRatios(log_dir=None, max_trials=3)
    tasks = gen.ask(3)
    gen.tell(TaskResult(tasks[1].task_id, score=0.5))
    assert [t.task_id for t in gen.pending()] == [0, 2]


def test_is_done_waits_for_running_tasks_once_the_budget_is_used() -> None:
    gen = RandomRatios(log_dir=None, max_trials=2)
    tasks = gen.ask(2)
    assert not gen.is_done()
    gen.tell(TaskResult(tasks[1].task_id, score=0.1))  # results may arrive in any order
    assert not gen.is_done()
    gen.tell(TaskResult(tasks[0].task_id, error="Traceback: boom"))
    assert gen.is_done() and gen.tasks[0].status is TaskStatus.FAILED and gen.tasks[1].status is TaskStatus.SUCCEEDED


def test_tell_of_a_task_never_handed_out_raises_key_error() -> None:
    gen = RandomRatios(log_dir=None)
    gen.ask(1)
    with pytest.raises(KeyError, match="no task 7"):
        gen.tell(TaskResult(7, score=1.0))


@pytest.mark.parametrize("first", [TaskResult(0, score=0.5), TaskResult(0, error="boom")], ids=["ok", "failed"])
def test_a_second_tell_for_the_same_task_raises_value_error(first: TaskResult) -> None:
    gen = RandomRatios(log_dir=None)
    gen.ask(1)
    gen.tell(first)
    with pytest.raises(ValueError, match="task 0 already has a result"):
        gen.tell(TaskResult(0, score=0.9))
    assert gen.results[0] is first


def test_nni_names_next_and_receive_task_result_are_ask_and_tell() -> None:
    gen = RandomRatios(log_dir=None, max_trials=1, best_result_mode="latest")
    task = gen.next()
    assert isinstance(task, Task) and task.task_id == 0
    gen.receive_task_result(TaskResult(task.task_id, score=None))
    assert gen.next() is None and gen.is_done() and gen.best_result().task_id == 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"best_result_mode": "max"}, "best_result_mode"),
    ({"max_trials": 0}, "max_trials"),
    ({"max_trials": True}, "max_trials"),
    ({"max_trials": 2.5}, "max_trials"),
])
def test_bad_generator_arguments_are_errors_naming_them(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RandomRatios(log_dir=None, **kwargs)


# -- the best result -----------------------------------------------------------------------------------
SCORES = [0.5, 0.9, 0.2, 0.9]


@pytest.mark.parametrize(("mode", "expected"), [("latest", 3), ("maximize", 1), ("minimize", 2)])
def test_best_of_picks_by_mode_and_equal_scores_go_to_the_earlier_task(mode: str, expected: int) -> None:
    results = [TaskResult(i, score=s) for i, s in enumerate(SCORES)]
    assert best_of(results, mode).task_id == expected
    assert best_of(list(reversed(results)), mode).task_id == expected  # order of arrival does not matter


@pytest.mark.parametrize("mode", ["maximize", "minimize"])
def test_equal_scores_go_to_the_smaller_model(mode: str) -> None:
    """An accuracy on a test split is a multiple of 1/N: ties are common, and the smaller model should win them."""
    results = [
        TaskResult(0, score=0.9, metrics={"flops_ratio": 0.5, "params_ratio": 0.5}),
        TaskResult(1, score=0.9, metrics={"flops_ratio": 0.3, "params_ratio": 0.6}),
        TaskResult(2, score=0.9, metrics={"flops_ratio": 0.3, "params_ratio": 0.4}),
        TaskResult(3, score=0.9),  # no cost measured: never preferred on a tie
        TaskResult(4, score=0.8 if mode == "maximize" else 1.0, metrics={"flops_ratio": 0.1, "params_ratio": 0.1}),
    ]
    assert best_of(results, mode).task_id == 2
    assert best_of(list(reversed(results)), mode).task_id == 2
    assert best_of([results[0], results[3]], mode).task_id == 0


@pytest.mark.parametrize("mode", ["maximize", "minimize"])
def test_results_without_a_score_fall_back_to_latest(mode: str) -> None:
    assert best_of([TaskResult(0), TaskResult(2), TaskResult(1)], mode).task_id == 2
    assert best_of([TaskResult(0), TaskResult(1, score=float("nan"))], mode).task_id == 1  # NaN is no score


def test_scored_results_beat_unscored_ones_under_maximize() -> None:
    assert best_of([TaskResult(0, score=0.1), TaskResult(1)], "maximize").task_id == 0


def test_a_failed_result_is_never_best() -> None:
    failed = TaskResult(1, score=1.0, error="Traceback: boom")
    for mode in ("latest", "maximize", "minimize"):
        assert best_of([TaskResult(0, score=0.1), failed], mode).task_id == 0
        assert best_of([failed], mode) is None


def test_an_infeasible_result_is_never_best() -> None:
    gen = RandomRatios(log_dir=None, constraints={"max_flops_ratio": 0.5})
    tasks = gen.ask(3)
    gen.tell(TaskResult(tasks[0].task_id, score=0.5, metrics={"flops_ratio": 0.4}))
    gen.tell(TaskResult(tasks[1].task_id, score=0.9, metrics={"flops_ratio": 0.6}))
    gen.tell(TaskResult(tasks[2].task_id, score=1.0))  # not measured: counts as unpruned (ratio 1)
    assert gen.best_result().task_id == 0
    task_id, model, masks, score, config_list = gen.get_best_result()
    assert (task_id, score, config_list) == (0, 0.5, tasks[0].config_list)


def test_best_result_is_none_when_nothing_is_feasible() -> None:
    gen = RandomRatios(log_dir=None, constraints={"max_params_ratio": 0.3})
    tell_all(gen, [0.9], metrics={"params_ratio": 0.31})
    assert gen.best_result() is None and gen.get_best_result() is None


def test_best_of_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="best_result_mode"):
        best_of([TaskResult(0, score=1.0)], "best")


# -- constraints ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "match"), [
    ({"max_flop_ratio": 0.5}, "unknown key 'max_flop_ratio'"),
    ({"max_flops_ratio": 0}, r"constraints\.max_flops_ratio: must be a number in \(0, 1\]"),
    ({"max_params_ratio": 1.5}, r"constraints\.max_params_ratio"),
    ({"max_latency_ratio": True}, r"constraints\.max_latency_ratio"),
    ({"max_flops_ratio": "0.5"}, r"constraints\.max_flops_ratio"),
])
def test_bad_constraints_are_errors_naming_the_key(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Constraints.from_dict(data)
    with pytest.raises(ValueError, match=match):  # the generator validates through the same path
        RandomRatios(log_dir=None, constraints=data)


def test_constraints_bound_the_measured_ratios_inclusively() -> None:
    constraints = Constraints.from_dict({"max_params_ratio": 0.5, "max_flops_ratio": None})
    assert constraints.to_json() == {"max_params_ratio": 0.5}
    assert constraints.satisfied({"params_ratio": 0.5})
    assert not constraints.satisfied({"params_ratio": 0.51})
    assert not constraints.satisfied({})  # unmeasured counts as unpruned
    assert Constraints.from_dict(None).satisfied({})


# -- state -----------------------------------------------------------------------------------------------
def half_done(**kwargs: Any) -> RandomRatios:
    gen = RandomRatios(log_dir=None, seed=3, **kwargs)
    tasks = gen.ask(3)
    gen.tell(TaskResult(tasks[0].task_id, score=0.7, metrics={"flops_ratio": 0.5}, sparsity={"0": 0.25}))
    return gen


def test_state_dict_is_plain_json_with_version_and_generator_class() -> None:
    state = half_done().state_dict()
    again = json.loads(json.dumps(state, allow_nan=False))
    assert again == state
    assert state["version"] == 1 and state["generator"] == "RandomRatios"
    assert [t["status"] for t in state["tasks"]] == ["succeeded", "running", "running"]


@pytest.mark.parametrize(("change", "match"), [
    ({"version": 99}, "version 99"),
    ({"generator": "LinearTaskGenerator"}, "LinearTaskGenerator, not RandomRatios"),
])
def test_load_rejects_another_version_or_generator_class(change: dict[str, Any], match: str) -> None:
    state = {**half_done().state_dict(), **change}
    with pytest.raises(ValueError, match=match):
        RandomRatios(log_dir=None).load_state_dict(state)


def test_after_load_running_tasks_are_pending_again() -> None:
    before = half_done()
    resumed = RandomRatios(log_dir=None)
    resumed.load_state_dict(json.loads(json.dumps(before.state_dict())))
    assert [t.task_id for t in resumed.pending()] == [1, 2]
    assert [t.config_list for t in resumed.pending()] == [before.tasks[1].config_list, before.tasks[2].config_list]
    assert resumed.results[0].to_json() == before.results[0].to_json()
    resumed.tell(TaskResult(2, score=0.1))  # a pending task can be told after the resume
    assert [t.task_id for t in resumed.pending()] == [1]


def test_after_load_the_rng_and_task_ids_continue_identically() -> None:
    uninterrupted = half_done()
    resumed = RandomRatios(log_dir=None, seed=123)  # the stored RNG state wins over the seed
    resumed.load_state_dict(json.loads(json.dumps(uninterrupted.state_dict())))
    expected, got = uninterrupted.ask(4), resumed.ask(4)
    assert [(t.task_id, t.config_list) for t in got] == [(t.task_id, t.config_list) for t in expected]


# -- logs -------------------------------------------------------------------------------------------------
def fake_result(task: Task, score: float, *, with_masks: bool = True) -> TaskResult:
    """A result with a real model and masks, as the scheduler would produce."""
    model = mlp(seed=task.task_id)
    masks = {"0": {"weight": (torch.arange(16 * 8).view(16, 8) % (task.task_id + 2) != 0).float()}}
    return TaskResult(task.task_id, score=score, model=model, masks=masks if with_masks else None)


def test_log_dir_has_one_folder_per_task_and_the_current_best(tmp_path: Path) -> None:
    gen = RandomRatios(log_dir=tmp_path, max_trials=3)
    tasks = gen.ask(3)
    for task, score, best in zip(tasks, [0.5, 0.9, 0.7], [0, 1, 1], strict=True):
        gen.tell(fake_result(task, score))
        assert json.loads((tmp_path / "best_result" / "result.json").read_text())["task_id"] == best
        assert torch.equal(load_masks(tmp_path / "best_result" / "masks.safetensors")["0"]["weight"],
                           gen.results[best].masks["0"]["weight"])
    for task in tasks:
        folder = tmp_path / str(task.task_id)
        assert json.loads((folder / "config_list.json").read_text()) == task.config_list
        assert json.loads((folder / "result.json").read_text())["score"] == gen.results[task.task_id].score
        assert torch.equal(load_masks(folder / "masks.safetensors")["0"]["weight"],
                           gen.results[task.task_id].masks["0"]["weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2", "best_result"]
    assert json.loads((tmp_path / "best_result" / "config_list.json").read_text()) == tasks[1].config_list


def test_model_weights_are_saved_and_kept_only_for_results_that_may_be_needed(tmp_path: Path) -> None:
    gen = RandomRatios(log_dir=tmp_path, max_trials=3)
    for task, score in zip(gen.ask(3), [0.5, 0.9, 0.7], strict=True):
        gen.tell(fake_result(task, score))
    # 0 and 1 were the best when told; 2 never was and no later task starts from it
    assert [(tmp_path / str(i) / "model.safetensors").exists() for i in range(3)] == [True, True, False]
    saved = load_state_dict(tmp_path / "1" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in gen.results[1].model.state_dict().items())
    assert [gen.results[i].model is not None for i in range(3)] == [False, True, False]  # only the best stays


def test_keep_intermediate_result_keeps_every_model(tmp_path: Path) -> None:
    gen = RandomRatios(log_dir=tmp_path, max_trials=3, keep_intermediate_result=True)
    for task, score in zip(gen.ask(3), [0.5, 0.9, 0.7], strict=True):
        gen.tell(fake_result(task, score))
    assert all((tmp_path / str(i) / "model.safetensors").exists() for i in range(3))
    assert all(r.model is not None for r in gen.results.values())


def test_best_result_folder_drops_the_masks_of_an_earlier_best(tmp_path: Path) -> None:
    gen = RandomRatios(log_dir=tmp_path, max_trials=2)
    first, second = gen.ask(2)
    gen.tell(fake_result(first, 0.5))
    gen.tell(fake_result(second, 0.9, with_masks=False))
    assert json.loads((tmp_path / "best_result" / "result.json").read_text())["task_id"] == 1
    assert not (tmp_path / "best_result" / "masks.safetensors").exists()


def test_log_dir_none_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gen = LinearTaskGenerator(2, mlp(), origin_config_list=ratio(0.5), log_dir=None, best_result_mode="latest")
    PruningScheduler("l1", gen, finetuner=add_one_to_last_bias, dummy_input=torch.randn(1, 8)).compress()
    assert len(gen.results) == 2 and all(r.ok for r in gen.results.values())
    assert list(tmp_path.iterdir()) == []


# -- the scheduler ----------------------------------------------------------------------------------------
def run(script: list[Proposal], *, pruner: str = "l1", best_result_mode: str = "latest",
        **scheduler_kwargs: Any) -> Scripted:
    """Run ``script`` on a fresh MLP; ``scheduler_kwargs`` (finetuner, evaluator...) go to the scheduler."""
    gen = Scripted(script, mlp(), log_dir=None, best_result_mode=best_result_mode)
    PruningScheduler(pruner, gen, **scheduler_kwargs).compress()
    return gen


def test_a_task_starts_from_its_parents_masked_model_and_keeps_its_masks() -> None:
    origin_bias = mlp()[4].bias.detach().clone()
    gen = run([
        Proposal(ratio(0.25)),
        Proposal([*ratio(0.5), *ratio(0.25, "2")], parent_id=0),
        Proposal(ratio(0.5, "2"), parent_id=1),  # layer 0 is not in this config list
    ], finetuner=add_one_to_last_bias)
    parent, child, grandchild = (gen.results[i] for i in range(3))
    assert [r.sparsity.get("0") for r in (parent, child, grandchild)] == [0.25, 0.5, 0.5]  # relative to the origin
    assert masked_positions(parent.masks) <= masked_positions(child.masks)
    assert torch.equal(grandchild.masks["0"]["weight"], child.masks["0"]["weight"])  # kept although not configured
    assert masked_positions(child.masks, "2") <= masked_positions(grandchild.masks, "2")
    # every task finetuned the model its parent finetuned: the bias counts the generations
    assert torch.allclose(grandchild.model[4].bias, origin_bias + 3)
    # the result's weights are masked: what the masks remove is zero
    assert not grandchild.model[0].weight[sorted(masked_rows(grandchild.masks))].any()


def test_reset_weight_rewinds_each_task_to_the_origin_weights() -> None:
    origin_bias = mlp()[4].bias.detach().clone()
    gen = run([Proposal(ratio(0.25)), Proposal(ratio(0.5), parent_id=0)],
              finetuner=add_one_to_last_bias, reset_weight=True)
    parent, child = gen.results[0], gen.results[1]
    assert torch.allclose(child.model[4].bias, origin_bias + 1)  # the parent's finetuning is gone
    assert masked_positions(parent.masks) <= masked_positions(child.masks)  # its masks are not


def reverse_row_ranking(model: nn.Module) -> None:
    """A finetune that makes row ``k`` of layer 0 the ``k``-th largest by L1 norm (it was the ``k``-th smallest)."""
    with torch.no_grad():
        norms = model[0].weight.abs().sum(dim=1, keepdim=True)
        model[0].weight.mul_(1.0 / (norms * norms))


def test_reset_weight_prunes_the_trained_weights_then_rewinds() -> None:
    model = mlp()
    with torch.no_grad():  # row k has L1 norm k + 1: the origin ranking is the row order
        model[0].weight.copy_(torch.arange(1.0, 17.0).view(16, 1).expand(16, 8) / 8)
    seen: list[torch.Tensor] = []

    def finetune(m: nn.Module) -> None:
        seen.append(m[0].weight.detach().clone())
        reverse_row_ranking(m)

    gen = Scripted([Proposal(ratio(0.25)), Proposal(ratio(0.5), parent_id=0)], model, log_dir=None,
                   best_result_mode="latest")
    PruningScheduler("l1", gen, finetuner=finetune, reset_weight=True).compress()
    parent, child = gen.results[0], gen.results[1]
    assert masked_rows(parent.masks) == {0, 1, 2, 3}
    # the parent's finetuning made rows 12..15 the smallest of the survivors: magnitude pruning takes those
    assert masked_rows(child.masks) == {0, 1, 2, 3, 12, 13, 14, 15}
    assert torch.equal(seen[1], model[0].weight)  # and the ticket trains from the origin weights


def test_finetuner_and_evaluator_are_called_once_per_task() -> None:
    calls: list[str] = []

    def evaluator(model: nn.Module) -> float:
        calls.append("evaluate")
        return float(len(calls))

    gen = run([Proposal(ratio(0.25)), Proposal(ratio(0.5), parent_id=0)],
              finetuner=lambda m: calls.append("finetune"), evaluator=evaluator, best_result_mode="maximize")
    assert calls == ["finetune", "evaluate"] * 2
    assert [gen.results[i].score for i in range(2)] == [2.0, 4.0]
    assert gen.results[1].metrics["score"] == 4.0 and gen.best_result().task_id == 1


def test_a_failing_task_becomes_a_failed_result_and_the_search_goes_on() -> None:
    calls = []

    def finetuner(model: nn.Module) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("finetune diverged")

    gen = LinearTaskGenerator(3, mlp(), origin_config_list=ratio(0.75), log_dir=None, best_result_mode="latest")
    PruningScheduler("l1", gen, finetuner=finetuner).compress()
    failed = gen.results[1]
    assert not failed.ok and "Traceback" in failed.error and "RuntimeError: finetune diverged" in failed.error
    assert gen.is_done() and len(calls) == 3
    assert gen.tasks[2].parent_id == 0 and gen.results[2].sparsity["0"] == 0.75
    assert gen.best_result().task_id == 2


def test_metrics_include_cost_ratios_with_a_dummy_input() -> None:
    gen = run([Proposal(ratio(0.5))], dummy_input=torch.randn(1, 8))
    result = gen.results[0]
    # layer 0 keeps 8 of 16 outputs: 8*8+8 of its 144 parameters, and layer 2 keeps 8 of its 16 inputs
    origin_params = 8 * 16 + 16 + 16 * 16 + 16 + 16 * 2 + 2
    params = 8 * 8 + 8 + 8 * 16 + 16 + 16 * 2 + 2
    assert result.metrics["params"] == params
    assert result.metrics["params_ratio"] == pytest.approx(params / origin_params)
    assert 0 < result.metrics["flops_ratio"] < 1 and result.metrics["seconds"] > 0
    assert result.compact_model[0].out_features == 8


def test_metrics_without_a_dummy_input_have_no_costs() -> None:
    result = run([Proposal(ratio(0.5))]).results[0]
    assert "flops_ratio" not in result.metrics and "params_ratio" not in result.metrics
    assert result.compact_model is None and result.model[0].out_features == 16


def test_constraints_need_a_dummy_input() -> None:
    gen = Scripted([], mlp(), log_dir=None, constraints={"max_flops_ratio": 0.5})
    with pytest.raises(ValueError, match="dummy_input"):
        PruningScheduler("l1", gen)


def test_the_scheduler_needs_the_origin_model() -> None:
    with pytest.raises(ValueError, match="origin_model"):
        PruningScheduler("l1", RandomRatios(log_dir=None))


class SpyLevelPruner(LevelPruner):
    built: list[dict[str, Any]] = []

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], *, tag: str, **kwargs: Any) -> None:
        super().__init__(model, config_list, **kwargs)
        SpyLevelPruner.built.append({"tag": tag})


def test_a_task_may_switch_the_pruner_for_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PRUNERS, "spy_level", SpyLevelPruner)
    monkeypatch.setattr(SpyLevelPruner, "built", [])
    gen = run([Proposal(ratio(0.5), params={"pruner": "spy_level"}), Proposal(ratio(0.5))],
              task_pruners={"spy_level": {"tag": "from task_pruners"}})
    assert SpyLevelPruner.built == [{"tag": "from task_pruners"}]  # once, for task 0, with its own kwargs
    level, l1 = gen.results[0].masks["0"]["weight"], gen.results[1].masks["0"]["weight"]
    assert float(level.mean()) == 0.5 and float(l1.mean()) == 0.5
    rows_level, rows_l1 = level.sum(dim=1), l1.sum(dim=1)
    assert ((rows_level > 0) & (rows_level < 8)).any()  # element-wise: some rows partly masked
    assert set(rows_l1.tolist()) == {0.0, 8.0}  # channel-wise: whole rows


def test_a_resumed_search_loads_the_parent_model_from_the_log_dir(tmp_path: Path) -> None:
    origin_bias = mlp()[4].bias.detach().clone()

    def generator(log_dir: Path | None) -> LinearTaskGenerator:
        return LinearTaskGenerator(2, mlp(), origin_config_list=ratio(0.5), log_dir=log_dir, best_result_mode="latest")

    first = generator(tmp_path)
    scheduler = PruningScheduler("l1", first, finetuner=add_one_to_last_bias)
    (task,) = first.ask(1)
    scheduler.record_task_result(scheduler.pruning_one_step(task))
    state = json.loads(json.dumps(first.state_dict()))

    resumed = generator(tmp_path)  # a new process: no model in memory
    resumed.load_state_dict(state)
    assert resumed.results[0].model is None
    PruningScheduler("l1", resumed, finetuner=add_one_to_last_bias).compress()
    child = resumed.results[1]
    assert child.ok and resumed.tasks[1].parent_id == 0
    assert torch.allclose(child.model[4].bias, origin_bias + 2)  # the parent's finetuning was loaded
    assert masked_positions(first.results[0].masks) <= masked_positions(child.masks)

    lost = generator(None)  # nothing on disk either: the task fails and says why
    lost.load_state_dict(state)
    PruningScheduler("l1", lost).compress()
    assert "neither in memory nor in the log directory" in lost.results[1].error


def test_after_a_resume_the_best_result_comes_from_the_log_dir(tmp_path: Path) -> None:
    scores = iter([0.9, 0.1, 0.2])  # the best is the task before the crash

    def search() -> tuple[LinearTaskGenerator, PruningScheduler]:
        gen = LinearTaskGenerator(3, mlp(), origin_config_list=ratio(0.5), log_dir=tmp_path)
        return gen, PruningScheduler("l1", gen, evaluator=lambda m: next(scores))

    first, scheduler = search()
    (task,) = first.ask(1)
    scheduler.record_task_result(scheduler.pruning_one_step(task))
    resumed, scheduler = search()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    scheduler.compress()
    task_id, model, masks, score, _ = resumed.get_best_result()
    assert (task_id, score) == (0, 0.9)
    assert torch.equal(masks["0"]["weight"], first.results[0].masks["0"]["weight"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 first.results[0].model.state_dict().values(), strict=True))


def test_compress_reruns_the_tasks_pending_after_a_resume() -> None:
    gen = LinearTaskGenerator(2, mlp(), origin_config_list=ratio(0.5), log_dir=None, best_result_mode="latest")
    gen.ask(1)  # handed out, then the process died
    resumed = LinearTaskGenerator(2, mlp(), origin_config_list=ratio(0.5), log_dir=None, best_result_mode="latest")
    resumed.load_state_dict(json.loads(json.dumps(gen.state_dict())))
    PruningScheduler("l1", resumed).compress()
    assert [(r.ok, r.sparsity["0"]) for _, r in sorted(resumed.results.items())] == [(True, 0.25), (True, 0.5)]
