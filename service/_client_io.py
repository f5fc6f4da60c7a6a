"""Helpers of the SDK (:mod:`service.client`): spec files, the SSE parser, the progress bar, downloads.

Example:
    >>> [(e.id, e.kind) for e in parse_sse(["id: 1", "event: log", "data: {}", ""])]
    [(1, 'log')]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from service._client_types import DownloadError, Event, Experiment

__all__ = ["TrialBar", "attachment_name", "load_spec", "parse_sse", "write_atomically"]


def load_spec(spec: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """An experiment spec as a dict: a dict is copied; a path is read as YAML or JSON.

    A ``str`` that contains a newline is parsed as YAML/JSON text instead of a path.

    Example:
        >>> load_spec("name: x\\nalgorithm: {name: agp}\\n")
        {'name': 'x', 'algorithm': {'name': 'agp'}}
        >>> load_spec("no/such/spec.yaml")
        Traceback (most recent call last):
        ...
        FileNotFoundError: spec file not found: no/such/spec.yaml
    """
    import yaml  # noqa: PLC0415

    if isinstance(spec, dict):
        return json.loads(json.dumps(spec))
    source = "spec text"
    if isinstance(spec, str) and "\n" in spec:
        text = spec
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"spec file not found: {spec}")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        data = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{source}: not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a spec must be a mapping (name, model, data, ...), got {type(data).__name__}")
    return data


def parse_sse(lines: Iterator[str] | Sequence[str], state: dict[str, Any] | None = None) -> Iterator[Event]:
    """Parse Server-Sent Events lines (without their line ends) into :class:`Event` objects.

    ``state`` (optional) receives ``retry_ms`` when the stream sends a ``retry:`` hint. Comments
    (``: keep-alive``) are skipped; ``data`` is decoded as JSON when it is JSON.

    Example:
        >>> [(e.id, e.kind, e.data) for e in parse_sse(["retry: 10", "", "id: 4", "event: log",
        ...                                              'data: {"msg": "hi"}', "", ": keep-alive", ""])]
        [(4, 'log', {'msg': 'hi'})]
    """
    event_id: int | None = None
    kind = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = text
                yield Event(id=event_id, kind=kind, data=value)
            event_id, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value_text = line.partition(":")
        value_text = value_text[1:] if value_text.startswith(" ") else value_text
        if name == "data":
            data.append(value_text)
        elif name == "event":
            kind = value_text
        elif name == "id" and value_text.isdigit():
            event_id = int(value_text)
        elif name == "retry" and value_text.isdigit() and state is not None:
            state["retry_ms"] = int(value_text)


class TrialBar:
    """A tqdm bar over an experiment's trials (the pretrain trial, number -1, is not counted)."""

    def __init__(self, exp: Experiment, enabled: bool, file: TextIO | None) -> None:
        self.bar: Any = None
        self.live: dict[int, str] = {}
        self.best: float | None = None
        if enabled:
            from tqdm.auto import tqdm  # noqa: PLC0415

            algorithm = exp.spec.get("algorithm") if isinstance(exp.spec, dict) else None
            total = exp.max_trials or (algorithm.get("max_trials") if isinstance(algorithm, dict) else None)
            self.bar = tqdm(total=total, unit="trial", desc=f"experiment {exp.id}", file=file,
                            dynamic_ncols=True, mininterval=0.2)

    def on_event(self, event: Event) -> None:
        if self.bar is None or not isinstance(event.data, dict):
            return
        number = event.data.get("number")
        if event.kind in ("trial_finished", "trial_failed") and isinstance(number, int):
            self.live.pop(number, None)
            if number >= 0:
                self.bar.update(1)
        elif event.kind == "trial_discarded" and isinstance(number, int):
            self.live.pop(number, None)
            if not event.data.get("running") and self.bar.n > 0:
                self.bar.update(-1)  # it had counted as finished; it is not a trial of the search
        elif event.kind == "trial_started" and isinstance(number, int):
            self.live[number] = "started"
        elif event.kind == "trial_progress" and isinstance(number, int):
            d = event.data
            if "loss" in d and "epoch" in d:
                self.live[number] = f"{d.get('phase', '')} ep {int(d['epoch']) + 1}/{d.get('epochs', '?')} " \
                                    f"loss {float(d['loss']):.3f}"
            elif d.get("phase"):
                self.live[number] = str(d["phase"])
        elif event.kind == "best_changed" and isinstance(event.data.get("score"), (int, float)):
            self.best = float(event.data["score"])
        else:
            return
        parts = ([f"best {self.best:.4f}"] if self.best is not None else []) + [
            f"#{k} {v}" if k >= 0 else f"pretrain {v}" for k, v in sorted(self.live.items())]
        self.bar.set_postfix_str(" | ".join(parts), refresh=False)

    def set_done(self, exp: Experiment) -> None:
        if self.bar is not None and exp.n_trials > self.bar.n:
            self.bar.update(exp.n_trials - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def attachment_name(response: httpx.Response, default: str) -> str:
    match = re.search(r'filename="?([^";]+)"?', response.headers.get("content-disposition", ""))
    name = Path(match.group(1)).name if match else ""
    return name if name and name not in (".", "..") else default


def write_atomically(response: httpx.Response, target: Path, chunk_size: int, sha256: str | None) -> Path:
    """Stream ``response`` into a temp file beside ``target``; check size and hash; rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in response.iter_bytes(chunk_size):
                fh.write(chunk)
                digest.update(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        length = response.headers.get("content-length")
        received = response.num_bytes_downloaded
        if length is not None and length.isdigit() and received != int(length):
            raise DownloadError(f"{target.name}: connection closed after {received} of {length} bytes")
        if sha256 and digest.hexdigest() != sha256:
            raise DownloadError(f"{target.name}: sha256 {digest.hexdigest()} differs from the server's {sha256}")
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
