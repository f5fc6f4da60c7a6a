"""AMC (DDPG) and the Optuna search: budgets, parallel asks, any-order tells, crash-resume, Pareto fronts.

The digits CNN is trained once per module; trials prune with L1 and evaluate without finetuning.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable

import pytest
import torch
from torch import nn

from search.algorithms import AMCPruner, AMCTaskGenerator, OptunaPruner, OptunaTaskGenerator
from search.algorithms._budget import LayerCostModel
from search.scheduling import PruningScheduler, Task, TaskGenerator, TaskResult
from search.zoo import evaluate_accuracy, get_dummy_input, get_model, train_epochs

pytestmark = pytest.mark.usefixtures("single_thread")

BUDGET = 0.5  # keep at most half the FLOPs
AMC_CONFIG = [{"op_types": ["Conv2d"], "sparse_ratio": 1 - BUDGET, "max_sparse_ratio": 0.8}]
SEARCH_CONFIG = [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.8}]
DUMMY = get_dummy_input("digits_cnn")


@pytest.fixture(scope="module")
def trained(digits: object) -> nn.Module:
    torch.manual_seed(0)
    model = get_model("digits_cnn")
    train_epochs(model, digits, epochs=2)
    return model


@pytest.fixture(scope="module")
def evaluator(digits: object) -> Callable[[nn.Module], float]:
    return lambda model: evaluate_accuracy(model, digits)


def amc(model: nn.Module, **kwargs: object) -> AMCTaskGenerator:
    kwargs.setdefault("ddpg_params", {"warmup": 3, "batch_size": 16})
    return AMCTaskGenerator(model, AMC_CONFIG, DUMMY, log_dir=None, **kwargs)  # type: ignore[arg-type]


def tpe(model: nn.Module, **kwargs: object) -> OptunaTaskGenerator:
    kwargs.setdefault("constraints", {"max_flops_ratio": BUDGET})
    kwargs.setdefault("n_startup_trials", 2)
    return OptunaTaskGenerator(model, SEARCH_CONFIG, DUMMY, log_dir=None, **kwargs)  # type: ignore[arg-type]


def runner(gen: TaskGenerator, evaluator: Callable[[nn.Module], float]) -> Callable[[Task], TaskResult]:
    scheduler = PruningScheduler("l1", gen, dummy_input=DUMMY, evaluator=evaluator)
    return scheduler.pruning_one_step


def copy_result(result: TaskResult) -> TaskResult:
    return TaskResult.from_json(json.loads(json.dumps(result.to_json())))


def same_next(gen: TaskGenerator, resumed: TaskGenerator, n: int) -> None:
    """Both generators hand out the same next ``n`` tasks."""
    a, b = gen.ask(n), resumed.ask(n)
    assert len(a) == n
    assert [(t.task_id, t.config_list, t.params) for t in a] == [(t.task_id, t.config_list, t.params) for t in b]


def first_feasible(gen: TaskGenerator) -> TaskResult:
    return next(gen.results[t] for t in sorted(gen.results) if gen.feasible(gen.results[t]))


# -- AMC ------------------------------------------------------------------------------------------
def test_amc_pruner_meets_the_flops_budget_with_the_best_episode(trained: nn.Module, evaluator: Callable) -> None:
    pruner = AMCPruner(trained, AMC_CONFIG, DUMMY, evaluator, max_episodes=8,
                       ddpg_params={"warmup": 4, "batch_size": 16}, log_dir=None)
    pruner.compress()
    gen = pruner.task_generator
    task_id, compact, _, score, config_list = pruner.get_best_result()
    best = gen.results[task_id]
    assert len(gen.results) == 8 and gen.learn_steps > 0
    assert best.metrics["flops_ratio"] <= BUDGET + 1e-9
    assert compact is not None and [sub["op_names"] for sub in config_list] == [["conv1"], ["conv2"], ["conv3"]]
    assert score >= first_feasible(gen).score
    for tid, result in gen.results.items():  # every episode meets the budget, and as predicted
        assert result.metrics["flops_ratio"] == pytest.approx(gen.tasks[tid].params["predicted"]["flops_ratio"])
        assert result.metrics["flops_ratio"] <= BUDGET + 1e-9


def test_amc_params_target_clips_actions_to_the_params_budget(trained: nn.Module, evaluator: Callable) -> None:
    gen = amc(trained, target="params", max_episodes=3)
    run = runner(gen, evaluator)
    for task in gen.ask(3):
        result = run(task)
        assert result.metrics["params_ratio"] == pytest.approx(task.params["predicted"]["params_ratio"])
        assert result.metrics["params_ratio"] <= BUDGET + 1e-9


def test_amc_hands_out_the_whole_warmup_at_once_then_waits_for_it(trained: nn.Module, evaluator: Callable) -> None:
    gen = amc(trained, max_episodes=6)
    warmup = gen.ask(5)
    assert [t.params["warmup"] for t in warmup] == [True] * 3
    assert gen.ask(2) == []  # learning needs every warm-up result
    run = runner(gen, evaluator)
    for task in warmup:
        gen.tell(run(task))
    learning = gen.ask(2)
    assert len(learning) == 1 and not learning[0].params["warmup"]  # parallel_episodes=1
    assert gen.learn_steps == 3  # one update per layer after the warm-up's last episode


def test_amc_learns_the_same_from_results_told_in_reverse(trained: nn.Module, evaluator: Callable) -> None:
    in_order, reversed_ = amc(trained, max_episodes=6), amc(trained, max_episodes=6)
    run = runner(in_order, evaluator)
    tasks = in_order.ask(3)
    assert [t.config_list for t in reversed_.ask(3)] == [t.config_list for t in tasks]
    results = [run(t) for t in tasks]
    for result in results:
        in_order.tell(result)
    for result in reversed(results):
        reversed_.tell(copy_result(result))
    assert in_order.ask(1)[0].config_list == reversed_.ask(1)[0].config_list
    assert in_order.agent.state_dict() == reversed_.agent.state_dict()


def test_amc_resumes_from_json_state_with_the_same_proposals(trained: nn.Module, evaluator: Callable) -> None:
    gen = amc(trained, max_episodes=8, parallel_episodes=2)
    run = runner(gen, evaluator)
    for task in gen.ask(3):
        gen.tell(run(task))
    first, running = gen.ask(2)  # learning episodes; one finishes before the "crash"
    gen.tell(run(first))
    state = json.loads(json.dumps(gen.state_dict()))

    resumed = amc(trained, max_episodes=8, parallel_episodes=2, seed=0)
    resumed.load_state_dict(state)
    assert [t.task_id for t in resumed.pending()] == [running.task_id]
    same_next(gen, resumed, 1)  # while one episode still runs
    for task in list(gen.pending()):
        result = run(task)
        gen.tell(result)
        resumed.tell(copy_result(result))
    same_next(gen, resumed, 2)
    assert gen.agent.state_dict() == resumed.agent.state_dict()


def test_amc_agent_learns_to_spare_the_layer_that_matters(trained: nn.Module) -> None:
    # A synthetic score (no trials): pruning conv1 costs most, conv3 least.
    gen = amc(trained, max_episodes=60, ddpg_params={"warmup": 20}, seed=0)
    scores = []
    while not gen.is_done():
        for task in gen.ask(20):
            r = task.params["ratios"]
            scores.append(1.0 - 1.5 * r["conv1"] - 0.6 * r["conv2"] - 0.1 * r["conv3"])
            gen.tell(TaskResult(task.task_id, score=scores[-1], metrics=dict(task.params["predicted"])))
    assert statistics.mean(scores[-10:]) > statistics.mean(scores[:20]) + 0.3  # warm-up: random actions


def test_amc_validates_its_inputs(trained: nn.Module) -> None:
    with pytest.raises(ValueError, match="no budget"):
        AMCTaskGenerator(trained, SEARCH_CONFIG, DUMMY, log_dir=None)
    with pytest.raises(ValueError, match="unknown key 'lr'"):
        amc(trained, ddpg_params={"lr": 0.1})
    with pytest.raises(ValueError, match="different sparse ratios"):
        AMCTaskGenerator(trained, [{"op_names": ["conv1"], "sparse_ratio": 0.3},
                                   {"op_names": ["conv2"], "sparse_ratio": 0.5}], DUMMY, log_dir=None)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        AMCTaskGenerator(trained, [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}], DUMMY, log_dir=None)


# -- Optuna ---------------------------------------------------------------------------------------
def test_optuna_pruner_meets_the_flops_budget_with_the_best_trial(trained: nn.Module, evaluator: Callable) -> None:
    pruner = OptunaPruner(trained, SEARCH_CONFIG, DUMMY, evaluator, max_trials=8, n_startup_trials=4,
                          constraints={"max_flops_ratio": BUDGET}, log_dir=None)
    pruner.compress()
    gen = pruner.task_generator
    task_id, compact, _, score, _ = pruner.get_best_result()
    assert len(gen.results) == 8 and compact is not None
    assert gen.results[task_id].metrics["flops_ratio"] <= BUDGET + 1e-9
    assert score >= first_feasible(gen).score
    assert all(r.metrics["flops_ratio"] <= BUDGET + 1e-9 for r in gen.results.values())  # repaired when over


def test_optuna_asks_several_distinct_trials_at_once(trained: nn.Module) -> None:
    gen = tpe(trained, max_trials=10)
    tasks = gen.ask(4)
    assert [t.params["trial_number"] for t in tasks] == [0, 1, 2, 3]
    assert len({json.dumps(t.config_list) for t in tasks}) == 4
    assert len(gen.ask(10)) == 6  # the trial budget


def test_optuna_results_told_in_reverse_order_give_the_same_next_trials(trained: nn.Module, evaluator: Callable) -> None:
    in_order, reversed_ = tpe(trained, max_trials=8), tpe(trained, max_trials=8)
    run = runner(in_order, evaluator)
    tasks = in_order.ask(4)
    reversed_.ask(4)
    results = [run(t) for t in tasks]
    for result in results:
        in_order.tell(result)
    for result in reversed(results):
        reversed_.tell(copy_result(result))
    assert [t.config_list for t in in_order.ask(2)] == [t.config_list for t in reversed_.ask(2)]


def test_optuna_resumes_from_json_state_with_the_same_proposals(trained: nn.Module, evaluator: Callable) -> None:
    gen = tpe(trained, max_trials=10, multi_objective=True)
    run = runner(gen, evaluator)
    tasks = gen.ask(4)
    for task in tasks[:3]:
        gen.tell(run(task))  # tasks[3] is still running at the "crash"
    state = json.loads(json.dumps(gen.state_dict()))

    resumed = tpe(trained, max_trials=10, multi_objective=True)
    resumed.load_state_dict(state)
    assert [t.task_id for t in resumed.pending()] == [tasks[3].task_id]
    same_next(gen, resumed, 1)  # the rebuilt study holds the running trial, as the original does
    for task in list(gen.pending()):
        result = run(task)
        gen.tell(result)
        resumed.tell(copy_result(result))
    same_next(gen, resumed, 3)


def test_optuna_pareto_front_is_feasible_and_non_dominated(trained: nn.Module, evaluator: Callable) -> None:
    pruner = OptunaPruner(trained, SEARCH_CONFIG, DUMMY, evaluator, max_trials=10, n_startup_trials=4,
                          multi_objective=True, constraints={"max_flops_ratio": 0.7}, log_dir=None)
    pruner.compress()
    gen = pruner.task_generator
    front = pruner.pareto_front()
    feasible = [r for r in gen.results.values() if gen.feasible(r)]
    assert front and all(gen.feasible(r) for r in front)

    def dominates(a: TaskResult, b: TaskResult) -> bool:
        sa, fa, sb, fb = a.score, a.metrics["flops_ratio"], b.score, b.metrics["flops_ratio"]
        return sa >= sb and fa <= fb and (sa > sb or fa < fb)

    assert not any(dominates(a, b) for a in feasible for b in front)
    assert all(any(dominates(a, b) for a in front) for b in feasible if b not in front)
    assert pruner.get_best_result()[3] == max(r.score for r in feasible)


def test_optuna_without_repair_learns_the_budget_from_constraints(trained: nn.Module, evaluator: Callable) -> None:
    gen = tpe(trained, max_trials=6, repair=False, constraints={"max_flops_ratio": 0.3})
    run = runner(gen, evaluator)
    for task in gen.ask(6):
        gen.tell(run(task))
    violations = [record["constraints"]["flops_ratio"] for record in gen.trials]
    assert any(v > 0 for v in violations)  # ran as suggested, over budget
    assert [t.constraints for t in gen.study.trials] == [{"flops_ratio": v} for v in violations]
    best = gen.best_result()
    assert best is None or best.metrics["flops_ratio"] <= 0.3 + 1e-9


def test_optuna_before_5_passes_constraints_through_constraints_func(
    trained: nn.Module, evaluator: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    create_trial = optuna.trial.create_trial

    def old_create_trial(*, state=optuna.trial.TrialState.COMPLETE, values=None, params=None, distributions=None,
                         user_attrs=None, system_attrs=None):  # Optuna 3.x/4.x: no ``constraints``
        return create_trial(state=state, values=values, params=params, distributions=distributions,
                            user_attrs=user_attrs, system_attrs=system_attrs)

    monkeypatch.delattr(optuna.trial.Trial, "set_constraint")
    monkeypatch.delattr(optuna.trial.BaseTrial, "set_constraint")
    monkeypatch.setattr(optuna.trial, "create_trial", old_create_trial)
    gen = tpe(trained, max_trials=8, repair=False, constraints={"max_flops_ratio": 0.3})
    run = runner(gen, evaluator)
    for task in gen.ask(4):
        gen.tell(run(task))
    resumed = tpe(trained, max_trials=8, repair=False, constraints={"max_flops_ratio": 0.3})
    resumed.load_state_dict(json.loads(json.dumps(gen.state_dict())))
    violations = [[record["constraints"]["flops_ratio"]] for record in gen.trials]
    for study in (gen.study, resumed.study):  # live tells and rebuilt trials carry the same constraints
        assert [list(t.constraints.values()) for t in study.trials] == violations
    same_next(gen, resumed, 2)


def test_optuna_latency_bound_is_measured_and_constrains(trained: nn.Module, evaluator: Callable) -> None:
    pruner = OptunaPruner(trained, SEARCH_CONFIG, DUMMY, evaluator, max_trials=2,
                          constraints={"max_flops_ratio": 0.6, "max_latency_ratio": 1.0}, log_dir=None)
    pruner.compress()
    gen = pruner.task_generator
    for record in gen.trials:
        result = gen.results[record["task_id"]]
        assert record["constraints"]["latency_ratio"] == pytest.approx(result.metrics["latency_ratio"] - 1.0)


def test_optuna_single_objective_needs_a_budget(trained: nn.Module) -> None:
    with pytest.raises(ValueError, match="needs a budget"):
        OptunaTaskGenerator(trained, SEARCH_CONFIG, DUMMY, log_dir=None)


# -- the cost model -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_cost_model_predicts_the_compact_model_of_coupled_nets(name: str) -> None:
    from search.metrics import model_cost
    from search.pruning.registry import make_pruner
    from search.speedup import ModelSpeedup

    torch.manual_seed(0)
    model, x = get_model(name, num_classes=10), get_dummy_input(name)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    costs = LayerCostModel(model, x, convs)
    ratios = [(0.25, 0.5, 0.0)[i % 3] for i in range(len(costs.layers))]
    pruner = make_pruner("l1", model, costs.config_list(ratios))
    _, masks = pruner.compress()
    pruner.unwrap_model()
    origin = model_cost(get_model(name, num_classes=10), x)
    ModelSpeedup(model, x, masks).speedup_model()
    compact = model_cost(model, x)
    assert costs.ratio(ratios, "flops") == pytest.approx(compact.flops / origin.flops)
    assert costs.ratio(ratios, "params") == pytest.approx(compact.params / origin.params, abs=1e-3)
