"""A local pruning demo on a built-in model and data set: ``python -m search.demo``.

Trains the digits CNN, prunes it one-shot, finetunes briefly and prints what happened:
accuracy before/after, requested vs achieved sparsity per layer, and where the weights went.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from search import pruning
from search.zoo import evaluate_accuracy, get_dataset, get_model, train_epochs

_PRUNERS = {
    "level": pruning.LevelPruner,
    "l1": pruning.L1NormPruner,
    "l2": pruning.L2NormPruner,
    "fpgm": pruning.FPGMPruner,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruner", choices=sorted(_PRUNERS), default="l1")
    parser.add_argument("--sparse-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs before pruning")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for weights + masks (default: temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)

    data = get_dataset("digits", seed=args.seed)
    model = get_model("digits_cnn", num_classes=data.num_classes)
    t0 = time.perf_counter()
    train_epochs(model, data, epochs=args.epochs, seed=args.seed)
    base_acc = evaluate_accuracy(model, data)
    print(f"digits_cnn trained {args.epochs} epochs on digits: test accuracy {base_acc:.4f}")

    config_list = [{"op_types": ["Conv2d"], "sparse_ratio": args.sparse_ratio}]
    pruner = _PRUNERS[args.pruner](model, config_list)
    _, masks = pruner.compress()
    masked_acc = evaluate_accuracy(model, data)
    print(f"{type(pruner).__name__} {config_list}: accuracy right after pruning {masked_acc:.4f}")
    train_epochs(model, data, epochs=args.finetune_epochs, seed=args.seed + 1)
    tuned_acc = evaluate_accuracy(model, data)
    print(f"after {args.finetune_epochs} finetune epochs (masks kept): accuracy {tuned_acc:.4f}")
    print(pruner.sparsity_report())

    out = args.out or Path(tempfile.mkdtemp(prefix="prunesearch-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    pruner.export_model(out / "pruned_weights.safetensors", out / "masks.safetensors")
    print(f"weights (masks multiplied in) and masks written to {out}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
