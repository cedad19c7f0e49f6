"""Phase 3: TD(λ) returns, PMPO (eq. 10–11), imagination rollouts, and that only the heads train."""

from __future__ import annotations

import math

import pytest
import torch

from dreamer4.agent import policy_module
from dreamer4.imagination import ImaginationConfig, imagine
from dreamer4.pmpo import lambda_returns, pmpo_loss, policy_terms
from tests.test_agent import small_agent


def test_lambda_returns_hand_checked():
    # H = 2, γ = 0.5, λ = 0.5; rewards r1 = 1, r2 = 2; values v0 = 0, v1 = 4, v2 = 8; c = 1, 1
    rewards = torch.tensor([[1.0, 2.0]])
    values = torch.tensor([[0.0, 4.0, 8.0]])
    ret = lambda_returns(rewards, values, torch.ones(1, 2), gamma=0.5, lam=0.5)
    # R1 = r2 + γ((1−λ) v2 + λ v2) = 2 + 0.5·8 = 6
    # R0 = r1 + γ((1−λ) v1 + λ R1) = 1 + 0.5(0.5·4 + 0.5·6) = 3.5
    torch.testing.assert_close(ret, torch.tensor([[3.5, 6.0]]))
    # a terminal flag cuts the bootstrap: c2 = 0 → R1 = 2, R0 = 1 + 0.5(2 + 1) = 2.5
    cut = lambda_returns(rewards, values, torch.tensor([[1.0, 0.0]]), gamma=0.5, lam=0.5)
    torch.testing.assert_close(cut, torch.tensor([[2.5, 2.0]]))
    # λ = 1 is the discounted Monte-Carlo return bootstrapped at the end
    mc = lambda_returns(rewards, values, torch.ones(1, 2), gamma=0.5, lam=1.0)
    torch.testing.assert_close(mc, torch.tensor([[1 + 0.5 * (2 + 0.5 * 8), 2 + 0.5 * 8]]))


def test_pmpo_loss_hand_checked():
    log_prob = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    advantage = torch.tensor([0.3, -1.0, 0.0, -0.1])  # D+ = {0, 2}, D− = {1, 3}
    kl = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out = pmpo_loss(log_prob, advantage, kl, alpha=0.5, beta=0.3)
    # (1−α)/|D−| Σ_{D−} ln π − α/|D+| Σ_{D+} ln π + β mean KL
    want = 0.5 * (-2.0 - 3.0) / 2 - 0.5 * (-1.0 - 0.5) / 2 + 0.3 * 0.25
    assert math.isclose(float(out["loss"]), want, rel_tol=1e-6)
    assert math.isclose(float(out["positive_fraction"]), 0.5)
    out["loss"].backward()
    # ascent on D+ log-probs, descent on D− (only the sign of A counts)
    torch.testing.assert_close(log_prob.grad, torch.tensor([-0.25, 0.25, -0.25, 0.25]))
    # the scale of the advantages does not matter
    again = pmpo_loss(log_prob.detach(), advantage * 1000, kl)
    assert math.isclose(float(again["loss"]), want, rel_tol=1e-6)


def test_lambda_returns_rejects_mismatched_shapes_and_names_them():
    rewards, continues = torch.zeros(1, 2), torch.ones(1, 2)
    # values must have H + 1 steps; continues must match rewards (either mismatch alone raises)
    with pytest.raises(ValueError, match=r"got \(1, 2\), \(1, 2\), \(1, 2\)$"):
        lambda_returns(rewards, torch.zeros(1, 2), continues, gamma=0.9, lam=0.9)
    with pytest.raises(ValueError, match=r"need rewards .*got \(1, 2\), \(1, 3\), \(1, 1\)$"):
        lambda_returns(rewards, torch.zeros(1, 3), torch.ones(1, 1), gamma=0.9, lam=0.9)


def test_pmpo_parts_with_one_sample_per_sign_and_an_empty_set():
    # |D+| = |D−| = 1: each part is that sample's log-prob (no division by a clamped count)
    log_prob, kl = torch.tensor([-1.0, -2.0]), torch.tensor([0.2, 0.4])
    out = pmpo_loss(log_prob, torch.tensor([1.0, -1.0]), kl, alpha=0.25, beta=0.5)
    assert float(out["positive"]) == -1.0 and float(out["negative"]) == -2.0
    assert math.isclose(float(out["kl"]), 0.3, rel_tol=1e-6)
    assert math.isclose(float(out["loss"]), 0.75 * -2.0 - 0.25 * -1.0 + 0.5 * 0.3, rel_tol=1e-6)
    # D− empty: the negative part is 0, the positive part the mean over all
    out = pmpo_loss(log_prob, torch.tensor([0.5, 2.0]), kl)
    assert float(out["negative"]) == 0.0 and float(out["positive"]) == -1.5
    assert float(out["positive_fraction"]) == 1.0


def _rollout(module, b: int = 3, horizon: int = 4):
    gen = torch.Generator().manual_seed(1)
    context = torch.rand(b, 3, 4, 4, generator=gen) * 2 - 1
    actions = {"crafter": torch.randint(0, 17, (b, 3), generator=gen)}
    return imagine(
        module.agent, context, actions, torch.tensor([0, 1, 2])[:b], horizon, steps=2,
        generator=torch.Generator().manual_seed(2),
    )  # fmt: skip


def test_imagination_rollout_shapes_and_determinism():
    module = policy_module(small_agent())
    a, b = _rollout(module), _rollout(module)
    assert a.latents.shape == (3, 4, 4, 4) and a.features.shape == (3, 5, 32)
    assert a.actions["crafter"].shape == (3, 4) and a.rewards.shape == (3, 4)
    assert a.actions["crafter"].min() >= 0 and a.actions["crafter"].max() < 17
    torch.testing.assert_close(a.latents, b.latents)
    assert torch.equal(a.actions["crafter"], b.actions["crafter"])
    # the zero-initialised reward head predicts 0 before training
    torch.testing.assert_close(a.rewards, torch.zeros_like(a.rewards), atol=1e-4, rtol=0)


def test_only_policy_and_value_heads_change_in_phase_3():
    module = policy_module(small_agent())
    # a reward head that pays for action 5, so advantages have both signs
    with torch.no_grad():
        module.agent.reward.out[0].bias.normal_()
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainable = [p for p in module.parameters() if p.requires_grad]
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    assert all(n.startswith(("agent.policy.", "value.")) for n in names)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    cfg = ImaginationConfig(horizon=4, context=3, steps=2)
    for _ in range(3):
        terms = policy_terms(module, _rollout(module), cfg)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    changed = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "nothing trained"
    assert all(k.startswith(("agent.policy.", "value.")) for k in changed), changed
    assert any(k.startswith("agent.policy.") for k in changed)
    assert any(k.startswith("value.") for k in changed)
    # the prior stays the cloned policy: the KL to it is now positive
    assert float(policy_terms(module, _rollout(module), cfg)["kl"]) > 0


@pytest.mark.slow  # hundreds of PMPO steps in imagination
def test_pmpo_raises_the_return_of_a_bandit_and_stays_near_the_prior():
    """PMPO's direction: a categorical policy over 5 arms, arm 3 pays 1; advantages from a
    learned baseline; after updates arm 3 is likelier, and β bounds the drift from the prior."""
    from dreamer4.agent import ActionSpace

    space = ActionSpace((("arm", "categorical", 5),))
    prior = torch.zeros(5)
    results = {}
    for beta in (0.3, 3.0):
        logits = torch.zeros(5, requires_grad=True)
        baseline = torch.zeros((), requires_grad=True)
        opt = torch.optim.Adam([logits, baseline], lr=0.05)
        gen = torch.Generator().manual_seed(0)
        for _ in range(200):
            batch = logits.expand(64, 5)
            arms = space.sample(batch.detach(), gen)["arm"]
            reward = (arms == 3).float()
            log_prob, _ = space.log_prob(batch, {"arm": arms})
            kl = space.kl(batch, prior.expand(64, 5))
            loss = pmpo_loss(log_prob, reward - baseline.detach(), kl, beta=beta)["loss"]
            loss = loss + (reward - baseline).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[beta] = (logits.softmax(-1)[3].item(), float(space.kl(logits, prior)))
    assert results[0.3][0] > 0.6  # from 0.2
    assert results[3.0][0] < results[0.3][0] and results[3.0][1] < results[0.3][1]


def _base_reward_rollout(module, gen: torch.Generator, b: int = 32, horizon: int = 8):
    """Imagination stand-in with fixed features per state: every step pays 2, action 3 pays
    2.2; actions sampled from the current policy (as `imagine` does)."""
    from dreamer4.imagination import Rollout

    features = torch.randn(b, horizon + 1, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = module.agent.policy(features[:, :-1], 1)[:, :, 0]
    actions = module.agent.space.sample(logits, gen)
    rewards = 2.0 + 0.2 * (actions["crafter"] == 3).float()
    return Rollout(features[:, 1:, :4, None].expand(b, horizon, 4, 4), actions, features,
                   rewards, torch.zeros(b, dtype=torch.long))  # fmt: skip


def _phase3(cfg: ImaginationConfig, steps: int) -> tuple[float, float, list[float]]:
    """(P(action 3) before, after, positive_fraction per step) of `steps` updates of a small
    phase-3 module with the stage's parameter groups and warm-up."""
    from dreamer4.stages.train_policy import PolicyJob

    module = policy_module(small_agent())
    job = PolicyJob.__new__(PolicyJob)  # only the parameter groups: no agent folder needed
    job.imagination = cfg
    groups = job.param_groups(module, type("Train", (), {"weight_decay": 0.01})())
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(7))

    def p3() -> float:
        with torch.no_grad():
            return float(module.agent.policy(features, 1)[0, 0, 0].softmax(-1)[3])

    before, fractions = p3(), []
    for step in range(steps):
        terms = policy_terms(module, _base_reward_rollout(module, gen), cfg,
                             train_policy=step >= cfg.value_warmup)  # fmt: skip
        fractions.append(float(terms["positive_fraction"]))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    return before, p3(), fractions


def test_pmpo_raises_the_better_action_under_a_positive_base_reward(one_thread: None):
    """Every step pays 2; action 3 pays 0.2 more. A zero-initialised value sits far below its
    fixed point (≈ 2 / (1 − γ) here), so raw advantages are almost all positive: bare PMPO
    then raises whatever was sampled and action 3 loses ground; with the phase-3 remedies
    (value warm-up at its own lr, centred advantages) it gains. β = 0 isolates the sign."""
    cfg = ImaginationConfig(horizon=8, value_warmup=10, value_lr=1e-2, beta=0.0)
    before, after, fractions = _phase3(cfg, 100)
    assert fractions[0] == 1.0  # the value head's bias: the defect the remedies address
    assert after > 1.05 * before, (before, after)  # 0.061 → 0.065 when written
    bare = ImaginationConfig(horizon=8, value_warmup=0, center_advantages=False, beta=0.0)
    before_bare, after_bare, fractions_bare = _phase3(bare, 100)
    assert min(fractions_bare) > 0.8  # nearly one-signed advantages throughout
    assert after_bare < before_bare < after, (after_bare, after)  # 0.019 when written


def test_prompt_tasks_keep_the_context_task_else_draw_a_known_one():
    from dreamer4.imagination import prompt_tasks

    task = torch.tensor([2, -1, 0, -1])
    assert prompt_tasks(task, [5]).tolist() == [2, 5, 0, 5]
    drawn = []
    for seed in (1, 2):  # from the generator alone, whatever the global RNG did
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(0)
        drawn.append(prompt_tasks(torch.full((400,), -1), [1, 3], g))
    assert torch.equal(drawn[0], drawn[1])
    assert set(drawn[0].tolist()) == {1, 3} and 150 < int((drawn[0] == 1).sum()) < 250


def _policy_job(cfg: ImaginationConfig, grad_accum: int):
    from dreamer4.shortcut import ShortcutConfig
    from dreamer4.stages.train_policy import PolicyJob

    job = PolicyJob.__new__(PolicyJob)  # the loss only: no agent folder needed
    job.imagination, job.known, job.grad_accum = cfg, [1], grad_accum
    job.shortcut = ShortcutConfig(context_noise=0.3)  # not the default: it must be passed on
    return job


def test_policy_job_loss_is_policy_terms_of_the_rollout_and_warms_up_the_value():
    """A wiring test by recomposition: `PolicyJob.loss` equals `policy_terms` of the rollout
    `imagine` makes from the job's own settings (the last frame's task, the shortcut config, the
    context window), and its warm-up counts optimizer steps, not micro-steps. The values of the
    terms themselves are checked by hand in tests/stages/test_policy_terms.py."""
    from dreamer4.dynamics import shift_actions
    from dreamer4.imagination import prompt_tasks

    cfg = ImaginationConfig(horizon=2, steps=2, context_window=2, value_warmup=1)
    job = _policy_job(cfg, grad_accum=2)
    module = policy_module(small_agent())
    gen = torch.Generator().manual_seed(0)
    # the prompt is the task of the last context frame (-1: a known task, here 1)
    batch = {
        "latents": torch.rand(2, 3, 4, 4, generator=gen).double() * 2 - 1,
        "task": torch.tensor([[0, 1, 2], [2, 0, -1]]),
        "action/crafter": torch.randint(0, 17, (2, 3), generator=gen),
    }
    seen = []
    for call in range(3):
        torch.manual_seed(call)
        out = job.loss(module, batch)
        torch.manual_seed(call)
        task = prompt_tasks(torch.tensor([2, -1]), [1])
        assert task.tolist() == [2, 1]
        context = batch["latents"].float()
        rollout = imagine(module.agent, context, shift_actions(batch), task, 2, 2, job.shortcut,
                          context_window=2)  # fmt: skip
        want = policy_terms(module, rollout, cfg)
        assert set(out) == {"loss", "policy", "value", "kl", "positive_fraction", "entropy",
                            "return", "values"}  # fmt: skip
        for key in ("policy", "value", "kl", "return", "values"):
            torch.testing.assert_close(out[key], want[key])
        seen.append(int(module.micro_steps))
        # optimizer step = micro-step // grad_accum; step < value_warmup: the value loss only
        policy = 0.0 if call < 2 else float(want["policy"].detach())
        got, value = float(out["loss"].detach()), float(want["value"].detach())
        assert math.isclose(got, value + policy, rel_tol=1e-5)
    assert seen == [1, 2, 3]


def test_policy_terms_report_return_entropy_and_the_sign_of_zero_advantages():
    from dreamer4.imagination import Rollout

    module = policy_module(small_agent())
    with torch.no_grad():  # a uniform policy over the 17 actions
        module.agent.policy.out[0].weight.zero_()
        module.agent.policy.out[0].bias.zero_()
    b, horizon = 2, 3
    features = torch.randn(b, horizon + 1, 32, generator=torch.Generator().manual_seed(0))
    actions = {"crafter": torch.zeros(b, horizon, dtype=torch.long)}

    def terms(rewards: torch.Tensor, cfg: ImaginationConfig | None = None) -> dict:
        rollout = Rollout(torch.zeros(b, horizon, 4, 4), actions, features, rewards,
                          torch.zeros(b, dtype=torch.long))  # fmt: skip
        return policy_terms(module, rollout, cfg or ImaginationConfig())

    out = terms(torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 0.0]]))
    assert set(out) == {"loss", "policy", "value", "kl", "positive_fraction", "entropy",
                        "return", "values", "returns", "values_all"}  # fmt: skip
    assert math.isclose(float(out["return"]), (3.0 + 4.0) / 2, rel_tol=1e-6)  # Σ_t r, mean over b
    assert math.isclose(float(out["entropy"]), math.log(17), rel_tol=1e-5)
    # the zero-initialised value head predicts one value v everywhere: with no reward and
    # γ = λ = 1, R^λ_t = v_H = v, so every A is exactly 0, and A = 0 counts as positive
    zero = terms(torch.zeros(b, horizon), ImaginationConfig(gamma=1.0, lam=1.0))
    assert (zero["values_all"] == zero["values_all"][0, 0]).all()
    assert (zero["returns"] == zero["values_all"][:, :-1]).all()
    assert float(zero["positive_fraction"]) == 1.0
