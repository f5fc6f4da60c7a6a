"""AMC: AutoML for Model Compression (He et al., ECCV 2018) as an ask/tell TaskGenerator.

A DDPG agent walks the prunable layers in forward order and picks each one's pruning ratio from a
state embedding of the layer (index, type, channels, feature size, stride, kernel, its cost, the
cost removed so far, the cost still ahead, the previous action). Each action is clipped so the
budget stays reachable when every later layer takes its maximum ratio, so every episode meets the
FLOPs (or params) budget by construction. One episode is one task (the full per-layer config list);
its reward is the trial's score (or ``-error * log(flops)``), shared by all of the episode's
transitions and taken minus a moving-average baseline.

The first ``warmup`` episodes use uniformly random actions and can all run at once (``ask(n)``);
learning episodes follow once every warm-up result is in, ``parallel_episodes`` at a time.
Results may arrive in any order: the agent learns from them in task order at the next ``ask``,
so the order results arrive in does not change what it learns. The whole agent (weights, Adam
moments, replay buffer as task ids and rewards, baseline) is in ``state_dict()`` as plain JSON.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
    ...                             torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2))
    >>> config_list = [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}]   # remove half the FLOPs
    >>> pruner = AMCPruner(model, config_list, torch.randn(1, 1, 8, 8), evaluator=lambda m: 1.0,
    ...                    max_episodes=3, ddpg_params={'warmup': 2}, log_dir=None)
    >>> pruner.compress()
    >>> task_id, compact, masks, score, config_list = pruner.get_best_result()
    >>> pruner.task_generator.results[task_id].metrics['flops_ratio'] <= 0.5
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from search.algorithms._budget import LayerCostModel, resolve_layers
from search.algorithms._ddpg import DDPGAgent, DDPGConfig, Transition
from search.algorithms.allocation import SearchPruner
from search.pruning import Pruner
from search.scheduling import Constraints, Proposal, PruningScheduler, TaskGenerator, TaskResult

__all__ = ["AMCTaskGenerator", "AMCPruner", "DDPGConfig"]

logger = logging.getLogger(__name__)

STATE_DIM = 12
REWARDS = ("score", "error_log_flops")
INFEASIBLE_PENALTY = 1.0


class AMCTaskGenerator(TaskGenerator):
    """Per-layer ratios chosen by a DDPG agent under a FLOPs or params budget.

    Args:
        origin_model: the unpruned model.
        origin_config_list: selects the Conv/Linear layers to prune; its ``sparse_ratio``
            (NNI: ``total_sparsity``) is the share of the ``target`` cost to remove, its
            ``max_sparse_ratio`` (``max_sparsity_per_layer``) the largest ratio of one layer.
        dummy_input: an input of the model (layer shapes and costs).
        max_episodes: episodes (tasks) in all, warm-up included.
        target: ``'flops'`` or ``'params'``: the budget the actions are clipped to and the cost in
            the state embedding. A ``max_flops_ratio`` / ``max_params_ratio`` constraint is enforced
            the same way; ``max_latency_ratio`` only through results (penalised reward, not best).
        ddpg_params: :class:`DDPGConfig` or a dict of its fields or NNI's ``ddpg_params`` keys.
        reward: ``'score'`` (the trial's score, e.g. accuracy; negated when ``best_result_mode`` is
            ``'minimize'``, e.g. a loss, since the agent maximises its reward) or ``'error_log_flops'``
            (``-(1 - score) * log(flops)``, NNI's ``acc_flops_reward``; score in [0, 1]).
        parallel_episodes: learning episodes handed out at once (the warm-up has no limit).
        max_sparse_ratio: a layer's largest ratio where the config list gives none.
        origin_masks, log_dir, keep_intermediate_result, best_result_mode, max_trials, constraints,
        seed: as in :class:`~search.scheduling.TaskGenerator`; ``max_trials`` defaults to
            ``max_episodes`` (plus ``refine``, the trials of the refine phase after the episodes).
    """

    def __init__(
        self,
        origin_model: nn.Module,
        origin_config_list: list[dict[str, Any]],
        dummy_input: Any,
        *,
        max_episodes: int = 100,
        target: str = "flops",
        ddpg_params: DDPGConfig | Mapping[str, Any] | None = None,
        reward: str = "score",
        parallel_episodes: int = 1,
        max_sparse_ratio: float = 0.8,
        **kwargs: Any,
    ) -> None:
        for key, value in (("max_episodes", max_episodes), ("parallel_episodes", parallel_episodes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        if dummy_input is None:
            raise ValueError("dummy_input is required by AMC (layer shapes and costs come from a forward pass)")
        kwargs.setdefault("max_trials", max_episodes + kwargs.get("refine", 0))
        super().__init__(origin_model, origin_config_list=origin_config_list, **kwargs)
        layers = resolve_layers(origin_model, origin_config_list, self.constraints, target, max_sparse_ratio, who="AMC")
        if not layers.budgets:
            raise ValueError(
                "AMC: no budget: give the config list a sparse_ratio (the share of the target cost to remove) "
                "or a max_flops_ratio / max_params_ratio constraint"
            )
        self.constraints = layers.constraints
        self.budgets = layers.budgets
        self.target = target
        self.reward = reward
        self.max_episodes = max_episodes
        self.parallel_episodes = parallel_episodes
        self.config = DDPGConfig.from_any(ddpg_params)
        self.costs = LayerCostModel(origin_model, dummy_input, layers.names, layers.bounds)
        self.agent = DDPGAgent(STATE_DIM, self.config, self.seed)
        self._static = self._static_features()
        self.episodes_proposed = 0
        self.episodes_learned = 0
        self.learn_steps = 0
        self.baseline: float | None = None
        self._unlearned: list[int] = []
        self._buffer: list[tuple[int, float]] = []  # (task_id, reward), oldest first
        self._states: dict[int, list[list[float]]] = {}  # cache: derived from the task's ratios
        self._warned_unreachable = False

    # -- state embedding --------------------------------------------------------------------------
    def _static_features(self) -> list[list[float]]:
        layers = self.costs.layers
        total = max(self.costs.origin[self.target], 1.0)
        rows = [[float(t), 0.0 if layer.kind == "conv" else 1.0, layer.out_channels, layer.in_channels,
                 layer.in_size[0], layer.in_size[1], layer.stride, layer.kernel]
                for t, layer in enumerate(layers)]
        for col in (0, 2, 3, 4, 5, 6, 7):  # scaled to [0, 1] by the largest value among the layers
            top = max(row[col] for row in rows) or 1.0
            for row in rows:
                row[col] = row[col] / top
        for row, layer in zip(rows, layers, strict=True):
            row.append(getattr(layer, self.target) / total)
        return rows

    def _state(self, t: int, prefix: list[float]) -> list[float]:
        """The embedding of decision ``t`` after ``prefix`` (the ratios of the decisions before it)."""
        layers = self.costs.layers
        total = max(self.costs.origin[self.target], 1.0)
        reduced = total - self.costs.cost([*prefix, *[0.0] * (len(layers) - len(prefix))], self.target)
        rest = sum(getattr(layer, self.target) for layer in layers[t + 1:])
        return [*self._static[t], reduced / total, rest / total, prefix[-1] if prefix else 0.0]

    def _episode_states(self, task_id: int) -> list[list[float]]:
        if task_id not in self._states:
            ratios = list(self.tasks[task_id].params["decisions"])
            self._states[task_id] = [self._state(t, ratios[:t]) for t in range(len(ratios))]
        return self._states[task_id]

    # -- acting -----------------------------------------------------------------------------------
    def noise(self, episode: int) -> float:
        """Exploration noise std of ``episode`` (decays from ``init_noise`` after the warm-up)."""
        return self.config.init_noise * self.config.noise_decay ** max(0, episode - self.config.warmup)

    def _truncated_normal(self, mu: float, sigma: float, lo: float, hi: float) -> float:
        if sigma > 0:
            for _ in range(100):
                x = self.rng.gauss(mu, sigma)
                if lo <= x <= hi:
                    return x
        return min(max(mu, lo), hi)

    def _rollout(self, episode: int, warmup: bool) -> tuple[list[float], list[list[float]]]:
        ratios: list[float] = []
        states = []
        sigma = self.noise(episode)
        for t, layer in enumerate(self.costs.layers):
            state = self._state(t, ratios)
            states.append(state)
            if warmup:
                action = self.rng.uniform(layer.min_ratio, layer.max_ratio)
            else:
                action = self._truncated_normal(self.agent.act(state), sigma, layer.min_ratio, layer.max_ratio)
            ratio = layer.quantize(action)
            floor = self.costs.min_feasible(t, ratios, self.budgets)
            if floor is None:
                floor = layer.quantize(layer.max_ratio)
                if not self._warned_unreachable:
                    self._warned_unreachable = True
                    logger.warning("AMC: the budget %s cannot be met with every layer at its max_sparse_ratio", self.budgets)
            ratios.append(max(ratio, floor))
        return ratios, states

    def _propose(self, n: int) -> list[Proposal]:
        self._learn()
        proposals: list[Proposal] = []
        running = len(self.pending())
        while len(proposals) < n and self.episodes_proposed < self.max_episodes:
            warmup = self.episodes_proposed < self.config.warmup
            if not warmup and (self._warmup_running() or running + len(proposals) >= self.parallel_episodes):
                break
            episode = self.episodes_proposed
            ratios, _ = self._rollout(episode, warmup)
            self.episodes_proposed += 1
            params = {"episode": episode, "warmup": warmup, "decisions": ratios, "ratios": self.costs.per_layer(ratios),
                      "predicted": self.costs.ratios_of(ratios), "noise": 0.0 if warmup else self.noise(episode)}
            proposals.append(Proposal(self.costs.config_list(ratios), None, params))
        return proposals

    def _warmup_running(self) -> bool:
        return any(t.params.get("warmup") for t in self.pending())

    def _finished(self) -> bool:
        return self.episodes_proposed >= self.max_episodes

    # -- learning ---------------------------------------------------------------------------------
    def _observe(self, result: TaskResult) -> None:
        self._unlearned.append(result.task_id)

    def episode_reward(self, result: TaskResult) -> float | None:
        """The reward of a told episode (``None``: nothing to learn, e.g. the trial failed)."""
        score = result.score
        if not result.ok or score is None or not math.isfinite(score):
            return None
        if self.reward == "score":
            reward = -float(score) if self.best_result_mode == "minimize" else float(score)
        else:
            flops = result.metrics.get("flops")
            if flops is None:
                ratio = self.tasks[result.task_id].params["predicted"]["flops_ratio"]
                flops = ratio * self.costs.origin["flops"]
            reward = -(1.0 - float(score)) * math.log(max(float(flops), 1.0))
        if not self.feasible(result):  # a bound the agent cannot see in advance (latency) or a mispredicted cost
            reward -= INFEASIBLE_PENALTY
        return reward

    def _learn(self) -> None:
        """Learn from the results told since the last ``ask``, in task order."""
        for task_id in sorted(self._unlearned):
            reward = self.episode_reward(self.results[task_id])
            self.episodes_learned += 1
            if reward is None:
                continue
            self._buffer.append((task_id, reward))
            layers = len(self.costs.layers)
            while len(self._buffer) > 1 and len(self._buffer) * layers > self.config.buffer_size:
                dropped, _ = self._buffer.pop(0)
                self._states.pop(dropped, None)
            self.baseline = reward if self.baseline is None else self.baseline + self.config.moving_alpha * (reward - self.baseline)
            if self.episodes_learned >= self.config.warmup:
                steps = self.config.updates_per_episode if self.config.updates_per_episode is not None else layers
                for _ in range(steps):
                    self.agent.update(self._sample(), self.baseline)
                    self.learn_steps += 1
        self._unlearned = []

    def _sample(self) -> list[Transition]:
        index = [(e, t) for e in range(len(self._buffer)) for t in range(len(self.costs.layers))]
        picks = self.rng.sample(index, min(self.config.batch_size, len(index)))
        batch: list[Transition] = []
        for e, t in picks:
            task_id, reward = self._buffer[e]
            states = self._episode_states(task_id)
            action = self.tasks[task_id].params["decisions"][t]
            done = t == len(states) - 1
            batch.append((states[t], action, reward, states[t] if done else states[t + 1], done))
        return batch

    # -- persistence ------------------------------------------------------------------------------
    def _algo_state(self) -> dict[str, Any]:
        return {
            "decisions": self.costs.names,
            "episodes_proposed": self.episodes_proposed,
            "episodes_learned": self.episodes_learned,
            "learn_steps": self.learn_steps,
            "baseline": self.baseline,
            "unlearned": list(self._unlearned),
            "buffer": [[task_id, reward] for task_id, reward in self._buffer],
            "agent": self.agent.state_dict(),
        }

    def _load_algo_state(self, state: dict[str, Any]) -> None:
        if state.get("decisions") != self.costs.names:
            raise ValueError(f"AMC state is for the decisions {state.get('decisions')}, this search has {self.costs.names}")
        self.episodes_proposed = int(state["episodes_proposed"])
        self.episodes_learned = int(state["episodes_learned"])
        self.learn_steps = int(state["learn_steps"])
        self.baseline = state["baseline"]
        self._unlearned = [int(t) for t in state["unlearned"]]
        self._buffer = [(int(t), float(r)) for t, r in state["buffer"]]
        self._states = {}
        self.agent.load_state_dict(state["agent"])


class AMCPruner(SearchPruner):
    """``AMCPruner(model, config_list, dummy_input, evaluator, ...)``: NNI's AMC pruner, run in-process.

    Args:
        model: the model to prune (copied for every episode).
        config_list: e.g. ``[{'op_types': ['Conv2d'], 'total_sparsity': 0.5, 'max_sparsity_per_layer': 0.8}]``.
        dummy_input: an input of the model.
        evaluator: ``evaluator(model) -> score`` (e.g. accuracy) of each pruned (and finetuned) model.
        pruning_algorithm: the pruner of every episode (a channel pruner: ``'l1'``, ``'l2'``, ``'fpgm'``...).
        max_episodes, target, ddpg_params, reward, parallel_episodes, max_sparse_ratio: see
            :class:`AMCTaskGenerator`.
        finetuner: ``finetuner(model)`` after pruning (AMC's short finetune; ``None``: none).
        speedup: keep each result's compact model.
        pruning_params: extra arguments for the pruner.
        log_dir, keep_intermediate_result, constraints, seed: see :class:`~search.scheduling.TaskGenerator`.
        gradual: prune during each trial's finetune instead of before it (see
            :class:`~search.scheduling.PruningScheduler`).
        refine: trials of the budget kept for a gradual refine of the best allocation (see
            :class:`~search.scheduling.TaskGenerator`; 0: none).
    """

    task_generator: AMCTaskGenerator

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        dummy_input: Any,
        evaluator: Callable[[nn.Module], float],
        pruning_algorithm: str | type[Pruner] = "l1",
        max_episodes: int = 100,
        target: str = "flops",
        finetuner: Callable[[nn.Module], Any] | None = None,
        *,
        speedup: bool = False,
        pruning_params: Mapping[str, Any] | None = None,
        log_dir: str | None = ".",
        keep_intermediate_result: bool = False,
        ddpg_params: DDPGConfig | Mapping[str, Any] | None = None,
        reward: str = "score",
        parallel_episodes: int = 1,
        max_sparse_ratio: float = 0.8,
        constraints: Mapping[str, Any] | Constraints | None = None,
        seed: int = 0,
        gradual: Mapping[str, Any] | None = None,
        refine: int = 0,
    ) -> None:
        self.task_generator = AMCTaskGenerator(
            model, config_list, dummy_input, max_episodes=max_episodes, target=target, ddpg_params=ddpg_params,
            reward=reward, parallel_episodes=parallel_episodes, max_sparse_ratio=max_sparse_ratio, log_dir=log_dir,
            keep_intermediate_result=keep_intermediate_result, constraints=constraints, seed=seed, refine=refine,
        )
        self.scheduler = PruningScheduler(
            pruning_algorithm, self.task_generator, finetuner=finetuner, speedup=speedup, dummy_input=dummy_input,
            evaluator=evaluator, pruner_kwargs=pruning_params, gradual=gradual,
        )
