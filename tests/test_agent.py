"""Agent tokens, heads, MTP targets, two-hot, action distributions (paper §3.3, eq. 9)."""

from __future__ import annotations

import math

import pytest
import torch

from dreamer4.agent import (
    ActionSpace,
    Agent,
    AgentConfig,
    TwoHot,
    agent_loss,
    mtp_targets,
    symexp,
    symlog,
    task_rewards,
)
from dreamer4.dynamics import DynamicsConfig

TASKS = ("collect_wood", "place_table", "make_wood_pickaxe")


def small_agent(actions=(("crafter", "categorical", 17),), mtp: int = 3) -> Agent:
    torch.manual_seed(0)
    dyn = DynamicsConfig(
        latents=4, bottleneck=4, pack=2, width=32, depth=2, heads=2, time_every=2,
        registers=1, k_max=8, actions=actions,
    )  # fmt: skip
    return Agent(dyn, AgentConfig(tasks=TASKS, mtp=mtp, bins=41)).eval()


def test_agent_tokens_are_read_only():
    agent = small_agent()
    b, t = 2, 5
    z = torch.randn(b, t, 4, 4)
    tau, d = torch.full((b, t), 0.875), torch.full((b, t), 0.125)
    actions = {"crafter": torch.randint(0, 17, (b, t))}
    with torch.no_grad():
        pred_a, h_a = agent(z, tau, d, actions, torch.zeros(b, t, dtype=torch.long))
        pred_b, h_b = agent(z, tau, d, actions, torch.full((b, t), 2))
        plain = agent.dynamics(z, tau, d, actions)
    # the task changes what the agent reads out, and no world-model prediction
    assert not torch.allclose(h_a, h_b)
    assert torch.equal(pred_a, pred_b)
    torch.testing.assert_close(pred_a, plain, rtol=0, atol=1e-6)
    # and agent outputs are causal: changing a later frame leaves earlier ones alone
    z2 = z.clone()
    z2[:, 3:] = torch.randn(b, 2, 4, 4)
    with torch.no_grad():
        _, h_c = agent(z2, tau, d, actions, torch.zeros(b, t, dtype=torch.long))
    torch.testing.assert_close(h_c[:, :3], h_a[:, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(h_c[:, 3:], h_a[:, 3:])


def test_agent_kv_cache_matches_full_sequence():
    agent = small_agent()
    b, t = 2, 4
    z = torch.randn(b, t, 4, 4)
    tau, d = torch.full((b, t), 0.875), torch.full((b, t), 0.125)
    actions = {"crafter": torch.randint(0, 17, (b, t))}
    task = torch.tensor([[0] * t, [1] * t])
    with torch.no_grad():
        _, full = agent(z, tau, d, actions, task)
        cache = agent.new_cache()
        steps = []
        for i in range(t):
            step_actions = {"crafter": actions["crafter"][:, i : i + 1]}
            h = agent(z[:, i : i + 1], tau[:, :1], d[:, :1], step_actions, task[:, :1], cache=cache)
            steps.append(h[1])
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_mtp_targets_line_up_with_future_steps():
    x = torch.tensor([[10, 11, 12, 13]])
    y, valid = mtp_targets(x, 3)
    assert y.shape == (1, 4, 3)
    assert y[0].tolist() == [[10, 11, 12], [11, 12, 13], [12, 13, -1], [13, -1, -1]]
    assert valid[0].tolist() == [
        [True, True, True],
        [True, True, True],
        [True, True, False],
        [True, False, False],
    ]


def test_task_rewards_follow_the_task_given_at_t():
    # events (B=1, T=5, K=2): task 0's event happens at row 1 (seen with frame 2), task 1's at 3
    events = torch.zeros(1, 5, 2, dtype=torch.bool)
    events[0, 1, 0] = True
    events[0, 3, 1] = True
    task = torch.tensor([[0, 0, 1, 1, -1]])
    y, valid = task_rewards(events, task, 3)
    # frame 0's incoming reward is unknown; task 0 at t=0: offsets 1, 2 → frames 1, 2 → rows 0, 1
    assert valid[0, 0].tolist() == [False, True, True] and y[0, 0, 1:].tolist() == [0.0, 1.0]
    assert y[0, 1].tolist() == [0.0, 1.0, 0.0]  # task 0 at t=1: frames 1, 2, 3
    assert y[0, 2].tolist() == [0.0, 0.0, 1.0]  # task 1 at t=2: frames 2, 3, 4 (row 3)
    assert valid[0, 2].tolist() == [True, True, True]
    assert valid[0, 3].tolist() == [True, True, False]  # past the window
    assert not valid[0, 4].any()  # no task


def test_twohot_round_trip_and_loss():
    twohot = TwoHot(255, 20.0)
    y = torch.tensor([0.0, 1.0, -1.0, 0.37, 12.5, -300.0, 1e5])
    probs = twohot.encode(y)
    assert torch.allclose(probs.sum(-1), torch.ones(len(y)))
    assert ((probs > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(twohot.decode_probs(probs), y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(symexp(symlog(y)), y, rtol=1e-5, atol=1e-5)
    # logits = log two-hot decode to the same value; the loss is smallest at the target
    logits = torch.log(probs.clamp(min=1e-12))
    torch.testing.assert_close(twohot.decode(logits), y, rtol=1e-3, atol=1e-3)
    far = twohot.loss(torch.zeros(1, 255), torch.tensor([3.0]))
    near = twohot.loss(
        torch.log(twohot.encode(torch.tensor([3.0])).clamp(min=1e-12)), torch.tensor([3.0])
    )
    assert near < far
    # out of range: clipped to the outermost bin
    assert math.isclose(
        float(twohot.decode_probs(twohot.encode(torch.tensor([1e12])))), twohot.high, rel_tol=1e-4
    )


def test_action_space_matches_torch_distributions():
    space = ActionSpace((("attack", "binary", 2), ("camera", "categorical", 5)))
    logits = torch.randn(6, space.width)
    prior = torch.randn(6, space.width)
    actions = {
        "attack": torch.tensor([0, 1, 1, 0, -1, 1]),
        "camera": torch.tensor([0, 4, 2, -1, 3, 1]),
    }
    lp, labelled = space.log_prob(logits, actions)
    bern = torch.distributions.Bernoulli(logits=logits[:, 0])
    cat = torch.distributions.Categorical(logits=logits[:, 1:])
    want = torch.where(
        actions["attack"] >= 0, bern.log_prob(actions["attack"].clamp(min=0).float()), 0.0
    )
    want = want + torch.where(
        actions["camera"] >= 0, cat.log_prob(actions["camera"].clamp(min=0)), 0.0
    )
    torch.testing.assert_close(lp, want)
    assert labelled.all()
    kl = torch.distributions.kl_divergence
    want_kl = kl(bern, torch.distributions.Bernoulli(logits=prior[:, 0])) + kl(
        cat, torch.distributions.Categorical(logits=prior[:, 1:])
    )
    torch.testing.assert_close(space.kl(logits, prior), want_kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(space.entropy(logits), bern.entropy() + cat.entropy())
    # sampling follows the probabilities (not argmax)
    peaked = torch.tensor([[4.0, -40.0, -40.0, 0.0, 0.0, 0.0]]).expand(4000, -1)
    s = space.sample(peaked, torch.Generator().manual_seed(0))
    assert abs(s["attack"].float().mean().item() - torch.sigmoid(torch.tensor(4.0)).item()) < 0.03
    assert set(s["camera"].unique().tolist()) == {2, 3, 4}


def test_agent_loss_trains_bc_and_reward_on_the_right_rows():
    agent = small_agent(mtp=2)
    b, t = 4, 6
    h = torch.randn(b, t, 32, requires_grad=True)
    actions = {"crafter": torch.randint(0, 17, (b, t))}
    events = torch.zeros(b, t, len(TASKS), dtype=torch.bool)
    events[:, 2, 0] = True
    task = torch.zeros(b, t, dtype=torch.long)
    rows = torch.tensor([False, False, True, True])
    out = agent_loss(agent, h, actions, events, task, rows)
    assert int(out["bc_targets"]) == 2 * (t + t - 1)  # two relevant rows, offsets 0 and 1
    assert int(out["reward_targets"]) == b * ((t - 1) + (t - 1))  # frame 0 and past the end
    # an untrained policy is uniform: BC NLL = log 17; zero-init reward head: NLL of uniform bins
    assert math.isclose(float(out["bc"]), math.log(17), rel_tol=0.05)
    out["bc"].backward()
    assert h.grad[:2].abs().sum() == 0 and h.grad[2:].abs().sum() > 0


@pytest.mark.parametrize("bad", [dict(tasks=()), dict(tasks=TASKS, mtp=0)])
def test_agent_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        AgentConfig(**bad)


def test_pursued_task_keeps_the_achieved_task_on_the_next_frame():
    from dreamer4.agent import pursued_task

    # step index: task 0 until its event at row 1, then task 1
    task = torch.tensor([[0, 0, 1, 1]])
    events = torch.zeros(1, 4, 2, dtype=torch.bool)
    events[0, 1, 0] = True
    assert pursued_task(task).tolist() == [[0, 0, 0, 1]]
    y, valid = task_rewards(events, pursued_task(task), 1)
    # the frame after the event (frame 2) is a positive offset-0 example for task 0
    assert y[0, :, 0].tolist() == [0.0, 0.0, 1.0, 0.0] and valid[0, 1:, 0].all()
    y_raw, _ = task_rewards(events, task, 1)
    assert y_raw[0, :, 0].sum() == 0  # unshifted: the task switched on that very frame
