"""prunesearch compression library: config lists, wrappers, pruners, speedup and search.

The library runs in any Python process; no server is needed. Public entry points live in the
sub-packages (``search.pruning``, ``search.zoo``, ...).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
