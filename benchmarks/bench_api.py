"""Service benchmark: trial-listing latency under 50 concurrent clients, and the runner's overhead per trial.

Run from the repo root with the project's own interpreter (no peers needed; ``wrk`` is used when it
is installed, ``apt-get install -y wrk``, else an ``httpx`` client in this process)::

    python benchmarks/bench_api.py                    # both parts, SQLite and PostgreSQL, print the report
    python benchmarks/bench_api.py --write            # and replace the bench_api section of BENCHMARKS.md
    python benchmarks/bench_api.py --quick            # 10 s of load, 100 no-op trials (development)
    python benchmarks/bench_api.py --backends sqlite --max-load 1.5

Parts:

1. **Listing trials.** A fresh database per backend (a SQLite file; a new PostgreSQL database
   ``prunesearch_bench_<random>`` on ``--pg-url``, dropped at the end) gets one experiment with
   10,000 trials bulk-inserted through the ORM table (realistic rows: params, config list, ten
   metrics, per-layer sparsity; scores with ties and gaps, like ``tests/service/conftest.py``'s
   ``trials_10k``). A real server, ``uvicorn --factory service.app:create_app`` with ``--workers``
   (default 2, one per core of the 2-core benchmark machine; ``prunesearch serve`` runs one) and the
   runner off, answers
   ``GET /api/v1/experiments/{id}/trials?limit=50`` for every page of every sort (number, score,
   flops_ratio, duration_s, each ascending and descending; the pages' cursors are collected first by
   walking each sort to its end, which also checks that every walk returns all 10,000 trials
   once). First one connection sends them one after the other (the service time of a request, for
   reference), then ``--clients`` (50) connections send them in a loop for ``--duration`` seconds,
   twice: *saturating* (each connection sends its next request when the answer arrives:
   the server's throughput limit, where latency is mostly queueing, clients / throughput) and
   *users* (each connection first waits a think time drawn from ``--think-ms``, 0.5-1.5 s, like
   people paging through a table; the wait is not counted). Reported: p50 / p90 / p99 / max
   latency, requests per second, errors. Goal: p99 < 100 ms.
2. **Scheduler overhead.** The real :class:`service.runner.Runner` (stepped in this process, in-process
   executor, database of the backend) drives an AGP experiment of ``--trials`` (500) trials whose
   trial function returns a result at once. Overhead per trial = (wall time from the first step to
   the experiment's end, minus the time spent inside the trial function) / trials. It includes
   claiming, building the generator, one commit per trial (its result and journal entry, its events
   and the next trial handed out; a checkpoint of the generator's state every 50 results,
   ``service.runner_experiment.CHECKPOINT_EVERY_TELLS``), and the final (failing: no-op trials
   leave no model) export. Goal: < 20 ms per trial. Also shown: the mean time between two trial
   starts over the first and the last 50 trials, and the size of the stored generator checkpoint
   at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

sys.path.insert(0, str(C.REPO_ROOT))

SECTION = "bench_api"
BACKENDS = ("sqlite", "postgresql")
SORTS = ("number", "-number", "score", "-score", "flops_ratio", "-flops_ratio", "duration_s", "-duration_s")
N_TRIALS = 10_000
PAGE = 50
GOAL_P99_MS = 100.0
GOAL_OVERHEAD_MS = 20.0
ONE_CLIENT = "1 client"
DEFAULT_PG_URL = os.environ.get("PRUNESEARCH_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

_WRK_SCRIPT = r"""
-- every connection walks the list of paths from its own offset
local counter = 0
local paths = {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  idx = (tid * 7919) % #paths
  think_min, think_max = tonumber(args[2]), tonumber(args[3])
  math.randomseed(tid * 104729 + 1)
end
function delay()
  -- think time (ms) before a connection's next request; not counted in the latency
  if think_max > 0 then return math.random(think_min, think_max) end
  return 0
end
function request()
  idx = idx % #paths + 1
  return wrk.format("GET", paths[idx])
end
function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {"p50": %d, "p90": %d, "p99": %d, "max": %d, "requests": %d, "duration_us": %d, ' ..
    '"status_errors": %d, "connect_errors": %d, "read_errors": %d, "timeouts": %d}\n',
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, summary.requests,
    summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.timeout))
end
"""


# --- databases ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def backend_database(backend: str, workdir: Path, pg_url: str) -> Iterator[str]:
    """The URL of a new, empty database of ``backend`` (PostgreSQL: a new database, dropped afterwards)."""
    import sqlalchemy as sa

    from service import db

    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    admin = sa.create_engine(db.normalize_url(pg_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"prunesearch_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield db.normalize_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def server_versions(url: str) -> str:
    import sqlalchemy as sa

    from service import db

    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                return "PostgreSQL " + conn.exec_driver_sql("SHOW server_version").scalar_one().split()[0]
            return "SQLite " + conn.exec_driver_sql("select sqlite_version()").scalar_one()
    except sa.exc.SQLAlchemyError as exc:
        return f"unknown ({exc.__class__.__name__})"
    finally:
        engine.dispose()


def seed_trials(url: str, n: int = N_TRIALS) -> int:
    """One experiment with ``n`` realistic trials (bulk insert); returns its id."""
    import sqlalchemy as sa

    from service import db, store
    from service.models import Trial
    from service.states import TrialState

    db.upgrade(url)
    factory = db.make_session_factory(url)
    rng = random.Random(0)
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    layers = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
    try:
        with db.session_scope(factory) as s:
            exp_id = store.create_experiment(s, spec={"version": 1}, name="bench", algorithm="agp",
                                             model="search.zoo:digits_cnn", max_trials=None).id
            rows = []
            for number in rng.sample(range(n), n):  # ids not in number order
                done = number % 10 != 0
                ratio = rng.choice([0.25, 0.5, 0.75])
                start = t0 + dt.timedelta(seconds=number * 3)
                duration = float(number % 7) + rng.random() if number % 3 else None
                rows.append({
                    "experiment_id": exp_id, "number": number, "parent_number": number - 1 if number else None,
                    "attempt": 1, "state": TrialState.SUCCEEDED if done else TrialState.FAILED,
                    "params": {"iteration": number + 1},
                    "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": ratio}],
                    "score": round(rng.random(), 2) if done else None,  # ~100 ties per value
                    "flops_ratio": ratio if done else None,
                    "metrics": {"accuracy": rng.random(), "loss": rng.random(), "compact_accuracy": rng.random(),
                                "flops": 1e6 * ratio, "params": 6e4 * ratio, "flops_ratio": ratio,
                                "params_ratio": ratio, "origin_flops": 3.6e6, "origin_params": 66154.0,
                                "seconds": duration or 0.0} if done else {},
                    "requested_sparsity": {"op_types=Conv2d": ratio},
                    "achieved_sparsity": {name: ratio for name in layers} if done else None,
                    "error": None if done else "Traceback (most recent call last):\n  ...\nValueError: bench",
                    "worker": "bench:1", "created_at": start, "started_at": start,
                    "finished_at": start + dt.timedelta(seconds=duration or 0.0), "duration_s": duration,
                })
            s.execute(sa.insert(Trial.__table__), rows)
        engine = factory.kw["bind"]
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
        return exp_id
    finally:
        factory.kw["bind"].dispose()


# --- the server -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def api_server(url: str, workdir: Path, workers: int) -> Iterator[str]:
    """``uvicorn --factory service.app:create_app`` (runner off) on a free port; yields its root URL."""
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(C.REPO_ROOT), "PRUNESEARCH_DATABASE_URL": url, "PRUNESEARCH_RUNNER": "off",
           "PRUNESEARCH_DATA_DIR": str(workdir / "data"), "PRUNESEARCH_ARTIFACTS_DIR": str(workdir / "artifacts"),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    log_path = workdir / f"uvicorn-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /healthz:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def collect_paths(base: str, exp_id: int) -> list[str]:
    """The path of every page of every sort (following ``next_cursor``); checks each walk is complete."""
    import httpx

    paths = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for sort in SORTS:
            path = f"/api/v1/experiments/{exp_id}/trials?limit={PAGE}&sort={sort}"
            seen: list[int] = []
            while True:
                paths.append(path)
                resp = client.get(path)
                resp.raise_for_status()
                body = resp.json()
                assert body["count"] == N_TRIALS, body["count"]
                seen += [row["number"] for row in body["data"]]
                if body["next_cursor"] is None:
                    break
                path = str(httpx.URL(f"/api/v1/experiments/{exp_id}/trials",
                                     params={"limit": PAGE, "sort": sort, "cursor": body["next_cursor"]}))
            if sorted(seen) != list(range(N_TRIALS)):
                raise AssertionError(f"sort {sort}: the pages did not return every trial exactly once")
    return paths


# --- load ---------------------------------------------------------------------------------------------


@dataclass
class Latency:
    tool: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    seconds: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")


def load_with_wrk(base: str, paths: list[str], clients: int, duration: float, workdir: Path,
                  think_ms: tuple[int, int] = (0, 0)) -> Latency:
    script, path_file = workdir / "paths.lua", workdir / "paths.txt"
    script.write_text(_WRK_SCRIPT)
    path_file.write_text("\n".join(paths) + "\n")
    cmd = ["wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{int(duration)}s", "--timeout", "10s", "-s", str(script),
           base, "--", str(path_file), str(think_ms[0]), str(think_ms[1])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, check=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    r = json.loads(line[len("RESULT "):]) if line else {}
    if not r.get("requests"):
        raise RuntimeError(f"wrk completed no request:\n{proc.stdout}\n{proc.stderr}")
    errors = r["status_errors"] + r["connect_errors"] + r["read_errors"] + r["timeouts"]
    return Latency(f"wrk {min(2, clients)} thread(s)", r["p50"] / 1e3, r["p90"] / 1e3, r["p99"] / 1e3, r["max"] / 1e3, r["requests"],
                   r["duration_us"] / 1e6, errors)


def load_with_httpx(base: str, paths: list[str], clients: int, duration: float,
                    think_ms: tuple[int, int] = (0, 0)) -> Latency:
    """``clients`` asyncio tasks in this process, each sending its next request when the answer arrives
    (after a think time drawn from ``think_ms``, not counted in the latency)."""
    import httpx

    samples: list[float] = []
    errors = 0
    rng = random.Random(0)

    async def client_loop(client: httpx.AsyncClient, offset: int, stop_at: float) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                resp = await client.get(paths[i % len(paths)])
                await resp.aread()
                if resp.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            samples.append(time.perf_counter() - t0)
            i += 1
            if think_ms[1] > 0:
                await asyncio.sleep(rng.uniform(*think_ms) / 1e3)

    async def run() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(client_loop(client, k * 7919, t0 + duration) for k in range(clients)))
            return time.perf_counter() - t0

    seconds = asyncio.run(run())
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return Latency("httpx (in the benchmark process)", q[49] * 1e3, q[89] * 1e3, q[98] * 1e3, max(samples) * 1e3,
                   len(samples), seconds, errors)


# --- scheduler overhead -----------------------------------------------------------------------------


@dataclass
class Overhead:
    trials: int
    wall_s: float
    trial_s: float
    steps: int
    state_bytes: int
    gaps_ms: list[float] = field(default_factory=list)

    @property
    def per_trial_ms(self) -> float:
        return (self.wall_s - self.trial_s) / self.trials * 1e3

    def mean_gap(self, part: slice) -> float:
        gaps = self.gaps_ms[part]
        return statistics.fmean(gaps) if gaps else float("nan")


def scheduler_overhead(url: str, n: int, workdir: Path) -> Overhead:
    """Drive an ``n``-trial AGP experiment with a no-op trial through the real Runner."""
    import torch

    from service import db, store
    from service.artifacts import ArtifactStore
    from service.runner import Runner, RunnerOptions
    from service.settings import Settings
    from workers.spec import ExperimentSpec
    from workers.trial import TrialResult

    torch.set_num_threads(1)
    logging.getLogger("service").setLevel(logging.ERROR)  # the end's export of a no-op trial fails, by design
    db.upgrade(url)
    factory = db.make_session_factory(url)
    spec = ExperimentSpec.from_dict({
        "name": "noop", "model": {"factory": "search.zoo:digits_cnn"}, "data": {"name": "digits"},
        "pruner": {"name": "l1", "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]},
        "algorithm": {"name": "agp", "total_iteration": n},
        "trial": {"finetune_epochs": 0, "pretrain_epochs": 0}, "resources": {"max_concurrent_trials": 1},
    }, check=False).to_dict()
    with db.session_scope(factory) as s:
        exp_id = store.create_experiment(s, spec=spec, name="noop", algorithm="agp", model=spec["model"]["factory"],
                                         max_trials=None).id
    inside = [0.0]
    starts: list[float] = []

    def noop_trial(trial_spec: Any, progress: Any = None) -> Any:
        t0 = time.time()
        starts.append(time.perf_counter())
        result = TrialResult(trial_spec.task_id, score=0.5 + trial_spec.task_id * 1e-6,
                             metrics={"accuracy": 0.5, "flops_ratio": 0.5}, artifact_dir=trial_spec.artifact_dir,
                             started_at=t0, worker="bench")
        result.finished_at = time.time()
        inside[0] += result.finished_at - t0
        return result

    artifacts = workdir / "runner-artifacts"
    settings = Settings(database_url=url, data_dir=workdir, artifacts_dir=artifacts, max_concurrent_trials=1)
    runner = Runner(settings, factory, None, ArtifactStore(artifacts), owner_id="bench",
                    options=RunnerOptions(trial_fn=noop_trial, export_formats=()))
    steps = 0
    t0 = time.perf_counter()
    try:
        while True:  # until a step does nothing and the runner drives no experiment: the experiment ended
            busy = runner.step()
            steps += 1
            if not busy and not runner.drivers:
                break
        wall = time.perf_counter() - t0
        runner.close()
        with factory() as s:
            exp = store.get_experiment(s, exp_id)
            n_rows = len(store.get_trials(s, exp_id))
            state_bytes = len(json.dumps(exp.generator_state)) if exp and exp.generator_state else 0
        if exp is None or exp.state.value != "succeeded" or n_rows != n:
            raise RuntimeError(f"the no-op experiment ended {exp.state if exp else None} with {n_rows} trials")
    finally:
        factory.kw["bind"].dispose()
    gaps = [(b - a) * 1e3 for a, b in zip(starts, starts[1:], strict=False)]
    return Overhead(n, wall, inside[0], steps, state_bytes, gaps)


# --- report -------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def latency_ok(r: Latency) -> bool:
    return r.p99_ms < GOAL_P99_MS and r.errors == 0


def build_report(args: argparse.Namespace, latencies: dict[tuple[str, str], Latency], overheads: dict[str, Overhead],
                 db_versions: dict[str, str], load_before: tuple[float, ...], load_after: tuple[float, ...],
                 load_wait: tuple[float, ...] | None) -> str:
    m = C.machine_info()
    v = C.versions(("fastapi", "starlette", "uvicorn", "pydantic", "sqlalchemy", "psycopg", "httpx", "torch",
                    "prunesearch"))
    wrk = shutil.which("wrk")
    lines = [
        "## Service API: listing trials under load, runner overhead (`benchmarks/bench_api.py`)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- Machine: {m['cpu']}; {m['cores']}; {m['ram']} RAM; {m['os']}",
        f"- Versions: {', '.join(f'{k} {val}' for k, val in v.items())}; "
        f"{'; '.join(db_versions[b] for b in db_versions)} (Python's sqlite3 module: SQLite {sqlite3.sqlite_version})",
        f"- Load generator: {'`wrk` 4.x (' + wrk + ')' if wrk and not args.httpx else 'httpx AsyncClient in the benchmark process'}",
        f"- Server: `uvicorn --factory service.app:create_app --workers {args.workers} --log-level warning "
        "--no-access-log` (runner off), on the same machine as the load generator",
        f"- Load average at start: {C.fmt_load(load_before)}; at end: {C.fmt_load(load_after)}",
    ]
    if load_wait is not None:
        lines.append(f"- Waited for load <= {args.max_load}: load when starting {C.fmt_load(load_wait)}")
    lines += [f"- Code: prunesearch at {C.git_state()}", f"- Command: `{C.command_line()}`", ""]
    if latencies:
        lines += [
            f"### GET /api/v1/experiments/{{id}}/trials: {N_TRIALS:,} trials, pages of {PAGE}, up to {args.clients} "
            f"concurrent clients, {args.duration:.0f} s per load",
            "",
            f"Every page of every sort ({', '.join(SORTS)}) in turn: 1,600 distinct requests, first pages and "
            "cursor pages alike. Three loads: *1 client* sending requests one after the other (the service time "
            f"of one request), *saturating*: each of the {args.clients} connections sends its next "
            "request as soon as the answer arrives (the server's throughput limit; the latency is then mostly "
            f"queueing: clients / throughput), and *users*, each connection waits a think time drawn from "
            f"{args.think_ms[0]}-{args.think_ms[1]} ms before its next request (not counted in the latency). "
            "Goal: p99 < 100 ms.",
            "",
            C.md_table(["backend", "load", "p50 ms", "p90 ms", "p99 ms", "max ms", "req/s", "errors",
                        "goal p99 < 100 ms"],
                       [[b, profile, f"{r.p50_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.1f}",
                         f"{r.rps:.0f}", r.errors,
                         verdict(latency_ok(r)) if profile != ONE_CLIENT else "(reference)"]
                        for (b, profile), r in latencies.items()]),
            "",
        ]
    if overheads:
        from service.runner_experiment import CHECKPOINT_EVERY_TELLS

        lines += [
            f"### Scheduler overhead per trial: real Runner, no-op trial, AGP with {args.trials} trials",
            "",
            "(wall − time inside the trial function) / trials; the wall time runs from the first `step()` to the "
            "experiment's end (claim, generator, one commit per trial with its events, a generator checkpoint "
            f"every {CHECKPOINT_EVERY_TELLS} results, the final export attempt). "
            "Goal: < 20 ms.",
            "",
            C.md_table(["backend", "trials", "wall s", "in trials s", "overhead ms/trial", "first 50: ms between starts",
                        "last 50: ms between starts", "generator checkpoint at end", "goal < 20 ms"],
                       [[b, o.trials, f"{o.wall_s:.2f}", f"{o.trial_s:.4f}", f"{o.per_trial_ms:.1f}",
                         f"{o.mean_gap(slice(0, 50)):.1f}", f"{o.mean_gap(slice(-50, None)):.1f}",
                         f"{o.state_bytes / 1024:.0f} KiB", verdict(o.per_trial_ms < GOAL_OVERHEAD_MS)]
                        for b, o in overheads.items()]),
            "",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of sqlite, postgresql")
    p.add_argument("--parts", default="list,scheduler", help="comma-separated subset of list, scheduler")
    p.add_argument("--pg-url", default=DEFAULT_PG_URL,
                   help="PostgreSQL server to create the benchmark database on (env PRUNESEARCH_BENCH_PG_URL)")
    p.add_argument("--clients", type=int, default=50, help="concurrent connections (default 50)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per backend (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring (default 5)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (default 2: one per core here)")
    p.add_argument("--think-ms", default="500,1500",
                   help="MIN,MAX think time of the 'users' load in ms (default 500,1500; 0,0 skips that load)")
    p.add_argument("--trials", type=int, default=500, help="no-op trials of the scheduler part (default 500)")
    p.add_argument("--httpx", action="store_true", help="use the httpx load generator even if wrk is installed")
    p.add_argument("--quick", action="store_true", help="10 s of load, 100 trials (development)")
    p.add_argument("--write", action="store_true", help=f"replace the {SECTION} section of BENCHMARKS.md")
    p.add_argument("--output", type=Path, default=C.BENCHMARKS_MD, help="file for --write (default BENCHMARKS.md)")
    p.add_argument("--max-load", type=float, default=None, help="wait until the 1-min load average is <= this first")
    p.add_argument("--max-wait", type=float, default=900, help="give up waiting for --max-load after this many s")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.trials = 10.0, 2.0, 100
    try:
        low, high = (int(x) for x in args.think_ms.split(","))
    except ValueError:
        p.error(f"--think-ms: expected MIN,MAX in ms, got {args.think_ms!r}")
    if not 0 <= low <= high:
        p.error(f"--think-ms: need 0 <= MIN <= MAX, got {args.think_ms!r}")
    args.think_ms = (low, high)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    for b in args.backends:
        if b not in BACKENDS:
            p.error(f"--backends: unknown backend {b!r}; valid: {', '.join(BACKENDS)}")
    for part in args.parts:
        if part not in ("list", "scheduler"):
            p.error(f"--parts: unknown part {part!r}; valid: list, scheduler")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_wait = C.wait_for_quiet(args.max_load, args.max_wait) if args.max_load is not None else None
    load_before = C.load_avg()
    use_wrk = shutil.which("wrk") is not None and not args.httpx
    latencies: dict[tuple[str, str], Latency] = {}
    overheads: dict[str, Overhead] = {}
    db_versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_api_") as tmp:
        for backend in args.backends:
            workdir = Path(tmp) / backend
            workdir.mkdir()
            with backend_database(backend, workdir, args.pg_url) as url:
                db_versions[backend] = server_versions(url)
                if "list" in args.parts:
                    print(f"# {backend}: inserting {N_TRIALS:,} trials", file=sys.stderr)
                    exp_id = seed_trials(url)
                    with api_server(url, workdir, args.workers) as base:
                        paths = collect_paths(base, exp_id)
                        print(f"# {backend}: {len(paths)} pages; load for {args.warmup:.0f} s warm-up + "
                              f"{args.duration:.0f} s", file=sys.stderr)
                        profiles = {ONE_CLIENT: (1, (0, 0)), "saturating": (args.clients, (0, 0))}
                        if args.think_ms[1] > 0:
                            profiles["users"] = (args.clients, args.think_ms)
                        for profile, (clients, think) in profiles.items():
                            if use_wrk:
                                load_with_wrk(base, paths, clients, max(1.0, args.warmup), workdir, think)
                                result = load_with_wrk(base, paths, clients, args.duration, workdir, think)
                            else:
                                load_with_httpx(base, paths, clients, args.warmup, think)
                                result = load_with_httpx(base, paths, clients, args.duration, think)
                            latencies[(backend, profile)] = result
                            print(f"# {backend}, {profile}: p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
                                  f"{result.rps:.0f} req/s", file=sys.stderr)
                if "scheduler" in args.parts:
                    print(f"# {backend}: scheduler overhead over {args.trials} no-op trials", file=sys.stderr)
                    overheads[backend] = scheduler_overhead(url, args.trials, workdir)
                    print(f"# {backend}: {overheads[backend].per_trial_ms:.1f} ms/trial", file=sys.stderr)
    report = build_report(args, latencies, overheads, db_versions, load_before, C.load_avg(), load_wait)
    print(report)
    if args.write:
        path = C.write_section(SECTION, report, args.output)
        print(f"# wrote the {SECTION} section of {path}", file=sys.stderr)
    ok = all(latency_ok(r) for (_, profile), r in latencies.items() if profile != ONE_CLIENT) and all(
        o.per_trial_ms < GOAL_OVERHEAD_MS for o in overheads.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
