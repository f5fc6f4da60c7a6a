"""The DDPG agent of AMC: actor and critic MLPs, target networks, Adam, all state as plain JSON.

Example:
    >>> agent = DDPGAgent(state_dim=4, config=DDPGConfig(hidden=8), seed=0)
    >>> 0.0 <= agent.act([0.1, 0.2, 0.3, 0.4]) <= 1.0
    True
    >>> clone = DDPGAgent(4, DDPGConfig(hidden=8), seed=1)
    >>> clone.load_state_dict(agent.state_dict())
    >>> clone.act([0.1, 0.2, 0.3, 0.4]) == agent.act([0.1, 0.2, 0.3, 0.4])
    True
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["DDPGConfig", "DDPGAgent", "Transition"]

#: ``(state, action, reward, next_state, done)``
Transition = tuple[Sequence[float], float, float, Sequence[float], bool]

# NNI's ``ddpg_params`` keys -> ours (``hidden1``/``hidden2`` both set the one hidden width)
_NNI_KEYS = {
    "hidden1": "hidden", "hidden2": "hidden", "lra": "actor_lr", "lrc": "critic_lr", "bsize": "batch_size",
    "rmsize": "buffer_size", "init_delta": "init_noise", "delta_decay": "noise_decay", "warmup": "warmup",
    "tau": "tau", "discount": "discount",
}
_NNI_IGNORED = ("window_length", "max_episode_length", "epsilon")


@dataclass(frozen=True)
class DDPGConfig:
    """Hyper-parameters of the AMC agent (defaults after He et al. 2018 and NNI, with a narrower net).

    Attributes:
        hidden: width of the two hidden layers of actor and critic (the paper uses 300; 32 keeps the
            JSON state small, and the state has only 12 features).
        actor_lr, critic_lr: Adam learning rates (the paper's actor uses 1e-4 with 300 units and 400+
            episodes; with this narrower net 1e-3 converges within ~100 episodes).
        tau: soft update rate of the target networks.
        discount: reward discount between layers (1: the episode's reward counts for every layer).
        batch_size: transitions per update.
        buffer_size: transitions the replay buffer holds (oldest episodes drop first).
        warmup: episodes with uniformly random actions before the agent learns.
        init_noise: std of the truncated-normal exploration noise on the first learning episode.
        noise_decay: the noise std shrinks by this factor per learning episode.
        moving_alpha: step of the moving-average reward baseline subtracted from rewards.
        updates_per_episode: gradient steps per finished episode (``None``: one per decision).
    """

    hidden: int = 32
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    buffer_size: int = 2000
    warmup: int = 20
    init_noise: float = 0.5
    noise_decay: float = 0.95
    moving_alpha: float = 0.5
    updates_per_episode: int | None = None

    def __post_init__(self) -> None:
        for key in ("hidden", "batch_size", "buffer_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ddpg_params.{key}: must be a positive int, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"ddpg_params.warmup: must be an int >= 0, got {self.warmup!r}")
        for key in ("actor_lr", "critic_lr", "tau", "discount", "init_noise", "noise_decay", "moving_alpha"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"ddpg_params.{key}: must be a number >= 0, got {value!r}")
        if self.updates_per_episode is not None and (not isinstance(self.updates_per_episode, int) or self.updates_per_episode < 0):
            raise ValueError(f"ddpg_params.updates_per_episode: must be an int >= 0 or None, got {self.updates_per_episode!r}")

    @classmethod
    def from_any(cls, params: DDPGConfig | Mapping[str, Any] | None) -> DDPGConfig:
        """From a config, ``None`` (defaults) or a dict with our field names or NNI's ``ddpg_params`` keys."""
        if isinstance(params, DDPGConfig):
            return params
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in dict(params or {}).items():
            if key in _NNI_IGNORED:
                continue
            name = key if key in fields else _NNI_KEYS.get(key)
            if name is None:
                valid = ", ".join(sorted(fields | set(_NNI_KEYS)))
                raise ValueError(f"ddpg_params: unknown key {key!r}; valid: {valid}")
            values[name] = value
        return cls(**values)


def _mlp(sizes: Sequence[int], out: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if out is not None:
        layers.append(out)
    return nn.Sequential(*layers)


class DDPGAgent:
    """Actor ``state -> action in [0, 1]`` and critic ``(state, action) -> Q``, with target copies.

    Weights are initialised from ``seed`` without touching the global torch RNG; all later
    randomness (minibatches, noise) belongs to the caller, so the agent itself is deterministic.
    """

    def __init__(self, state_dim: int, config: DDPGConfig, seed: int) -> None:
        self.state_dim = state_dim
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = _mlp([state_dim, config.hidden, config.hidden, 1], nn.Sigmoid())
            self.critic = _mlp([state_dim + 1, config.hidden, config.hidden, 1])
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)

    def act(self, state: Sequence[float]) -> float:
        """The actor's action for ``state`` (no noise)."""
        with torch.no_grad():
            return float(self.actor(torch.tensor([list(state)], dtype=torch.float32))[0, 0])

    def update(self, batch: Sequence[Transition], baseline: float) -> tuple[float, float]:
        """One gradient step of critic and actor on ``batch``; rewards are taken minus ``baseline``.

        Returns:
            ``(critic_loss, actor_loss)``.
        """
        states = torch.tensor([list(t[0]) for t in batch], dtype=torch.float32)
        actions = torch.tensor([[t[1]] for t in batch], dtype=torch.float32)
        rewards = torch.tensor([[t[2] - baseline] for t in batch], dtype=torch.float32)
        next_states = torch.tensor([list(t[3]) for t in batch], dtype=torch.float32)
        not_done = torch.tensor([[0.0 if t[4] else 1.0] for t in batch], dtype=torch.float32)
        with torch.no_grad():
            next_q = self.critic_target(torch.cat([next_states, self.actor_target(next_states)], dim=1))
            target_q = rewards + self.config.discount * not_done * next_q
        q = self.critic(torch.cat([states, actions], dim=1))
        critic_loss = nn.functional.mse_loss(q, target_q)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(torch.cat([states, self.actor(states)], dim=1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, tp in zip(net.parameters(), target.parameters(), strict=True):
                    tp.mul_(1.0 - self.config.tau).add_(p, alpha=self.config.tau)
        return float(critic_loss.detach()), float(actor_loss.detach())

    # -- JSON state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Weights of the four nets and both optimizers' moments, as nested lists of floats."""
        nets = {name: {k: _to_json(v) for k, v in net.state_dict().items()} for name, net in self._nets().items()}
        opts = {name: _optimizer_to_json(opt) for name, opt in self._opts().items()}
        return {"nets": nets, "optimizers": opts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, net in self._nets().items():
            net.load_state_dict({k: _from_json(v) for k, v in state["nets"][name].items()})
        for name, opt in self._opts().items():
            _optimizer_from_json(opt, state["optimizers"][name])

    def _nets(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}

    def _opts(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_opt, "critic": self.critic_opt}


def _to_json(t: torch.Tensor) -> dict[str, Any]:
    """A float32 tensor as ``{shape, data}``; each value in its shortest float32 decimal (exact round trip)."""
    values = t.detach().to(torch.float32).reshape(-1).numpy()
    return {"shape": list(t.shape), "data": [float(str(v)) for v in values]}


def _from_json(data: Mapping[str, Any]) -> torch.Tensor:
    return torch.tensor(data["data"], dtype=torch.float32).reshape(data["shape"])


def _optimizer_to_json(opt: torch.optim.Optimizer) -> list[dict[str, Any] | None]:
    """Per-parameter state in parameter order (``step`` and Adam's moments)."""
    state = opt.state_dict()["state"]
    n = sum(len(group["params"]) for group in opt.param_groups)
    return [{k: (_to_json(v) if isinstance(v, torch.Tensor) else v) for k, v in state[i].items()} if i in state else None
            for i in range(n)]


def _optimizer_from_json(opt: torch.optim.Optimizer, data: Sequence[Mapping[str, Any] | None]) -> None:
    current = opt.state_dict()
    state = {i: {k: (_from_json(v) if isinstance(v, Mapping) else torch.tensor(v, dtype=torch.float32))
                 for k, v in entry.items()}
             for i, entry in enumerate(data) if entry is not None}
    opt.load_state_dict({"state": state, "param_groups": current["param_groups"]})
