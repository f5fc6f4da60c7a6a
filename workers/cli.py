"""The ``prunesearch`` command.

``prunesearch run SPEC.yaml`` runs a search in this process (``--executor local``) or on Ray
(``--executor ray``, a local Ray or ``--ray-address``), shows a progress bar, and ends with a table
of the trials and the path of the best compact model. ``--resume`` continues a search that was
stopped. The subcommands are argparse subparsers so the service can add its own (``serve``,
``submit``, ...).

Nothing heavy is imported before a subcommand runs: ``prunesearch --help`` needs neither torch
nor ray.

Exit codes: 0 done, 1 the search failed, 2 bad usage or a bad spec, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["main", "build_parser", "register_command"]

logger = logging.getLogger(__name__)

#: name -> (help, add_arguments(parser), run(args) -> exit code)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def register_command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                     run: Callable[[argparse.Namespace], int]) -> None:
    """Add a subcommand (the service registers ``serve``, ``submit``... this way)."""
    _COMMANDS[name] = (help, add_arguments, run)


# -- run ----------------------------------------------------------------------------------------------


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="experiment spec (YAML or JSON)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: runs/<spec name>)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where trials run: in this process (default) or on Ray")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="a running Ray cluster, e.g. ray://head:10001 (default: start a local one). A head "
                             "with token auth needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN (or "
                             "RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); one without needs RAY_AUTH_MODE=disabled")
    parser.add_argument("--resume", action="store_true", help="continue the search stored in --out")
    parser.add_argument("--max-trials", type=int, metavar="N", help="stop after N trials (overrides the spec)")
    parser.add_argument("--no-onnx", action="store_true", help="do not export the best model to ONNX")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


class _Progress:
    """A tqdm bar over trials, with the running trials' epoch and loss as its postfix."""

    def __init__(self, quiet: bool, stream: TextIO) -> None:
        self.quiet = quiet
        self.stream = stream
        self.bar: Any = None
        self.live: dict[int, str] = {}

    def _ensure(self, total: int | None, done: int) -> None:
        if self.bar is None and not self.quiet:
            from tqdm import tqdm  # noqa: PLC0415

            # disable=None: no bar when the stream is not a terminal (CI logs, pipes).
            self.bar = tqdm(total=total, initial=done, unit="trial", file=self.stream, dynamic_ncols=True,
                            disable=None, mininterval=0.5)

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(" | ".join(f"{k}: {v}" for k, v in sorted(self.live.items())), refresh=False)

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "search_started":
            self._ensure(event.get("max_trials"), event.get("done", 0))
        elif kind == "trial_started":
            self.live[event["task_id"]] = "started"
            self._postfix()
        elif kind == "trial_finished":
            self.live.pop(event["task_id"], None)
            result = event["result"]
            if self.bar is not None and event["task_id"] >= 0:
                self.bar.update(1)
            if result.get("error"):
                last = result["error"].strip().splitlines()[-1]
                self.write(f"trial {event['task_id']} failed: {last}")
            self._postfix()
        elif kind == "trial_discarded":
            self.live.pop(event["task_id"], None)
            if self.bar is not None and not event.get("running"):
                self.bar.update(-1)  # it had counted as finished; it is not a trial of the search
            self._postfix()
        elif kind == "export_failed":
            self.write(f"export to {event['format']} failed: {event['error']}")

    def on_progress(self, handle: Any, event: dict[str, Any]) -> None:
        phase = event.get("phase")
        if phase in ("pretrain", "finetune") and "loss" in event:
            self.live[handle.trial_id] = f"{phase} ep {event['epoch'] + 1}/{event['epochs']} loss {event['loss']:.3f}"
        elif phase not in (None, "done"):
            self.live[handle.trial_id] = str(phase)
        self._postfix()

    def write(self, text: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=self.stream)
        else:
            _say(text, self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _say(text: str = "", stream: TextIO | None = None) -> None:
    """The command's own output (library code logs; a CLI talks)."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(outcome: Any, metric: str) -> str:
    """The final table: one row per trial (the best one marked, and the steps of a refine phase)."""
    rows = [("trial", metric, "FLOPs ratio", "params ratio", "sparsity", "seconds", "")]
    best_id = outcome.best.task_id if outcome.best is not None else None
    trials = ([outcome.pretrain] if outcome.pretrain is not None else []) + list(outcome.trials)
    for r in trials:
        sparsity = list(r.sparsity.values())
        mean = sum(sparsity) / len(sparsity) if sparsity else 0.0
        status = "best" if r.task_id == best_id else ("FAILED" if r.error else "")
        params = getattr(outcome, "params", {}).get(r.task_id, {})
        if "refine" in params:
            status = " ".join(filter(None, (status, f"refine {params['refine']}/{params.get('steps', '?')}")))
        rows.append((
            "pretrain" if r.task_id < 0 else str(r.task_id),
            _fmt(r.score if r.task_id >= 0 else r.metrics.get(metric), ".4f"),
            _fmt(r.metrics.get("flops_ratio"), ".3f"),
            _fmt(r.metrics.get("params_ratio"), ".3f"),
            _fmt(mean if r.sparsity or not r.error else None, ".3f"),
            _fmt(r.seconds, ".1f"),
            status,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths[:-1]))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from workers.spec import SpecError, load_spec_file  # noqa: PLC0415 (no torch)

    try:
        spec = load_spec_file(args.spec, check=False)
        if args.max_trials is not None:
            spec = spec.with_max_trials(args.max_trials)
        spec.validate()
    except SpecError as exc:
        _say(f"prunesearch: invalid spec {args.spec}: {exc}", sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / spec.name
    progress = _Progress(args.quiet, sys.stderr)
    from workers.local import SearchError, run_search  # noqa: PLC0415 (torch from here on)

    try:
        executor = _make_executor(args, spec, progress)
    except Exception as exc:
        _say(f"prunesearch: {exc}", sys.stderr)
        return 1
    started = time.time()
    try:
        outcome = run_search(spec, executor, out, resume=args.resume, on_event=progress.on_event,
                             export_onnx=not args.no_onnx)
    except SearchError as exc:
        progress.close()
        _say(f"prunesearch: {exc}", sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        _say(f"\nprunesearch: interrupted; continue with: prunesearch run {args.spec} --out {out} --resume", sys.stderr)
        return 130
    finally:
        executor.shutdown()
    progress.close()
    _say(format_table(outcome, spec.objective.metric))
    ahead = f" (and {len(outcome.discarded)} run ahead of a decision, then discarded)" if outcome.discarded else ""
    _say(f"\n{len(outcome.trials)} trials{ahead} in {time.time() - started:.1f} s; results in {out}")
    best = outcome.best
    if best is None or outcome.best_dir is None:
        _say("no trial succeeded within the constraints", sys.stderr)
        return 1
    _say(f"best trial {best.task_id}: {spec.objective.metric} {_fmt(best.score, '.4f')}; "
         f"compact model: {outcome.best_dir}")
    for fmt, path in sorted(outcome.exports.items()):
        _say(f"  {fmt}: {path}")
    return 0


def _make_executor(args: argparse.Namespace, spec: Any, progress: _Progress) -> Any:
    if args.executor == "local":
        from workers.executors import LocalExecutor  # noqa: PLC0415

        return LocalExecutor(on_progress=progress.on_progress)
    try:
        from workers.executors import RayExecutor  # noqa: PLC0415

        res = spec.resources
        return RayExecutor(args.ray_address, num_cpus_per_trial=res.cpus_per_trial, num_gpus_per_trial=res.gpus_per_trial,
                           max_retries=res.max_retries, timeout_s=res.trial_timeout_s, on_progress=progress.on_progress)
    except ImportError as exc:
        raise RuntimeError(f"--executor ray needs Ray: pip install 'prunesearch[ray]' ({exc})") from None


register_command("run", "run a pruning search from a spec file", _add_run_arguments, _run)


# -- entry point ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunesearch",
        description="AutoML pruning search for PyTorch models.",
        epilog="example: prunesearch run examples/digits-agp.yaml --out runs/digits",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in _COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(cmd)
        cmd.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``prunesearch`` (returns the exit code; the console script passes it to ``sys.exit``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # trials raise library loggers to INFO for their log files; the console stays at `level`
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
