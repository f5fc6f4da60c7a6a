"""The worker side of the runner: a trial function that counts how often each trial started.

Executors retry a trial whose worker died (Ray restarts the task) and a runner that takes over an
orphaned experiment runs its unfinished trials again, so a trial can start more than once. The
runner wraps the trial function with :func:`counted_trial`, which appends one line to a marker
file next to the trial's artifact folder every time the trial starts (on the worker, before
anything else), and reads the count back when the result arrives: that is the trial's
``attempt`` in SQL, whoever restarted it.

The marker lives *beside* the artifact folder (``trials/.3.starts``) because
:func:`workers.trial.run_trial` empties the folder when a trial starts again.

This module imports no torch, ray or service code at import time, so Ray workers load it cheaply.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp()) / "trials" / "3"
    >>> spec = type("Spec", (), {"artifact_dir": str(folder)})()
    >>> fn = make_trial_fn(lambda spec, progress=None: "done")
    >>> fn(spec), fn(spec), count_starts(folder)
    ('done', 'done', 2)
"""

from __future__ import annotations

import functools
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["count_starts", "counted_trial", "make_trial_fn", "starts_file"]


def starts_file(artifact_dir: str | os.PathLike[str]) -> Path:
    """The marker file of the trial whose artifacts go to ``artifact_dir``."""
    folder = Path(artifact_dir)
    return folder.parent / f".{folder.name}.starts"


def count_starts(artifact_dir: str | os.PathLike[str]) -> int:
    """How many times the trial started (0 if never or the marker is unreadable)."""
    try:
        with starts_file(artifact_dir).open("rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def counted_trial(inner: Any, spec: Any, progress: Any = None) -> Any:
    """Record one start of ``spec``'s trial, then run ``inner(spec, progress)`` (default: ``run_trial``)."""
    marker = starts_file(spec.artifact_dir)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with marker.open("a") as fh:
            fh.write(f"{socket.gethostname()}:{os.getpid()} {time.time():.3f}\n")
    except OSError:  # counting is bookkeeping; it must never fail the trial
        pass
    if inner is None:
        from workers.trial import run_trial  # noqa: PLC0415 (torch only where trials run)

        inner = run_trial
    return inner(spec, progress)


def make_trial_fn(inner: Any = None) -> Any:
    """``counted_trial`` bound to ``inner``; picklable by reference (for Ray) when ``inner`` is."""
    return functools.partial(counted_trial, inner)
