"""Shared helpers for the ``benchmarks/bench_*.py`` scripts.

Nothing here imports torch or a peer library at module level, so a bench script can import this
first, check its peers with :func:`require_module` and only then pay for the heavy imports.

- machine / environment: :func:`machine_info`, :func:`versions`, :func:`git_state`, :func:`load_avg`,
  :func:`wait_for_quiet`;
- peers: :func:`require_module` (exits with a message pointing at ``setup_peers.sh``);
- timing: :func:`timed`, :class:`Stats`, :func:`fmt_s`, :func:`ratio_verdict`;
- profiling: :func:`profile_call`;
- output: :func:`md_table`, :func:`env_lines`, :func:`write_section` (replace one benchmark's section
  of ``BENCHMARKS.md`` between ``<!-- begin NAME -->`` / ``<!-- end NAME -->`` markers).
"""

from __future__ import annotations

import cProfile
import gc
import importlib
import importlib.metadata as md
import io
import os
import platform
import pstats
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
PEER_VENV_PYTHON = BENCH_DIR / ".peers" / "venv" / "bin" / "python"

# --- peers ----------------------------------------------------------------------------------------


def require_module(name: str, what: str | None = None) -> ModuleType:
    """Import ``name`` or exit with status 2 and a message that points at ``setup_peers.sh``."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, but also NNI's import-time failures on a broken install
        script = Path(sys.argv[0]).name or "bench_<name>.py"
        print(
            f"error: cannot import {name!r} ({what or name}) with {sys.executable}:\n"
            f"    {type(exc).__name__}: {exc}\n"
            f"The benchmarks run in the peer venv (NNI 3.0, Torch-Pruning, prunesearch editable). Build or repair\n"
            f"it with `bash benchmarks/setup_peers.sh` (see benchmarks/README.md), then run\n"
            f"    {PEER_VENV_PYTHON.relative_to(REPO_ROOT)} benchmarks/{script}",
            file=sys.stderr,
        )
        sys.exit(2)


def dist_version(dist: str) -> str:
    """Installed version of a distribution (``'-'`` if absent). Prefer this over ``__version__``
    (``torch_pruning.__version__`` says 1.6.0 for 1.6.1)."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "-"


def versions(dists: Iterable[str] = ("torch", "nni", "torch-pruning", "numpy", "prunesearch")) -> dict[str, str]:
    """``{'python': ..., dist: version}``; torch's runtime ``__version__`` (with the ``+cpu`` tag) if loaded."""
    out = {"python": platform.python_version()}
    for dist in dists:
        out[dist] = dist_version(dist)
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.__version__
    return out


# --- machine ---------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict[str, str]:
    """CPU model (``/proc/cpuinfo``), logical CPUs, physical cores, RAM (``/proc/meminfo``), OS."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    physical = {
        (blk.get("physical id"), blk.get("core id"))
        for blk in (
            dict(kv.split(":", 1) for kv in (ln.replace("\t", "") for ln in block.splitlines()) if ":" in kv)
            for block in cpuinfo.split("\n\n")
        )
        if blk.get("core id") is not None
    }
    logical = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal:")), 0)
    cores = f"{logical} logical CPUs"
    if physical:
        cores += f", {len(physical)} physical cores"
    if usable != logical:
        cores += f", {usable} usable by this process"
    return {
        "cpu": model,
        "cores": cores,
        "ram": f"{mem_kb / 2**20:.1f} GiB" if mem_kb else "unknown",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
    }


def load_avg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def fmt_load(load: Sequence[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load) + " (1 / 5 / 15 min)"


def wait_for_quiet(max_load: float, timeout_s: float, poll_s: float = 15.0) -> tuple[float, float, float]:
    """Wait until the 1-minute load average is <= ``max_load`` or ``timeout_s`` passes; return the load."""
    deadline = time.monotonic() + timeout_s
    load = load_avg()
    while load[0] > max_load and time.monotonic() < deadline:
        print(f"# load {load[0]:.2f} > {max_load}: waiting ({deadline - time.monotonic():.0f} s left)", file=sys.stderr)
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        load = load_avg()
    if load[0] > max_load:
        print(f"# load still {load[0]:.2f} > {max_load} after {timeout_s:.0f} s; running anyway", file=sys.stderr)
    return load


def git_state() -> str:
    """``<short sha>`` plus ``(+N uncommitted files under search/)`` when the library tree is dirty."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    sha = run("rev-parse", "--short", "HEAD").strip() or "unknown"
    # porcelain lines are 'XY path': keep the leading status column (do not strip the output)
    dirty = [ln[3:] for ln in run("status", "--porcelain", "--", "search").splitlines() if ln.strip()]
    return f"{sha} + uncommitted changes in {', '.join(dirty)}" if dirty else sha


def command_line() -> str:
    """The command as typed from the repo root (interpreter path made relative when possible)."""
    def rel(path: Path) -> str:
        try:
            return str(path.absolute().relative_to(REPO_ROOT))
        except ValueError:
            return str(path)

    return shlex.join([rel(Path(sys.executable)), rel(Path(sys.argv[0])), *sys.argv[1:]])


# --- timing -----------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call, with ``time.perf_counter``; collects garbage first."""
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


@dataclass
class Stats:
    """Repeated timings of one quantity (seconds)."""

    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")


def fmt_s(seconds: float) -> str:
    """Seconds with 4 decimals below 10 s, 2 above."""
    return f"{seconds:.4f}" if seconds < 10 else f"{seconds:.2f}"


#: ratios within this relative distance of 1 count as parity (neither faster nor slower)
PARITY = 0.02


def is_slower(ours: float, theirs: float) -> bool:
    """Ours slower than the peer by more than the parity band."""
    return ours > theirs * (1 + PARITY)


def ratio_verdict(ours: float, theirs: float, peer: str = "NNI") -> tuple[float, str]:
    """``(theirs / ours, 'ours faster than NNI by 3.10x')``; within ``PARITY`` (2 %) counts as parity."""
    if ours <= 0:
        return float("inf"), "ours took no measurable time"
    r = theirs / ours
    if not is_slower(ours, theirs) and not is_slower(theirs, ours):
        return r, f"parity with {peer} ({r:.2f}x)"
    if r > 1:
        return r, f"ours faster than {peer} by {r:.2f}x"
    return r, f"ours SLOWER than {peer} by {1 / r:.2f}x"


# --- profiling --------------------------------------------------------------------------------------


def profile_call(fn: Callable[[], Any], top: int = 25, sort: str = "cumulative") -> str:
    """cProfile one call; return the ``top`` rows of the stats sorted by ``sort`` (as text)."""
    prof = cProfile.Profile()
    gc.collect()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats(sort).print_stats(top)
    return shorten_paths(buf.getvalue())


def shorten_paths(text: str) -> str:
    """Make file names in profiler output readable: repo-relative, or relative to site-packages/stdlib."""
    prefixes = {p + os.sep for p in sys.path if p and ("site-packages" in p or "python3" in p)}
    prefixes.add(str(REPO_ROOT) + os.sep)
    for prefix in sorted(prefixes, key=len, reverse=True):  # site-packages inside the repo's venv first
        text = text.replace(prefix, "")
    return text


# --- output -----------------------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one char per column, ``l`` or ``r`` (default: l then r)."""
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def env_lines(threads: int, load_before: Sequence[float], load_after: Sequence[float] | None = None,
              dists: Iterable[str] = ("torch", "nni", "numpy", "prunesearch")) -> list[str]:
    """Markdown bullet lines: date, machine, versions, threads, load, git state, command."""
    m = machine_info()
    v = versions(dists)
    vers = ", ".join(f"{k} {val}" for k, val in v.items())
    lines = [
        f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- Machine: {m['cpu']}; {m['cores']}; {m['ram']} RAM; {m['os']}",
        f"- Versions: {vers}",
        f"- Threads: `torch.set_num_threads({threads})` (`torch.get_num_threads()` = {threads_now()})",
        f"- Load average at start: {fmt_load(load_before)}",
    ]
    if load_after is not None:
        lines.append(f"- Load average at end: {fmt_load(load_after)}")
    lines += [f"- Code: prunesearch at {git_state()}", f"- Command: `{command_line()}`"]
    return lines


def threads_now() -> int | str:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else "?"


_PREAMBLE = """# Benchmarks

Results of the scripts in `benchmarks/` (see `benchmarks/README.md` for the peer venv and how to
run them). Each section is written by its script with `--write` and replaced on the next run.
"""


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Replace (or append) the section between ``<!-- begin name -->`` and ``<!-- end name -->``."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}\n"
    text = path.read_text() if path.exists() else _PREAMBLE
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    # write a sibling temp file and rename it over the target: other bench scripts may update their own
    # sections of the same file, and a reader never sees a half-written file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)
    return path
