"""The refine phase: the last ``refine`` trials of a search's budget prune its best allocation gradually.

Generator tests drive a small generator with hand-made results (every decision checked exactly);
the scheduler test watches a refine step cut during its finetune (masked channels show as all-zero
activations); the worker tests run real trials and a whole search through ``run_search``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from search.algorithms import LinearTaskGenerator, SimulatedAnnealingTaskGenerator
from search.pruning.io import load_masks, load_state_dict
from search.scheduling import Proposal, PruningScheduler, Task, TaskGenerator, TaskResult
from search.scheduling.generator import refine_schedule
from search.zoo import digits_cnn, get_dataset, get_dummy_input
from workers.cli import format_table
from workers.executors import LocalExecutor
from workers.local import STATE_FILE, run_search
from workers.spec import DataSpec, ExperimentSpec, ModelSpec, SpecError, TrialSettings, TrialSpec
from workers.trial import MASKS_FILE, WEIGHTS_FILE, _gradual_schedule, run_trial

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


class Ratios(TaskGenerator):
    """Proposes the ratios of ``script`` in order; records what it observes."""

    def __init__(self, script: list[float], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script = script
        self.position = 0
        self.observed: list[int] = []

    def _propose(self, n: int) -> list[Proposal]:
        out = [Proposal([{"op_names": ["0"], "sparse_ratio": r}, {"op_names": ["2"], "sparse_ratio": r / 2}])
               for r in self.script[self.position:self.position + n]]
        self.position += len(out)
        return out

    def _finished(self) -> bool:
        return self.position >= len(self.script)

    def _observe(self, result: TaskResult) -> None:
        self.observed.append(result.task_id)

    def _algo_state(self) -> dict[str, Any]:
        return {"position": self.position, "observed": self.observed}

    def _load_algo_state(self, state: dict[str, Any]) -> None:
        self.position, self.observed = int(state["position"]), list(state["observed"])


def ratios(script: list[float], **kwargs: Any) -> Ratios:
    kwargs.setdefault("max_trials", len(script) + kwargs.get("refine", 0))
    return Ratios(script, None, log_dir=None, **kwargs)


def ok(task: Task, score: float, flops_ratio: float = 0.5) -> TaskResult:
    return TaskResult(task.task_id, score=score, metrics={"flops_ratio": flops_ratio})


def run_search_phase(gen: Ratios, scores: list[float], **metrics: float) -> None:
    tasks = gen.ask(len(scores))
    assert len(tasks) == len(scores)
    for task, score in zip(tasks, scores, strict=True):
        gen.tell(ok(task, score, **metrics))


def test_the_last_trials_of_the_budget_refine_the_best_allocation_in_a_chain() -> None:
    gen = ratios([0.3, 0.6, 0.9], refine=3)
    assert (gen.max_trials, gen.search_trials) == (6, 3)
    tasks = gen.ask(5)
    assert len(tasks) == 3  # the search's share only
    assert gen.ask(1) == []  # nothing to refine before every search result is in
    for task, score in zip(tasks, [0.2, 0.7, 0.5], strict=True):
        gen.tell(ok(task, score))
    steps = []
    for _ in range(3):
        (step,) = gen.ask(4)  # one step at a time: each goes on from the one before
        assert gen.ask(1) == []
        steps.append(step)
        gen.tell(ok(step, 0.1))
    assert [s.parent_id for s in steps] == [None, steps[0].task_id, steps[1].task_id]
    for k, step in enumerate(steps, 1):
        assert step.config_list == tasks[1].config_list  # the best allocation; the schedule sets the share
        assert step.params == {"refine": k, "steps": 3, "base": 1, "reset_weight": False}
    assert gen.is_done() and len(gen.tasks) == 6
    assert gen.observed == [0, 1, 2]  # the algorithm never sees a refine step


def test_the_refine_schedule_is_one_schedule_cut_into_segments() -> None:
    parts = [refine_schedule(k, 4, 10) for k in (1, 2, 3, 4)]
    assert {(p.steps, p.updates, p.end) for p in parts} == {(40, 8, 0.75)}
    assert [(p.first, p.span) for p in parts] == [(0, 10), (10, 10), (20, 10), (30, 10)]
    # the segments' last updates cover the whole schedule once, in order, the full ratios by 3/4 of it
    assert [p.last_update() for p in parts] == [3, 6, 8, 8]
    assert parts[0].fraction(parts[0].last_update()) < parts[1].fraction(parts[1].last_update()) < 1.0
    assert refine_schedule(1, 8, 5).updates == 16


def test_the_refined_model_is_best_only_if_it_scores_better_and_earlier_steps_never_are() -> None:
    for final_score, best in ((0.9, 5), (0.6, 1)):
        gen = ratios([0.3, 0.6, 0.9], refine=3)
        run_search_phase(gen, [0.2, 0.7, 0.5])
        for score in (5.0, 5.0, final_score):  # the intermediate steps score high but ask for less
            (step,) = gen.ask(1)
            gen.tell(ok(step, score))
        assert gen.best_result().task_id == best


def test_a_failed_refine_step_ends_the_phase_and_the_search_best_stands() -> None:
    gen = ratios([0.3, 0.6], refine=3)
    run_search_phase(gen, [0.2, 0.7])
    (step,) = gen.ask(1)
    gen.tell(TaskResult(step.task_id, error="Traceback: boom"))
    assert gen.ask(1) == [] and gen.is_done()
    assert gen.best_result().task_id == 1


def test_without_a_feasible_result_there_is_nothing_to_refine() -> None:
    gen = ratios([0.3, 0.6], refine=2, constraints={"max_flops_ratio": 0.4})
    run_search_phase(gen, [0.2, 0.7], flops_ratio=0.45)
    assert gen.ask(1) == [] and gen.is_done()


def test_refine_starts_when_the_algorithm_stops_by_its_own_rule() -> None:
    gen = ratios([0.3, 0.6], refine=2, max_trials=10)  # the script ends before the budget does
    run_search_phase(gen, [0.2, 0.7])
    (step,) = gen.ask(3)
    assert step.params["refine"] == 1 and step.params["base"] == 1


def test_a_search_resumed_mid_refine_goes_on_with_the_same_steps() -> None:
    straight = ratios([0.3, 0.6, 0.9], refine=3)
    run_search_phase(straight, [0.2, 0.7, 0.5])
    (first,) = straight.ask(1)
    state = json.loads(json.dumps(straight.state_dict()))  # plain JSON, as stored
    straight.tell(ok(first, 0.1))
    resumed = ratios([0.3, 0.6, 0.9], refine=3)
    resumed.load_state_dict(state)
    (again,) = resumed.pending()  # the step that was running runs again
    assert (again.task_id, again.config_list, again.params) == (first.task_id, first.config_list, first.params)
    resumed.tell(ok(again, 0.1))
    for gen in (straight, resumed):
        while not gen.is_done():
            (step,) = gen.ask(1)
            gen.tell(ok(step, 0.9))
    assert [t.to_json() for t in resumed.tasks.values()] == [t.to_json() for t in straight.tasks.values()]
    assert resumed.best_result().task_id == straight.best_result().task_id == 5


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"refine": -1}, "refine must be an int >= 0"),
    ({"refine": True}, "refine must be an int >= 0"),
    ({"refine": 1.5}, "refine must be an int >= 0"),
    ({"refine": 4, "max_trials": 4}, "refine: 4 trials leave none of max_trials=4"),
])
def test_bad_refine_values_are_errors_naming_it(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Ratios([0.5], None, log_dir=None, **kwargs)


@pytest.mark.parametrize(("params", "match"), [
    ({"max_trials": 4, "refine": 4}, "refine: 4 trials leave none of max_trials=4 for the search"),
    ({"max_trials": 4, "refine": -1}, "refine: must be an int >= 0"),
])
def test_a_spec_with_a_bad_refine_fails_naming_the_field(params: dict[str, Any], match: str) -> None:
    data = yaml.safe_load((ROOT / "examples" / "digits-agp.yaml").read_text())
    data["algorithm"] = {"name": "simulated_annealing", **params}
    with pytest.raises(SpecError) as err:
        ExperimentSpec.from_dict(data)
    assert err.value.path == "algorithm.refine" and match in str(err.value)


def test_an_annealing_search_leaves_the_refine_trials_of_its_budget() -> None:
    model = digits_cnn().eval()
    gen = SimulatedAnnealingTaskGenerator(model, None, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], None,
                                          neighbours_per_temperature=3, max_trials=7, refine=2, stop_temperature=1e-9)
    tasks = gen.ask(10)
    assert len(tasks) == 3
    for i, task in enumerate(tasks):
        gen.tell(ok(task, float(i)))
    tasks = gen.ask(10)
    assert len(tasks) == 2  # 5 for the search
    for task in tasks:
        gen.tell(ok(task, 0.0))
    assert gen.stop_reason == "trial budget max_trials=7 used up (the last 2 kept for the refine phase)"
    (step,) = gen.ask(10)
    assert step.params["refine"] == 1 and step.params["base"] == 2 and step.parent_id is None


# -- in-process: the scheduler ---------------------------------------------------------------------------------
def test_refine_steps_cut_during_their_finetunes_going_on_where_the_parent_stopped() -> None:
    torch.manual_seed(0)
    model = digits_cnn().eval()
    seen: list[list[int]] = []

    def finetuner(m: nn.Module) -> None:
        seen.append([])
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        m.train()
        for _ in range(12):
            opt.zero_grad()
            out = m(torch.randn(8, 1, 8, 8))
            # conv2's masked output channels show as all-zero activations
            seen[-1].append(int((m.conv2(m.bn1(m.conv1(torch.randn(2, 1, 8, 8)))).abs().sum((0, 2, 3)) == 0).sum()))
            out.sum().backward()
            opt.step()

    gen = LinearTaskGenerator(1, model, origin_config_list=[{"op_types": ["Conv2d"], "sparse_ratio": 0.75}],
                              log_dir=None, best_result_mode="latest", refine=3)
    scheduler = PruningScheduler("l1", gen, finetuner=finetuner, dummy_input=get_dummy_input("digits_cnn"), speedup=True)
    scheduler.compress()
    assert sorted(gen.results) == [0, 1, 2, 3] and all(r.ok for r in gen.results.values())
    # counted, for the refine steps' schedule (a refine step counts its own steps, not the phase's)
    assert [gen.results[i].metrics["finetune_steps"] for i in range(4)] == [12] * 4
    search, *refine = seen
    assert search == [48] * 12  # one shot: every cut before training
    chain = [n for step in refine for n in step]
    assert chain == sorted(chain) and chain[0] < 48 and len(set(chain)) >= 6  # many small cuts, never undone
    assert 0 < refine[0][0] < refine[0][-1] == refine[1][0] < refine[1][-1]  # step 2 goes on from step 1's masks
    assert refine[2] == [48] * 12  # the full ratios after 3/4 of the phase: the last step trains at them
    assert gen.tasks[1].parent_id is None and [gen.tasks[i].parent_id for i in (2, 3)] == [1, 2]
    assert gen.results[3].sparsity == pytest.approx(gen.results[0].sparsity)  # the same allocation in the end
    _, compact, _, _, _ = scheduler.get_best_result()
    assert (compact.conv1.out_channels, compact.conv2.out_channels, compact.conv3.out_channels) == (8, 16, 16)


def segment_trainer(steps: int) -> Any:
    """A finetune of ``steps`` SGD steps on data drawn from the segment's own seed (given by the caller)."""

    def train(m: nn.Module, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        m.train()
        for _ in range(steps):
            x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        m.eval()

    return train


@pytest.mark.parametrize("pruner", ["l1", "group_l1"])
def test_a_refine_chain_cuts_exactly_as_one_finetune_of_the_whole_phase(pruner: str) -> None:
    refine, steps = 4, 6  # the schedule (18 of 24 steps) still cuts in the third step
    train = segment_trainer(steps)
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.75}]
    dummy = get_dummy_input("digits_cnn")
    torch.manual_seed(0)
    origin = digits_cnn().eval()

    calls = iter(range(100))
    chain = LinearTaskGenerator(1, copy.deepcopy(origin), origin_config_list=config, log_dir=None,
                                best_result_mode="latest", refine=refine, keep_intermediate_result=True)
    PruningScheduler(pruner, chain, finetuner=lambda m: train(m, next(calls)), dummy_input=dummy).compress()
    assert [t.params.get("refine") for t in chain.tasks.values()] == [None, 1, 2, 3, 4]

    def whole_phase(m: nn.Module) -> None:  # the same training, in one finetune
        for seed in range(1, refine + 1):
            train(m, seed)

    one = LinearTaskGenerator(1, copy.deepcopy(origin), origin_config_list=config, log_dir=None, best_result_mode="latest")
    schedule = refine_schedule(1, 1, refine * steps)
    PruningScheduler(pruner, one, finetuner=whole_phase, dummy_input=dummy,
                     gradual={"steps": schedule.steps, "updates": max(8, 2 * refine), "end": schedule.end}).compress()

    last, single = chain.results[4], one.results[0]
    assert last.masks.keys() == single.masks.keys()
    for name in single.masks:
        for target, mask in single.masks[name].items():
            assert torch.equal(last.masks[name][target], mask), (name, target)
    for (key, a), (_, b) in zip(last.model.state_dict().items(), single.model.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), key
    # a step before the last hands on its weights as they are: masked rows keep their values
    middle = chain.results[2]
    weight, rows = middle.model.conv2.weight, middle.masks["conv2"]["weight"]
    assert (rows == 0).any() and weight[(rows == 0)].abs().sum() > 0
    assert last.model.conv2.weight[last.masks["conv2"]["weight"] == 0].abs().sum() == 0  # the last: multiplied in


# -- the service path: real trials and a whole search -----------------------------------------------------------
def digits_spec(**algorithm: Any) -> ExperimentSpec:
    data = yaml.safe_load((ROOT / "examples" / "digits-agp.yaml").read_text())
    data["trial"].update(pretrain_epochs=1, finetune_epochs=1)
    data["algorithm"] = {"name": "simulated_annealing", **algorithm}
    data["pruner"]["config_list"] = [{"op_types": ["Conv2d"], "sparse_ratio": 0.6}]
    return ExperimentSpec.from_dict(data)


def test_a_search_through_run_search_ends_with_its_refine_steps(tmp_path: Path) -> None:
    spec = digits_spec(max_trials=5, refine=2, neighbours_per_temperature=3, start_temperature=0.1,
                       stop_temperature=0.001)
    outcome = run_search(spec, LocalExecutor(), tmp_path / "run", export_onnx=False)
    trials = {t.task_id: t for t in outcome.trials}
    assert sorted(trials) == [0, 1, 2, 3, 4] and all(t.error is None for t in trials.values())
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    tasks = {t["task_id"]: t for t in state["generator"]["tasks"]}
    assert [tasks[i]["params"].get("refine") for i in range(5)] == [None, None, None, 1, 2]
    assert tasks[3]["parent_id"] is None and tasks[4]["parent_id"] == 3
    assert trials[4].metrics["flops_ratio"] <= 0.5 + 1e-9  # the last step meets the constraint
    table = format_table(outcome, "accuracy").splitlines()
    assert [line.split()[-1] for line in table[-2:]] == ["1/2", "2/2"] and "refine 1/2" in table[-2]
    base = max((trials[i] for i in range(3) if trials[i].metrics["flops_ratio"] <= 0.5 + 1e-9),
               key=lambda t: (t.score, -t.task_id))
    assert trials[4].sparsity == pytest.approx(trials[base.task_id].sparsity, abs=0.02)
    assert trials[3].metrics["flops_ratio"] > trials[4].metrics["flops_ratio"]  # step 1 ends at less
    # step 1 hands its weights on as they are (masked rows keep values); the last step's are multiplied in
    for task_id, handed_on in ((3, True), (4, False)):
        weights = load_state_dict(Path(trials[task_id].artifact_dir) / WEIGHTS_FILE)
        rows = load_masks(Path(trials[task_id].artifact_dir) / MASKS_FILE)["conv2"]["weight"] == 0
        assert rows.any() and bool(weights["conv2.weight"][rows].abs().sum() > 0) == handed_on


def refine_trial_spec(tmp_path: Path, finetune_epochs: int = 1, reset_weight: bool = False, **params: Any) -> TrialSpec:
    task = Task(7, [{"op_names": ["conv2"], "sparse_ratio": 0.5}], params=params)
    return TrialSpec(ModelSpec("search.zoo:digits_cnn"), DataSpec("digits"), "l1", {}, task.to_json(),
                     artifact_dir=str(tmp_path / "7"), reset_weight=reset_weight,
                     settings=TrialSettings(finetune_epochs=finetune_epochs, batch_size=64))


def test_a_refine_trial_runs_its_segment_of_the_schedule_in_units_of_its_finetune(tmp_path: Path) -> None:
    data = get_dataset("digits")
    steps = -(-len(data.train) // 64)
    schedule = _gradual_schedule(refine_trial_spec(tmp_path, 2, refine=2, steps=3), data)
    assert schedule == refine_schedule(2, 3, 2 * steps)
    step = {"refine": 1, "steps": 2}
    for spec in (refine_trial_spec(tmp_path, 1),  # not a refine step
                 refine_trial_spec(tmp_path, 0, **step),  # nothing to train during
                 refine_trial_spec(tmp_path, 1, reset_weight=True, **step),  # ranks, then rewinds
                 refine_trial_spec(tmp_path, 1, pruner="admm", **step)):  # a task pruner's own schedule
        assert _gradual_schedule(spec, data) is None


def test_a_refine_trial_ends_with_the_masks_a_one_shot_trial_has(tmp_path: Path) -> None:
    gradual = run_trial(refine_trial_spec(tmp_path / "g", 1, refine=1, steps=1))
    one_shot = run_trial(refine_trial_spec(tmp_path / "o", 1))
    assert gradual.ok and one_shot.ok
    assert gradual.sparsity == pytest.approx(one_shot.sparsity) and gradual.sparsity["conv2"] == pytest.approx(0.5)
    assert gradual.metrics["flops_ratio"] == pytest.approx(one_shot.metrics["flops_ratio"])
    log = (Path(gradual.artifact_dir) / "trial.log").read_text()
    steps = -(-len(get_dataset("digits").train) // 64)
    assert f"pruning during the finetune, steps 0-{steps} of a schedule of {steps} steps (8 mask updates" in log
    assert "pruning during the finetune" not in (Path(one_shot.artifact_dir) / "trial.log").read_text()


class Strict(Ratios):
    """Feasible only with a parameter of its own tasks (as AutoCompress asks for its last iteration)."""

    def _propose(self, n: int) -> list[Proposal]:
        out = super()._propose(n)
        for p in out:
            p.params["final"] = True
        return out

    def feasible(self, result: TaskResult) -> bool:
        return super().feasible(result) and bool(self.tasks[result.task_id].params.get("final"))


def test_the_last_refine_step_may_be_best_whatever_else_the_algorithm_asks_of_its_own_trials() -> None:
    gen = Strict([0.3, 0.6], None, log_dir=None, max_trials=4, refine=2)
    run_search_phase(gen, [0.2, 0.7])
    for score in (0.1, 0.9):
        (step,) = gen.ask(1)
        gen.tell(ok(step, score))
    assert gen.best_result().task_id == 3
