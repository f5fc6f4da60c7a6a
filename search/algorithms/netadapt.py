"""NetAdapt (Yang et al., ECCV 2018): shrink one layer at a time, keep the best of the candidates.

Each iteration asks for a fixed drop of the model's resource (FLOPs, params, or the weighted
sparsity of the selected layers). It proposes ONE CANDIDATE PER LAYER, all at once: candidate
``k`` raises only layer ``k``'s ratio, just enough for the *estimated* resource to drop by the
step. All candidates start from the current best model (the parent), are pruned, finetuned
briefly and evaluated; when every candidate of the iteration is told, the best-scoring one becomes
the next parent. The search stops when the target is met (measured when the results carry the
metric, else estimated), when no layer can shrink further, or when ``max_trials`` is used up.

An iteration's candidates run in parallel, but the iteration ends with a barrier: with 3 layers
and 2 workers one worker would idle while the last candidate runs. With ``speculate`` (the
default) the generator fills such a slot with a candidate of the *next* iteration, started from the
best candidate told so far (params ``speculative: true``; candidates are handed out in the order of
their layers' latest wins, so the first ones told, whose leader is the bet, tend to hold the winner). If that candidate wins the iteration,
the next iteration goes on from the speculative candidates (their results count as if they had
been handed out after the decision: same config lists, parent and training seed); if another
candidate wins, they are discarded (runners cancel them; they are not counted in ``max_trials``
and never the best). So the decisions, scores and best result are the same with any number of
workers and any timing; only idle time is used. A sequential run never speculates.

The resource estimate (:class:`CostModel`) is analytic: tracing the model once gives each
``Conv``/``Linear`` layer's FLOPs and the layer that produces its input channels, so removing a
share ``r`` of layer ``k``'s output channels removes ``r`` of its own FLOPs and ``r`` of the
next layer's input share. With ``sparsity_per_iteration`` every candidate simply raises its
layer's ratio by that step instead.

Example:
    >>> import torch
    >>> from search.algorithms import NetAdaptTaskGenerator
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
    ...                             torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> gen = NetAdaptTaskGenerator(model, origin_config_list=[{'op_names': ['0', '2'], 'sparse_ratio': 0.5}],
    ...                             log_dir=None, constraints={'max_flops_ratio': 0.6},
    ...                             dummy_input=torch.randn(1, 8), reduction_per_iteration=0.25)
    >>> [t.params['layer'] for t in gen.ask(8)]  # one candidate per layer, handed out together
    ['0', '2']
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from search.algorithms.allocation import (
    CandidateRound,
    LayerSpec,
    SearchPruner,
    allocation_layers,
    better,
    per_layer_config_list,
    require_scores,
    weighted_ratio,
)
from search.pruning import Pruner
from search.scheduling import Proposal, PruningScheduler, Task, TaskGenerator, TaskResult, TaskStatus

__all__ = ["CostModel", "NetAdaptPruner", "NetAdaptTaskGenerator"]

logger = logging.getLogger(__name__)

_EPS = 1e-9
#: modules and functions a channel passes through unchanged (walking back to its producer).
_PASS_MODULES = (
    nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.Flatten,
)
_PASS_FUNCTIONS = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "dropout", "flatten", "view",
    "reshape", "contiguous", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
    "batch_norm", "leaky_relu", "squeeze",
}


class CostModel:
    """Estimated FLOPs and params ratios of the compact model for given per-layer channel ratios.

    Args:
        model: the origin model (traced once, on a copy).
        dummy_input: an input for the trace.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> cost = CostModel(model, torch.randn(1, 4))
        >>> round(cost.flops_ratio({'0': 0.5}), 3)  # half of layer 0's outputs and of layer 2's inputs
        0.5
    """

    def __init__(self, model: nn.Module, dummy_input: Any) -> None:
        from search.speedup.trace import trace_model  # noqa: PLC0415 (tracing is only needed here)

        probe = copy.deepcopy(model).eval()
        traced = trace_model(probe, dummy_input)
        modules = dict(probe.named_modules())
        self.total_flops = float(traced.flops)
        self.total_params = float(sum(p.numel() for p in model.parameters()))
        #: (module, flops, weight params, bias params, producer of its input channels)
        self.ops: list[tuple[str, float, float, float, str | None]] = []
        for node in traced.graph.nodes:
            module = modules.get(str(node.target)) if node.op == "call_module" else None
            if not isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
                continue
            out = traced.values.get(node.name)
            numel = float(out.numel()) if isinstance(out, Tensor) else 0.0
            if isinstance(module, nn.Linear):
                macs = numel * module.in_features
            else:
                macs = numel * (module.in_channels // module.groups) * math.prod(module.kernel_size)
            bias = float(module.bias.numel()) if module.bias is not None else 0.0
            producer = self._producer(node.args[0] if node.args else None, modules)
            self.ops.append((str(node.target), 2.0 * macs, float(module.weight.numel()), bias, producer))

    @staticmethod
    def _producer(node: Any, modules: Mapping[str, nn.Module]) -> str | None:
        while node is not None and hasattr(node, "op"):
            if node.op == "call_module":
                module = modules.get(str(node.target))
                if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
                    return str(node.target)
                if not isinstance(module, _PASS_MODULES):
                    return None
            elif node.op in ("call_function", "call_method"):
                name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
                if name not in _PASS_FUNCTIONS:
                    return None
            else:
                return None
            node = node.args[0] if node.args else None
        return None

    def _removed(self, ratios: Mapping[str, float]) -> tuple[float, float]:
        flops = params = 0.0
        for name, f, w, b, producer in self.ops:
            r_out = ratios.get(name, 0.0)
            r_in = ratios.get(producer, 0.0) if producer is not None else 0.0
            kept = (1.0 - r_out) * (1.0 - r_in)
            flops += f * (1.0 - kept)
            params += w * (1.0 - kept) + b * r_out
        return flops, params

    def flops_ratio(self, ratios: Mapping[str, float]) -> float:
        return 1.0 - self._removed(ratios)[0] / max(self.total_flops, 1.0)

    def params_ratio(self, ratios: Mapping[str, float]) -> float:
        return 1.0 - self._removed(ratios)[1] / max(self.total_params, 1.0)


class NetAdaptTaskGenerator(TaskGenerator):
    """NetAdapt as an ask/tell search: one candidate per layer per iteration.

    Args:
        origin_model, origin_masks, origin_config_list, log_dir, keep_intermediate_result,
            best_result_mode: as for :class:`~search.scheduling.TaskGenerator` (the mode must be
            ``'maximize'`` or ``'minimize'``). The config list names the layers; without
            constraints its ratios (weighted by layer size) are the target.
        dummy_input: an input for the cost estimate (needed with FLOPs, params or latency bounds).
        reduction_per_iteration: the resource drop each iteration asks for, as a share of the
            origin model's resource (FLOPs, params, or weights of the selected layers).
        sparsity_per_iteration: instead, raise the candidate layer's ratio by this fixed step.
        max_layer_ratio: the highest ratio a layer may reach (unless its ``max_sparse_ratio`` is lower).
        speculate: hand out next-iteration candidates from the best candidate told so far when a
            worker would otherwise wait for the iteration's last candidates (see the module docstring).
        refine: the last trials of ``max_trials`` kept for the refine phase after the search (see
            :class:`~search.scheduling.TaskGenerator`; 0: none).
        max_trials, constraints, seed: the budget, the cost bounds (``max_flops_ratio``,
            ``max_params_ratio``, ``max_latency_ratio`` — latency is steered by the FLOPs
            estimate), and the seed.

    Each task's ``params`` hold ``iteration``, ``candidate``, the ``layer`` it shrinks, the
    requested ``ratios``, ``requested_sparsity`` and the ``estimated`` resource values (and
    ``speculative: true`` for a candidate handed out before its iteration opened).
    """

    def __init__(
        self,
        origin_model: nn.Module | None,
        origin_masks: dict[str, dict[str, Tensor]] | None = None,
        origin_config_list: list[dict[str, Any]] | None = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        best_result_mode: str = "maximize",
        *,
        dummy_input: Any = None,
        reduction_per_iteration: float = 0.1,
        sparsity_per_iteration: float | None = None,
        max_layer_ratio: float = 0.9,
        speculate: bool = True,
        max_trials: int | None = None,
        constraints: Mapping[str, Any] | None = None,
        seed: int = 0,
        refine: int = 0,
    ) -> None:
        super().__init__(origin_model, origin_masks, origin_config_list, log_dir, keep_intermediate_result,
                         best_result_mode, max_trials=max_trials, constraints=dict(constraints or {}), seed=seed,
                         refine=refine)
        require_scores(best_result_mode, type(self).__name__)
        if origin_model is None:
            raise ValueError(f"{type(self).__name__} needs origin_model to find the layers to shrink")
        if not 0 < reduction_per_iteration <= 1:
            raise ValueError(f"reduction_per_iteration must be in (0, 1], got {reduction_per_iteration!r}")
        if sparsity_per_iteration is not None and not 0 < sparsity_per_iteration <= 1:
            raise ValueError(f"sparsity_per_iteration must be in (0, 1], got {sparsity_per_iteration!r}")
        if not isinstance(speculate, bool):
            raise ValueError(f"speculate must be true or false, got {speculate!r}")
        self.reduction_per_iteration = reduction_per_iteration
        self.sparsity_per_iteration = sparsity_per_iteration
        self.speculate = speculate
        self.layers: list[LayerSpec] = allocation_layers(origin_model, self.origin_config_list, max_layer_ratio)
        self.sign = 1.0 if best_result_mode == "maximize" else -1.0
        # Resources to bring down to their targets, in the order they are worked on.
        c = self.constraints
        self.resources: list[tuple[str, float]] = [
            (metric, bound) for metric, bound in (("flops_ratio", c.max_flops_ratio), ("params_ratio", c.max_params_ratio),
                                                  ("latency_ratio", c.max_latency_ratio)) if bound is not None
        ] or [("weights_ratio", 1.0 - weighted_ratio(self.layers, [layer.target for layer in self.layers]))]
        self.cost: CostModel | None = None
        if any(metric != "weights_ratio" for metric, _ in self.resources):
            if dummy_input is None:
                raise ValueError(f"{type(self).__name__}: FLOPs/params/latency bounds need dummy_input for the cost estimate")
            self.cost = CostModel(origin_model, dummy_input)
        self.iteration = 0
        self.ratios = [layer.lo for layer in self.layers]
        self.parent_id: int | None = None
        self.measured: dict[str, float] = {}
        self.round: CandidateRound | None = None
        #: the next iteration's candidates, handed out before this one is decided (see ``speculate``):
        #: ``{"base": task id they start from, "iteration": n, "round": CandidateRound}``
        self.ahead: dict[str, Any] | None = None
        self.done_reason: str | None = None
        self.decisions: list[dict[str, Any]] = []

    # -- resources ------------------------------------------------------------------------------
    def estimate(self, metric: str, ratios: Sequence[float]) -> float:
        """The estimated remaining share of ``metric`` (``flops_ratio``, ``params_ratio``...)."""
        if metric == "weights_ratio" or self.cost is None:
            return 1.0 - weighted_ratio(self.layers, ratios)
        by_name = {layer.name: r for layer, r in zip(self.layers, ratios, strict=True)}
        return self.cost.params_ratio(by_name) if metric == "params_ratio" else self.cost.flops_ratio(by_name)

    @staticmethod
    def _measured_of(metrics: Mapping[str, Any]) -> dict[str, float]:
        return {m: float(metrics[m]) for m in ("flops_ratio", "params_ratio", "latency_ratio") if m in metrics}

    def _current(self, metric: str, ratios: Sequence[float], measured: Mapping[str, float]) -> float:
        if metric in measured:
            return measured[metric]
        if metric == "latency_ratio" and "flops_ratio" in measured:
            return measured["flops_ratio"]
        return self.estimate(metric, ratios)

    def _unmet(self, ratios: Sequence[float], measured: Mapping[str, float]) -> tuple[str, float] | None:
        for metric, target in self.resources:
            if self._current(metric, ratios, measured) > target + 1e-6:
                return metric, target
        return None

    @property
    def stop_reason(self) -> str | None:
        """Why the search ended (``None`` while it goes on)."""
        if self.done_reason is not None:
            return self.done_reason
        if self.search_trials is not None and len(self._search_tasks()) >= self.search_trials and not self.pending():
            return self._budget_used_up()
        return None

    # -- candidates -----------------------------------------------------------------------------
    def _snap(self, k: int, ratio: float) -> float:
        """Round a ratio up to whole output channels (the cost model counts channels)."""
        if self.cost is None:
            return ratio
        c = self.layers[k].out_channels
        snapped = math.ceil(ratio * c - 1e-6) / c
        return snapped if snapped <= self.layers[k].hi + _EPS else math.floor(ratio * c + 1e-6) / c

    def _candidate_ratio(self, k: int, metric: str, goal: float, ratios: Sequence[float]) -> tuple[float, bool] | None:
        """The smallest ratio of layer ``k`` (from ``ratios``) whose estimate reaches ``goal``, and whether it does.

        A layer that cannot reach it offers its max ratio (used only when no layer reaches it).
        """
        layer, r0 = self.layers[k], ratios[k]
        if self.sparsity_per_iteration is not None:
            x = self._snap(k, min(r0 + self.sparsity_per_iteration, layer.hi))
            return (x, True) if x > r0 + _EPS else None

        def est(x: float) -> float:
            trial = list(ratios)
            trial[k] = x
            return self.estimate(metric, trial)

        if est(layer.hi) > est(r0) - _EPS:
            return None  # this layer cannot lower the resource any more
        lo, hi = r0, layer.hi
        meets = est(hi) <= goal + _EPS
        if meets:
            for _ in range(50):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if est(mid) <= goal + _EPS else (mid, hi)
        x = self._snap(k, hi)
        return (x, meets) if x > r0 + _EPS else None

    def _plan(self, ratios: Sequence[float], measured: Mapping[str, float],
              winners: Sequence[int]) -> tuple[list[dict[str, Any]], str | None]:
        """The candidates of an iteration that starts from ``ratios`` (``[]`` and why, if there are none).

        ``winners``: the layers that won the iterations so far, oldest first. The candidates come
        in the order of the layers' latest wins (then in layer order): the layer that won last
        is likely to win again, and the candidates handed out first are told first, so running
        ahead from the leader of those bets on the likely winner.
        """
        unmet = self._unmet(ratios, measured)
        if unmet is None:
            return [], "target reached"
        metric, target = unmet
        now = self._current(metric, ratios, measured)
        step = min(self.reduction_per_iteration, now - target)
        goal = self.estimate(metric, ratios) - step
        found = [(k, self._candidate_ratio(k, metric, goal, ratios)) for k in range(len(self.layers))]
        options = [(k, c[0], c[1]) for k, c in found if c is not None]
        if any(meets for _, _, meets in options):
            options = [o for o in options if o[2]]  # NetAdapt compares only candidates that make the step
        if not options:
            return [], f"no layer can lower {metric} further (every layer at its max ratio)"
        last_win = {k: i for i, k in enumerate(winners)}
        options.sort(key=lambda o: (-last_win.get(o[0], -1), o[0]))
        items = []
        for k, x, _ in options:
            candidate = list(ratios)
            candidate[k] = x
            items.append({"layer": k, "ratios": candidate})
        return items, None

    def _winners(self) -> list[int]:
        index = {layer.name: k for k, layer in enumerate(self.layers)}
        return [index[d["layer"]] for d in self.decisions]

    def _open_iteration(self) -> None:
        items, why = self._plan(self.ratios, self.measured, self._winners())
        if not items:
            self.done_reason = why
            return
        self.iteration += 1
        self.round = CandidateRound(items)

    def _proposal(self, iteration: int, index: int, item: Mapping[str, Any], parent_id: int | None,
                  speculative: bool = False) -> Proposal:
        ratios = item["ratios"]
        params: dict[str, Any] = {
            "iteration": iteration, "candidate": index, "layer": self.layers[item["layer"]].name,
            "ratios": {layer.name: r for layer, r in zip(self.layers, ratios, strict=True)},
            "requested_sparsity": weighted_ratio(self.layers, ratios),
            "estimated": {metric: self.estimate(metric, ratios) for metric, _ in self.resources},
        }
        if speculative:
            params["speculative"] = True
        return Proposal(per_layer_config_list(self.layers, ratios), parent_id, params)

    def _propose(self, n: int) -> list[Proposal]:
        if self.done_reason is not None:
            return []
        if self.round is None:
            self._open_iteration()
            if self.round is None:
                return []
        proposals = [self._proposal(self.iteration, index, item, self.parent_id) for index, item in self.round.take(n)]
        if len(proposals) < n and self.speculate:
            proposals += self._speculate(n - len(proposals))
        return proposals

    # -- running ahead ----------------------------------------------------------------------------
    def _leader(self) -> tuple[Any, int, float | None] | None:
        """``(item, task id, score)`` of the best candidate told so far (the rule :meth:`_decide` applies)."""
        assert self.round is not None
        best: tuple[Any, int, float | None] | None = None
        for _, item, task_id, score in self.round.outcomes():
            if not self.results[task_id].ok:
                continue
            if best is None or better(score, best[2], self.sign):
                best = (item, task_id, score)
        return best

    def _speculate(self, n: int) -> list[Proposal]:
        """Up to ``n`` candidates of the next iteration, from the leader of this one (see ``speculate``)."""
        leader = self._leader()
        if leader is None:
            return []
        item, base_id, _ = leader
        if self.ahead is not None and self.ahead["base"] != base_id:
            self._drop_ahead(f"task {base_id} leads iteration {self.iteration} now")
        if self.ahead is None:
            items, _ = self._plan(item["ratios"], self._measured_of(self.results[base_id].metrics),
                                  [*self._winners(), item["layer"]])
            if not items:
                return []  # the leader would end the search: nothing to run ahead
            self.ahead = {"base": base_id, "iteration": self.iteration + 1, "round": CandidateRound(items)}
        return [self._proposal(self.ahead["iteration"], index, it, base_id, speculative=True)
                for index, it in self.ahead["round"].take(n)]

    def _drop_ahead(self, why: str) -> None:
        if self.ahead is None:
            return
        ahead = [t.task_id for t in self.tasks.values() if self._tentative(t) and t.status is not TaskStatus.DISCARDED]
        self.discard(ahead, f"ran ahead from task {self.ahead['base']}, but {why}")
        self.ahead = None

    def _tentative(self, task: Task) -> bool:
        return self.ahead is not None and bool(task.params.get("speculative")) and \
            task.params.get("iteration") == self.ahead["iteration"]

    def _budget_left(self) -> bool:
        return self.search_trials is None or len(self._search_tasks()) < self.search_trials

    def _observe(self, result: TaskResult) -> None:
        task = self.tasks[result.task_id]
        params = task.params
        score = result.score if result.ok else None
        if self.ahead is not None and self._tentative(task):
            self.ahead["round"].record(int(params["candidate"]), result.task_id, score)
            return
        if self.round is None or params.get("iteration") != self.iteration:
            return
        self.round.record(int(params["candidate"]), result.task_id, score)
        if self.round.complete(self._budget_left()):
            self._decide()
        elif self.ahead is not None:
            leader = self._leader()
            if leader is None or leader[1] != self.ahead["base"]:
                self._drop_ahead(f"task {result.task_id} leads iteration {self.iteration} now")

    def _decide(self) -> None:
        assert self.round is not None
        best = self._leader()
        self.round = None
        if best is None:
            self.done_reason = f"every candidate of iteration {self.iteration} failed"
            self._drop_ahead(self.done_reason)
            return
        item, task_id, score = best
        self.parent_id, self.ratios = task_id, list(item["ratios"])
        self.measured = self._measured_of(self.results[task_id].metrics)
        self.decisions.append({"iteration": self.iteration, "task_id": task_id, "score": score,
                               "layer": self.layers[item["layer"]].name})
        if self._unmet(self.ratios, self.measured) is None:
            self.done_reason = "target reached"
        if self.ahead is None:
            return
        if self.done_reason is not None or self.ahead["base"] != task_id:
            self._drop_ahead(self.done_reason or f"task {task_id} won iteration {self.iteration}")
            return
        # the bet is won: the next iteration is the one that ran ahead (the same candidates _open_iteration makes)
        self.iteration, self.round, self.ahead = self.ahead["iteration"], self.ahead["round"], None
        if self.round.next > 0 and self.round.complete(self._budget_left()):
            self._decide()

    # -- results ----------------------------------------------------------------------------------
    def feasible(self, result: TaskResult) -> bool:
        """Within the constraints and, without constraints, at the config list's ratio."""
        if not super().feasible(result):
            return False
        metric, target = self.resources[0]
        if metric != "weights_ratio":
            return True
        requested = self.tasks[result.task_id].params.get("requested_sparsity", 0.0)
        return 1.0 - requested <= target + 1e-6

    def _finished(self) -> bool:
        return self.done_reason is not None

    def _keep_models(self) -> list[int]:
        keep = [self.parent_id] if self.parent_id is not None else []
        for round_ in (self.round, self.ahead["round"] if self.ahead is not None else None):
            if round_ is not None:
                keep += [task_id for _, _, task_id, _ in round_.outcomes()]
        return keep

    def _algo_state(self) -> dict[str, Any]:
        ahead = None if self.ahead is None else {**self.ahead, "round": self.ahead["round"].to_json()}
        return {
            "iteration": self.iteration, "ratios": list(self.ratios), "parent_id": self.parent_id,
            "measured": dict(self.measured), "round": self.round.to_json() if self.round is not None else None,
            "ahead": ahead, "done_reason": self.done_reason, "decisions": copy.deepcopy(self.decisions),
        }

    def _load_algo_state(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.ratios = [float(r) for r in state["ratios"]]
        self.parent_id = state["parent_id"]
        self.measured = {k: float(v) for k, v in state["measured"].items()}
        self.round = CandidateRound.from_json(state["round"]) if state["round"] is not None else None
        ahead = state.get("ahead")
        self.ahead = None if ahead is None else {"base": int(ahead["base"]), "iteration": int(ahead["iteration"]),
                                                 "round": CandidateRound.from_json(ahead["round"])}
        self.done_reason = state["done_reason"]
        self.decisions = copy.deepcopy(list(state["decisions"]))


class NetAdaptPruner(SearchPruner):
    """``NetAdaptPruner(model, config_list, pruning_algorithm, finetuner, evaluator, dummy_input, ...)``.

    Args:
        model: the model to prune (not modified: each trial works on a copy).
        config_list: the layers to shrink; without constraints, the target ratio.
        pruning_algorithm: the pruner each trial runs (a channel pruner such as ``'l1'`` for FLOPs).
        finetuner: ``finetuner(model)``: the short-term finetune of every candidate.
        evaluator: ``evaluator(model) -> score`` (required: candidates are compared by score).
        dummy_input: an input for the cost estimate and for measuring the trials.
        log_dir, keep_intermediate_result, speedup, pruning_params: as for the other search pruners.
        reduction_per_iteration, sparsity_per_iteration, max_layer_ratio, speculate, best_result_mode,
            max_trials, constraints, seed: see :class:`NetAdaptTaskGenerator`.
        gradual: prune during each trial's finetune instead of before it (see
            :class:`~search.scheduling.PruningScheduler`).
        refine: trials of the budget kept for a gradual refine of the best allocation (see
            :class:`~search.scheduling.TaskGenerator`; 0: none).
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        pruning_algorithm: str | type[Pruner] = "l1",
        finetuner: Callable[[nn.Module], Any] | None = None,
        evaluator: Callable[[nn.Module], float] | None = None,
        dummy_input: Any = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        speedup: bool = False,
        pruning_params: Mapping[str, Any] | None = None,
        *,
        reduction_per_iteration: float = 0.1,
        sparsity_per_iteration: float | None = None,
        max_layer_ratio: float = 0.9,
        speculate: bool = True,
        best_result_mode: str = "maximize",
        max_trials: int | None = None,
        constraints: Mapping[str, Any] | None = None,
        seed: int = 0,
        gradual: Mapping[str, Any] | None = None,
        refine: int = 0,
    ) -> None:
        if evaluator is None:
            raise ValueError("NetAdaptPruner needs an evaluator: candidates are compared by score")
        self.task_generator = NetAdaptTaskGenerator(
            model, None, config_list, log_dir, keep_intermediate_result, best_result_mode, dummy_input=dummy_input,
            reduction_per_iteration=reduction_per_iteration, sparsity_per_iteration=sparsity_per_iteration,
            max_layer_ratio=max_layer_ratio, speculate=speculate, max_trials=max_trials, constraints=constraints, seed=seed, refine=refine,
        )
        self.scheduler = PruningScheduler(pruning_algorithm, self.task_generator, finetuner=finetuner, speedup=speedup,
                                          dummy_input=dummy_input, evaluator=evaluator, pruner_kwargs=pruning_params,
                                          gradual=gradual)
