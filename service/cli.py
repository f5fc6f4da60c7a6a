"""The ``prunesearch`` command: the local search (``run``) plus the service's commands.

Subcommands (``prunesearch COMMAND --help`` for each):

* ``serve``: the REST API (and, unless ``--no-runner``, the experiment runner) under uvicorn;
* ``run``: a search in this process, no server (see :mod:`workers.cli`);
* ``submit``, ``list``, ``status``, ``watch``, ``download``, ``cancel``, ``resume``: talk to a
  server at ``--url`` (``PRUNESEARCH_URL``, default ``http://127.0.0.1:8000``) with ``--token``
  (``PRUNESEARCH_TOKEN``) through :class:`service.client.Client`;
* ``token create|list|revoke``: API tokens, straight in the database (``--db-url`` /
  ``PRUNESEARCH_DATABASE_URL``): the first token cannot be made over an API that wants one.

Exit codes: 0 ok; 1 an error (server unreachable, not found, experiment failed or cancelled for
``watch``/``submit --wait``); 2 bad usage or invalid input (a 400/422 answer, a bad spec file);
130 interrupted. Nothing heavy is imported before a command runs: ``prunesearch --help`` imports
neither torch nor ray.

Example:
    >>> format_table([("id", "name"), ("1", "digits")])
    'id  name\\n--  ------\\n1   digits'
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from workers import cli as _base

__all__ = ["format_table", "main"]

_STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
_SORTS = ("created_at", "-created_at", "name", "-name", "best_score", "-best_score", "state", "-state")
_FORMATS = ("pt2", "onnx", "safetensors", "masks")


def _say(text: str = "", stream: Any = None) -> None:
    """The command's own output (library code logs; a command talks)."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _err(text: str) -> None:
    _say(f"prunesearch: {text}", sys.stderr)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns with a dashed rule under the header row."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _num(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    return obj


def _print_json(obj: Any) -> None:
    _say(json.dumps(_jsonable(obj), indent=2, sort_keys=False))


# -- talking to a server ----------------------------------------------------------------------------


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("PRUNESEARCH_URL") or "http://127.0.0.1:8000",
                        help="the server (env PRUNESEARCH_URL; default http://127.0.0.1:8000)")
    parser.add_argument("--token", default=os.environ.get("PRUNESEARCH_TOKEN") or None,
                        help="bearer token from `prunesearch token create` (env PRUNESEARCH_TOKEN)")


def _client(args: argparse.Namespace) -> Any:
    from service.client import Client  # noqa: PLC0415

    return Client(args.url, args.token)


def _handles_api_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the SDK's errors into a readable message and an exit code (2: invalid input, 1: other)."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from service.client import (  # noqa: PLC0415
            ApiConnectionError,
            ApiError,
            BadRequest,
            DownloadError,
            Forbidden,
            Unauthorized,
            ValidationError,
        )

        try:
            return fn(args)
        except ValidationError as exc:
            _err("the server rejected the request (422):")
            for error in exc.errors:
                _say(f"  {error['path']}: {error['msg']}", sys.stderr)
            return 2
        except BadRequest as exc:
            _err(f"bad request: {exc.message}")
            return 2
        except ApiConnectionError as exc:
            _err(f"{exc.message}\n  is `prunesearch serve` running there? (--url or PRUNESEARCH_URL)")
            return 1
        except (Unauthorized, Forbidden) as exc:
            _err(f"{exc}\n  pass a valid token with --token or PRUNESEARCH_TOKEN (prunesearch token create NAME)")
            return 1
        except ApiError as exc:
            _err(f"error {exc}")
            return 1
        except DownloadError as exc:
            _err(f"download failed: {exc}")
            return 1
        except TimeoutError as exc:
            _err(str(exc))
            return 1
        except KeyboardInterrupt:
            _say("", sys.stderr)
            return 130

    return run


def _experiment_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=int, help="experiment id")
    _add_server_arguments(parser)


# submit ---------------------------------------------------------------------------------------------


def _add_submit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="experiment spec file (YAML or JSON)")
    parser.add_argument("--max-trials", type=int, metavar="N", help="cap the search at N trials")
    parser.add_argument("--wait", action="store_true", help="then watch it to the end (exit 1 unless it succeeds)")
    parser.add_argument("-q", "--quiet", action="store_true", help="with --wait: no progress bar")
    _add_server_arguments(parser)


@_handles_api_errors
def _submit(args: argparse.Namespace) -> int:
    from service.client import load_spec  # noqa: PLC0415

    try:
        spec = load_spec(args.spec)
    except (OSError, ValueError) as exc:
        _err(f"invalid spec {args.spec}: {exc}")
        return 2
    with _client(args) as client:
        exp = client.submit(spec, max_trials=args.max_trials)
        _say(str(exp.id))
        _say(f"experiment {exp.id} ({exp.name}) {exp.state}; follow it with: prunesearch watch {exp.id}", sys.stderr)
        if not args.wait:
            return 0
        return _watch_with(client, exp.id, quiet=args.quiet, timeout=None)


# list / status ----------------------------------------------------------------------------------------


def _add_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", action="append", choices=_STATES, help="filter by state (repeatable)")
    parser.add_argument("--algorithm", help="filter by algorithm name")
    parser.add_argument("--name", dest="q", metavar="TEXT", help="name contains TEXT")
    parser.add_argument("--sort", choices=_SORTS, default="-created_at", help="sort key ('-' = descending)")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="show at most N (default 20; 0 = all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_server_arguments(parser)


@_handles_api_errors
def _list(args: argparse.Namespace) -> int:
    limit = None if args.limit <= 0 else args.limit
    with _client(args) as client:
        items: list[Any] = []
        cursor, count = None, 0
        while limit is None or len(items) < limit:
            size = 500 if limit is None else min(500, limit - len(items))
            page = client.list_page(state=args.state, algorithm=args.algorithm, q=args.q, sort=args.sort,
                                    limit=size, cursor=cursor)
            items.extend(page.items)
            count, cursor = page.count, page.next_cursor
            if not cursor or not page.items:
                break
    if args.json:
        _print_json(items)
        return 0
    if not items:
        _say("no experiments" + (" match" if count == 0 and (args.state or args.algorithm or args.q) else ""))
        return 0
    rows = [("id", "name", "state", "algorithm", "trials", "best score", "created (UTC)")]
    for e in items:
        trials = f"{e.n_trials}/{e.max_trials}" if e.max_trials else str(e.n_trials)
        rows.append((str(e.id), e.name, e.state, e.algorithm, trials, _num(e.best_score), _when(e.created_at)))
    _say(format_table(rows))
    if count > len(items):
        _say(f"({len(items)} of {count}; --limit 0 shows all)")
    return 0


def _add_status(parser: argparse.ArgumentParser) -> None:
    _experiment_arg(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


@_handles_api_errors
def _status(args: argparse.Namespace) -> int:
    from service.client import NotFound  # noqa: PLC0415

    with _client(args) as client:
        exp = client.get(args.id)
        try:
            best = client.best(args.id) if exp.best_trial_number is not None else None
        except NotFound:
            best = None
    if args.json:
        _print_json({"experiment": exp, "best": best})
        return 0
    metric = (exp.spec.get("objective") or {}).get("metric", "score") if isinstance(exp.spec, dict) else "score"
    lines = [
        ("experiment", f"{exp.id} ({exp.name})"),
        ("state", exp.state + (" (cancel requested)" if exp.cancel_requested and not exp.done else "")),
        ("algorithm", exp.algorithm), ("model", exp.model),
        ("trials", f"{exp.n_trials}" + (f" of {exp.max_trials}" if exp.max_trials else "")),
        ("best trial", "-" if exp.best_trial_number is None else
         f"{exp.best_trial_number}: {metric} {_num(exp.best_score)}, FLOPs ratio {_num(exp.best_flops_ratio, '.3f')}"),
        ("created", _when(exp.created_at)), ("started", _when(exp.started_at)), ("finished", _when(exp.finished_at)),
    ]
    if best is not None and best.exports:
        lines.append(("downloads", ", ".join(f"{e.format} ({e.size:,} B)" for e in best.exports)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        _say(f"{key.ljust(width)}  {value}")
    if exp.error:
        _say("error:\n" + "\n".join("  " + line for line in exp.error.strip().splitlines()[-15:]))
    return 0


# watch -------------------------------------------------------------------------------------------------


def _add_watch(parser: argparse.ArgumentParser) -> None:
    _experiment_arg(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no event lines")
    parser.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 1)")


class _EventPrinter:
    """Writes notable events as lines (above the bar when there is one)."""

    def __init__(self, quiet: bool, bar: bool) -> None:
        self.quiet, self.bar = quiet, bar

    def write(self, text: str) -> None:
        if self.bar:
            from tqdm.auto import tqdm  # noqa: PLC0415

            tqdm.write(text, file=sys.stderr)
        else:
            _say(text, sys.stderr)

    def __call__(self, event: Any) -> None:
        if self.quiet or not isinstance(event.data, dict):
            return
        d = event.data
        if event.kind == "experiment_state":
            self.write(f"experiment {d.get('state')}" + (f": {str(d['error']).strip().splitlines()[-1]}"
                                                         if d.get("error") else ""))
        elif event.kind == "trial_failed":
            self.write(f"trial {d.get('number')} failed: {d.get('error')}")
        elif event.kind == "trial_discarded" and not self.bar:
            self.write(f"trial {d.get('number')} discarded: {d.get('reason')}")
        elif event.kind == "trial_finished" and not self.bar:
            self.write(f"trial {d.get('number')} finished: score {_num(d.get('score'))}")
        elif event.kind == "best_changed" and d.get("number") is not None:
            self.write(f"new best: trial {d['number']} score {_num(d.get('score'))}")
        elif event.kind == "log" and d.get("level") in ("warning", "error"):
            self.write(f"{d['level']}: {d.get('message')}")


def _watch_with(client: Any, experiment_id: int, *, quiet: bool, timeout: float | None) -> int:
    bar = not quiet and sys.stderr.isatty()
    exp = client.wait(experiment_id, progress=bar, timeout=timeout, on_event=_EventPrinter(quiet, bar),
                      progress_file=sys.stderr)
    metric = (exp.spec.get("objective") or {}).get("metric", "score") if isinstance(exp.spec, dict) else "score"
    summary = f"experiment {exp.id} {exp.state}: {exp.n_trials} trials"
    if exp.best_trial_number is not None:
        summary += (f"; best trial {exp.best_trial_number}, {metric} {_num(exp.best_score)}, "
                    f"FLOPs ratio {_num(exp.best_flops_ratio, '.3f')}")
    _say(summary)
    if exp.state == "succeeded":
        if exp.best_trial_number is not None:
            _say(f"download it with: prunesearch download {exp.id} --format pt2 -o model.pt2", sys.stderr)
        return 0
    if exp.error:
        _say(exp.error.strip().splitlines()[-1], sys.stderr)
    return 1


@_handles_api_errors
def _watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _watch_with(client, args.id, quiet=args.quiet, timeout=args.timeout)


# download / cancel / resume -------------------------------------------------------------------------


def _add_download(parser: argparse.ArgumentParser) -> None:
    _experiment_arg(parser)
    parser.add_argument("--format", choices=_FORMATS, default="pt2", help="which export (default pt2)")
    parser.add_argument("-o", "--output", default=".", metavar="PATH",
                        help="file to write, or a directory for the server's file name (default: .)")


@_handles_api_errors
def _download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = client.download_best(args.id, args.output, args.format)
    _say(str(path))
    _say(f"{path.stat().st_size:,} bytes", sys.stderr)
    return 0


def _state_change(action: str) -> Callable[[argparse.Namespace], int]:
    @_handles_api_errors
    def run(args: argparse.Namespace) -> int:
        with _client(args) as client:
            exp = getattr(client, action)(args.id)
        _say(f"experiment {exp.id}: {exp.state}")
        return 0

    return run


# token ---------------------------------------------------------------------------------------------------


def _add_token(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    for name, help_text in (("create", "create a token and print it (shown only once)"),
                            ("list", "list tokens (never their secrets)"), ("revoke", "revoke a token")):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == "create":
            cmd.add_argument("name", help="what the token is for (e.g. ci, alice)")
        elif name == "revoke":
            cmd.add_argument("token_id", type=int, metavar="ID", help="token id (from token list)")
        else:
            cmd.add_argument("--json", action="store_true", help="print JSON")
        cmd.add_argument("--db-url", default=os.environ.get("PRUNESEARCH_DATABASE_URL") or None,
                         help="the server's database (env PRUNESEARCH_DATABASE_URL; default: the server's default)")


def _token(args: argparse.Namespace) -> int:
    from service import db, store  # noqa: PLC0415
    from service.settings import Settings, SettingsError  # noqa: PLC0415

    try:
        url = args.db_url or Settings.from_env().database_url
        db.upgrade(url)
    except (SettingsError, ValueError) as exc:
        _err(str(exc))
        return 2
    except Exception as exc:  # an unreachable database: say which one
        _err(f"cannot open the database: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
        return 1
    factory = db.make_session_factory(url)
    try:
        with db.session_scope(factory) as s:
            if args.token_command == "create":
                try:
                    row, plaintext = store.create_token(s, name=args.name)
                except ValueError as exc:
                    _err(str(exc))
                    return 2
                _say(plaintext)
                _say(f"token {row.id} ({row.name!r}) created. It is shown only this once: store it now and pass "
                     "it with --token or PRUNESEARCH_TOKEN.", sys.stderr)
                return 0
            if args.token_command == "revoke":
                if not store.revoke_token(s, args.token_id):
                    _err(f"no token with id {args.token_id}")
                    return 1
                _say(f"token {args.token_id} revoked")
                return 0
            tokens = store.list_tokens(s)
            rows: list[dict[str, Any]] = [
                {"id": t.id, "name": t.name, "prefix": t.prefix, "created_at": t.created_at,
                 "last_used_at": t.last_used_at, "revoked_at": t.revoked_at} for t in tokens]
    finally:
        factory.kw["bind"].dispose()
    if args.json:
        _print_json(rows)
    elif not rows:
        _say("no tokens (the API is open to everyone until one is created)")
    else:
        table = [("id", "name", "prefix", "created (UTC)", "last used", "revoked")]
        table += [(str(r["id"]), r["name"], r["prefix"] + "…", _when(r["created_at"]), _when(r["last_used_at"]),
                   _when(r["revoked_at"])) for r in rows]
        _say(format_table(table))
    return 0


# serve ---------------------------------------------------------------------------------------------------


def _add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 = all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--db-url", help="database URL (env PRUNESEARCH_DATABASE_URL; default SQLite in --data-dir)")
    parser.add_argument("--data-dir", help="where the default database and artifacts live (env PRUNESEARCH_DATA_DIR)")
    parser.add_argument("--artifacts-dir", help="artifact store root (env PRUNESEARCH_ARTIFACTS_DIR)")
    parser.add_argument("--ray-address", help="run trials on Ray: 'local', 'ray://head:10001' or 'host:6379' "
                                              "(env PRUNESEARCH_RAY_ADDRESS; default: in this process)")
    parser.add_argument("--max-concurrent-trials", type=int, metavar="N",
                        help="global limit of running trials (env PRUNESEARCH_MAX_CONCURRENT_TRIALS)")
    parser.add_argument("--no-runner", action="store_true",
                        help="serve the API only; experiments are run by other processes (python -m service.runner)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="API worker processes (default 1). Each runs its own experiment runner unless --no-runner; "
                             "runners share the work through database leases")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def serve_env(args: argparse.Namespace, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the server's settings are read from: ``env`` (default ``os.environ``) plus the flags."""
    env = dict(os.environ if env is None else env)
    for flag, name in (("db_url", "DATABASE_URL"), ("data_dir", "DATA_DIR"), ("artifacts_dir", "ARTIFACTS_DIR"),
                       ("ray_address", "RAY_ADDRESS"), ("max_concurrent_trials", "MAX_CONCURRENT_TRIALS")):
        value = getattr(args, flag, None)
        if value is not None:
            env[f"PRUNESEARCH_{name}"] = str(value)
    if getattr(args, "no_runner", False):
        env["PRUNESEARCH_RUNNER"] = "off"
    return env


def serve_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> Any:
    """The server's :class:`~service.settings.Settings`: the environment, overridden by the flags."""
    from service.settings import Settings  # noqa: PLC0415

    return Settings.from_env(serve_env(args, env))


def _serve(args: argparse.Namespace) -> int:
    from service.settings import SettingsError  # noqa: PLC0415

    if args.workers < 1:
        _err(f"--workers must be at least 1, got {args.workers}")
        return 2
    try:
        settings = serve_settings(args)
    except SettingsError as exc:
        _err(str(exc))
        return 2
    try:
        import uvicorn  # noqa: PLC0415

        from service.app import create_app  # noqa: PLC0415
    except ImportError as exc:
        _err(f"serve needs the service extra: pip install 'prunesearch[service]' ({exc})")
        return 1
    try:
        app = create_app(settings)
    except ValueError as exc:  # e.g. an unsupported database URL
        _err(str(exc))
        return 2
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    _say(f"prunesearch serve: http://{args.host}:{args.port} (database "
         f"{make_url(settings.database_url).render_as_string(hide_password=True)}, artifacts {settings.artifacts_dir}, "
         f"runner {'on' if settings.runner else 'off'}, trials on {settings.ray_address or 'this process'})",
         sys.stderr)
    if args.workers > 1:  # worker processes build their own app from the environment (checked above)
        if args.port == 0:
            _err("--workers needs a fixed --port")
            return 2
        os.environ.update(serve_env(args))
        del app
        uvicorn.run("service.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                    log_level=args.log_level, proxy_headers=True)
        return 0
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, proxy_headers=True)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


# registration --------------------------------------------------------------------------------------------

_base.register_command("serve", "serve the REST API (and run experiments)", _add_serve, _serve)
_base.register_command("submit", "submit an experiment spec to a server; prints its id", _add_submit, _submit)
_base.register_command("list", "list a server's experiments", _add_list, _list)
_base.register_command("status", "show one experiment", _add_status, _status)
_base.register_command("watch", "follow an experiment to its end (exit 1 unless it succeeds)", _add_watch, _watch)
_base.register_command("download", "download the best compact model", _add_download, _download)
_base.register_command("cancel", "cancel an experiment", _experiment_arg, _state_change("cancel"))
_base.register_command("resume", "resume a cancelled or failed experiment", _experiment_arg, _state_change("resume"))
_base.register_command("token", "create, list or revoke API tokens (in the database)", _add_token, _token)


def main(argv: Sequence[str] | None = None) -> int:
    """``prunesearch`` (returns the exit code; the console script passes it to ``sys.exit``)."""
    return _base.main(argv)


if __name__ == "__main__":
    sys.exit(main())
