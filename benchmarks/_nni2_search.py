"""Run one NNI 2.10 iterative pruner for ``bench_search.py``, in the NNI 2.x venv (``benchmarks/.peers/nni2-venv``).

NNI 3.0 dropped the 2.x iterative pruners (LotteryTicket, SimulatedAnnealing, AutoCompress, AMC); NNI 2.10.1
still has them and imports beside torch 2.13. It does not share a venv with NNI 3.0, so ``bench_search.py``
runs this script as a subprocess::

    benchmarks/.peers/nni2-venv/bin/python benchmarks/_nni2_search.py job.json

``job.json`` (written by bench_search.py) names the algorithm, the trial budget, the MACs target, the
uniform ratio, the trial recipe, the seed and two tensor files it wrote: the pretrained weights and the
search's data (``search_train`` / ``val`` tensors). Both are loaded with ``torch.load(weights_only=True)``.
The trials are those of our searches: L1 channel pruning, the same 1-epoch finetune (``finetuner``), the
same score (``evaluator`` = -validation cross-entropy). NNI 2.x has no FLOPs constraints, so the evaluator
imposes ``max_flops_ratio``: a trial over the MACs target scores -1000 (never best, never accepted by the
annealing); AMC gets the budget as its FLOPs sparsity (``target='flops'``).

Writes ``job.json``'s ``out`` file (``torch.save`` of ``{'masks': {module: {'weight': mask}}, 'state': the best
model's state dict}``, tensors only) and prints
one JSON line with the summary (trials, feasible trials, best score, channels, wall time, or the error).
NNI's own intermediate files (pickled models it writes to a temporary log_dir and reads back) are loaded
with ``weights_only=False``: they are this process's own output, never external input.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # NNI 2.x torch.load()s the models it saved itself

import torch  # noqa: E402
from torch import nn  # noqa: E402

FULL = (32, 64, 64)
CONVS = ("conv1", "conv2", "conv3")
SCORE_OVER_BUDGET = -1000.0


class DigitsCNN(nn.Module):
    """``search.zoo.digits_cnn`` (same layer names and shapes; this venv has no prunesearch)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(64 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def macs(c1: int, c2: int, c3: int, size: int = 8) -> float:
    """MACs of digits_cnn with (c1, c2, c3) conv output channels on a ``size`` x ``size`` input."""
    hw, hw2 = size * size, (size // 2) ** 2
    return 9 * hw * c1 + 9 * hw * c1 * c2 + 9 * hw2 * c2 * c3 + 16 * c3 * 10


def live_channels(model: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """Output channels of each conv that are not all-zero on ``x`` (bias-free convs: masked filters give 0)."""
    seen: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        short = name.split(".")[0]
        if short in CONVS and isinstance(module, nn.Conv2d):
            def hook(mod: nn.Module, args: Any, out: torch.Tensor, key: str = short) -> None:
                seen[key] = int((out.detach().abs().sum(dim=(0, 2, 3)) > 0).sum())
            handles.append(module.register_forward_hook(hook))
    was = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was)
    for h in handles:
        h.remove()
    return tuple(seen.get(c, 0) for c in CONVS)


def main() -> None:
    job = json.load(open(sys.argv[1]))
    torch.set_num_threads(1)
    import nni
    from nni.compression.pytorch import pruning as P

    state = torch.load(job["weights"], weights_only=True)
    data = torch.load(job["data"], weights_only=True)
    train_x, train_y, val_x, val_y = data["train_x"], data["train_y"], data["val_x"], data["val_y"]
    model = DigitsCNN()
    model.load_state_dict(state)
    model.eval()
    seed, budget, target, ratio = int(job["seed"]), int(job["trials"]), float(job["target"]), float(job["ratio"])
    lr, epochs, batch = float(job["lr"]), float(job["epochs"]), int(job["batch_size"])
    origin = macs(*FULL)
    calls = {"finetune": 0, "evaluate": 0, "feasible": 0}
    dummy = torch.zeros(1, 1, 8, 8)

    def finetuner(m: nn.Module) -> None:
        gen = torch.Generator().manual_seed(5000 + 100 * seed + calls["finetune"])
        calls["finetune"] += 1
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        steps = max(1, math.ceil(epochs * math.ceil(len(train_y) / batch)))
        m.train()
        step = 0
        while step < steps:
            order = torch.randperm(len(train_y), generator=gen)
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(m(train_x[idx]), train_y[idx]).backward()
                opt.step()
                step += 1
                if step >= steps:
                    break
        m.eval()

    def evaluator(m: nn.Module) -> float:
        calls["evaluate"] += 1
        ch = live_channels(m, val_x[:256])
        if macs(*ch) / origin > target + 1e-9:
            return SCORE_OVER_BUDGET
        calls["feasible"] += 1
        m.eval()
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(m(val_x), val_y))
        if not math.isfinite(loss):
            calls["nonfinite"] = calls.get("nonfinite", 0) + 1
            return SCORE_OVER_BUDGET
        return -loss

    algorithm = job["algorithm"]
    log_dir = tempfile.mkdtemp(prefix=f"nni2_{algorithm}_", suffix=f"_{os.getpid()}")
    uniform = [{"op_types": ["Conv2d"], "total_sparsity": ratio}]
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    if algorithm in ("linear", "agp", "lottery_ticket"):
        cls = {"linear": P.LinearPruner, "agp": P.AGPPruner, "lottery_ticket": P.LotteryTicketPruner}[algorithm]
        pruner = cls(model, [{"op_types": ["Conv2d"], "sparsity_per_layer": ratio}], "l1", budget, log_dir=log_dir,
                     finetuner=finetuner, evaluator=evaluator, dummy_input=dummy, speedup=False)
    elif algorithm == "simulated_annealing":
        # NNI 2.x evaluates one neighbour per temperature: cool so that the schedule ends at the budget
        cool = (0.02 / 0.1) ** (1 / max(1, budget - 1)) * 1.0001
        pruner = P.SimulatedAnnealingPruner(model, uniform, evaluator, start_temperature=0.1, stop_temperature=0.02,
                                            cool_down_rate=cool, perturbation_magnitude=0.35, pruning_algorithm="l1",
                                            log_dir=log_dir, finetuner=finetuner, speedup=False, dummy_input=dummy)
    elif algorithm == "auto_compress":
        iterations = 2
        per_iteration = max(2, (budget - iterations) // iterations)  # SA trials per iteration (one per temperature)
        cool = (0.02 / 0.1) ** (1 / max(1, per_iteration - 1)) * 1.0001

        def trainer(m: nn.Module, optimizer: Any, criterion: Any, epoch: int = 0) -> None:
            gen = torch.Generator().manual_seed(7000 + 100 * seed + epoch)
            m.train()
            order = torch.randperm(len(train_y), generator=gen)
            steps = math.ceil(len(order) / batch) // 2  # half an epoch, as our ADMM step
            for i in range(steps):
                idx = order[i * batch:(i + 1) * batch]
                optimizer.zero_grad()
                criterion(m(train_x[idx]), train_y[idx]).backward()
                optimizer.step()

        admm = {"trainer": trainer, "traced_optimizer": nni.trace(torch.optim.SGD)(model.parameters(), lr=lr, momentum=0.9),
                "criterion": nn.functional.cross_entropy, "iterations": 2, "training_epochs": 1}
        sa = {"start_temperature": 0.1, "stop_temperature": 0.02, "cool_down_rate": cool, "perturbation_magnitude": 0.35,
              "pruning_algorithm": "l1", "evaluator": evaluator, "finetuner": finetuner, "dummy_input": dummy}
        pruner = P.AutoCompressPruner(model, uniform, iterations, admm, sa, log_dir=log_dir, finetuner=finetuner,
                                      speedup=False, dummy_input=dummy, evaluator=evaluator)
    elif algorithm == "netadapt":
        # NNI 2.10 keeps NetAdapt only in its legacy (v1) API: a weight-sparsity target, one candidate per layer per
        # iteration, no trial budget; the step is set so that budget/3 iterations reach the target. Candidates are
        # compared on the plain score (they are over the MACs target until the last iteration); the result is
        # checked against the target afterwards.
        from nni.algorithms.compression.pytorch.pruning import NetAdaptPruner

        def plain(m: nn.Module) -> float:
            calls["evaluate"] += 1
            m.eval()
            with torch.no_grad():
                loss = float(nn.functional.cross_entropy(m(val_x), val_y))
            return -loss if math.isfinite(loss) else SCORE_OVER_BUDGET

        iterations = max(1, budget // len(CONVS))
        pruner = NetAdaptPruner(model, [{"sparsity": ratio, "op_types": ["Conv2d"]}], finetuner, plain, base_algo="l1",
                                sparsity_per_iteration=ratio / iterations, experiment_data_dir=log_dir)
        pruner.compress()
        wall = time.perf_counter() - t0
        masks_out = {w.name: {"weight": w.weight_mask.detach().cpu().float()} for w in pruner.get_modules_wrapper()}
        channels = [int(masks_out[c]["weight"].flatten(1).abs().sum(1).gt(0).sum()) if c in masks_out else FULL[i]
                    for i, c in enumerate(CONVS)]
        ratio_now = macs(*channels) / origin
        summary = {"trials": calls["evaluate"], "feasible": None, "wall_s": wall, "score": None, "channels": channels,
                   "masks": True, "flops_ratio": ratio_now}
        if ratio_now > target + 1e-9:
            summary["error"] = f"its result (channels {channels}) is over the MACs target: {ratio_now:.4f}"
        torch.save({"masks": masks_out}, job["out"])
        print(json.dumps(summary))
        return
    elif algorithm == "amc":
        config = [{"op_types": ["Conv2d"], "total_sparsity": 1 - target, "max_sparsity_per_layer": 0.9}]
        pruner = P.AMCPruner(budget, model, config, dummy, evaluator, pruning_algorithm="l1", log_dir=log_dir,
                             finetuner=finetuner, ddpg_params={"warmup": max(1, budget // 3)}, target="flops")
    else:
        raise ValueError(f"no NNI 2.x run for {algorithm!r}")
    pruner.compress()
    wall = time.perf_counter() - t0
    best = pruner.get_best_result()
    if best is None:
        raise RuntimeError("NNI returned no best result")
    task_id, best_model, masks, score, _ = best
    chain = algorithm in ("linear", "agp", "lottery_ticket")  # NNI 2.x chains never evaluate: the best is the last
    summary: dict[str, Any] = {"trials": calls["finetune"] if chain else calls["evaluate"],
                               "feasible": None if chain else calls["feasible"], "wall_s": wall,
                               "score": float(score) if score is not None else None, "task_id": str(task_id),
                               "nonfinite_scores": calls.get("nonfinite", 0)}
    if (score is None and not chain) or (score is not None and float(score) <= SCORE_OVER_BUDGET):
        summary["error"] = "no trial within the MACs target (NNI 2.x picks its best by score only)"
    masks_out = {m: {t: v.detach().cpu().float() for t, v in ts.items() if v is not None} for m, ts in (masks or {}).items()}
    compact = [int(getattr(best_model, c).out_channels) for c in CONVS]
    if compact != list(FULL):
        # AMC speeds every episode up: its masks are on the compact model. Its episodes prune the origin model with
        # L1, so the channel counts define the masks; bench_search.py rebuilds them on the pretrained weights.
        summary["channels"], summary["masks"] = compact, False
        masks_out = {}
    else:
        summary["channels"] = [int(masks_out[c]["weight"].flatten(1).abs().sum(1).gt(0).sum()) if c in masks_out
                               else FULL[i] for i, c in enumerate(CONVS)]
        summary["masks"] = True
    summary["flops_ratio"] = macs(*summary["channels"]) / origin
    # the best model's own (trained) weights, so bench_search.py can judge it as ours (B)
    state = {k: v.detach().cpu().clone() for k, v in best_model.state_dict().items() if isinstance(v, torch.Tensor)}
    summary["state"] = bool(state)
    torch.save({"masks": masks_out, "state": state}, job["out"])
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
        for leftover in Path(tempfile.gettempdir()).glob(f"nni2_*_{os.getpid()}"):
            shutil.rmtree(leftover, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 (the parent reports it)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}))
