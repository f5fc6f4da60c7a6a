"""ModelSpeedup: turn masks into a smaller model that computes the same function."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from search.config import channel_dims, is_io_target
from search.metrics import FlopCounter, _call, count_params
from search.pruning.io import load_masks
from search.speedup.analyze import Analyzer, slice_zero
from search.speedup.report import ModuleRow, SpeedupReport
from search.speedup.shrink import SpeedupPlan, apply_removal, rollback
from search.speedup.trace import recount_flops, trace_model

__all__ = ["ModelSpeedup", "SpeedupError"]

logger = logging.getLogger(__name__)


class SpeedupError(RuntimeError, ValueError):
    """Speedup could not produce a compact model equal to the masked one (nothing was changed).

    Also a ``ValueError``: bad masks (unknown module, wrong shape, still wrapped) raise it too.
    """


def _flat_tensors(out: Any) -> list[Tensor]:
    found: list[Tensor] = []
    torch.fx.node.map_aggregate(out, lambda x: found.append(x) if isinstance(x, Tensor) else None)
    return found


class ModelSpeedup:
    """Shrink ``model`` in place so it computes what the masked model computes, only smaller.

    Output channels whose masks are all zero are removed together with every position that
    depends on them (BN channels, the next layer's input channels, concatenation slots,
    residual partners...). A channel is removed only where that provably leaves every output
    unchanged; otherwise it stays (with zero weights) and :attr:`report` says why. The result
    is checked on ``dummy_input`` and rolled back with :class:`SpeedupError` if it differs.

    Args:
        model: the (unwrapped) model; its parameters get the masks multiplied in.
        dummy_input: an input (tensor, tuple of positional inputs, or dict of keyword inputs).
        masks: ``{module_name: {target_name: 0/1 tensor}}`` as pruners return them, or the path of a
            masks file written by ``pruner.export_model(..., mask_path=...)`` (NNI's ``masks_file``).
        rtol: allowed max abs difference, relative to the output's max magnitude.
        verify: run the compact model on ``dummy_input`` and compare its outputs with the masked
            model's (the default). This costs two forward passes, the masked model's and the
            compact one's; the analysis itself needs shapes only (the model is traced on the meta
            device). With ``False`` the check is skipped - what Torch-Pruning and NNI do - which
            roughly halves the time on a CNN at 224x224; the rules are exact by construction (the
            test suite checks every zoo model and graph pattern), and
            :attr:`SpeedupReport.max_abs_diff` is then ``None``.

    Example:
        >>> import torch
        >>> from search.pruning import L1NormPruner
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        >>> pruner = L1NormPruner(model, [{'op_names': ['0'], 'sparse_ratio': 0.5}])
        >>> _, masks = pruner.compress()
        >>> pruner.unwrap_model()
        >>> model = ModelSpeedup(model, torch.randn(1, 3, 8, 8), masks).speedup_model()
        >>> model[0].out_channels, model[2].in_channels
        (4, 4)
    """

    def __init__(
        self,
        model: nn.Module,
        dummy_input: Any,
        masks: Mapping[str, Mapping[str, Tensor]] | str | os.PathLike[str],
        *,
        rtol: float = 1e-4,
        verify: bool = True,
        **_nni_compat: Any,
    ) -> None:
        self.model = model
        self.dummy_input = dummy_input
        if isinstance(masks, str | os.PathLike):
            masks = load_masks(masks)
        self.masks = {m: dict(t) for m, t in masks.items()}
        self.rtol = rtol
        self.verify = verify
        self.report: SpeedupReport | None = None
        self.plan: SpeedupPlan | None = None
        self._modules: dict[str, nn.Module] = {}

    def _check_masks(self) -> None:
        modules = self._modules
        for name, targets in self.masks.items():
            if name not in modules:
                raise SpeedupError(f"masks name module {name!r}, which is not in the model")
            if getattr(modules[name], "_ps_wrapper", None) is not None:
                raise SpeedupError(f"module {name!r} is still wrapped by a pruner; call pruner.unwrap_model() first")
            for target, mask in targets.items():
                if mask is None:
                    continue
                if parametrize.is_parametrized(modules[name], target):
                    raise SpeedupError(
                        f"{name}.{target} is computed by a parametrization (weight_norm, spectral_norm...), so a mask "
                        "cannot be multiplied into it; call torch.nn.utils.parametrize.remove_parametrizations first"
                    )
                if is_io_target(target):
                    raise SpeedupError(
                        f"{name}.{target}: masks on activations are not supported by speedup; "
                        "mask the producing module's weight instead"
                    )
                value = getattr(modules[name], target, None)
                if not isinstance(value, Tensor) or tuple(value.shape) != tuple(mask.shape):
                    raise SpeedupError(f"{name}.{target}: mask shape {tuple(mask.shape)} does not match the target")

    def _apply_masks(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Multiply every mask into its tensor.

        Returns the masked output channels of each weight mask, and of those the masks that are
        channel masks on weight dim 0 (each row all zero or all one), whose modules' weights the
        analysis then knows without reading them (:class:`~search.speedup.analyze.RowPairs`).
        A channel mask is applied by zeroing the masked rows only, reading the mask twice (max
        and min); any other mask is multiplied in.
        """
        masked_rows: dict[str, np.ndarray] = {}
        channel_rows: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for name, targets in self.masks.items():
                module = self._modules[name]
                for target, mask in targets.items():
                    if mask is None:
                        continue
                    tensor = getattr(module, target)
                    mask = mask.to(tensor.device)
                    if target != "weight" or mask.dim() < 2:
                        tensor.mul_(mask.to(tensor.dtype))
                        continue
                    out_dim, _ = channel_dims(module)
                    out_dim = min(out_dim, mask.dim() - 1)
                    rows = mask.detach().movedim(out_dim, 0).reshape(mask.shape[out_dim], -1)
                    high, low = rows.amax(dim=1), rows.amin(dim=1)
                    zero = (high == 0) & (low == 0)
                    masked_rows[name] = zero.cpu().numpy()
                    if bool((zero | ((high == 1) & (low == 1))).all()):
                        if bool(zero.any()):
                            tensor.index_fill_(out_dim, zero.nonzero().flatten(), 0)
                        if out_dim == 0:
                            channel_rows[name] = masked_rows[name]
                    else:
                        tensor.mul_(mask.to(tensor.dtype))
        return masked_rows, channel_rows

    def speedup_model(self) -> nn.Module:
        """Shrink the model in place and return it; the report is in :attr:`report`."""
        start = time.perf_counter()
        self._modules = dict(self.model.named_modules())
        self._check_masks()
        model = self.model
        modes = {m: m.training for m in self._modules.values()}
        model.eval()
        try:
            masked_rows, channel_rows = self._apply_masks()
            params_before = count_params(model)
            traced = trace_model(model, self.dummy_input)
            reference = self._reference(traced) if self.verify else []
            masked = {name for name, targets in self.masks.items() if targets.get("weight") is not None}
            analyzer = Analyzer(traced, model, self._modules, channel_rows, masked)
            analyzer.run()
            removable, explain = self._decide(analyzer)
            try:
                changes, self.plan = apply_removal(analyzer.modules, analyzer.params, removable, analyzer.folds)
            except Exception as exc:
                raise SpeedupError(f"could not shrink the model ({type(exc).__name__}: {exc}); model restored") from exc
            flops_after = self._recount(traced, analyzer, removable)
            diff: float | None = None
            if self.verify or flops_after is None:
                try:
                    flops_after, diff = self._run_compact(reference, flops_after)
                except Exception as exc:
                    rollback(changes)
                    raise SpeedupError(
                        f"the compact model failed to run ({type(exc).__name__}: {exc}); model restored"
                    ) from exc
                if self.verify and diff is None:
                    rollback(changes)
                    raise SpeedupError("the compact model's outputs differ from the masked model's; model restored")
            self.report = SpeedupReport(
                rows=self._rows(analyzer, removable, explain, masked_rows),
                params_before=params_before,
                params_after=count_params(model),
                flops_before=traced.flops,
                flops_after=flops_after,
                max_abs_diff=diff,
                unsupported=sorted(set(analyzer.unsupported.values())),
                trace_method=traced.method,
                seconds=time.perf_counter() - start,
            )
        finally:
            for module, training in modes.items():
                module.training = training
        logger.info("speedup: %s", self.report)
        return model

    def _reference(self, traced: Any) -> list[Tensor]:
        """The masked model's outputs on the dummy input (from the trace, unless it ran on the meta device)."""
        found = _flat_tensors(traced.output)
        if any(t.device.type == "meta" for t in found):
            with torch.no_grad():
                found = _flat_tensors(_call(self.model, self.dummy_input))
        return found

    def _run_compact(self, reference: list[Tensor], flops_after: int | None) -> tuple[int, float | None]:
        """(FLOPs, max abs diff) of the compact model on the dummy input (diff ``None`` if unverified).

        FLOPs are counted while it runs when they could not be recomputed from shapes (a real run:
        composite operators such as attention may count differently on the meta device).
        """
        counter = FlopCounter() if flops_after is None else contextlib.nullcontext()
        with torch.no_grad(), counter:
            result = _flat_tensors(_call(self.model, self.dummy_input))
        if isinstance(counter, FlopCounter):
            flops_after = counter.total
        assert flops_after is not None
        if not self.verify:
            return flops_after, None
        return flops_after, self._compare(reference, result)

    @staticmethod
    def _recount(traced: Any, an: Analyzer, removable: np.ndarray) -> int | None:
        """FLOPs after removal from the traced shapes, when that is exact (else ``None``: count them).

        Exact when every FLOP came from Conv/Linear leaf calls and removal touched only their channel
        dims (a removed batch/spatial/sequence position would change the call's other factors).
        """
        nodes = {n.name: n for n in traced.graph.nodes} if traced.counted else {}
        for c in traced.counted:
            m = an.modules[c.module]
            cax = len(c.input_shape) - 1 if isinstance(m, nn.Linear) else (1 if len(c.input_shape) == m.weight.dim() else 0)
            node = nodes.get(c.node)
            values = [an.node_values.get(c.node)]
            if node is not None and node.args and isinstance(node.args[0], torch.fx.Node):
                values.append(an.node_values.get(node.args[0].name))
            for v in values:
                if v is None:
                    return None
                if any(removable[v.ids(a)].any() for a in range(v.ndim) if a != cax):
                    return None
        return recount_flops(traced, an.model, an.modules)

    def _compare(self, reference: list[Tensor], result: list[Tensor]) -> float | None:
        if len(reference) != len(result):
            return None
        worst = 0.0
        for r, o in zip(reference, result, strict=True):
            if r.shape != o.shape:
                return None
            if not r.is_floating_point():
                if not torch.equal(r, o):
                    return None
                continue
            scale = max(float(r.abs().max()) if r.numel() else 0.0, 1e-6)
            diff = float((r - o).abs().max()) if r.numel() else 0.0
            if not diff <= self.rtol * max(scale, 1.0):
                return None
            worst = max(worst, diff)
        return worst

    def _decide(self, an: Analyzer) -> tuple[np.ndarray, Any]:
        g = an.g
        n, labels = g.components()
        pinned, first_reason, reasons = g.pin_reasons()
        is_value, dead = g.dead_array()

        def any_in_component(positions: np.ndarray) -> np.ndarray:
            hit = np.zeros(n, dtype=bool)
            hit[labels[positions]] = True
            return hit

        comp_pinned = any_in_component(pinned)
        comp_alive = any_in_component(is_value & ~dead)
        comp_has_value = any_in_component(is_value)
        ok = ~comp_pinned & ~comp_alive & comp_has_value
        # Never empty an axis: keep one component of any tensor axis that would vanish. Screened
        # for all axes at once (count of kept positions per axis block); the few axes that would
        # vanish are then handled in order, as keeping one component may save a later axis too.
        self._kept_nonempty: set[int] = set()
        starts, lengths = g.axis_blocks()
        kept_before = np.concatenate(([0], np.cumsum(~ok[labels])))
        vanishing = (lengths > 0) & (kept_before[starts + lengths] == kept_before[starts])
        for start, length in zip(starts[vanishing].tolist(), lengths[vanishing].tolist(), strict=True):
            block = labels[start : start + length]
            if ok[block].all():
                ok[block[0]] = False
                self._kept_nonempty.add(int(block[0]))
        removable = ok[labels]
        return removable, (labels, comp_pinned, first_reason, reasons, is_value, dead)

    def _rows(self, an: Analyzer, removable: np.ndarray, explain: Any, masked_rows: dict[str, np.ndarray]) -> list[ModuleRow]:
        labels, comp_pinned, first_reason, reasons, is_value, dead = explain
        comp_reason: dict[int, str] = {}
        pinned_ids = np.nonzero(first_reason >= 0)[0]
        comps, first = np.unique(labels[pinned_ids], return_index=True)
        for c, i in zip(comps, first, strict=True):
            comp_reason[int(c)] = reasons[first_reason[pinned_ids[i]]]
        lookup: list[Any] = []  # (owner value of each position, first live position of each component), on demand

        def describe_live(c: int) -> str | None:
            if not lookup:
                owner = np.full(an.g.size, -1, dtype=np.int64)
                for i, v in enumerate(an.g.values):
                    if not v.is_param and v.ndim:
                        owner[v.offsets[0] : v.offsets[-1] + v.shape[-1]] = i
                alive = np.nonzero(is_value & ~dead)[0]
                alive_comps, first_alive = np.unique(labels[alive], return_index=True)
                lookup.extend((owner, dict(zip(alive_comps.tolist(), alive[first_alive].tolist(), strict=True))))
            owner, live_owner = lookup
            pos = live_owner.get(c)
            if pos is None or owner[pos] < 0:
                return None
            v = an.g.values[owner[pos]]
            return f"non-zero output of {v.producer or v.key}"

        rows = []
        for name, targets in self.masks.items():
            mask = targets.get("weight")
            pv = an.params.get((name, "weight"))
            module = an.modules[name]
            if mask is not None and pv is None and isinstance(module, nn.Module):
                out_dim, _ = channel_dims(module)
                channels = int(mask.shape[out_dim]) if mask.dim() > out_dim else int(mask.numel())
                if name in masked_rows:
                    masked_n = int(masked_rows[name].sum())
                else:
                    masked_n = int(slice_zero(mask, min(out_dim, mask.dim() - 1)).sum()) if mask.dim() else int(mask == 0)
                rows.append(ModuleRow(name, type(module).__name__, channels, masked_n, 0,
                                      {"not reached by the dummy input": masked_n} if masked_n else {}))
                continue
            if mask is None or pv is None:
                continue
            out_dim, _ = channel_dims(module)
            if mask.dim() < 2 and not isinstance(module, nn.modules.batchnorm._NormBase):
                continue
            masked = masked_rows[name] if name in masked_rows else slice_zero(mask, out_dim)
            ids = pv.ids(out_dim)
            gone = removable[ids]
            kept_reasons: Counter[str] = Counter()
            comps, counts = np.unique(labels[ids[np.nonzero(masked & ~gone)[0]]], return_counts=True)
            for c, count in zip(comps.tolist(), counts.tolist(), strict=True):
                why = comp_reason.get(c) or describe_live(c)
                if why is None and c in self._kept_nonempty:
                    why = "kept so that every tensor keeps at least one channel"
                kept_reasons[why or "no tensor depends on it"] += count
            rows.append(
                ModuleRow(
                    module=name,
                    module_type=type(module).__name__,
                    channels=int(mask.shape[out_dim]),
                    requested=int(masked.sum()),
                    removed=int(gone.sum()),
                    kept=dict(kept_reasons),
                )
            )
        return rows
