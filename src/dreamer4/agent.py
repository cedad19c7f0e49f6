"""The agent (paper §3.3): task-conditioned agent tokens in the dynamics transformer and the
heads read from them — policy and reward with multi-token prediction (eq. 9), value (eq. 10).

Agent tokens. Each time step gets `agent_tokens` extra tokens whose input is a learned task
embedding (one row per task of the vocabulary, plus one for "no task") plus a learned position
per agent token. They attend to every token of their step and to their own past; no other token
attends to them (`dynamics.agent_mask`), so the world model's predictions do not depend on the
task: future frames are caused by actions only ("causal confusion", §3.3). The heads read the
mean of the agent tokens' outputs, h_t.

Heads: a small MLP (Linear → SiLU) per head, then one output layer per MTP offset n = 0 … L−1
("one output layer per distance"). Offset n of h_t predicts

- policy: a_{t+n}, the action taken after frame t+n (step-index row t+n). Each action
  component is a categorical (its n classes) or a Bernoulli (one logit) — `ActionSpace`.
- reward: r_{t+n}, the task reward arriving *with* frame t+n, i.e. whether the action after
  frame t+n−1 caused the event of the task given at t. h_t has seen a_{t−1} (action token)
  and frame t, so offset 0 is knowable; a reward "of the action about to be chosen" would
  only be the data policy's average, useless for improving on it.

Rewards and values are symexp two-hot distributions (Dreamer 3): bins evenly spaced in symlog
space, the target split between its two neighbouring bins, the prediction
symexp(Σ softmax · bins). Output layers of reward and value start at zero (a uniform
distribution decoding to 0), as in Dreamer 3.

Choices where the paper is silent (fields of `AgentConfig`):

- `mtp = 8` offsets n = 0 … 7. Eq. 9 prints Σ_{n=0}^{L}, which would be L + 1 terms; we read
  "length L = 8" as 8 predictions.
- `agent_tokens = 1` (every open reimplementation uses one).
- `bins = 255` over symlog ∈ [−20, 20] (Dreamer 3's defaults; task rewards are 0/1 so a
  smaller range would do, but the two-hot range then also bounds values/returns).
- `hidden = 2 · width` for the heads' MLP.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamer4.dynamics import Dynamics, DynamicsConfig
from dreamer4.nn import KVCache
from dreamer4.train.checkpoint import load_exported


@dataclass(frozen=True)
class AgentConfig:
    tasks: tuple[str, ...]  # task vocabulary (event names); index len(tasks) = no task
    agent_tokens: int = 1
    mtp: int = 8  # L: offsets n = 0 … L−1 per policy and reward output
    hidden: int = 0  # heads' MLP width (0 = 2 · transformer width)
    bins: int = 255  # two-hot bins
    symlog_range: float = 20.0  # bins evenly spaced in symlog space over ± this

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise ValueError("AgentConfig: the task vocabulary is empty")
        if self.agent_tokens < 1 or self.mtp < 1 or self.bins < 2 or self.symlog_range <= 0:
            raise ValueError(
                "AgentConfig: need agent_tokens >= 1, mtp >= 1, bins >= 2, symlog_range > 0"
            )


# -- symexp two-hot ----------------------------------------------------------------------------


def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot(nn.Module):
    """Scalars as distributions over bins evenly spaced in symlog space (Dreamer 3)."""

    def __init__(self, bins: int = 255, symlog_range: float = 20.0) -> None:
        super().__init__()
        self.register_buffer("bins", torch.linspace(-symlog_range, symlog_range, bins), False)

    @property
    def low(self) -> float:
        return float(symexp(self.bins[0]))

    @property
    def high(self) -> float:
        return float(symexp(self.bins[-1]))

    def encode(self, y: Tensor) -> Tensor:
        """(…) scalars → (…, bins) two-hot probabilities (clipped to the range)."""
        bins = self.bins.to(y.device)
        x = symlog(y.float()).clamp(bins[0], bins[-1])
        below = (torch.searchsorted(bins, x.contiguous(), right=True) - 1).clamp(0, len(bins) - 2)
        lo, hi = bins[below], bins[below + 1]
        w_hi = ((x - lo) / (hi - lo)).clamp(0, 1)
        out = torch.zeros(*x.shape, len(bins), device=y.device)
        out.scatter_(-1, below[..., None], (1 - w_hi)[..., None])
        out.scatter_add_(-1, (below + 1)[..., None], w_hi[..., None])
        return out

    def decode(self, logits: Tensor) -> Tensor:
        """(…, bins) logits → (…) expected scalar symexp(Σ p · bins)."""
        return self.decode_probs(logits.float().softmax(-1))

    def decode_probs(self, probs: Tensor) -> Tensor:
        """(…, bins) probabilities → (…) symexp(Σ p · bins)."""
        return symexp((probs * self.bins.to(probs.device)).sum(-1))

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """(…) cross-entropy −Σ twohot(y) · log softmax(logits)."""
        return -(self.encode(y.detach()) * logits.float().log_softmax(-1)).sum(-1)


# -- factored action distributions -------------------------------------------------------------


class ActionSpace:
    """Logit layout of a factored action space: per component n logits (categorical) or one
    (binary, a Bernoulli). Action values are class indices (0/1 for binary), -1 = unlabelled."""

    def __init__(self, actions: tuple[tuple[str, str, int], ...]) -> None:
        self.components = tuple((name, kind, n) for name, kind, n in actions)
        self.sizes = tuple(1 if kind == "binary" else n for _, kind, n in self.components)
        self.width = sum(self.sizes)

    def split(self, logits: Tensor) -> dict[str, Tensor]:
        parts = logits.float().split(self.sizes, -1)
        return {name: part for (name, _, _), part in zip(self.components, parts, strict=True)}

    def log_prob(self, logits: Tensor, actions: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Σ over labelled components of log π(a), and whether any component was labelled."""
        total = logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
        labelled = torch.zeros_like(total, dtype=torch.bool)
        for (name, kind, _), part in zip(self.components, self.split(logits).values(), strict=True):
            if name not in actions:
                continue
            a = actions[name].long()
            known = a >= 0
            if kind == "binary":
                x = part[..., 0]
                lp = torch.where(a > 0, F.logsigmoid(x), F.logsigmoid(-x))
            else:
                lp = part.log_softmax(-1).gather(-1, a.clamp(min=0)[..., None])[..., 0]
            total = total + torch.where(known, lp, 0.0)
            labelled = labelled | known
        return total, labelled

    def sample(self, logits: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One action per leading index, sampled (never argmax: §4.1, and argmax collapses)."""
        out = {}
        for (name, kind, _), part in zip(self.components, self.split(logits).values(), strict=True):
            lead = part.shape[:-1]
            if kind == "binary":
                u = torch.rand(lead, generator=generator, device=_at(generator, part))
                out[name] = (u.to(part.device) < torch.sigmoid(part[..., 0])).long()
            else:
                probs = part.softmax(-1).reshape(-1, part.shape[-1])
                if generator is not None and generator.device != probs.device:
                    probs = probs.to(generator.device)
                pick = torch.multinomial(probs, 1, generator=generator)
                out[name] = pick.reshape(lead).to(part.device)
        return out

    def kl(self, logits: Tensor, prior: Tensor) -> Tensor:
        """KL(π ‖ π_prior) summed over components (exact)."""
        total = logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
        pairs = zip(
            self.components, self.split(logits).values(), self.split(prior).values(), strict=True
        )
        for (_, kind, _), p, q in pairs:
            if kind == "binary":
                p, q = p[..., 0], q[..., 0]
                prob = torch.sigmoid(p)
                total = total + prob * (F.logsigmoid(p) - F.logsigmoid(q))
                total = total + (1 - prob) * (F.logsigmoid(-p) - F.logsigmoid(-q))
            else:
                lp, lq = p.log_softmax(-1), q.log_softmax(-1)
                total = total + (lp.exp() * (lp - lq)).sum(-1)
        return total

    def entropy(self, logits: Tensor) -> Tensor:
        total = logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
        for (_, kind, _), part in zip(self.components, self.split(logits).values(), strict=True):
            if kind == "binary":
                x = part[..., 0]
                p = torch.sigmoid(x)
                total = total - p * F.logsigmoid(x) - (1 - p) * F.logsigmoid(-x)
            else:
                lp = part.log_softmax(-1)
                total = total - (lp.exp() * lp).sum(-1)
        return total


def _at(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return like.device if generator is None else generator.device


# -- heads and the agent -----------------------------------------------------------------------


class MTPHead(nn.Module):
    """MLP trunk, then one output layer per offset: (…, width) → (…, offsets, outputs)."""

    def __init__(
        self, width: int, hidden: int, outputs: int, offsets: int, zero_init: bool = False
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(width, hidden), nn.SiLU())
        self.out = nn.ModuleList(nn.Linear(hidden, outputs) for _ in range(offsets))
        for layer in self.out:
            if zero_init:
                nn.init.zeros_(layer.weight)
            else:
                nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor, offsets: int | None = None) -> Tensor:
        """Outputs of the first `offsets` output layers (all by default)."""
        x = self.trunk(h)
        return torch.stack([layer(x) for layer in self.out[:offsets]], -2)


class Agent(nn.Module):
    """The dynamics transformer with task-conditioned agent tokens, policy and reward heads."""

    def __init__(self, dynamics: DynamicsConfig, cfg: AgentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = dynamics.width
        hidden = cfg.hidden or 2 * w
        self.dynamics = Dynamics(dynamics)
        self.task_embed = nn.Embedding(len(cfg.tasks) + 1, w)  # last row: no task
        nn.init.normal_(self.task_embed.weight, std=0.02)
        self.agent_pos = nn.Parameter(torch.randn(cfg.agent_tokens, w) * 0.02)
        self.space = ActionSpace(dynamics.actions)
        self.twohot = TwoHot(cfg.bins, cfg.symlog_range)
        self.policy = MTPHead(w, hidden, self.space.width, cfg.mtp)
        self.reward = MTPHead(w, hidden, cfg.bins, cfg.mtp, zero_init=True)

    def agent_tokens(self, task: Tensor) -> Tensor:
        """task (B, T) long, -1 = none → (B, T, A, width)."""
        index = torch.where(task >= 0, task, len(self.cfg.tasks)).long()
        return self.task_embed(index)[:, :, None] + self.agent_pos

    def forward(
        self,
        z: Tensor,
        tau: Tensor,
        d: Tensor,
        actions: dict[str, Tensor] | None,
        task: Tensor,
        independent: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(clean-latent prediction (B, T, N_b, D_b), h (B, T, width) for the heads)."""
        # through __call__, so module hooks (ZeRO-3 gathers parameters there) run
        pred, h = self.dynamics(
            z, tau, d, actions, independent, cache, agent=self.agent_tokens(task)
        )
        return pred, h.mean(2)

    def new_cache(self) -> KVCache:
        return self.dynamics.new_cache()


# -- phase 2 targets and loss (eq. 9) ----------------------------------------------------------


def pursued_task(task: Tensor) -> Tensor:
    """The step index's `task` (B, T) — the next event at or after step t — → the task the
    episode was pursuing as frame t arrived (the one of the action leading into it; frame 0 of
    a window keeps its own). Agent tokens carry this, so the frame right after an event is
    still conditioned on the task just achieved, and the reward arriving with it is a positive
    example for that task; with the unshifted label the task switches on that very frame and
    offset-0 rewards would be positive only for an event that repeats."""
    return torch.cat([task[:, :1], task[:, :-1]], 1)


def mtp_targets(x: Tensor, offsets: int, fill: float | int = -1) -> tuple[Tensor, Tensor]:
    """x (B, T, …) → (y (B, T, L, …), valid (B, T, L)) with y[:, t, n] = x[:, t + n]; `fill`
    and valid False where t + n runs past the window."""
    b, t = x.shape[:2]
    pad = x.new_full((b, offsets - 1, *x.shape[2:]), fill) if offsets > 1 else x[:, :0]
    padded = torch.cat([x, pad], 1)
    y = torch.stack([padded[:, n : n + t] for n in range(offsets)], 2)
    index = torch.arange(t, device=x.device)[:, None] + torch.arange(offsets, device=x.device)
    return y, (index < t).expand(b, t, offsets)


def task_rewards(events: Tensor, task: Tensor, offsets: int) -> tuple[Tensor, Tensor]:
    """Reward targets of eq. 9: y[:, t, n] = the reward arriving with frame t + n for the task
    given at t, i.e. events[:, t + n − 1, task[:, t]] (the event the action after frame
    t + n − 1 caused). valid False past the window, at frame 0 (its incoming action lies
    before the window) and where there is no task."""
    b, t, k = events.shape
    incoming = torch.cat([events.new_zeros(b, 1, k), events[:, :-1]], 1).float()
    known = torch.ones(b, t, dtype=torch.bool, device=events.device)
    known[:, 0] = False
    future, inside = mtp_targets(incoming, offsets, 0.0)  # (B, T, L, K)
    known_future, _ = mtp_targets(known, offsets, False)
    pick = task.clamp(min=0).long()[:, :, None, None].expand(b, t, offsets, 1)
    y = future.gather(-1, pick)[..., 0]
    return y, inside & known_future & (task >= 0)[:, :, None]


def agent_loss(
    agent: Agent,
    h: Tensor,
    actions: dict[str, Tensor],
    events: Tensor,
    task: Tensor,
    bc_rows: Tensor,
) -> dict[str, Tensor]:
    """Eq. 9 on agent outputs h (B, T, width) of agent tokens carrying `task` (B, T) (see
    `pursued_task`): "bc" = −mean log π(a_{t+n} | h_t) over the
    labelled targets of `bc_rows` (B,) bool with a task, "reward" = mean two-hot NLL of
    r_{t+n} over every row with a task. `actions`: step-index actions (taken after frame t).
    Also "bc_targets"/"reward_targets" (counts) and "bc_accuracy" (offset 0, categorical
    components only: the most likely class is the data's)."""
    L = agent.cfg.mtp
    logits = agent.policy(h)  # (B, T, L, A)
    targets = {name: mtp_targets(a.long(), L)[0] for name, a in actions.items()}
    logp, labelled = agent.space.log_prob(logits, targets)
    _, inside = mtp_targets(task, L)
    bc_mask = labelled & inside & (task >= 0)[:, :, None] & bc_rows[:, None, None]
    n_bc = bc_mask.sum()
    bc = -(logp * bc_mask).sum() / n_bc.clamp(min=1)
    reward_y, reward_mask = task_rewards(events, task, L)
    nll = agent.twohot.loss(agent.reward(h), reward_y)
    n_reward = reward_mask.sum()
    reward = (nll * reward_mask).sum() / n_reward.clamp(min=1)
    hits, count = logits.new_zeros(()), logits.new_zeros(())
    for (name, kind, _), part in zip(
        agent.space.components, agent.space.split(logits[:, :, 0]).values(), strict=True
    ):
        if kind == "categorical" and name in actions:
            ok = (actions[name] >= 0) & (task >= 0) & bc_rows[:, None]
            hits = hits + ((part.argmax(-1) == actions[name]) & ok).sum()
            count = count + ok.sum()
    return {
        "bc": bc,
        "reward": reward,
        "bc_targets": n_bc,
        "reward_targets": n_reward,
        "bc_accuracy": hits.float() / count.clamp(min=1),
    }


# -- loading trained agents --------------------------------------------------------------------


def policy_module(agent: Agent) -> nn.Module:
    """The phase-3 module: `agent` frozen except its policy head, `prior` a frozen copy of that
    policy head (the behavioural prior), a new zero-initialised value head `value`, and the
    `micro_steps` counter of `train_policy`'s value warm-up."""

    module = nn.Module()
    agent.requires_grad_(False)
    agent.policy.requires_grad_(True)
    module.agent = agent
    module.prior = copy.deepcopy(agent.policy).requires_grad_(False)
    width = agent.dynamics.cfg.width
    module.value = MTPHead(width, agent.cfg.hidden or 2 * width, agent.cfg.bins, 1, zero_init=True)
    # micro-batches trained (saved with the weights): when the value warm-up ends on resume
    module.register_buffer("micro_steps", torch.zeros((), dtype=torch.long))
    return module


def _configs(config: dict) -> tuple[DynamicsConfig, AgentConfig]:
    model = config["model"]
    return DynamicsConfig(**model["dynamics"]), AgentConfig(**model["agent"])


def load_agent(folder: Path, ema: bool = True) -> tuple[Agent, dict]:
    """The agent of a `finetune_agent`/`bc_baseline` (or `train_policy`) output folder."""

    weights, config = load_exported(folder, ema)
    agent = Agent(*_configs(config))
    agent.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("agent.")})
    return agent, config


def load_policy(folder: Path, ema: bool = True) -> tuple[nn.Module, dict]:
    """The phase-3 module (`policy_module`) of a `train_policy` output folder."""

    weights, config = load_exported(folder, ema)
    module = policy_module(Agent(*_configs(config)))
    module.load_state_dict(weights)
    return module, config
