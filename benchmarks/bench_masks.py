"""Time to compute masks: prunesearch vs NNI 3.0, L1/L2/FPGM/Level at sparse_ratio 0.5 on ResNet-50.

Run from the repo root with the peer venv (``bash benchmarks/setup_peers.sh`` builds it)::

    benchmarks/.peers/venv/bin/python benchmarks/bench_masks.py            # print the tables
    benchmarks/.peers/venv/bin/python benchmarks/bench_masks.py --write    # and update BENCHMARKS.md
    benchmarks/.peers/venv/bin/python benchmarks/bench_masks.py --quick    # 2 repetitions

Method (both libraries in this one process, same model, same weights):

- model: ``search.zoo.get_model('resnet50')`` (torchvision layer names, 25,557,032 params), built
  fresh for every run after ``torch.manual_seed(seed)`` (NNI wraps modules in place), outside the
  timed region; the weights are checked to be identical across builds;
- config: ``[{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}]`` (53 convs);
- timed: ``Pruner(model, config)`` (constructor) and ``pruner.compress()``; total = their sum.
  Our constructor also traces the model with torch.fx to find the BatchNorm after each
  channel-pruned conv (NNI does not do this) - that is counted as part of our cost;
- per pruner: one untimed warm-up run per library, then N repetitions (default 5), alternating which
  library goes first; imports happen before any timing; ``gc.collect()`` before each timed call;
- threads: ``torch.set_num_threads(--threads)`` (default 1) for both;
- reported: median and min of constructor, compress and total; verdict from the median totals;
- sanity: per conv weight, both must mask the same NUMBER of elements; for L1/L2 the same channels
  (FPGM and Level are compared too, for information). Exit status 1 if a required check fails, 2 if
  NNI (or torch, or prunesearch) cannot be imported.

If ours is slower than NNI on a pruner (median total, or the median of the constructor or compress()
alone), ours is profiled with cProfile for that pruner and the top functions are printed (and
written to BENCHMARKS.md with ``--write``); ``--profile all`` profiles every pruner regardless.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SECTION = "bench_masks"
PRUNERS = ("L1NormPruner", "L2NormPruner", "FPGMPruner", "LevelPruner")
#: pruners whose masks must be identical to NNI's (whole output channels ranked by a norm)
SAME_MASK_REQUIRED = ("L1NormPruner", "L2NormPruner")
CHANNEL_PRUNERS = ("L1NormPruner", "L2NormPruner", "FPGMPruner")
SPARSE_RATIO = 0.5
CONFIG = [{"op_types": ["Conv2d"], "sparse_ratio": SPARSE_RATIO}]
MODEL = "resnet50"
MODEL_PARAMS = 25_557_032
LIBS = ("ours", "nni")
LIB_LABEL = {"ours": "prunesearch", "nni": "NNI 3.0"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per pruner and library (default 5)")
    p.add_argument("--quick", action="store_true", help="2 repetitions (overrides --reps)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the run (default 1)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building each model (default 0)")
    p.add_argument("--pruners", default=",".join(PRUNERS),
                   help=f"comma-separated subset of {', '.join(PRUNERS)} (default: all)")
    p.add_argument("--write", action="store_true", help=f"replace the {SECTION} section of BENCHMARKS.md")
    p.add_argument("--output", type=Path, default=C.BENCHMARKS_MD, help="file for --write (default BENCHMARKS.md)")
    p.add_argument("--profile", default="auto",
                   help="'auto' (profile ours where it is slower than NNI in total or in one phase), 'all', "
                        "'none', or a comma list of pruners")
    p.add_argument("--profile-top", type=int, default=25, help="rows of cProfile output per sort order (default 25)")
    p.add_argument("--max-load", type=float, default=None,
                   help="wait until the 1-min load average is <= this before starting (default: don't wait)")
    p.add_argument("--max-wait", type=float, default=600, help="give up waiting for --max-load after this many s")
    args = p.parse_args(argv)
    if args.quick:
        args.reps = 2
    if args.reps < 1 or args.threads < 1:
        p.error("--reps and --threads must be >= 1")
    args.pruners = [s.strip() for s in args.pruners.split(",") if s.strip()]
    unknown = sorted(set(args.pruners) - set(PRUNERS))
    if unknown:
        p.error(f"unknown pruner(s) {unknown}; choose from {list(PRUNERS)}")
    return args


# --- results -----------------------------------------------------------------------------------------


@dataclass
class Timing:
    ctor: C.Stats = field(default_factory=C.Stats)
    compress: C.Stats = field(default_factory=C.Stats)
    total: C.Stats = field(default_factory=C.Stats)

    def add(self, t_ctor: float, t_compress: float) -> None:
        self.ctor.add(t_ctor)
        self.compress.add(t_compress)
        self.total.add(t_ctor + t_compress)


@dataclass
class MaskCheck:
    pruner: str
    convs: int = 0
    same_count: int = 0
    same_mask: int = 0
    masked_ours: int = 0
    masked_nni: int = 0
    total_elems: int = 0
    channel_diff: int = 0  # channels masked by exactly one of the two (channel pruners)
    elem_diff: int = 0  # elements masked by exactly one of the two
    extra_ours: list[str] = field(default_factory=list)  # non-conv modules only ours masks
    extra_nni: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # convs missing from one side
    details: list[str] = field(default_factory=list)

    @property
    def count_ok(self) -> bool:
        return not self.missing and self.same_count == self.convs

    @property
    def mask_ok(self) -> bool:
        return not self.missing and self.same_mask == self.convs

    @property
    def required_ok(self) -> bool:
        return self.count_ok and (self.mask_ok or self.pruner not in SAME_MASK_REQUIRED)


# --- the benchmark -------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, torch: Any, ours: Any, nni: Any, get_model: Any) -> None:
        self.args = args
        self.torch = torch
        self.classes = {"ours": ours, "nni": nni}
        self.get_model = get_model
        ref = self.make_model(check=False)
        self.conv_names = [n for n, m in ref.named_modules() if isinstance(m, torch.nn.Conv2d)]
        n_params = sum(p.numel() for p in ref.parameters())
        if n_params != MODEL_PARAMS:
            print(f"# warning: zoo {MODEL} has {n_params:,} params, expected {MODEL_PARAMS:,}", file=sys.stderr)
        self.n_params = n_params
        self.fingerprint = self._fingerprint(ref)

    @staticmethod
    def _fingerprint(model: Any) -> tuple[float, ...]:
        return tuple(float(p.detach().double().sum()) for p in model.parameters())

    def make_model(self, check: bool = True) -> Any:
        self.torch.manual_seed(self.args.seed)
        model = self.get_model(MODEL)
        if check and self._fingerprint(model) != self.fingerprint:
            raise RuntimeError(f"{MODEL} built with seed {self.args.seed} differs from the reference build")
        return model

    def run_once(self, lib: str, pruner: str) -> tuple[float, float, dict[str, Any]]:
        """One fresh model, one constructor + compress(); returns (ctor s, compress s, masks)."""
        cls = getattr(self.classes[lib], pruner)
        model = self.make_model()
        gc.collect()
        t0 = time.perf_counter()
        p = cls(model, CONFIG)
        t1 = time.perf_counter()
        _, masks = p.compress()
        t2 = time.perf_counter()
        del p, model
        return t1 - t0, t2 - t1, masks

    def time_pruner(self, pruner: str) -> tuple[dict[str, Timing], dict[str, dict[str, Any]]]:
        timings = {lib: Timing() for lib in LIBS}
        warm_masks = {}
        for lib in LIBS:  # warm-up (untimed); its masks are the ones compared
            _, _, warm_masks[lib] = self.run_once(lib, pruner)
        for rep in range(self.args.reps):
            order = LIBS if rep % 2 == 0 else LIBS[::-1]
            for lib in order:
                t_ctor, t_comp, masks = self.run_once(lib, pruner)
                timings[lib].add(t_ctor, t_comp)
                del masks
            print(f"#   {pruner} rep {rep + 1}/{self.args.reps}: "
                  + ", ".join(f"{lib} {timings[lib].total.samples[-1]:.4f}s" for lib in LIBS), file=sys.stderr)
        gc.collect()
        return timings, warm_masks

    def compare(self, pruner: str, ours: dict[str, Any], nni: dict[str, Any]) -> MaskCheck:
        torch = self.torch
        chk = MaskCheck(pruner)
        convs = set(self.conv_names)
        chk.extra_ours = sorted(set(ours) - convs)
        chk.extra_nni = sorted(set(nni) - convs)
        for name in self.conv_names:
            o = ours.get(name, {}).get("weight")
            n = nni.get(name, {}).get("weight")
            if o is None or n is None:
                chk.missing.append(f"{name} (missing from {'ours' if o is None else 'NNI'})")
                continue
            chk.convs += 1
            oz, nz = (o == 0), (n == 0)
            c_o, c_n = int(oz.sum()), int(nz.sum())
            chk.masked_ours += c_o
            chk.masked_nni += c_n
            chk.total_elems += o.numel()
            chk.same_count += c_o == c_n
            same = bool(torch.equal(oz, nz))
            chk.same_mask += same
            diff = int((oz ^ nz).sum())
            chk.elem_diff += diff
            ch_note = ""
            if pruner in CHANNEL_PRUNERS:
                och, nch = oz.flatten(1).all(1), nz.flatten(1).all(1)
                d = int((och ^ nch).sum())
                chk.channel_diff += d
                ch_note = f", channels masked ours {int(och.sum())} / NNI {int(nch.sum())} of {o.shape[0]}, {d} differ"
            if c_o != c_n or not same:
                chk.details.append(f"{name}: masked elements ours {c_o} / NNI {c_n}, {diff} differ{ch_note}")
        return chk

    def profile_ours(self, pruner: str) -> str:
        cls = getattr(self.classes["ours"], pruner)
        out = []
        for sort in ("cumulative", "tottime"):
            model = self.make_model()

            def call(model: Any = model) -> None:
                cls(model, CONFIG).compress()

            out.append(f"--- ours {pruner}: constructor + compress(), cProfile sorted by {sort} ---\n"
                       + C.profile_call(call, top=self.args.profile_top, sort=sort).strip())
        return "\n\n".join(out)


# --- reporting ---------------------------------------------------------------------------------------------


def timing_table(results: dict[str, dict[str, Timing]]) -> str:
    rows = []
    for pruner, by_lib in results.items():
        ratio, _ = C.ratio_verdict(by_lib["ours"].total.median, by_lib["nni"].total.median)
        for lib in LIBS:
            t = by_lib[lib]
            rows.append([
                f"{pruner}" if lib == "ours" else "",
                LIB_LABEL[lib],
                C.fmt_s(t.ctor.median), C.fmt_s(t.ctor.min),
                C.fmt_s(t.compress.median), C.fmt_s(t.compress.min),
                C.fmt_s(t.total.median), C.fmt_s(t.total.min),
                f"{ratio:.2f}x" if lib == "ours" else "",
            ])
    header = ["Pruner", "Library", "ctor median (s)", "ctor min (s)", "compress median (s)", "compress min (s)",
              "total median (s)", "total min (s)", "NNI / ours (total median)"]
    return C.md_table(header, rows, align="llrrrrrrr")


def mask_table(checks: dict[str, MaskCheck]) -> str:
    rows = []
    for pruner, c in checks.items():
        same_mask = f"{c.same_mask}/{c.convs}"
        if pruner in CHANNEL_PRUNERS:
            same_mask += f" ({c.channel_diff} channels differ)"
        else:
            same_mask += f" ({c.elem_diff:,} elements differ)"
        rows.append([
            pruner,
            f"{c.same_count}/{c.convs}" + (f", {len(c.missing)} missing" if c.missing else ""),
            same_mask,
            f"{c.masked_ours:,} / {c.masked_nni:,} of {c.total_elems:,}",
            ("required" if pruner in SAME_MASK_REQUIRED else "information") + (": OK" if c.required_ok else ": FAIL"),
            str(len(c.extra_ours)), str(len(c.extra_nni)),
        ])
    header = ["Pruner", "convs with same # masked", "convs with identical mask", "masked conv-weight elements ours / NNI",
              "check", "extra modules ours", "extra modules NNI"]
    return C.md_table(header, rows, align="lrrrlrr")


def verdicts(results: dict[str, dict[str, Timing]]) -> tuple[list[str], list[str], list[str]]:
    """(verdict lines, pruners where ours is slower in total, pruners where ours is slower in one phase)."""
    lines, slower, slower_phase = [], [], []
    for pruner, by_lib in results.items():
        o, n = by_lib["ours"].total, by_lib["nni"].total
        r, text = C.ratio_verdict(o.median, n.median)
        r_min, _ = C.ratio_verdict(o.min, n.min)
        if C.is_slower(o.median, n.median):
            slower.append(pruner)
        phases = []
        for phase in ("ctor", "compress"):
            po, pn = getattr(by_lib["ours"], phase).median, getattr(by_lib["nni"], phase).median
            if C.is_slower(po, pn):
                phases.append(f"{phase} alone: ours {C.fmt_s(po)} s vs NNI {C.fmt_s(pn)} s, {po / pn:.2f}x slower")
        if phases:
            slower_phase.append(pruner)
        extra = f" Note, per phase: {'; '.join(phases)}." if phases else ""
        lines.append(f"- **{pruner}**: {text} (median total {C.fmt_s(o.median)} s vs {C.fmt_s(n.median)} s; "
                     f"by min {r_min:.2f}x).{extra}")
    return lines, slower, slower_phase


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_load is not None:
        C.wait_for_quiet(args.max_load, args.max_wait)

    # --- imports (never timed) ---
    torch = C.require_module("torch")
    torch.set_num_threads(args.threads)
    nni_pruning = C.require_module("nni.compression.pruning", "NNI 3.0 pruners")
    nni_version = C.dist_version("nni")
    if nni_version != "3.0":
        print(f"# warning: NNI {nni_version} installed, this benchmark was written for NNI 3.0", file=sys.stderr)
    logging.getLogger("nni").setLevel(logging.WARNING)
    ours_pruning = C.require_module("search.pruning", "prunesearch (pip install -e . in the peer venv)")
    from search.zoo import get_model

    load_before = C.load_avg()
    print(f"# threads {torch.get_num_threads()}, reps {args.reps} (+1 warm-up), seed {args.seed}, "
          f"load {C.fmt_load(load_before)}", file=sys.stderr)
    bench = Bench(args, torch, ours_pruning, nni_pruning, get_model)

    results: dict[str, dict[str, Timing]] = {}
    checks: dict[str, MaskCheck] = {}
    loads: dict[str, float] = {}
    for pruner in args.pruners:
        print(f"# {pruner} ...", file=sys.stderr)
        results[pruner], masks = bench.time_pruner(pruner)
        checks[pruner] = bench.compare(pruner, masks["ours"], masks["nni"])
        del masks
        loads[pruner] = C.load_avg()[0]
    load_after = C.load_avg()

    verdict_lines, slower, slower_phase = verdicts(results)
    if args.profile == "all":
        to_profile = list(args.pruners)
    elif args.profile == "auto":
        to_profile = [p for p in args.pruners if p in slower or p in slower_phase]
    elif args.profile == "none":
        to_profile = []
    else:
        to_profile = [s.strip() for s in args.profile.split(",") if s.strip() in args.pruners]
    profiles = {p: bench.profile_ours(p) for p in to_profile}

    extra_ours = sorted({n for c in checks.values() for n in c.extra_ours})
    notes = [
        f"- Our constructor includes a `torch.fx` trace of the model (to find the BatchNorm after each "
        f"channel-pruned conv and mask it too); NNI's does not trace. Level (element granularity) does not "
        f"trace. Ours therefore returns masks for {max((len(c.extra_ours) for c in checks.values()), default=0)} "
        f"extra modules (the BatchNorms: {', '.join(extra_ours[:3])}{', ...' if len(extra_ours) > 3 else ''}) "
        f"for the channel pruners; only conv weights are compared.",
        "- NNI's masks also carry `'bias': None` for every (bias-free) conv; ignored.",
    ]
    mismatch = [f"  - {p}: {d}" for p, c in checks.items() for d in c.details[:10]]
    missing = [f"  - {p}: {m}" for p, c in checks.items() for m in c.missing]
    bar_ok = not slower
    failed = [p for p, c in checks.items() if not c.required_ok]

    out = [
        "## Mask computation: prunesearch vs NNI 3.0 (`benchmarks/bench_masks.py`)",
        "",
        f"Time to build the pruner and compute masks for `{CONFIG}` on ResNet-50 "
        f"(`search.zoo.get_model('{MODEL}')`, {bench.n_params:,} params, {len(bench.conv_names)} convs, "
        f"random weights from `torch.manual_seed({args.seed})`, a fresh identical model per run). "
        f"Both libraries run in one process; per pruner one untimed warm-up run each, then {args.reps} "
        f"repetitions alternating which library goes first; imports are not timed. "
        f"ctor = `Pruner(model, config_list)`, compress = `pruner.compress()`, total = both.",
        "",
        *C.env_lines(args.threads, load_before, load_after),
        "- 1-min load average after each pruner's runs (this benchmark itself adds ~1): "
        + ", ".join(f"{p} {v:.2f}" for p, v in loads.items()),
        "",
        "### Timings",
        "",
        timing_table(results),
        "",
        f"### Verdict (median total; the bar: ours not slower than NNI on any pruner; within "
        f"{C.PARITY:.0%} counts as parity)",
        "",
        *verdict_lines,
        "",
        f"Bar: **{'PASS' if bar_ok else 'FAIL'}**" + ("" if bar_ok else f" (ours slower on {', '.join(slower)})"),
        "",
        "### Masks: ours vs NNI (per conv weight; from the warm-up runs)",
        "",
        mask_table(checks),
        "",
    ]
    if mismatch or missing:
        out += ["Differences (first 10 per pruner):", "", *missing, *mismatch, ""]
    else:
        out += ["No differences: every conv weight mask is identical.", ""]
    out += ["Notes:", "", *notes, ""]
    if profiles:
        out += ["### Profiles of ours", ""]
        for p, text in profiles.items():
            out += [f"<details><summary>{p}</summary>", "", "```text", text, "```", "", "</details>", ""]

    report = "\n".join(out)
    print(report)
    if args.write:
        path = C.write_section(SECTION, report, args.output)
        print(f"# wrote section '{SECTION}' of {path}", file=sys.stderr)
    if failed:
        print(f"# mask sanity check FAILED for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
