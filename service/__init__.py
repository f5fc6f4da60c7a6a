"""The prunesearch service: SQL storage, the experiment runner, artifacts and the REST API.

Importing this package is cheap: no torch, ray or fastapi import happens here. Heavy modules are
imported by the submodules that need them (``service.runner``, ``service.app``).
"""

from __future__ import annotations

__all__: list[str] = []
