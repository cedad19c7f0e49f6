"""Phase 3 wiring (issue 16): `policy_terms` against λ-returns and PMPO written out by hand on a
fixed rollout, and `imagine`'s reward read at the state the step arrives in.

Indexing as in `dreamer4.pmpo`: rewards[:, t] = r_{t+1}, values[:, t] = v(s_t),
R^λ_H = v_H, R^λ_t = r_{t+1} + γ c_{t+1} ((1 − λ) v_{t+1} + λ R^λ_{t+1}); A_t = R^λ_t − v_t;
PMPO (eq. 11) with KL(π ‖ π_prior). The formulas here are plain loops, not `lambda_returns` /
`pmpo_loss`, so a slip shared by both cannot pass."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from dreamer4.agent import Agent, AgentConfig, policy_module
from dreamer4.dynamics import DynamicsConfig
from dreamer4.imagination import ImaginationConfig, Rollout, imagine
from dreamer4.pmpo import policy_terms

TASKS = ("collect_wood", "place_table")
B, H, WIDTH, ACTIONS = 3, 4, 16, 5
GAMMA, LAM, ALPHA, BETA = 0.9, 0.8, 0.4, 0.3


pytestmark = pytest.mark.usefixtures("one_thread")


def small_module() -> torch.nn.Module:
    """A phase-3 module of a tiny agent; policy, prior, value and reward heads all non-trivial
    and the prior different from the policy (so KL is non-zero and asymmetric)."""
    torch.manual_seed(0)
    dyn = DynamicsConfig(
        latents=4, bottleneck=4, pack=2, width=WIDTH, depth=2, heads=2, time_every=2,
        registers=1, k_max=8, actions=(("act", "categorical", ACTIONS),),
    )  # fmt: skip
    agent = Agent(dyn, AgentConfig(tasks=TASKS, mtp=2, bins=21, symlog_range=3.0)).eval()
    module = policy_module(agent)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in (agent.policy, module.prior, module.value, agent.reward):
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6)
    return module


def fixed_rollout() -> Rollout:
    gen = torch.Generator().manual_seed(11)
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.5, 0.0, 0.0, 0.0], [1.0, 1.0, 3.0, 0.0]])
    return Rollout(
        latents=torch.randn(B, H, 4, 4, generator=gen),
        actions={"act": torch.randint(0, ACTIONS, (B, H), generator=gen)},
        features=torch.randn(B, H + 1, WIDTH, generator=gen),
        rewards=rewards,
        task=torch.tensor([0, 1, 0]),
    )


def by_hand(module: torch.nn.Module, r: Rollout, centre: bool) -> dict[str, Any]:
    """Value loss, PMPO loss, mean KL(π ‖ prior) and raw positive fraction, element by element."""
    agent = module.agent
    with torch.no_grad():
        value_logits = module.value(r.features, 1)[:, :, 0]
        v = agent.twohot.decode(value_logits).tolist()  # v[b][t] = v(s_t), t = 0 … H
        pi = agent.policy(r.features[:, :-1], 1)[:, :, 0].log_softmax(-1)
        prior = module.prior(r.features[:, :-1], 1)[:, :, 0].log_softmax(-1)
    ret = [[0.0] * H for _ in range(B)]
    for b in range(B):
        nxt = v[b][H]  # R^λ_H = v_H
        for t in reversed(range(H)):
            nxt = float(r.rewards[b, t]) + GAMMA * ((1 - LAM) * v[b][t + 1] + LAM * nxt)
            ret[b][t] = nxt
    value = sum(
        float(agent.twohot.loss(value_logits[b, t], torch.tensor(ret[b][t])))
        for b in range(B)
        for t in range(H)
    ) / (B * H)
    adv = [[ret[b][t] - v[b][t] for t in range(H)] for b in range(B)]
    mean = sum(map(sum, adv)) / (B * H)
    signed = [[a - mean if centre else a for a in row] for row in adv]
    pos, neg, kl = [], [], 0.0
    for b in range(B):
        for t in range(H):
            lp = float(pi[b, t, r.actions["act"][b, t]])
            (pos if signed[b][t] >= 0 else neg).append(lp)
            p = pi[b, t].exp()
            kl += float((p * (pi[b, t] - prior[b, t])).sum())
    kl /= B * H
    policy = (1 - ALPHA) * sum(neg) / max(len(neg), 1) - ALPHA * sum(pos) / max(len(pos), 1)
    return {
        "value": value,
        "policy": policy + BETA * kl,
        "kl": kl,
        "positive_fraction": sum(a >= 0 for row in adv for a in row) / (B * H),
        "returns": ret,
        "signs": [[s >= 0 for s in row] for row in signed],
        "v": v,
    }


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("train_policy", [True, False])
def test_policy_terms_match_the_formulas_by_hand(centre: bool, train_policy: bool) -> None:
    """Catches: KL(prior ‖ π), advantages against v_{t+1}, the value loss on s_1 … s_H, a
    wrong sign of the centring, the policy loss left in (or out) of "loss"."""
    module, rollout = small_module(), fixed_rollout()
    cfg = ImaginationConfig(horizon=H, gamma=GAMMA, lam=LAM, alpha=ALPHA, beta=BETA,
                            center_advantages=centre)  # fmt: skip
    terms = policy_terms(module, rollout, cfg, train_policy=train_policy)
    want = by_hand(module, rollout, centre)
    torch.testing.assert_close(terms["returns"], torch.tensor(want["returns"]))
    assert math.isclose(float(terms["value"]), want["value"], rel_tol=1e-5)
    assert math.isclose(float(terms["kl"]), want["kl"], rel_tol=1e-5)
    assert math.isclose(float(terms["policy"]), want["policy"], rel_tol=1e-5)
    assert math.isclose(float(terms["positive_fraction"]), want["positive_fraction"])
    # the warm-up trains the value only, and still reports the policy's terms
    expected = want["value"] + (want["policy"] if train_policy else 0.0)
    assert math.isclose(float(terms["loss"]), expected, rel_tol=1e-5)


def test_the_fixture_tells_the_alternatives_apart() -> None:
    """Each mutation the test above names changes a number it checks, on this fixture."""
    module, rollout = small_module(), fixed_rollout()
    want = by_hand(module, rollout, centre=True)
    raw = by_hand(module, rollout, centre=False)
    v, ret = want["v"], want["returns"]
    adv = [[ret[b][t] - v[b][t] for t in range(H)] for b in range(B)]
    late = [[ret[b][t] - v[b][t + 1] for t in range(H)] for b in range(B)]  # A against v_{t+1}
    mean, late_mean = sum(map(sum, adv)) / (B * H), sum(map(sum, late)) / (B * H)
    assert [[a - late_mean >= 0 for a in row] for row in late] != want["signs"]
    assert [[a + mean >= 0 for a in row] for row in adv] != want["signs"]  # centring's sign
    assert raw["signs"] != want["signs"]  # centring changes which actions are reinforced
    assert want["policy"] != pytest.approx(raw["policy"], rel=1e-3)
    assert 0 < want["positive_fraction"] < 1
    # KL is asymmetric here
    agent = module.agent
    with torch.no_grad():
        pi = agent.policy(rollout.features[:, :-1], 1)[:, :, 0]
        prior = module.prior(rollout.features[:, :-1], 1)[:, :, 0]
    forward, backward = agent.space.kl(pi, prior).mean(), agent.space.kl(prior, pi).mean()
    assert abs(float(forward - backward)) > 1e-2


def test_imagined_reward_is_read_at_the_state_the_step_arrives_in() -> None:
    """rewards[:, t] = r_{t+1}: the reward head (offset 0) at h_{t+1}, not at h_t."""
    module = small_module()
    agent = module.agent
    gen = torch.Generator().manual_seed(1)
    context = torch.rand(B, 2, 4, 4, generator=gen) * 2 - 1
    actions = {"act": torch.randint(0, ACTIONS, (B, 2), generator=gen)}
    r = imagine(agent, context, actions, torch.tensor([0, 1, 0]), H, steps=2,
                generator=torch.Generator().manual_seed(2))  # fmt: skip
    with torch.no_grad():
        at = agent.twohot.decode(agent.reward(r.features, 1)[:, :, 0])  # (B, H + 1)
    torch.testing.assert_close(r.rewards, at[:, 1:])
    assert (r.rewards - at[:, :-1]).abs().max() > 1e-2  # h_t would give other rewards
