"""The browser UI: the static ES modules of ``web/`` served at ``/``, and two helpers for them under ``/ui``.

Routes (none under ``/api/v1``; the UI talks to the REST API like any other client):

* ``GET /``, ``/experiments``, ``/experiments/new``, ``/experiments/{id}``: ``index.html`` (the
  single-page app routes in the browser), ``Cache-Control: no-cache``;
* ``GET /static/{path}``: a file of ``web/`` (ETag / Last-Modified revalidation, no path tricks:
  Starlette's ``StaticFiles`` resolves it);
* ``GET /ui/experiments/{id}/snapshot``: what the experiment page needs before it listens to the
  event stream, in one round trip: the experiment, the id of its last event (the stream resumes
  after it) and every trial's ``number``/``state``/``score``/``flops_ratio`` as columns (10,000
  trials are ~250 KB, where the paginated trial list would be ~7 MB in 20 sequential pages);
* ``POST /ui/spec/parse``: YAML text → the spec as JSON plus the line of every path in it, so the
  editor can show a 422 at its line (PyYAML's safe loader; aliases and non-finite numbers refused).

``web/`` is found at ``PRUNESEARCH_WEB_DIR``, next to the ``service`` package (a source checkout,
an editable install), or under ``<sys.prefix>/share/prunesearch/web`` (see :func:`default_web_dir`).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from fastapi import FastAPI
    >>> from fastapi.testclient import TestClient
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "index.html").write_text("<script type='module' src='/static/app.js'></script>")
    >>> app = FastAPI()
    >>> app.include_router(build_router(d))
    >>> client = TestClient(app)
    >>> client.get("/experiments/3").headers["cache-control"]
    'no-cache'
    >>> client.post("/ui/spec/parse", json={"text": "name: x\\npruner:\\n  config_list:\\n  - sparse_ratio: 1.5\\n"}).json()
    {'spec': {'name': 'x', 'pruner': {'config_list': [{'sparse_ratio': 1.5}]}}, 'lines': {'': 1, 'name': 1, 'pruner': 2, 'pruner.config_list': 3, 'pruner.config_list[0]': 4, 'pruner.config_list[0].sparse_ratio': 4}}
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles

from service.api.deps import ExperimentDep, SessionDep, authorize
from service.models import Event, Trial
from service.schemas import ExperimentPublic

__all__ = ["WEB_DIR_ENV", "build_router", "default_web_dir", "router", "yaml_with_lines"]

WEB_DIR_ENV = "PRUNESEARCH_WEB_DIR"
#: The largest YAML text ``/ui/spec/parse`` accepts (a spec is a few KB).
MAX_SPEC_TEXT = 256 * 1024
_REVALIDATE = "no-cache"


def default_web_dir() -> Path:
    """``$PRUNESEARCH_WEB_DIR``; else ``web/`` beside the ``service`` package (a source checkout or an
    editable install); else ``<sys.prefix>/share/prunesearch/web`` (installed as data files)."""
    env = os.environ.get(WEB_DIR_ENV, "").strip()
    if env:
        return Path(env)
    source = Path(__file__).resolve().parents[2] / "web"
    installed = Path(sys.prefix) / "share" / "prunesearch" / "web"
    return installed if not (source / "index.html").is_file() and (installed / "index.html").is_file() else source


# -- YAML with line numbers --------------------------------------------------------------------------------


def _path_key(parts: list[Any]) -> str:
    """``["pruner", "config_list", 0, "sparse_ratio"]`` → ``pruner.config_list[0].sparse_ratio``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reject(msg: str, *, line: int | None = None, column: int | None = None, type_: str = "syntax_error") -> Any:
    error: dict[str, Any] = {"type": type_, "loc": ("body", "text"), "msg": msg, "input": None}
    if line is not None:
        error["ctx"] = {"line": line, "column": column}
    return RequestValidationError([error])


def yaml_with_lines(text: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML ``text`` safely; return the value and ``{path: 1-based line}`` of every node in it.

    A mapping value's line is its key's line; a sequence item's line is where the item starts.

    Raises:
        RequestValidationError: a syntax error (with its line), an alias (``*ref``: refused, it can
            multiply the document's size), or a number JSON cannot hold (``.nan``, ``.inf``).

    Example:
        >>> yaml_with_lines("a:\\n  - 1\\n  - b: 2\\n")
        ({'a': [1, {'b': 2}]}, {'': 1, 'a': 1, 'a[0]': 2, 'a[1]': 3, 'a[1].b': 3})
    """
    import yaml  # noqa: PLC0415

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[str, int] = {}
        _walk_nodes(node, [], lines, set())
        value = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise _reject(f"{problem}{where}", line=mark.line + 1 if mark else None,
                      column=mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise _reject(f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return _jsonable(value, [], lines), lines


def _walk_nodes(node: Any, path: list[Any], lines: dict[str, int], seen: set[int]) -> None:
    import yaml  # noqa: PLC0415

    if id(node) in seen:  # the composer hands out the same node object for every alias of an anchor
        # the node's marks are the anchor's; the alias sits at its key's line when it is a mapping value
        line = lines.get(_path_key(path), node.start_mark.line + 1)
        raise _reject(f"{_path_key(path) or 'the document'}: aliases (*name) are not supported in a spec",
                      line=line, column=None)
    seen.add(id(node))
    lines.setdefault(_path_key(path), node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            lines[_path_key([*path, key])] = key_node.start_mark.line + 1
            _walk_nodes(value_node, [*path, key], lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk_nodes(item, [*path, i], lines, seen)


def _jsonable(value: Any, path: list[Any], lines: dict[str, int]) -> Any:
    """``value`` with YAML-only types made JSON (dates → ISO strings); non-finite floats refused."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _reject(f"{_path_key(path)}: {value} is not a number JSON can hold", line=lines.get(_path_key(path)),
                      type_="value_error")
    if isinstance(value, dict):
        return {str(k): _jsonable(v, [*path, str(k)], lines) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v, [*path, i], lines) for i, v in enumerate(value)]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        raise _reject(f"{_path_key(path)}: binary values are not supported", line=lines.get(_path_key(path)),
                      type_="value_error")
    return value


class SpecText(BaseModel):
    """Body of ``POST /ui/spec/parse``."""

    text: str = Field(max_length=MAX_SPEC_TEXT, description="the spec as YAML (JSON is YAML too)")


class ParsedSpec(BaseModel):
    """The parsed value and the 1-based line of every path (``pruner.config_list[0].sparse_ratio``)."""

    spec: Any
    lines: dict[str, int]


# -- the router ------------------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    """A chart coordinate: ``None`` for NaN/inf, else 7 significant digits (halves the payload)."""
    return None if value is None or not math.isfinite(value) else float(f"{value:.7g}")


def _index_html(web_dir: Path) -> str:
    index = web_dir / "index.html"
    try:
        return index.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"the web UI is not installed here ({index} is missing; "
                            f"set {WEB_DIR_ENV})") from None


def build_router(web_dir: Path | None = None) -> APIRouter:
    """The UI's routes, serving the files of ``web_dir`` (default :func:`default_web_dir`)."""
    root = (web_dir or default_web_dir()).resolve()
    static = StaticFiles(directory=root, check_dir=False)
    router = APIRouter(include_in_schema=False)

    def index() -> HTMLResponse:
        return HTMLResponse(_index_html(root), headers={"Cache-Control": _REVALIDATE})

    for path in ("/", "/experiments", "/experiments/new"):
        router.add_api_route(path, index, methods=["GET", "HEAD"], response_class=HTMLResponse)

    @router.get("/experiments/{experiment_id:int}", response_class=HTMLResponse)
    def experiment_page(experiment_id: int) -> HTMLResponse:
        return index()

    @router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
    async def static_file(path: str, request: Request) -> Response:
        response = await static.get_response(path, request.scope)
        response.headers["Cache-Control"] = _REVALIDATE
        return response

    @router.get("/ui/experiments/{experiment_id}/snapshot", dependencies=[Depends(authorize)])
    def snapshot(exp: ExperimentDep, session: SessionDep) -> Response:
        """The experiment, its last event id, and every trial's number/state/score/flops_ratio as columns."""
        # The event id first: rows read after it include everything up to it, and the stream the page
        # opens with ?after=<id> replays the rest (the page applies events idempotently).
        last_event_id = session.scalar(sa.select(sa.func.max(Event.id)).where(Event.experiment_id == exp.id)) or 0
        session.refresh(exp)
        rows = session.execute(
            sa.select(Trial.number, Trial.state, Trial.score, Trial.flops_ratio)
            .where(Trial.experiment_id == exp.id).order_by(Trial.number)
        ).all()
        numbers, states, scores, flops = (list(col) for col in zip(*rows, strict=True)) if rows else ([], [], [], [])
        body = {
            "experiment": ExperimentPublic.model_validate(exp).model_dump(mode="json"),
            "last_event_id": last_event_id,
            "points": {"number": numbers, "state": [st.value for st in states],
                       "score": [_finite(v) for v in scores], "flops_ratio": [_finite(v) for v in flops]},
        }
        # json.dumps directly: FastAPI's generic encoder walks 40,000 values one by one (~10x slower)
        return Response(json.dumps(body, separators=(",", ":"), allow_nan=False), media_type="application/json")

    @router.post("/ui/spec/parse", response_model=ParsedSpec)
    def parse_spec(body: SpecText) -> ParsedSpec:
        """Parse a YAML spec; 422 located at ``body.text`` (with its line in ``ctx``) when it is not YAML."""
        value, lines = yaml_with_lines(body.text)
        return ParsedSpec(spec=value, lines=lines)

    return router


#: The router for ``app.include_router`` (serves :func:`default_web_dir`).
router: APIRouter = build_router()
