"""Phase 3 objectives (paper §3.3, eq. 10–11): TD(λ) returns for the value head and PMPO for
the policy head.

Indexing. A rollout has states s_0 … s_H (s_0 = the last context frame). `rewards[:, t]` is
r_{t+1}, the reward arriving with s_{t+1} (the reward head's offset-0 output at s_{t+1});
`values[:, t]` = v(s_t) for t = 0 … H; `continues[:, t]` = c_{t+1}, whether s_{t+1} is not
terminal. Then

    R^λ_H = v_H,    R^λ_t = r_{t+1} + γ c_{t+1} ((1 − λ) v_{t+1} + λ R^λ_{t+1}),

the paper's eq. 10 written with the reward and continuation that come with the next state
(as in Dreamer 3's code). γ = 0.997; λ is a parameter (the paper gives none; 0.95 as the
reimplementations use).

PMPO (eq. 11) with A_t = R^λ_t − v_t, D+ = {A ≥ 0}, D− = {A < 0} over batch × time:

    L = (1 − α)/|D−| Σ_{D−} ln π(a|s) − α/|D+| Σ_{D+} ln π(a|s) + β/N Σ KL(π(·|s) ‖ π_prior(·|s))

α = 0.5, β = 0.3; only the sign of the advantage is used (no return normalisation), and the KL
is the reverse direction of the original PMPO, as the paper states. An empty D± contributes 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from dreamer4.imagination import ImaginationConfig, Rollout


def lambda_returns(
    rewards: Tensor, values: Tensor, continues: Tensor, gamma: float, lam: float
) -> Tensor:
    """R^λ_0 … R^λ_{H−1} (B, H) from rewards (B, H), values (B, H + 1), continues (B, H)."""
    horizon = rewards.shape[1]
    if values.shape[1] != horizon + 1 or continues.shape != rewards.shape:
        raise ValueError(
            f"need rewards (B, H), values (B, H + 1), continues (B, H); got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(continues.shape)}"
        )
    out = []
    ret = values[:, -1]
    for t in reversed(range(horizon)):
        nxt = values[:, t + 1]
        ret = rewards[:, t] + gamma * continues[:, t] * ((1 - lam) * nxt + lam * ret)
        out.append(ret)
    return torch.stack(out[::-1], 1)


def pmpo_loss(
    log_prob: Tensor, advantage: Tensor, kl: Tensor, alpha: float = 0.5, beta: float = 0.3
) -> dict[str, Tensor]:
    """Eq. 11 over matching (…) tensors: log π(a_i|s_i), A_i (sign only), KL_i to the prior.
    Returns "loss" and its parts "negative", "positive", "kl", plus "positive_fraction"."""
    advantage = advantage.detach()
    pos, neg = advantage >= 0, advantage < 0
    n_pos, n_neg = pos.sum().clamp(min=1), neg.sum().clamp(min=1)
    positive = (log_prob * pos).sum() / n_pos
    negative = (log_prob * neg).sum() / n_neg
    kl_mean = kl.mean()
    loss = (1 - alpha) * negative - alpha * positive + beta * kl_mean
    return {
        "loss": loss,
        "positive": positive,
        "negative": negative,
        "kl": kl_mean,
        "positive_fraction": pos.float().mean(),
    }


def policy_terms(
    model: Any, rollout: Rollout, cfg: ImaginationConfig, train_policy: bool = True
) -> dict[str, Any]:
    """Value (eq. 10) and PMPO (eq. 11) losses on one batch of rollouts of `model`.

    train_policy False (the value warm-up): "loss" is the value loss alone, the PMPO terms are
    still reported. With `cfg.center_advantages` the sign PMPO uses is that of A − mean(A);
    "positive_fraction" is always that of the raw A = R^λ − v (the value head's bias shows)."""
    agent = model.agent
    value_logits = model.value(rollout.features, 1)[:, :, 0]  # (B, H + 1, bins)
    values = agent.twohot.decode(value_logits).detach()
    returns = lambda_returns(rollout.rewards, values, rollout.continues, cfg.gamma, cfg.lam)
    value_loss = agent.twohot.loss(value_logits[:, :-1], returns).mean()
    states = rollout.features[:, :-1]
    logits = agent.policy(states, 1)[:, :, 0]
    prior = model.prior(states, 1)[:, :, 0]
    log_prob, _ = agent.space.log_prob(logits, rollout.actions)
    kl = agent.space.kl(logits, prior)
    advantage = returns - values[:, :-1]
    signed = advantage - advantage.mean() if cfg.center_advantages else advantage
    pmpo = pmpo_loss(log_prob, signed, kl, cfg.alpha, cfg.beta)
    return {
        # × 0 keeps the policy in the graph: zero gradients, not missing ones (ZeRO reduces all)
        "loss": pmpo["loss"] * float(train_policy) + value_loss,
        "policy": pmpo["loss"],
        "value": value_loss,
        "kl": pmpo["kl"],
        "positive_fraction": (advantage >= 0).float().mean(),
        "entropy": agent.space.entropy(logits).mean(),
        "return": rollout.rewards.sum(1).mean(),
        "values": values.mean(),
        "returns": returns,
        "values_all": values,
    }
