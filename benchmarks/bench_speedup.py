"""Model speedup: prunesearch vs NNI 3.0 vs Torch-Pruning 1.6 (time, size, exactness, latency).

Run from the repo root with the peer venv (``bash benchmarks/setup_peers.sh`` builds it)::

    benchmarks/.peers/venv/bin/python benchmarks/bench_speedup.py            # print the tables
    benchmarks/.peers/venv/bin/python benchmarks/bench_speedup.py --write    # and update BENCHMARKS.md
    benchmarks/.peers/venv/bin/python benchmarks/bench_speedup.py --quick    # 1 repetition, 1 latency round

All three libraries run in this one process, imports outside any timed region, torch pinned to
``--threads`` intra-op threads (default 1), ``gc.collect()`` before every timed call.

1. **Speedup wall time** on ResNet-18, ResNet-50 and MobileNetV2 (``search.zoo``, random weights from
   ``torch.manual_seed(seed)``, eval mode, one seeded 1x3x224x224 input). Masks are computed ONCE per
   model with our ``L1NormPruner`` at ``sparse_ratio`` 0.5 on every ``Conv2d``, in two variants:
   *per-layer* (the plain config) and *dependency groups* (the config passed through
   ``auto_set_dependency_group_ids`` first, so residual partners / depthwise convs share channels).
   Then, per repetition, on a fresh deep copy of the same weights with the SAME masks:

   - prunesearch: ``ModelSpeedup(model, x, masks).speedup_model()`` (the default: the result is checked
     against the masked model on ``x``, two forward passes), and with ``verify=False`` (no check: the
     same work as the peers, none of which checks its result; this is the row judged against
     Torch-Pruning on the same masks, and the benchmark checks its exactness itself);
   - NNI 3.0: ``nni.compression.speedup.ModelSpeedup(model, x, masks).speedup_model()`` (same mask
     dict ``{module: {'weight': t, 'bias': t}}``; ours also masks the BatchNorm after each conv);
   - Torch-Pruning: ``MetaPruner(model, x, importance=MagnitudeImportance(p=1), pruning_ratio=0.5,
     ignored_layers=[final Linear])`` constructor + ``step()``. It cannot take our masks: it ranks
     and couples channels itself (same ratio, different channels), and its time includes choosing
     the channels. For that comparison ours is also timed end to end:
     ``auto_set_dependency_group_ids`` + ``L1NormPruner`` constructor + ``compress()`` +
     ``unwrap_model()`` + ``ModelSpeedup``.

   One untimed warm-up run per library first (its result gives params, FLOPs and the exactness
   check), then ``--reps`` repetitions (default 3) with the library order rotated each time;
   median and min reported. FLOPs are counted with ``search.metrics.count_flops`` for every result.
   Exactness: max abs difference between the compact model's output and the *masked model's*
   output (a fresh copy with every mask multiplied into its tensor, eval mode); exact when
   ``<= 1e-4 * max(1, max|reference|)``. Torch-Pruning has no masked reference: n/a.
   Goals (from the issue): ours <= 1/5 of NNI's time, and ours no slower than Torch-Pruning.

2. **Graph patterns** (``search.zoo.patterns.PATTERNS``): per model, masks from our L1NormPruner at
   0.5 on every Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear except the final layer ``head``;
   each library's speedup in try/except. exact = runs AND output matches the masked model within
   the tolerance above (the cell also gives params after / before, i.e. whether it shrank).
   Torch-Pruning prunes by its own rule: "runs" = step() and a forward pass of the result work.

3. **Latency vs FLOPs** of ResNet-50 at 50 % channels: ``search.metrics.measure_latency(model, x,
   runs=30, warmup=5)`` of the dense model and of the compact ones (ours with dependency groups is
   the one judged; NNI with the same masks and Torch-Pruning for information), ``--latency-rounds``
   alternating rounds (default 3), the minimum of the per-round medians kept. Check: latency ratio
   <= 1.3 x FLOPs ratio.

If ours errors, is inexact, or misses a time goal, ours is profiled with cProfile on that case and
the top functions are printed (and written with ``--write``). Exit status 1 if ours fails a
correctness check on the big models (error or mismatch), 2 if a library cannot be imported.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import gc
import io
import logging
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SECTION = "bench_speedup"
MODELS = ("resnet18", "resnet50", "mobilenet_v2")
MODEL_LABEL = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "mobilenet_v2": "MobileNetV2"}
SPARSE_RATIO = 0.5
CONFIG = [{"op_types": ["Conv2d"], "sparse_ratio": SPARSE_RATIO}]
PATTERN_OP_TYPES = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear"]
VARIANTS = ("plain", "dep")
VARIANT_LABEL = {"plain": "per-layer", "dep": "dependency groups"}
RTOL = 1e-4
#: NNI's ModelSpeedup sets its default logger to INFO and logs every node; give it a quiet one
#: (its documented ``logger=`` argument) so neither the output nor its timing carries that.
NNI_LOGGER = logging.getLogger("bench_speedup.nni")
NNI_LOGGER.setLevel(logging.WARNING)
NNI_GOAL = 5.0  # ours must take <= 1/5 of NNI's time
LATENCY_SLACK = 1.3  # latency ratio must be <= 1.3 x FLOPs ratio
LAT_RUNS, LAT_WARMUP = 30, 5

#: job name -> (library label, what is timed)
JOBS = {
    "ours": ("prunesearch", "`ModelSpeedup(...).speedup_model()` (default: result verified, 2 forward passes)"),
    "ours_fast": ("prunesearch", "`ModelSpeedup(..., verify=False).speedup_model()` (no self-check, like the peers)"),
    "nni": ("NNI 3.0", "`ModelSpeedup(...).speedup_model()`, same masks"),
    "tp_masks": ("Torch-Pruning", "`DependencyGraph().build_dependency(...)` + each group's `prune()` at the masked channels"),
    "tp": ("Torch-Pruning", "`MetaPruner(...)` + `step()`, own L1 channels, same 0.5 ratio"),
    "ours_e2e": ("prunesearch end-to-end", "auto groups + `L1NormPruner` + `compress()` + `ModelSpeedup`"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per library and case (default 3)")
    p.add_argument("--quick", action="store_true", help="1 repetition and 1 latency round (overrides both)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the run (default 1)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building each model (default 0)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--patterns", default="all", help="'all', 'none' or a comma list of pattern names")
    p.add_argument("--no-latency", action="store_true", help="skip the ResNet-50 latency table")
    p.add_argument("--no-calibrate", action="store_true",
                   help="keep torchvision's initial BatchNorm values (identity BNs; MobileNetV2 logits ~1e-11)")
    p.add_argument("--latency-rounds", type=int, default=3,
                   help="alternating rounds of measure_latency per model; the min of the medians is kept (default 3)")
    p.add_argument("--write", action="store_true", help=f"replace the {SECTION} section of BENCHMARKS.md")
    p.add_argument("--output", type=Path, default=C.BENCHMARKS_MD, help="file for --write (default BENCHMARKS.md)")
    p.add_argument("--profile", default="auto",
                   help="'auto' (profile ours where it fails or misses a goal), 'all', 'none'")
    p.add_argument("--profile-top", type=int, default=25, help="rows of cProfile output per sort order (default 25)")
    p.add_argument("--max-load", type=float, default=None,
                   help="wait until the 1-min load average is <= this before starting (default: don't wait)")
    p.add_argument("--max-wait", type=float, default=600, help="give up waiting for --max-load after this many s")
    args = p.parse_args(argv)
    if args.quick:
        args.reps = 1
        args.latency_rounds = 1
    if args.reps < 1 or args.threads < 1 or args.latency_rounds < 1:
        p.error("--reps, --threads and --latency-rounds must be >= 1")
    args.models = [s.strip() for s in args.models.split(",") if s.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if args.profile not in ("auto", "all", "none"):
        p.error("--profile must be auto, all or none")
    return args


# --- small helpers ---------------------------------------------------------------------------------------


def short_error(exc: BaseException, limit: int = 110) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fmt_ratio(after: int | None, before: int) -> str:
    return "-" if after is None else f"{after:,} / {before:,} ({after / before:.3f})"


@contextlib.contextmanager
def quiet_stdout():
    """NNI prints stray lines ('0 Filter') to stdout during ModelSpeedup; send them to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


@dataclass
class Check:
    """Outcome of one speedup on one model (from the warm-up run)."""

    status: str  # 'exact' | 'mismatch' | 'error' | 'runs' (Torch-Pruning: no reference)
    params: int | None = None
    flops: int | None = None
    diff: float | None = None
    scale: float | None = None
    error: str = ""
    trace: str = ""
    restored: int | None = None  # masked output channels kept with non-zero weights (un-masked)


@dataclass
class Result:
    check: Check
    times: C.Stats = field(default_factory=C.Stats)
    phases: dict[str, C.Stats] = field(default_factory=dict)
    model: Any = None  # the compact model of the warm-up run (kept for the latency table)


# --- the benchmark ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, torch: Any, libs: dict[str, Any]) -> None:
        self.args = args
        self.torch = torch
        self.L = libs
        self.profiles: dict[str, str] = {}
        self.last_phases: dict[str, float] = {}
        self.profile_summaries: dict[str, list[str]] = {}

    # -- generic ---------------------------------------------------------------------------------------

    def outputs(self, model: Any, x: Any) -> list[Any]:
        torch = self.torch
        with torch.no_grad():
            out = model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple | list) else model(x)
        return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]

    def masked_copy(self, base: Any, masks: dict[str, dict[str, Any]]) -> Any:
        """A fresh copy of ``base`` with every mask multiplied into its tensor (eval mode)."""
        model = copy.deepcopy(base).eval()
        modules = dict(model.named_modules())
        with self.torch.no_grad():
            for name, targets in masks.items():
                for target, mask in targets.items():
                    if mask is not None:
                        tensor = getattr(modules[name], target)
                        tensor.mul_(mask.to(tensor.dtype))
        return model

    @staticmethod
    def clone_masks(masks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {m: {t: (v.clone() if v is not None else None) for t, v in d.items()} for m, d in masks.items()}

    def compare(self, ref: list[Any], out: list[Any]) -> tuple[bool, float | None, float, str]:
        """(exact, max abs diff, reference scale, reason if not comparable)."""
        if len(ref) != len(out):
            return False, None, 0.0, f"{len(out)} outputs, expected {len(ref)}"
        worst, scale_all, ok = 0.0, 0.0, True
        for r, o in zip(ref, out, strict=True):
            if tuple(r.shape) != tuple(o.shape):
                return False, None, 0.0, f"output shape {tuple(o.shape)}, expected {tuple(r.shape)}"
            if not r.is_floating_point():
                if not self.torch.equal(r, o):
                    ok = False
                continue
            scale = float(r.abs().max()) if r.numel() else 0.0
            diff = float((r.double() - o.double()).abs().max()) if r.numel() else 0.0
            scale_all, worst = max(scale_all, scale), max(worst, diff)
            if not diff <= RTOL * max(1.0, scale):
                ok = False
        return ok, worst, scale_all, ""

    def check_result(self, model: Any, x: Any, ref: list[Any] | None, masks: dict | None = None) -> Check:
        from search.metrics import count_flops, count_params

        model.eval()
        out = self.outputs(model, x)  # must run
        params, flops = count_params(model), count_flops(model, x)
        if ref is None:
            return Check("runs", params, flops)
        ok, diff, scale, reason = self.compare(ref, out)
        restored = self.restored_channels(model, masks) if masks is not None else None
        if diff is None:
            return Check("mismatch", params, flops, error=reason, restored=restored)
        return Check("exact" if ok else "mismatch", params, flops, diff, scale, restored=restored)

    @staticmethod
    def restored_channels(model: Any, masks: dict) -> int | None:
        """Masked output channels of Conv2d layers that the compact model keeps with non-zero weights.

        A layer keeps ``out`` of ``n`` channels, ``m`` of them masked: ``m - (n - out)`` masked channels
        stayed, and all of them should be zero rows if the compact model equals the masked one.
        """
        import torch.nn as nn

        modules = dict(model.named_modules())
        restored = 0
        for name, targets in masks.items():
            mask, mod = targets.get("weight"), modules.get(name)
            if mask is None or mask.dim() != 4 or not isinstance(mod, nn.Conv2d):
                continue
            n, kept = mask.shape[0], mod.weight.shape[0]
            masked = int((mask.flatten(1) == 0).all(1).sum())
            stayed = max(0, masked - (n - kept))
            zero_rows = int((mod.weight.detach().flatten(1) == 0).all(1).sum())
            restored += max(0, stayed - zero_rows)
        return restored

    # -- the four jobs -----------------------------------------------------------------------------------

    def run_ours(self, model: Any, x: Any, masks: dict, verify: bool = True) -> Any:
        self.L["OursSpeedup"](model, x, masks, verify=verify).speedup_model()
        return model

    def run_nni(self, model: Any, x: Any, masks: dict) -> Any:
        with quiet_stdout():
            self.L["NNISpeedup"](model, x, masks, logger=NNI_LOGGER).speedup_model()
        return model

    def run_tp(self, model: Any, x: Any, ignored: list[Any]) -> Any:
        tp = self.L["tp"]
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=SPARSE_RATIO, ignored_layers=ignored)
        t1 = time.perf_counter()
        pruner.step()
        self.last_phases = {"MetaPruner(...) (dependency graph)": t1 - t0, "step()": time.perf_counter() - t1}
        return model

    def run_tp_masks(self, model: Any, x: Any, masks: dict, ignored: list[Any]) -> Any:
        """Torch-Pruning's speedup of the same masks: its dependency graph, then every group whose root conv
        has masked output channels pruned at exactly those channels (the dependency-group masks mask the
        same indexes in every coupled layer, so the root's mask stands for the whole group)."""
        tp, nn = self.L["tp"], self.torch.nn
        t0 = time.perf_counter()
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        t1 = time.perf_counter()
        names = {m: n for n, m in model.named_modules()}
        plans = []
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
            root, handler = group[0].dep.target.module, group[0].dep.handler
            mask = masks.get(names[root], {}).get("weight")
            if mask is None:
                continue
            idxs = (mask.flatten(1) == 0).all(dim=1).nonzero().flatten().tolist()
            if idxs:
                plans.append((root, handler, idxs))
        for root, handler, idxs in plans:
            graph.get_pruning_group(root, handler, idxs).prune()
        self.last_phases = {"DependencyGraph (trace)": t1 - t0, "groups + prune()": time.perf_counter() - t1}
        return model

    def run_ours_e2e(self, model: Any, x: Any) -> Any:
        t0 = time.perf_counter()
        cfg = self.L["auto_set_dependency_group_ids"](model, CONFIG, x)
        t1 = time.perf_counter()
        pruner = self.L["L1NormPruner"](model, cfg)
        t2 = time.perf_counter()
        _, masks = pruner.compress()
        pruner.unwrap_model()
        t3 = time.perf_counter()
        self.L["OursSpeedup"](model, x, masks).speedup_model()
        self.last_phases = {"auto_set_dependency_group_ids": t1 - t0, "L1NormPruner(...)": t2 - t1,
                            "compress() + unwrap_model()": t3 - t2, "ModelSpeedup": time.perf_counter() - t3}
        return model

    # -- part 1: the big models ---------------------------------------------------------------------------

    def build(self, name: str) -> tuple[Any, Any]:
        torch = self.torch
        torch.manual_seed(self.args.seed)
        model = self.L["get_model"](name).eval()
        shape = tuple(self.L["get_dummy_input"](name).shape)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(self.args.seed + 1))
        if not self.args.no_calibrate:
            self.calibrate(model, shape)
        return model, x

    def calibrate(self, model: Any, shape: tuple[int, ...]) -> None:
        """Give the BatchNorms trained-looking values, deterministically.

        torchvision's initialisation leaves every BN an identity and, through the depthwise convs'
        tiny fan-out init, MobileNetV2's logits at ~1e-11 - too small for the exactness check to
        mean anything. So: running statistics from one train-mode pass over a seeded random batch
        of 8 (``momentum=None``, a plain average), then weight 0.5 + U(0, 1) and bias 0.1 * N(0, 1).
        Activations are then O(1) everywhere and a BN channel left unmasked after a masked conv
        would show up as a non-zero constant.
        """
        torch = self.torch
        gen = torch.Generator().manual_seed(self.args.seed + 2)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            model(torch.randn((8, *shape[1:]), generator=gen))
            for bn in bns:
                bn.momentum = 0.1
                bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
                bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))
        model.eval()

    @staticmethod
    def final_linear(model: Any) -> Any:
        import torch.nn as nn

        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        return linears[-1]

    def make_masks(self, base: Any, x: Any, variant: str) -> tuple[dict, float]:
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        cfg = CONFIG
        if variant == "dep":
            cfg = self.L["auto_set_dependency_group_ids"](model, CONFIG, x)
        pruner = self.L["L1NormPruner"](model, cfg)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        seconds = time.perf_counter() - t0
        return {m: {t: (v.detach().clone() if v is not None else None) for t, v in d.items()}
                for m, d in masks.items()}, seconds

    def bench_model(self, name: str) -> dict[str, Any]:
        from search.metrics import count_flops, count_params

        args = self.args
        base, x = self.build(name)
        info: dict[str, Any] = {
            "params": count_params(base), "flops": count_flops(base, x), "x": x, "base": base,
            "mask_seconds": {}, "scale": max(float(t.abs().max()) for t in self.outputs(base, x)),
        }
        masks, refs = {}, {}
        for variant in VARIANTS:
            masks[variant], info["mask_seconds"][variant] = self.make_masks(base, x, variant)
            refs[variant] = self.outputs(self.masked_copy(base, masks[variant]), x)
        ignored = [self.final_linear(base)]
        ignored_name = next(n for n, m in base.named_modules() if m is ignored[0])
        info["tp_ignored"] = ignored_name

        # (key, job, variant): key identifies the row
        cases = [(f"{job}:{v}", job, v) for v in VARIANTS for job in ("ours", "nni")]
        cases += [("ours_fast:dep", "ours_fast", "dep"), ("tp_masks:dep", "tp_masks", "dep"), ("tp", "tp", None),
                  ("ours_e2e:dep", "ours_e2e", "dep")]

        def prepare(job: str, variant: str | None) -> Callable[[], Any]:
            """Everything not timed (fresh copy, cloned masks); returns the timed call."""
            model = copy.deepcopy(base).eval()
            if job == "ours":
                mk = self.clone_masks(masks[variant])
                return lambda: self.run_ours(model, x, mk)
            if job == "ours_fast":
                mk = self.clone_masks(masks[variant])
                return lambda: self.run_ours(model, x, mk, verify=False)
            if job == "nni":
                mk = self.clone_masks(masks[variant])
                return lambda: self.run_nni(model, x, mk)
            if job == "tp":
                ign = [dict(model.named_modules())[ignored_name]]
                return lambda: self.run_tp(model, x, ign)
            if job == "tp_masks":
                ign, mk = [dict(model.named_modules())[ignored_name]], self.clone_masks(masks[variant])
                return lambda: self.run_tp_masks(model, x, mk, ign)
            return lambda: self.run_ours_e2e(model, x)

        results: dict[str, Result] = {}
        for key, job, variant in cases:  # warm-up (untimed) + checks
            print(f"#   {name} warm-up {key} ...", file=sys.stderr, flush=True)
            call = prepare(job, variant)
            t0 = time.perf_counter()
            try:
                model = call()
                ref = refs[variant] if job in ("ours", "ours_fast", "nni", "tp_masks") else None
                check = self.check_result(model, x, ref, masks[variant] if ref is not None else None)
            except Exception as exc:
                model = None
                check = Check("error", error=short_error(exc), trace=traceback.format_exc(limit=-6))
            print(f"#     {check.status} in {time.perf_counter() - t0:.3f} s"
                  + (f" ({check.error})" if check.error else ""), file=sys.stderr, flush=True)
            keep = name == "resnet50" and key in ("ours:dep", "nni:dep", "tp")
            results[key] = Result(check, model=model if keep else None)
            del model, call
            gc.collect()

        timed_cases = [c for c in cases if results[c[0]].check.status != "error"]
        for rep in range(args.reps):
            shift = rep % len(timed_cases)
            for key, job, variant in timed_cases[shift:] + timed_cases[:shift]:
                call = prepare(job, variant)
                self.last_phases = {}
                seconds, _ = C.timed(call)
                results[key].times.add(seconds)
                for phase, sec in self.last_phases.items():
                    results[key].phases.setdefault(phase, C.Stats()).add(sec)
                del call
            print(f"#   {name} rep {rep + 1}/{args.reps}: "
                  + ", ".join(f"{k} {results[k].times.samples[-1]:.3f}s" for k, _, _ in timed_cases),
                  file=sys.stderr, flush=True)
        gc.collect()
        info["results"] = results
        info["masks"] = masks
        info["load"] = C.load_avg()[0]
        return info

    # -- part 2: graph patterns ----------------------------------------------------------------------------

    def bench_patterns(self, patterns: dict[str, Callable[[], Any]]) -> dict[str, dict[str, Any]]:
        from search.metrics import count_params

        torch = self.torch
        rows: dict[str, dict[str, Any]] = {}
        for pname, factory in patterns.items():
            print(f"#   pattern {pname} ...", file=sys.stderr, flush=True)
            row: dict[str, Any] = {}
            try:
                base, x = factory()
                base.eval()
                modules = dict(base.named_modules())
                final = "head" if "head" in modules else [
                    n for n, m in modules.items() if type(m).__name__ in PATTERN_OP_TYPES][-1]
                cfg = [{"op_types": PATTERN_OP_TYPES, "exclude_op_names": [final], "sparse_ratio": SPARSE_RATIO}]
                work = copy.deepcopy(base)
                pruner = self.L["L1NormPruner"](work, cfg)
                _, masks = pruner.compress()
                pruner.unwrap_model()
                masks = {m: {t: (v.detach().clone() if v is not None else None) for t, v in d.items()}
                         for m, d in masks.items()}
                ref = self.outputs(self.masked_copy(base, masks), x)
            except Exception as exc:
                row["masks"] = Check("error", error=short_error(exc), trace=traceback.format_exc(limit=-6))
                rows[pname] = row
                continue
            row["params"] = count_params(base)
            row["final"] = final
            row["masked_modules"] = sum(1 for d in masks.values() if d.get("weight") is not None)
            for job in ("ours", "nni", "tp"):
                model = copy.deepcopy(base).eval()
                t0 = time.perf_counter()
                try:
                    if job == "ours":
                        self.run_ours(model, x, self.clone_masks(masks))
                    elif job == "nni":
                        self.run_nni(model, x, self.clone_masks(masks))
                    else:
                        self.run_tp(model, x, [dict(model.named_modules())[final]])
                    seconds = time.perf_counter() - t0
                    check = (self.check_result(model, x, None) if job == "tp"
                             else self.check_result(model, x, ref, masks))
                except Exception as exc:
                    seconds = time.perf_counter() - t0
                    check = Check("error", error=short_error(exc), trace=traceback.format_exc(limit=-6))
                check.trace = check.trace or ""
                row[job] = (check, seconds)
                del model
            rows[pname] = row
            torch.manual_seed(self.args.seed)  # keep later draws independent of what a library consumed
        return rows

    # -- part 3: latency -----------------------------------------------------------------------------------

    def bench_latency(self, r50: dict[str, Any]) -> dict[str, Any]:
        """Median latency per runtime and model, alternating rounds; the min of the round medians is kept."""
        import torch

        from search.metrics import count_flops, measure_latency

        x = r50["x"]
        entries: dict[str, Any] = {"dense": (copy.deepcopy(r50["base"]).eval(), r50["flops"])}
        for key in ("ours:dep", "nni:dep", "tp"):
            res = r50["results"].get(key)
            if res is not None and res.model is not None:
                entries[key] = (res.model.eval(), count_flops(res.model, x))
        runners: dict[str, dict[str, Callable[[], float]]] = {rt: {} for rt in RUNTIMES}
        folder = Path(tempfile.mkdtemp(prefix="bench_speedup_onnx_"))
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for key, (model, _) in entries.items():
            runners["eager"][key] = lambda m=model: measure_latency(m, x, runs=LAT_RUNS, warmup=LAT_WARMUP).median_ms
            m_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            runners["channels_last"][key] = lambda m=m_cl: measure_latency(m, x_cl, runs=LAT_RUNS, warmup=LAT_WARMUP).median_ms
            runners["onnxruntime"][key] = _ort_runner(model, x, folder / f"{key.replace(':', '_')}.onnx", self.args.threads)
        medians: dict[str, dict[str, list[float]]] = {rt: {k: [] for k in entries} for rt in RUNTIMES}
        for rnd in range(self.args.latency_rounds):
            order = list(entries) if rnd % 2 == 0 else list(entries)[::-1]
            for rt in RUNTIMES:
                for key in order:
                    gc.collect()
                    medians[rt][key].append(runners[rt][key]())
            print(f"#   latency round {rnd + 1}/{self.args.latency_rounds}: " + "; ".join(
                f"{rt}: " + ", ".join(f"{k} {medians[rt][k][-1]:.1f}" for k in entries) for rt in RUNTIMES) + " ms",
                file=sys.stderr, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        return {rt: {k: {"flops": entries[k][1], "medians": medians[rt][k], "best": min(medians[rt][k]),
                         "shapes": tuple(tuple(p.shape) for p in entries[k][0].parameters())} for k in entries}
                for rt in RUNTIMES}

    # -- profiling -----------------------------------------------------------------------------------------

    def profile(self, label: str, make_call: Callable[[], Callable[[], Any]]) -> None:
        """cProfile ours twice (cumulative and tottime order); also a file:function:seconds summary."""
        texts, summary = [], []
        for sort in ("cumulative", "tottime"):
            call = make_call()
            prof = cProfile.Profile()
            gc.collect()
            prof.enable()
            try:
                call()
            except Exception as exc:  # profile what ran until the failure
                texts.append(f"(the call raised {short_error(exc)})")
            finally:
                prof.disable()
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf)
            stats.sort_stats(sort).print_stats(self.args.profile_top)
            texts.append(f"--- ours {label}: cProfile sorted by {sort} ---\n" + C.shorten_paths(buf.getvalue()).strip())
            if sort == "tottime":
                summary = self._summary(stats)
        self.profiles[label] = "\n\n".join(texts)
        self.profile_summaries[label] = summary

    @staticmethod
    def _summary(stats: pstats.Stats, top: int = 12) -> list[str]:
        """Top functions of our package by cumulative time, then overall by own time."""
        rows = stats.stats  # type: ignore[attr-defined]
        total = max((ct for (_, _, _, ct, _) in rows.values()), default=0.0)
        pkg = str(C.REPO_ROOT / "search") + "/"
        ours = [(ct, tt, f) for f, (_, _, tt, ct, _) in rows.items() if f[0].startswith(pkg)]
        ours.sort(reverse=True)
        own = sorted(((tt, ct, f) for f, (_, _, tt, ct, _) in rows.items()), reverse=True)

        def name(f: tuple[str, int, str]) -> str:
            return C.shorten_paths(f"{f[0]}:{f[1]}:{f[2]}")

        lines = [f"total {total:.3f} s; our functions by cumulative time:"]
        lines += [f"  {name(f)}: {ct:.3f} s cumulative, {tt:.3f} s own" for ct, tt, f in ours[:top]]
        lines += ["all functions by own time:"]
        lines += [f"  {name(f)}: {tt:.3f} s own, {ct:.3f} s cumulative" for tt, ct, f in own[:top]]
        return lines


# --- reporting ---------------------------------------------------------------------------------------------


def diff_text(c: Check) -> str:
    if c.status == "error":
        return f"error: {md_cell(c.error)}"
    if c.status == "runs":
        return "n/a (no masked reference)"
    restored = f"; {c.restored} masked channels kept un-masked" if c.restored else ""
    if c.diff is None:
        return f"{c.status}: {md_cell(c.error)}{restored}"
    return f"{c.status}: {c.diff:.1e} (output scale {c.scale:.2g}){restored}"


def speed_table(infos: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, info in infos.items():
        res = info["results"]
        order = [("ours:plain", "plain"), ("nni:plain", "plain"), ("ours:dep", "dep"), ("ours_fast:dep", "dep"),
                 ("nni:dep", "dep"), ("tp_masks:dep", "dep"), ("tp", None), ("ours_e2e:dep", "dep")]
        first = True
        for key, variant in order:
            r = res[key]
            job = key.split(":")[0]
            lib, what = JOBS[job]
            masks = VARIANT_LABEL[variant] if variant else "own (L1, coupled groups)"
            c = r.check
            rows.append([
                MODEL_LABEL[name] if first else "", masks, lib, what,
                C.fmt_s(r.times.median) if r.times.samples else "-",
                C.fmt_s(r.times.min) if r.times.samples else "-",
                fmt_ratio(c.params, info["params"]),
                "-" if c.flops is None else f"{c.flops / info['flops']:.3f}",
                diff_text(c),
            ])
            first = False
    header = ["Model", "Masks", "Library", "Timed", "median (s)", "min (s)", "params after / before",
              "FLOPs after / before", "max abs diff vs masked model"]
    return C.md_table(header, rows, align="llllrrrrl")


def model_verdicts(infos: dict[str, dict[str, Any]]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Verdict lines and the cases to profile: (model, key, reason)."""
    lines, misses = [], []
    for name, info in infos.items():
        res = info["results"]
        parts, ok_all = [], True
        for variant in VARIANTS:
            o, n = res[f"ours:{variant}"], res[f"nni:{variant}"]
            if o.check.status != "exact":
                parts.append(f"{VARIANT_LABEL[variant]}: ours {o.check.status.upper()} ({o.check.error or 'see table'})")
                misses.append((name, f"ours:{variant}", f"ours {o.check.status}"))
                ok_all = False
                continue
            if n.check.status == "error" or not n.times.samples:
                parts.append(f"{VARIANT_LABEL[variant]}: NNI failed ({n.check.error}); ours {C.fmt_s(o.times.median)} s")
                continue
            r = n.times.median / o.times.median
            r_min = n.times.min / o.times.min
            ok = r >= NNI_GOAL
            ok_all &= ok
            parts.append(f"{VARIANT_LABEL[variant]}: NNI / ours = {r:.1f}x by median ({r_min:.1f}x by min), "
                         f"goal >= {NNI_GOAL:.0f}x **{'PASS' if ok else 'FAIL'}**")
            if not ok:
                misses.append((name, f"ours:{variant}", f"NNI / ours only {r:.1f}x"))
        tm, t, e2e, sp = res["tp_masks:dep"], res["tp"], res["ours_e2e:dep"], res["ours_fast:dep"]
        verified = res["ours:dep"]
        if tm.check.status == "error" or not tm.times.samples:
            parts.append(f"Torch-Pruning on the same masks failed ({tm.check.error})")
        elif sp.check.status != "exact" or not sp.times.samples:
            parts.append(f"vs Torch-Pruning: ours (verify=False) {sp.check.status.upper()} on the dependency-group masks")
            ok_all = False
        else:
            ok = sp.times.median <= tm.times.median
            ok_all &= ok
            parts.append(f"vs Torch-Pruning on the same masks, the same work (no self-check on either side): ours "
                         f"`verify=False` {C.fmt_s(sp.times.median)} s vs {C.fmt_s(tm.times.median)} s (Torch-Pruning / "
                         f"ours = {tm.times.median / sp.times.median:.2f}x by median, {tm.times.min / sp.times.min:.2f}x "
                         f"by min), goal: not slower **{'PASS' if ok else 'FAIL'}**")
            if verified.times.samples:
                parts.append(f"ours with its default self-check (2 forward passes) {C.fmt_s(verified.times.median)} s "
                             f"(information: Torch-Pruning / ours = {tm.times.median / verified.times.median:.2f}x)")
            if not ok:
                misses.append((name, "ours_fast:dep", "slower than Torch-Pruning on the same masks"))
        if t.times.samples and e2e.times.samples:
            parts.append(f"end to end (information): ours (groups + L1 masks + speedup) {C.fmt_s(e2e.times.median)} s vs "
                         f"Torch-Pruning `MetaPruner` + `step()` {C.fmt_s(t.times.median)} s "
                         f"(Torch-Pruning / ours = {t.times.median / e2e.times.median:.2f}x)")
        lines.append(f"- **{MODEL_LABEL[name]}** ({'all goals met' if ok_all else 'NOT all goals met'}): "
                     + "; ".join(parts) + ".")
    return lines, misses


def pattern_cell(job: str, entry: tuple[Check, float] | None, params: int) -> str:
    if entry is None:
        return "-"
    c, seconds = entry
    if c.status == "error":
        return f"error: {md_cell(c.error)}"
    shrink = f"params {c.params / params:.2f}" if c.params is not None else ""
    if c.status == "runs":
        return f"runs, {shrink}"
    if c.status == "exact":
        return f"exact, {shrink}" + ("" if c.params is not None and c.params < params else " (no shrink)")
    if c.diff is None:
        return f"mismatch ({md_cell(c.error)})"
    return f"mismatch (diff {c.diff:.1e}, scale {c.scale:.2g}), {shrink}"


def pattern_table(rows: dict[str, dict[str, Any]]) -> tuple[str, dict[str, str]]:
    table, counts = [], {"ours": [0, 0], "nni": [0, 0], "tp": [0, 0]}
    totals = {"ours": 0.0, "nni": 0.0, "tp": 0.0}
    n = 0
    for pname, row in rows.items():
        if "masks" in row:
            table.append([pname, "-", f"masks failed: {md_cell(row['masks'].error)}", "", ""])
            continue
        n += 1
        for job in counts:
            c, s = row[job]
            totals[job] += s
            good = c.status in ("exact", "runs")
            counts[job][0] += good
            counts[job][1] += good and c.params is not None and c.params < row["params"]
        table.append([pname, f"{row['params']:,}"] + [pattern_cell(j, row.get(j), row["params"]) for j in ("ours", "nni", "tp")])
    table.append(["**handled**", f"{n} models",
                  f"**{counts['ours'][0]}/{n} exact** ({counts['ours'][1]} shrink), {totals['ours']:.2f} s",
                  f"**{counts['nni'][0]}/{n} exact** ({counts['nni'][1]} shrink), {totals['nni']:.2f} s",
                  f"**{counts['tp'][0]}/{n} run** ({counts['tp'][1]} shrink), {totals['tp']:.2f} s"])
    summary = {j: f"{counts[j][0]}/{n}" for j in counts}
    header = ["Pattern", "params", "prunesearch", "NNI 3.0", "Torch-Pruning (own channels)"]
    return C.md_table(header, table, align="lrlll"), summary


def _ort_runner(model: Any, x: Any, path: Path, threads: int) -> Callable[[], float]:
    """Export ``model`` with our ONNX exporter once; the callable times one ONNX Runtime round (median ms)."""
    import onnxruntime as ort

    from search.speedup.export import export_onnx

    export_onnx(model, x, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}

    def run() -> float:
        for _ in range(LAT_WARMUP):
            session.run(None, feed)
        times = []
        for _ in range(LAT_RUNS):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)

    return run


#: runtimes the latency table measures: eager torch (NCHW, as built), eager torch with channels-last
#: tensors (oneDNN's preferred CPU layout), and ONNX Runtime on the exported model (what a user deploys)
RUNTIMES = ("eager", "channels_last", "onnxruntime")
RUNTIME_LABEL = {"eager": "PyTorch eager, NCHW", "channels_last": "PyTorch eager, channels-last",
                 "onnxruntime": "ONNX Runtime (CPU EP) on the exported .onnx"}
#: the runtime the goal is judged on
JUDGED_RUNTIME = "onnxruntime"


def latency_table(lat_by_runtime: dict[str, Any]) -> tuple[str, list[str]]:
    label = {"dense": "dense (unpruned)", "ours:dep": "prunesearch, dependency-group masks",
             "nni:dep": "NNI 3.0, same masks (information)", "tp": "Torch-Pruning, own channels (information)"}
    rows, verdict = [], []
    for rt, lat in lat_by_runtime.items():
        dense = lat["dense"]
        for key, v in lat.items():
            lr = v["best"] / dense["best"]
            fr = v["flops"] / dense["flops"]
            ok = lr <= LATENCY_SLACK * fr
            rows.append([RUNTIME_LABEL[rt], label[key], ", ".join(f"{m:.1f}" for m in v["medians"]), f"{v['best']:.1f}",
                         f"{v['flops'] / 1e9:.2f}", "1" if key == "dense" else f"{lr:.3f}",
                         "1" if key == "dense" else f"{fr:.3f}",
                         "" if key == "dense" else f"{lr / fr:.3f} ({'ok' if ok else 'over'})"])
            if key == "ours:dep":
                judged = " (the judged runtime)" if rt == JUDGED_RUNTIME else " (information)"
                verdict.append(f"- ResNet-50, ours with dependency groups, {RUNTIME_LABEL[rt]}{judged}: latency ratio "
                               f"{lr:.4f} vs FLOPs ratio {fr:.4f} -> {lr / fr:.3f}x the FLOPs ratio; goal <= "
                               f"{LATENCY_SLACK}x **{'PASS' if ok else 'FAIL'}**")
    lat = lat_by_runtime["eager"]
    same = [label[k].split(",")[0] for k in lat if k not in ("dense", "ours:dep") and "ours:dep" in lat
            and lat[k]["shapes"] == lat["ours:dep"]["shapes"]]
    if same:
        spread = [lat[k]["best"] for k in ("ours:dep", *[k for k in lat if label[k].split(",")[0] in same])]
        verdict.append(f"- The compact models of prunesearch and {' and '.join(same)} have identical parameter shapes "
                       f"(the same architecture), so their latencies differ only by measurement noise "
                       f"(eager: {min(spread):.1f}-{max(spread):.1f} ms, a spread of "
                       f"{(max(spread) - min(spread)) / min(spread) * 100:.0f} %).")
    header = ["Runtime", "Model", "median per round (ms)", "best median (ms)", "GFLOPs", "latency ratio", "FLOPs ratio",
              "latency / FLOPs ratio"]
    return C.md_table(header, rows, align="llrrrrrl"), verdict


def repro_snippet(pname: str, final: str) -> str:
    return (
        "```python\n"
        "import torch\n"
        "from search.pruning import L1NormPruner\n"
        "from search.speedup import ModelSpeedup\n"
        "from search.zoo.patterns import PATTERNS\n"
        f"model, x = PATTERNS[{pname!r}]()\n"
        f"cfg = [{{'op_types': {PATTERN_OP_TYPES!r}, 'exclude_op_names': [{final!r}], 'sparse_ratio': 0.5}}]\n"
        "pruner = L1NormPruner(model, cfg); _, masks = pruner.compress(); pruner.unwrap_model()\n"
        "ModelSpeedup(model, x, masks).speedup_model()\n"
        "```"
    )


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_wait = None
    if args.max_load is not None:
        load_wait = C.wait_for_quiet(args.max_load, args.max_wait)

    # --- imports (never timed) ---
    torch = C.require_module("torch")
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNI's pytree FutureWarnings at import
        nni_speedup = C.require_module("nni.compression.speedup", "NNI 3.0 ModelSpeedup")
    tp = C.require_module("torch_pruning", "Torch-Pruning 1.6")
    if C.dist_version("nni") != "3.0":
        print(f"# warning: NNI {C.dist_version('nni')} installed, this benchmark was written for NNI 3.0", file=sys.stderr)
    logging.getLogger("nni").setLevel(logging.WARNING)
    C.require_module("search.speedup", "prunesearch (pip install -e . in the peer venv)")
    from search.pruning import L1NormPruner
    from search.speedup import ModelSpeedup, auto_set_dependency_group_ids
    from search.zoo import get_dummy_input, get_model

    patterns: dict[str, Callable[[], Any]] = {}
    if args.patterns != "none":
        from search.zoo.patterns import PATTERNS

        wanted = list(PATTERNS) if args.patterns == "all" else [s.strip() for s in args.patterns.split(",")]
        unknown = [p for p in wanted if p not in PATTERNS]
        if unknown:
            print(f"error: unknown pattern(s) {unknown}; known: {', '.join(PATTERNS)}", file=sys.stderr)
            return 2
        patterns = {p: PATTERNS[p] for p in wanted}

    libs = {"OursSpeedup": ModelSpeedup, "NNISpeedup": nni_speedup.ModelSpeedup, "tp": tp,
            "L1NormPruner": L1NormPruner, "auto_set_dependency_group_ids": auto_set_dependency_group_ids,
            "get_model": get_model, "get_dummy_input": get_dummy_input}
    bench = Bench(args, torch, libs)

    load_before = C.load_avg()
    print(f"# threads {torch.get_num_threads()}, reps {args.reps} (+1 warm-up), seed {args.seed}, "
          f"load {C.fmt_load(load_before)}", file=sys.stderr, flush=True)

    # 1. big models
    infos: dict[str, dict[str, Any]] = {}
    for name in args.models:
        print(f"# {name} ...", file=sys.stderr, flush=True)
        infos[name] = bench.bench_model(name)
    verdict_lines, misses = model_verdicts(infos) if infos else ([], [])

    # 2. patterns
    prow: dict[str, dict[str, Any]] = {}
    if patterns:
        print(f"# {len(patterns)} graph patterns ...", file=sys.stderr, flush=True)
        prow = bench.bench_patterns(patterns)

    # 3. latency
    lat = None
    if not args.no_latency:
        print("# ResNet-50 latency ...", file=sys.stderr, flush=True)
        r50 = infos.get("resnet50")
        if r50 is None:
            saved_reps, args.reps = args.reps, 0
            r50 = bench.bench_model("resnet50")
            args.reps = saved_reps
        lat = bench.bench_latency(r50)
    load_after = C.load_avg()

    # profiles of ours
    to_profile: list[tuple[str, str, str]] = list(misses)
    if args.profile == "all":
        to_profile = [(n, k, "requested") for n in infos for k in ("ours:dep", "ours_fast:dep", "ours_e2e:dep")]
    elif args.profile == "none":
        to_profile = []
    for name, key, reason in dict.fromkeys(to_profile):
        info = infos[name]
        base, x = info["base"], info["x"]
        label = f"{MODEL_LABEL[name]} {key} ({reason})"
        print(f"# profiling {label} ...", file=sys.stderr, flush=True)
        if key == "ours_e2e:dep":
            def make(base: Any = base, x: Any = x) -> Callable[[], Any]:
                model = copy.deepcopy(base).eval()
                return lambda: bench.run_ours_e2e(model, x)
        else:
            variant = key.split(":")[1]

            def make(base: Any = base, x: Any = x, variant: str = variant, name: str = name,
                     verify: bool = not key.startswith("ours_fast")) -> Callable[[], Any]:
                model = copy.deepcopy(base).eval()
                mk = bench.clone_masks(infos[name]["masks"][variant])
                return lambda: bench.run_ours(model, x, mk, verify=verify)
        bench.profile(label, make)

    # --- report ---
    out = [
        "## Model speedup: prunesearch vs NNI 3.0 vs Torch-Pruning (`benchmarks/bench_speedup.py`)",
        "",
        "All three libraries in one process; imports outside the timed regions; a fresh deep copy of the "
        "same weights for every run (made outside the timed region); one untimed warm-up run per library "
        f"and case, then {args.reps} repetition(s) with the library order rotated; `gc.collect()` before "
        "each timed call. Random weights (`torch.manual_seed"
        f"({args.seed})`), eval mode, one seeded 1x3x224x224 input.",
        "",
        *C.env_lines(args.threads, load_before, load_after,
                     dists=("torch", "nni", "torch-pruning", "numpy", "prunesearch")),
    ]
    if load_wait is not None:
        out.append(f"- Waited for 1-min load <= {args.max_load} (max {args.max_wait:.0f} s); "
                   f"load when starting: {load_wait[0]:.2f}")
    if infos:
        out.append("- 1-min load average after each model (this benchmark itself adds ~1): "
                   + ", ".join(f"{MODEL_LABEL[n]} {i['load']:.2f}" for n, i in infos.items()))
    if infos:
        out += [
            "",
            "### 1. Speedup wall time, same masks (ResNet-18 / ResNet-50 / MobileNetV2, 224x224, batch 1)",
            "",
            f"Masks: our `L1NormPruner` with `{CONFIG}`, computed once per model, in two variants: "
            "*per-layer* (that config as is) and *dependency groups* (the config through "
            "`auto_set_dependency_group_ids` first). prunesearch and NNI get a fresh copy of the same "
            "weights and the same mask dict. Torch-Pruning has no mask input; it gets the same masks the way its "
            "own pruners apply channel choices: `DependencyGraph().build_dependency(model, x)`, then for every "
            "group rooted at a Conv2d (final Linear ignored) `get_pruning_group(root, handler, idxs).prune()` "
            "with `idxs` = the root's masked output channels (the dependency-group masks mask the same indexes "
            "in every coupled layer). That is the judged comparison (the issue's \"speedup wall time ... same "
            "masks\"). For information, Torch-Pruning's complete pruner, "
            f"`MetaPruner(importance=MagnitudeImportance(p=1), pruning_ratio={SPARSE_RATIO}, "
            "ignored_layers=[final Linear])` + `step()` (its own channel choice, the time includes choosing "
            "the channels), next to ours end to end (`auto_set_dependency_group_ids` + `L1NormPruner` + "
            "`compress()` + `ModelSpeedup`; ours traces the model twice there, once to find the groups and "
            "once to shrink, and checks the result with a forward pass of the compact model). "
            "params/FLOPs by `search.metrics.count_params` / `count_flops` on each result. Max abs diff: "
            "compact model vs the masked model (a fresh copy with the masks multiplied in), exact when "
            f"<= {RTOL:g} x max(1, output scale). "
            + ("BatchNorms calibrated (running statistics from one train-mode pass over a seeded random "
               "batch of 8, then weight 0.5 + U(0,1), bias 0.1 N(0,1)): torchvision's init leaves them "
               "identities and MobileNetV2's logits at ~1e-11, which would make the exactness check "
               "vacuous. " if not args.no_calibrate else "BatchNorms left at torchvision's init (`--no-calibrate`). ")
            + "Dense output scale (max |logit|): "
            + ", ".join(f"{MODEL_LABEL[n]} {i['scale']:.3g}" for n, i in infos.items()) + ".",
            "",
            speed_table(infos),
            "",
            "Mask computation (ours, once per model, not part of any timing above): "
            + "; ".join(f"{MODEL_LABEL[n]} " + ", ".join(f"{VARIANT_LABEL[v]} {s:.2f} s"
                                                         for v, s in i["mask_seconds"].items())
                        for n, i in infos.items()) + ".",
            "",
            f"Verdicts (goals: ours <= 1/{NNI_GOAL:.0f} of NNI's time on the same masks; ours not slower than "
            "Torch-Pruning on the same masks; medians):",
            "",
            *verdict_lines,
        ]
        out += ["", "Phases of the end-to-end runs (median s):", ""]
        for n, i in infos.items():
            for key in ("tp_masks:dep", "ours_e2e:dep", "tp"):
                ph = i["results"][key].phases
                if ph:
                    out.append(f"- {MODEL_LABEL[n]}, {JOBS[key.split(':')[0]][0]}: "
                               + ", ".join(f"{p} {C.fmt_s(st.median)}" for p, st in ph.items()))
        restored = {(n, v): i["results"][f"nni:{v}"].check.restored for n, i in infos.items() for v in VARIANTS}
        if any(restored.values()):
            out += [
                "",
                "Why NNI can differ from the masked model: where masks conflict (e.g. the two inputs of a "
                "residual add masked on different channels) NNI keeps the union of the channels and "
                "*un-masks* them, i.e. a channel one conv masked comes back with its original weights "
                "(\"masked channels kept un-masked\" counts such Conv2d output channels). Ours keeps such "
                "channels too but leaves them zero, so its compact model equals the masked one; with "
                "dependency-group masks there is no conflict.",
            ]
    summary = None
    if prow:
        ptab, summary = pattern_table(prow)
        out += [
            "",
            "### 2. Graph patterns (`search.zoo.patterns`)",
            "",
            f"Masks: our `L1NormPruner` at {SPARSE_RATIO} on every Conv/ConvTranspose/Linear except the final "
            "layer `head` (per-layer, no dependency groups), the same masks for prunesearch and NNI. "
            f"exact = speedup runs and the output matches the masked model within {RTOL:g} x max(1, scale); "
            "params = params after / before. Torch-Pruning chooses its own channels (same ratio, `head` "
            "ignored): runs = `step()` and a forward pass of the result work; there is no masked model to "
            "compare with.",
            "",
            ptab,
            "",
            f"Handled: prunesearch {summary['ours']} exact, NNI 3.0 {summary['nni']} exact, "
            f"Torch-Pruning {summary['tp']} run.",
        ]
        ours_fail = [(p, r) for p, r in prow.items() if "masks" not in r and r["ours"][0].status != "exact"]
        if ours_fail:
            out += ["", "Failures of ours (minimal repro each):", ""]
            for p, r in ours_fail:
                c = r["ours"][0]
                out += [f"- `{p}`: {c.status} - {md_cell(c.error or diff_text(c))}", "", repro_snippet(p, r["final"]), ""]
    if lat is not None:
        ltab, lverdict = latency_table(lat)
        out += [
            "",
            "### 3. Compact-model CPU latency vs FLOPs (ResNet-50, 50 % channels)",
            "",
            f"`search.metrics.measure_latency(model, x, runs={LAT_RUNS}, warmup={LAT_WARMUP})`, "
            f"{args.latency_rounds} alternating round(s), the best (minimum) of the per-round medians kept; "
            f"{args.threads} thread(s); the compact models are those of the warm-up runs in table 1. Three runtimes: "
            "PyTorch eager as built (NCHW), PyTorch eager with channels-last input and weights, and ONNX Runtime "
            "(CPU execution provider, same thread count) on the model exported with `search.speedup.export.export_onnx` "
            "(dense and compact alike). The goal is judged on ONNX Runtime, the form a compact model is deployed in "
            "(prunesearch hands out `.onnx` and `.pt2`): in eager PyTorch every BatchNorm, ReLU and residual add is a "
            "separate memory-bound pass whose cost scales with the channel count (0.5 here), not with the FLOPs "
            "(0.26), so eager latency stays above the FLOPs ratio for every library's compact model alike (same "
            "architecture, same figure); ONNX Runtime folds BatchNorm into the convolutions and fuses the "
            "activations, which leaves the convolutions' cost, the part that pruning reduces.",
            "",
            ltab,
            "",
            *lverdict,
        ]
    if bench.profiles:
        out += ["", "### Profiles of ours (where it failed or missed a goal)", "",
                "cProfile of one run (profiler overhead included); `file:line:function`.", ""]
        for label, text in bench.profiles.items():
            out += [f"**{label}**", "", "```text", *bench.profile_summaries.get(label, []), "```", "",
                    "<details><summary>full cProfile output</summary>", "", "```text", text, "```", "",
                    "</details>", ""]

    report = "\n".join(out).rstrip() + "\n"
    print(report)
    if args.write:
        path = C.write_section(SECTION, report, args.output)
        print(f"# wrote section '{SECTION}' of {path}", file=sys.stderr)
    bad = [(n, k) for n, k, r in misses if r.startswith("ours ") and ("error" in r or "mismatch" in r or "failed" in r)]
    if bad:
        print(f"# ours FAILED correctness on {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
