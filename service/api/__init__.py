"""The REST API's routers, one per resource (mounted under ``/api/v1`` by :func:`service.app.create_app`).

``experiments`` (submit, list, get, cancel, resume, delete), ``trials`` (list, one with its log),
``best`` (the best trial and its downloads), ``events`` (Server-Sent Events), ``models`` (weights
uploads), ``catalog`` (what a spec may name) and ``system`` (``/healthz``, ``/metrics``).
"""

from __future__ import annotations

__all__ = ["best", "catalog", "deps", "events", "experiments", "models", "system", "trials"]
