"""Time until the experiment page of a 10,000-trial experiment is interactive, in headless Chromium.

Run from the repo root (needs Debian's ``chromium``; no peers)::

    python benchmarks/bench_ui.py                 # 5 runs, print a markdown block for BENCHMARKS.md
    python benchmarks/bench_ui.py --runs 9 --trials 20000
    python benchmarks/bench_ui.py --write         # also replace the "bench_ui" section of BENCHMARKS.md

Method:

- a real uvicorn server (API + UI, runner off) on a temp SQLite file; one experiment whose
  ``--trials`` finished trials (realistic rows: params, config list, metrics, six layers of
  achieved sparsity; 1% failed with a traceback) are bulk-inserted into ``trials`` with the
  service's SQLAlchemy model, the experiment row and its best trial set through ``service.store``;
- times from navigation start, read from the page: ``ps:table`` (``performance.mark`` in
  ``web/experiment.js``) = the first page of the trial table is on screen and usable (sort,
  scroll, select); ``ps:charts`` = the three charts are drawn with every trial's point;
- **interactive** is measured, not marked: a ``PerformanceObserver`` installed before the page's
  own scripts records every long task (> 50 ms on the main thread, when input would wait); after
  ``ps:charts`` the bench waits for ``--quiet-window`` seconds without one, and interactive is the
  end of the last long task (never before ``ps:table``), as Lighthouse's TTI does with a 5 s window.
  Also reported: the blocking time after ``ps:table`` (each long task's time over 50 ms, summed)
  and the longest task after it, so a short "usable" mark cannot hide a freeze;
- **cold**: each run in a new browser context (empty HTTP cache: HTML and modules are fetched and
  compiled); **warm**: a second navigation in that context (HTTP cache, V8 code cache), as when a
  person opens another experiment;
- reported: the median and min over ``--runs``; the goal is interactive < 2 s (cold).

The machine is shared: the load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    command_line,
    fmt_load,
    git_state,
    load_avg,
    machine_info,
    md_table,
    wait_for_quiet,
    write_section,
)

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def populate(app: Any, n: int, seed: int = 0) -> int:
    """One succeeded experiment with ``n`` trials; returns its id."""
    import sqlalchemy as sa

    from service import store
    from service.db import session_scope
    from service.models import Trial
    from service.states import ExperimentState, TrialState

    rng = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc)
    spec = {"name": "bench-10k", "algorithm": {"name": "optuna", "max_trials": n},
            "objective": {"metric": "accuracy", "best_result_mode": "maximize"}}
    rows, best, best_score = [], None, -1.0
    for i in range(n):
        ratios = {layer: round(rng.uniform(0, 0.9), 4) for layer in LAYERS}
        mean = sum(ratios.values()) / len(ratios)
        flops_ratio = max(0.05, 1 - mean * rng.uniform(0.9, 1.4))
        failed = rng.random() < 0.01
        score = None if failed else max(0.0, 0.98 - 0.4 * mean ** 2 + rng.gauss(0, 0.02))
        if score is not None and score > best_score:
            best, best_score = i, score
        started = now - dt.timedelta(seconds=(n - i) * 5)
        rows.append({
            "experiment_id": 0, "number": i, "parent_number": None, "attempt": 1,
            "state": TrialState.FAILED if failed else TrialState.SUCCEEDED,
            "params": {f"sparsity_{k}": v for k, v in ratios.items() if k.startswith("conv")},
            "config_list": [{"op_names": [k], "sparse_ratio": v} for k, v in ratios.items() if k.startswith("conv")],
            "score": score, "flops_ratio": None if failed else flops_ratio,
            "metrics": {} if failed else {"accuracy": score, "loss": 0.1, "flops": 3.6e6 * flops_ratio,
                                          "params": 6.6e4 * flops_ratio, "flops_ratio": flops_ratio,
                                          "params_ratio": flops_ratio, "latency_ms": 0.4 * flops_ratio},
            "requested_sparsity": ratios, "achieved_sparsity": None if failed else ratios,
            "error": "Traceback (most recent call last):\n  ...\nRuntimeError: worker died" if failed else None,
            "worker": "bench:1", "created_at": started, "started_at": started,
            "finished_at": started + dt.timedelta(seconds=4), "duration_s": 4.0,
        })
    with session_scope(app.state.session_factory) as s:
        exp = store.create_experiment(s, spec=spec, name="bench-10k", algorithm="optuna",
                                      model="search.zoo:digits_cnn", max_trials=n)
        store.set_experiment_state(s, exp, ExperimentState.RUNNING)
        for row in rows:
            row["experiment_id"] = exp.id
        for start in range(0, n, 2000):
            s.execute(sa.insert(Trial), rows[start:start + 2000])
        # what the runner's per-trial commits leave on the experiment row
        exp.n_trials, exp.best_trial_number = n, best
        exp.best_score, exp.best_flops_ratio = best_score, rows[best]["flops_ratio"]
        store.set_experiment_state(s, exp, ExperimentState.SUCCEEDED)
        return exp.id


def serve(app: Any) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server, thread


# Records every long task (> 50 ms on the main thread) from the start of each document.
LONG_TASKS_JS = """(() => {
  const tasks = window.__psLongTasks = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) tasks.push([e.startTime, e.duration]); })
    .observe({type: "longtask", buffered: true});
})();"""
# True once no long task has ended for `ms` since the later of the last long task and ps:charts.
QUIET_JS = """(ms) => {
  const tasks = window.__psLongTasks;
  const last = tasks.length ? tasks[tasks.length - 1][0] + tasks[tasks.length - 1][1] : 0;
  const charts = performance.getEntriesByName("ps:charts")[0];
  return !!charts && performance.now() - Math.max(last, charts.startTime) >= ms;
}"""


def measure(page: Any, url: str, quiet_s: float) -> dict[str, float]:
    """Load ``url``, wait for the charts and then a quiet window; the page's times in seconds."""
    page.goto(url)
    page.wait_for_selector("#experiment-page[data-ready]", timeout=120_000)
    page.wait_for_function(QUIET_JS, arg=quiet_s * 1000, polling=100, timeout=120_000)
    marks = page.evaluate("Object.fromEntries(performance.getEntriesByType('mark').map(m => [m.name, m.startTime]))")
    tasks = page.evaluate("window.__psLongTasks")
    table = marks["ps:table"]
    after = [(start, dur) for start, dur in tasks if start + dur > table]
    return {
        "table": table / 1000, "charts": marks["ps:charts"] / 1000,
        # the end of the last long task, and never before the table is usable (a TTI)
        "interactive": max([table] + [start + dur for start, dur in after]) / 1000,
        # blocking time after the table is usable: what each long task adds over 50 ms
        "blocking": sum(max(0.0, min(dur, start + dur - table) - 50) for start, dur in after) / 1000,
        "longest": max([0.0] + [dur for _, dur in after]) / 1000,
        "points": int(page.get_attribute("#chart-pareto", "data-points") or 0),
    }


def chromium_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--write", action="store_true", help="replace the 'bench_ui' section of BENCHMARKS.md")
    parser.add_argument("--quiet-window", type=float, default=2.0, metavar="S",
                        help="interactive = the end of the last long task before S seconds without one (default 2)")
    parser.add_argument("--quiet", type=float, default=None, metavar="LOAD",
                        help="first wait (up to 10 min) for the 1-min load average to drop below LOAD")
    args = parser.parse_args(argv)

    chromium = shutil.which("chromium")
    if chromium is None:
        print("error: the 'chromium' binary is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from service.api import web
    from service.app import create_app
    from service.settings import Settings

    if args.quiet is not None:
        wait_for_quiet(args.quiet, 600)
    load_before = load_avg()
    with tempfile.TemporaryDirectory(prefix="ps-bench-ui-") as tmp:
        d = Path(tmp)
        app = create_app(Settings(database_url=f"sqlite:///{d / 'ps.db'}", data_dir=d, artifacts_dir=d / "a",
                                  runner=False), start_runner=False)
        if not any(getattr(r, "path", None) == "/static/{path:path}" for r in app.routes):
            app.include_router(web.router)
        url, server, thread = serve(app)
        t0 = time.perf_counter()
        experiment_id = populate(app, args.trials)
        print(f"inserted {args.trials} trials in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        page_url = f"{url}/experiments/{experiment_id}"
        cold, warm = [], []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            for run in range(args.runs + 1):  # run 0 warms the server (imports, SQLite page cache)
                context = browser.new_context(viewport={"width": args.width, "height": args.height})
                context.add_init_script(LONG_TASKS_JS)
                page = context.new_page()
                first = measure(page, page_url, args.quiet_window)
                second = measure(page, page_url, args.quiet_window)
                context.close()
                if run == 0:
                    continue
                cold.append(first)
                warm.append(second)
                print(f"run {run}: " + "; ".join(
                    f"{name} table {r['table']:.2f} s, charts {r['charts']:.2f} s, interactive {r['interactive']:.2f} s "
                    f"(blocking {r['blocking']:.2f} s, longest task {r['longest']:.2f} s)"
                    for name, r in (("cold", first), ("warm", second))), file=sys.stderr)
            browser.close()
        server.should_exit = True
        thread.join(timeout=30)
    load_after = load_avg()

    def cell(runs: list[dict[str, float]], key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.median(values):.2f} s (min {min(values):.2f})"

    goal = statistics.median(r["interactive"] for r in cold)
    m = machine_info()
    body = "\n".join([
        f"## Web UI: experiment page with {args.trials:,} trials (`benchmarks/bench_ui.py`)",
        "",
        md_table(["navigation", "table usable (`ps:table`)", "3 charts drawn (`ps:charts`)",
                  "interactive (end of the last long task)", "blocking after the table (> 50 ms each)",
                  "longest task after the table"], [
            [name, *(cell(runs, key) for key in ("table", "charts", "interactive", "blocking", "longest"))]
            for name, runs in (("cold (new browser context)", cold), ("warm (second visit)", warm))
        ]),
        "",
        f"Median (min) of {args.runs} runs, times from navigation start, {args.width}x{args.height} viewport; "
        f"{cold[0]['points']:,} points in the scatter charts; interactive = the end of the last long task before "
        f"{args.quiet_window:g} s without one (it can come before the charts: they are drawn in shorter tasks). "
        f"Goal: interactive < 2 s cold — {'met' if goal < 2 else 'NOT met'} ({goal:.2f} s; "
        f"charts drawn at {statistics.median(r['charts'] for r in cold):.2f} s).",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- Machine: {m['cpu']}; {m['cores']}; {m['ram']} RAM; {m['os']}",
        f"- Browser: {chromium_version(chromium)} (headless, `--disable-gpu`)",
        f"- Load average at start / end: {fmt_load(load_before)} / {fmt_load(load_after)}",
        f"- Code: prunesearch at {git_state()}",
        f"- Command: `{command_line()}`",
    ])
    print(body)
    if args.write:
        print(f"wrote {write_section('bench_ui', body)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
