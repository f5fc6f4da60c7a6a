"""What speedup did, per module and in total."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ModuleRow", "SpeedupReport"]


@dataclass(frozen=True)
class ModuleRow:
    """Output channels of one masked module: masked (requested) vs removed, and why some stayed."""

    module: str
    module_type: str
    channels: int
    requested: int
    removed: int
    kept: dict[str, int] = field(default_factory=dict)


@dataclass
class SpeedupReport:
    rows: list[ModuleRow]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_abs_diff: float | None  # None: not verified (``ModelSpeedup(verify=False)``)
    unsupported: list[str]
    trace_method: str
    seconds: float

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def row(self, module: str) -> ModuleRow:
        for r in self.rows:
            if r.module == module:
                return r
        raise KeyError(f"no row for module {module!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"{'module':<32} {'type':<16} {'channels':>8} {'masked':>7} {'removed':>7}  kept because"]
        for r in self.rows:
            why = "; ".join(f"{n}× {reason}" for reason, n in r.kept.items())
            lines.append(f"{r.module:<32} {r.module_type:<16} {r.channels:>8} {r.requested:>7} {r.removed:>7}  {why}")
        lines.append(
            f"params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.3f}); "
            f"FLOPs {self.flops_before:,} -> {self.flops_after:,} ({self.flops_ratio:.3f}); "
            f"max |diff| {'not checked' if self.max_abs_diff is None else f'{self.max_abs_diff:.2e}'}; traced {self.trace_method}; {self.seconds:.2f} s"
        )
        if self.unsupported:
            lines.append("kept conservatively around: " + "; ".join(self.unsupported))
        return "\n".join(lines)
