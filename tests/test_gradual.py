"""Gradual pruning within a trial: the masks grow while the finetune runs, and reach the task's ratios.

The finetune is opaque to the scheduler (a callable that trains the model), so the tests watch the
masks from inside it: what the model computes at each training step, and what the pruner reports.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

from search.algorithms import LinearTaskGenerator, LotteryTicketPruner
from search.pruning import GradualPruning, GradualSchedule, L1NormPruner
from search.scheduling import PruningScheduler
from search.zoo import digits_cnn, get_dummy_input

pytestmark = pytest.mark.usefixtures("single_thread")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))


def masked_rows(pruner: Any, name: str = "0") -> int:
    mask = pruner.get_masks().get(name, {}).get("weight")
    return 0 if mask is None else int((mask.flatten(1).amax(1) == 0).sum())


def train(model: nn.Module, steps: int, seen: list[int] | None = None, pruner: Any = None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        if seen is not None:
            seen.append(masked_rows(pruner))


# -- the schedule ------------------------------------------------------------------------------------------
def test_the_cubic_schedule_cuts_most_first_and_ends_at_the_full_ratios_by_end() -> None:
    s = GradualSchedule(steps=100, updates=4, end=0.8)
    assert [round(s.fraction(u), 4) for u in range(1, 5)] == [0.5781, 0.875, 0.9844, 1.0]
    assert [s.step_of(u) for u in range(1, 5)] == [0, 20, 40, 60]
    assert GradualSchedule(steps=100, updates=4, schedule="linear").fraction(2) == 0.5


@pytest.mark.parametrize(("data", "words"), [
    ({"updates": 4}, "gradual.steps: required"),
    ({"steps": 0}, "steps must be a positive int"),
    ({"steps": 10, "updates": 2.5}, "updates must be a positive int"),
    ({"steps": 10, "end": 1.5}, "end must be a number in [0, 1]"),
    ({"steps": 10, "schedule": "exp"}, "schedule must be 'cubic' or 'linear'"),
    ({"steps": 10, "stpes": 3}, "unknown key 'stpes'"),
    ({"steps": 10, "first": 10}, "first must be an int in [0, steps)"),
    ({"steps": 10, "first": -1}, "first must be an int in [0, steps)"),
    ({"steps": 10, "span": 0}, "span must be a positive int or None"),
])
def test_a_bad_schedule_names_what_is_wrong(data: dict, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        GradualSchedule.from_dict(data)


# -- the controller ----------------------------------------------------------------------------------------
def test_masks_grow_during_training_and_masked_rows_stay_masked() -> None:
    model = mlp()
    pruner = L1NormPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.75}])
    gradual = GradualPruning(pruner, GradualSchedule(steps=20, updates=5, end=0.5))
    gradual.start()
    first = pruner.get_masks()["0"]["weight"].clone()
    seen: list[int] = []
    train(model, 20, seen, pruner)
    gradual.finish()
    assert 0 < masked_rows(pruner) == 24 and seen[0] < 24
    assert seen == sorted(seen) and seen[9:] == [24] * 11  # full ratios from step 10 (half of 20) on
    assert bool((pruner.get_masks()["0"]["weight"] <= first).all())  # what the first cut masked stays masked


def test_evaluation_forwards_are_not_training_steps() -> None:
    model = mlp()
    pruner = L1NormPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.75}])
    gradual = GradualPruning(pruner, GradualSchedule(steps=10, updates=5, end=1.0))
    gradual.start()
    model.eval()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(2, 8))
    assert gradual.step == 0 and gradual.done == 1
    gradual.finish()


def test_finish_puts_the_full_ratios_in_place_after_a_shorter_finetune() -> None:
    model = mlp()
    pruner = L1NormPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5}])
    gradual = GradualPruning(pruner, GradualSchedule(steps=100, updates=8))
    gradual.start()
    train(model, 3)
    assert masked_rows(pruner) < 16
    gradual.finish()
    assert masked_rows(pruner) == 16 and pruner.get_target_setting("0", "weight").sparse_ratio == 0.5
    train(model, 50)  # the hook is gone: nothing changes any more
    assert masked_rows(pruner) == 16


# -- in the scheduler ----------------------------------------------------------------------------------------
def digits_scheduler(gradual: dict | None, masked_seen: list[int]) -> PruningScheduler:
    torch.manual_seed(0)
    model = digits_cnn().eval()

    def finetuner(m: nn.Module) -> None:
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        m.train()
        for _ in range(12):
            opt.zero_grad()
            out = m(torch.randn(8, 1, 8, 8))
            # conv2's output channels that are masked show as all-zero activations
            masked_seen.append(int((m.conv2(m.bn1(m.conv1(torch.randn(2, 1, 8, 8)))).abs().sum((0, 2, 3)) == 0).sum()))
            out.sum().backward()
            opt.step()

    gen = LinearTaskGenerator(1, model, origin_config_list=[{"op_types": ["Conv2d"], "sparse_ratio": 0.75}],
                              log_dir=None, best_result_mode="latest")
    return PruningScheduler("l1", gen, finetuner=finetuner, dummy_input=get_dummy_input("digits_cnn"),
                            speedup=True, gradual=gradual)


def test_a_scheduled_trial_cuts_during_its_finetune_and_ends_where_a_one_shot_trial_does() -> None:
    gradual_seen: list[int] = []
    scheduler = digits_scheduler({"steps": 12, "updates": 4, "end": 0.5}, gradual_seen)
    scheduler.compress()
    one_shot_seen: list[int] = []
    reference = digits_scheduler(None, one_shot_seen)
    reference.compress()
    assert one_shot_seen == [48] * 12
    assert gradual_seen[0] < 48 and gradual_seen == sorted(gradual_seen) and gradual_seen[6:] == [48] * 6
    (_, compact, _, _, _), (_, ref_compact, _, _, _) = scheduler.get_best_result(), reference.get_best_result()
    channels = [(c.conv1.out_channels, c.conv2.out_channels, c.conv3.out_channels) for c in (compact, ref_compact)]
    assert channels == [(8, 16, 16), (8, 16, 16)]
    assert scheduler.task_generator.results[0].sparsity == pytest.approx(reference.task_generator.results[0].sparsity)


def test_a_rewinding_lottery_iteration_prunes_before_its_finetune() -> None:
    at_start: list[int] = []

    def finetuner(m: nn.Module) -> None:
        mask = m[0].__dict__["_ps_wrapper"].get_mask("weight")  # the wrapper's current mask
        at_start.append(int((mask.flatten(1).amax(1) == 0).sum()))
        train(m, 10)

    pruner = LotteryTicketPruner(mlp(), [{"op_names": ["0"], "sparse_ratio": 0.75}], "l1", 2, finetuner=finetuner,
                                 log_dir=None, gradual={"steps": 10, "updates": 4})
    pruner.compress()
    # iteration 1 has no parent to rewind to: it grows towards 50% (16 rows) during the finetune;
    # iteration 2 rewinds the weights, so it ranks the trained ones and cuts to 75% (24 rows) first
    assert at_start[0] < 16 and at_start[1] == 24
    assert [pruner.task_generator.results[i].sparsity["0"] for i in (0, 1)] == [0.5, 0.75]
