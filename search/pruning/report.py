"""Requested vs achieved sparsity per module and target."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from search.config import TargetSetting

__all__ = ["SparsityRow", "SparsityReport", "build_report"]


@dataclass(frozen=True)
class SparsityRow:
    module: str
    module_type: str
    target: str
    requested: float | None  # sparse_ratio asked for (None: threshold or aligned target)
    achieved: float  # share of the target's elements that are masked
    numel: int
    masked: int
    global_group: Any = None
    dependency_group: Any = None


class SparsityReport:
    """Rows per (module, target), plus ``total()`` and per-group achieved sparsity.

    ``str(report)`` is a table; ``report.to_dicts()`` gives plain rows for logs and JSON.
    """

    def __init__(self, rows: list[SparsityRow]) -> None:
        self.rows = rows

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, module: str, target: str = "weight") -> SparsityRow:
        for r in self.rows:
            if r.module == module and r.target == target:
                return r
        raise KeyError(f"no row for {module}.{target}")

    def total(self, target: str | None = "weight") -> float:
        rows = [r for r in self.rows if target is None or r.target == target]
        numel = sum(r.numel for r in rows)
        return sum(r.masked for r in rows) / numel if numel else 0.0

    def group(self, global_group_id: Any) -> float:
        rows = [r for r in self.rows if r.global_group == global_group_id]
        numel = sum(r.numel for r in rows)
        return sum(r.masked for r in rows) / numel if numel else 0.0

    def to_dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]

    def __str__(self) -> str:
        header = f"{'module':<32} {'type':<14} {'target':<10} {'requested':>9} {'achieved':>9} {'numel':>10}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            req = "-" if r.requested is None else f"{r.requested:.3f}"
            lines.append(f"{r.module:<32} {r.module_type:<14} {r.target:<10} {req:>9} {r.achieved:>9.3f} {r.numel:>10}")
        lines.append(f"total weight sparsity: {self.total():.3f}")
        return "\n".join(lines)


def build_report(
    configs: Mapping[str, Mapping[str, TargetSetting]],
    masks: Mapping[str, Mapping[str, Tensor]],
    modules: Mapping[str, nn.Module],
) -> SparsityReport:
    rows = []
    for module, targets in configs.items():
        for target, setting in targets.items():
            mask = masks.get(module, {}).get(target)
            numel = int(mask.numel()) if mask is not None else 0
            masked = int((mask == 0).sum()) if mask is not None else 0
            rows.append(
                SparsityRow(
                    module=module,
                    module_type=type(modules[module]).__name__,
                    target=target,
                    requested=setting.sparse_ratio if setting.align is None else None,
                    achieved=masked / numel if numel else 0.0,
                    numel=numel,
                    masked=masked,
                    global_group=setting.global_group_id,
                    dependency_group=setting.dependency_group_id,
                )
            )
    return SparsityReport(rows)
