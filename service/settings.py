"""Service settings, read from ``PRUNESEARCH_*`` environment variables.

Example:
    >>> s = Settings.from_env({"PRUNESEARCH_DATA_DIR": "/srv/ps", "PRUNESEARCH_MAX_CONCURRENT_TRIALS": "4"})
    >>> s.database_url, str(s.artifacts_dir), s.max_concurrent_trials, s.runner
    ('sqlite:////srv/ps/prunesearch.db', '/srv/ps/artifacts', 4, True)
    >>> Settings.from_env({"PRUNESEARCH_LEASE_SECONDS": "soon"})
    Traceback (most recent call last):
    ...
    service.settings.SettingsError: PRUNESEARCH_LEASE_SECONDS: must be a positive number, got 'soon'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "SettingsError"]

_PREFIX = "PRUNESEARCH_"


class SettingsError(ValueError):
    """A bad environment value; the message starts with the variable's name."""


@dataclass(frozen=True)
class Settings:
    """Everything the server and the runner need to know about their environment.

    Attributes:
        database_url: SQLAlchemy URL (``sqlite:///...`` or ``postgresql://...``).
        data_dir: where the default SQLite file and artifacts live.
        artifacts_dir: root of the artifact store.
        ray_address: None = in-process LocalExecutor; ``"local"`` = start a local Ray; else an address.
        max_concurrent_trials: global limit of trials running at once (per runner).
        lease_seconds: how long an experiment lease lasts without a heartbeat.
        max_upload_bytes: size limit of ``POST /models``.
        runner: whether the API process runs the experiment runner in a thread.

    Example:
        >>> Settings(database_url="sqlite:///x.db", data_dir=Path("d"), artifacts_dir=Path("d/a")).lease_seconds
        30.0
    """

    database_url: str
    data_dir: Path
    artifacts_dir: Path
    ray_address: str | None = None
    max_concurrent_trials: int = 2
    lease_seconds: float = 30.0
    max_upload_bytes: int = 512 * 1024 * 1024
    runner: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default ``os.environ``); empty values count as unset."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(_PREFIX + name)
            return value.strip() if value is not None and value.strip() else None

        data_dir = Path(get("DATA_DIR") or "./prunesearch-data")
        database_url = get("DATABASE_URL") or f"sqlite:///{data_dir / 'prunesearch.db'}"
        artifacts_dir = Path(get("ARTIFACTS_DIR") or data_dir / "artifacts")
        runner = (get("RUNNER") or "on").lower()
        if runner not in ("on", "off", "true", "false", "1", "0"):
            raise SettingsError(f"{_PREFIX}RUNNER: must be 'on' or 'off', got {runner!r}")
        return cls(
            database_url=database_url,
            data_dir=data_dir,
            artifacts_dir=artifacts_dir,
            ray_address=get("RAY_ADDRESS"),
            max_concurrent_trials=_positive_int("MAX_CONCURRENT_TRIALS", get("MAX_CONCURRENT_TRIALS"), 2),
            lease_seconds=_positive_float("LEASE_SECONDS", get("LEASE_SECONDS"), 30.0),
            max_upload_bytes=_positive_int("MAX_UPLOAD_BYTES", get("MAX_UPLOAD_BYTES"), 512 * 1024 * 1024),
            runner=runner in ("on", "true", "1"),
        )


def _positive_int(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise SettingsError(f"{_PREFIX}{name}: must be a positive integer, got {raw!r}")
    return value


def _positive_float(name: str, raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"{_PREFIX}{name}: must be a positive number, got {raw!r}")
    return value
