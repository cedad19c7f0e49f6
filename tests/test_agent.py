"""Agent tokens, heads, MTP targets, two-hot, action distributions (paper §3.3, eq. 9)."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from dreamer4.agent import (
    ActionSpace,
    Agent,
    AgentConfig,
    TwoHot,
    agent_loss,
    load_agent,
    load_policy,
    mtp_targets,
    policy_module,
    symexp,
    symlog,
    task_rewards,
)
from dreamer4.dynamics import DynamicsConfig
from dreamer4.train.checkpoint import export

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


def test_action_space_samples_without_a_generator_from_the_global_rng():
    space = ActionSpace((("attack", "binary", 2), ("camera", "categorical", 5)))
    logits = torch.tensor([[30.0, -40.0, -40.0, 0.0, 0.0, 0.0], [-30.0, 0.0, 0.0, 0.0, 0.0, 40.0]])
    torch.manual_seed(3)
    first = space.sample(logits)
    assert first["attack"].tolist() == [1, 0] and first["camera"][1].item() == 4
    torch.manual_seed(3)
    again = space.sample(logits)
    assert all(torch.equal(first[k], again[k]) for k in first)


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


def _model_config(agent: Agent) -> dict:
    return {"model": {"dynamics": asdict(agent.dynamics.cfg), "agent": asdict(agent.cfg)}}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_agent_reads_the_agent_weights_of_an_exported_stage(tmp_path: Path):
    agent, other = small_agent(), small_agent()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    # a stage module holds the agent under "agent." next to other parts (here a value head)
    weights = {f"agent.{k}": v for k, v in other.state_dict().items()} | {"value.w": torch.ones(2)}
    ema = {f"agent.{k}": v for k, v in agent.state_dict().items()} | {"value.w": torch.ones(2)}
    export(tmp_path, weights, ema, _model_config(agent))
    loaded, config = load_agent(tmp_path)  # the EMA weights by default
    assert _same_weights(loaded, agent) and config["model"]["agent"]["mtp"] == 3
    assert loaded.cfg == agent.cfg and loaded.dynamics.cfg.latents == 4
    raw, _ = load_agent(tmp_path, ema=False)
    assert _same_weights(raw, other)


def test_load_policy_reads_the_phase_3_module(tmp_path: Path):
    module, other = policy_module(small_agent()), policy_module(small_agent())
    with torch.no_grad():
        for p in other.value.parameters():
            p.add_(1.0)
    export(tmp_path, other.state_dict(), module.state_dict(), _model_config(module.agent))
    loaded, _ = load_policy(tmp_path)
    assert _same_weights(loaded, module)
    raw, _ = load_policy(tmp_path, ema=False)
    assert _same_weights(raw, other) and not _same_weights(raw, module)


def _finetune_job(tmp_path: Path, unlabelled: float):
    """An `AgentJob` of finetune_agent with an exported world model (random weights)."""
    from dreamer4.dynamics import Dynamics
    from dreamer4.shortcut import ShortcutConfig
    from dreamer4.stages.finetune_agent import AgentJob
    from dreamer4.train.sequences import SequenceSpec

    dyn = DynamicsConfig(
        latents=4, bottleneck=4, pack=2, width=16, depth=2, heads=2, time_every=2, registers=1,
        k_max=8, actions=(("crafter", "categorical", 17),),
    )  # fmt: skip
    torch.manual_seed(1)
    weights = {f"dynamics.{k}": v for k, v in Dynamics(dyn).state_dict().items()}
    export(tmp_path / "wm", weights, weights, {})
    cfg = AgentConfig(tasks=TASKS, mtp=2, bins=21, symlog_range=3.0)
    spec = SequenceSpec(length=4, arrays=("latents",), fields=(), tasks=TASKS)
    job = AgentJob("finetune_agent", dyn, cfg, ShortcutConfig(), spec, unlabelled,
                   tmp_path / "wm", tmp_path, 2)  # fmt: skip
    torch.manual_seed(0)
    return job, job.build_model()


def _finetune_batch(relevant: list[bool], seed: int = 5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, t = len(relevant), 5  # T = 5 steps of N_b = 4 latents
    return {
        "latents": torch.rand(b, t, 4, 4, generator=gen) * 2 - 1,
        "relevant": torch.tensor(relevant),
        "independent": torch.zeros(b, dtype=torch.bool),
        "action/crafter": torch.randint(0, 17, (b, t), generator=gen),
        "events": torch.zeros(b, t, 3, dtype=torch.bool),
        "task": torch.zeros(b, t, dtype=torch.long),
    }


def test_finetune_with_a_world_model_adds_the_shortcut_loss_of_the_uniform_rows(tmp_path: Path):
    job, model = _finetune_job(tmp_path, unlabelled=0.0)
    assert int(model.draws) == 0

    def flow(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        torch.manual_seed(0)  # the flow noise; τ and d come from the draws counter
        out = job.loss(model, batch)
        return float(out["flow"].detach()), float(out["bootstrap"].detach())

    batch = _finetune_batch([False, True, True, False])
    first = flow(batch)
    assert int(model.draws) == 1 and all(math.isfinite(x) and x >= 0 for x in first)
    model.draws.zero_()  # the same draw: the same τ, d, so the same terms
    assert flow(batch) == first and int(model.draws) == 1
    # each call draws anew: τ, d of draw 1 then 2 differ from each other
    assert flow(batch) != flow(batch) and int(model.draws) == 3
    # only the uniform rows (not relevant) enter the world-model loss
    model.draws.zero_()
    other = dict(batch, latents=batch["latents"].clone())
    other["latents"][1:3] = 0.5
    assert flow(other) == first
    model.draws.zero_()
    other["latents"][3] = 0.5
    assert flow(other) != first
    # the actions condition it (none dropped at unlabelled = 0)
    model.draws.zero_()
    assert flow(dict(batch, **{"action/crafter": (batch["action/crafter"] + 1) % 17})) != first
    # the batch's independent flags reach the world-model loss (a row of images, not a video)
    model.draws.zero_()
    assert flow(dict(batch, independent=torch.tensor([True, False, False, True]))) != first
    # every row relevant: no world-model term and no draw
    model.draws.zero_()
    out = job.loss(model, _finetune_batch([True, True]))
    assert "flow" not in out and "bootstrap" not in out and int(model.draws) == 0


def test_finetune_with_every_action_dropped_ignores_the_actions(tmp_path: Path):
    job, model = _finetune_job(tmp_path, unlabelled=1.0)  # the unlabelled-video path only
    batch = _finetune_batch([False, False])
    changed = dict(batch, **{"action/crafter": (batch["action/crafter"] + 1) % 17})
    got = []
    for b in (batch, changed):
        model.draws.zero_()
        torch.manual_seed(0)
        got.append(float(job.loss(model, b)["flow"].detach()))
    assert got[0] == got[1]


def test_agent_loss_with_one_target_each_by_hand():
    # policy logits fixed by the output bias: crafter class 0 at 5 (others 0), jump at 0
    agent = small_agent(actions=(("crafter", "categorical", 17), ("jump", "binary", 2)), mtp=1)
    with torch.no_grad():
        agent.policy.out[0].weight.zero_()
        agent.policy.out[0].bias.zero_()
        agent.policy.out[0].bias[0] = 5.0
    h = torch.randn(1, 2, 32)
    # one labelled step (t = 0): crafter 0 (the most likely class), jump 1; one reward target
    # (t = 1: frame 0's incoming reward is unknown)
    actions = {"crafter": torch.tensor([[0, -1]]), "jump": torch.tensor([[1, -1]])}
    events = torch.zeros(1, 2, 3, dtype=torch.bool)
    out = agent_loss(agent, h, actions, events, torch.tensor([[0, 0]]), torch.tensor([True]))
    assert int(out["bc_targets"]) == 1 and int(out["reward_targets"]) == 1
    log_pi = 5 - math.log(math.exp(5) + 16) - math.log(2)  # log π(crafter 0) + log σ(0)
    assert math.isclose(float(out["bc"].detach()), -log_pi, rel_tol=1e-5)
    # the zero-initialised reward head is uniform over its 41 bins: NLL = log 41
    assert math.isclose(float(out["reward"].detach()), math.log(41), rel_tol=1e-5)
    # accuracy over the categorical components only: crafter right, jump not counted
    assert float(out["bc_accuracy"]) == 1.0


def test_agent_tokens_are_the_task_embedding_plus_a_position_per_token():
    torch.manual_seed(0)
    dyn = DynamicsConfig(latents=4, bottleneck=4, pack=2, width=32, depth=2, heads=2,
                         time_every=2, registers=1, k_max=8)  # fmt: skip
    agent = Agent(dyn, AgentConfig(tasks=TASKS, agent_tokens=2, mtp=2, bins=41))
    # one embedding row per task plus the last for "no task", initialised small
    assert agent.task_embed.num_embeddings == len(TASKS) + 1
    assert float(agent.task_embed.weight.std()) < 0.05 and float(agent.agent_pos.std()) < 0.05
    tokens = agent.agent_tokens(torch.tensor([[0, 2, -1]]))
    assert tokens.shape == (1, 3, 2, 32)
    embed, pos = agent.task_embed.weight.detach(), agent.agent_pos.detach()
    for t, row in enumerate([0, 2, len(TASKS)]):
        torch.testing.assert_close(tokens[0, t].detach(), embed[row][None] + pos)
    assert not torch.allclose(tokens[0, 0, 0], tokens[0, 0, 1])  # each token its own position


def test_twohot_clips_below_the_range_to_the_lowest_bin():
    twohot = TwoHot(41, 20.0)
    code = twohot.encode(torch.tensor([-1e12]))
    assert float(code[0, 0]) == 1.0 and float(code.sum()) == 1.0
    assert math.isclose(float(twohot.decode_probs(code)), twohot.low, rel_tol=1e-4)


def test_sampling_reads_the_last_axis_and_only_the_generator():
    space = ActionSpace((("attack", "binary", 2), ("camera", "categorical", 5)))
    # (B, T, A) logits: camera certain to be 4 at every (b, t); attack a fair coin
    logits = torch.zeros(3, 4, space.width)
    logits[..., 1:5] = -40.0
    s = space.sample(logits, torch.Generator().manual_seed(0))
    assert s["camera"].shape == (3, 4) and (s["camera"] == 4).all()
    entropy = space.entropy(logits)
    assert entropy.shape == (3, 4)
    torch.testing.assert_close(entropy, torch.full((3, 4), math.log(2)), atol=1e-5, rtol=0)
    # the draws come from the generator alone, whatever the global RNG did
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        draws.append(space.sample(logits, torch.Generator().manual_seed(7))["attack"])
    assert torch.equal(draws[0], draws[1]) and 0 < int(draws[0].sum()) < 12


def test_phase_3_module_has_one_value_output_and_an_integer_step_counter():
    module = policy_module(small_agent())
    assert len(module.value.out) == 1  # eq. 10: the value of s_t, no multi-token prediction
    assert module.micro_steps.dtype == torch.long and int(module.micro_steps) == 0


def test_finetune_loss_sums_the_normalised_terms_and_skips_absent_ones(tmp_path: Path):
    job, model = _finetune_job(tmp_path, unlabelled=0.0)
    with torch.no_grad():  # a reward head that reads h (it starts at zero)
        for p in model.agent.reward.parameters():
            p.normal_(0, 0.5)
    # one labelled step on the relevant row 0 (t = 0): exactly one BC target
    batch = _finetune_batch([True, False])
    batch["action/crafter"][0, 1:] = -1
    torch.manual_seed(0)
    out = job.loss(model, batch)
    counts = {k: int(model.norms[k].count) for k in ("flow", "bc", "reward")}
    assert counts == {"flow": 1, "bc": 1, "reward": 1}
    # each term is divided by its running RMS, after one step the term itself: flow, BC and
    # reward add 1 each; the bootstrap term, on the flow's scale, adds a little (≥ 0)
    assert 3.0 - 1e-4 <= float(out["loss"].detach()) < 3.1
    # no relevant row: no BC target, so the BC normaliser is left alone
    torch.manual_seed(0)
    job.loss(model, _finetune_batch([False, False]))
    assert int(model.norms["bc"].count) == 1 and int(model.norms["reward"].count) == 2
    # the agent features see the actions (the action leading into each frame)
    model.norms.eval()
    rewards = []
    for shift in (0, 1):
        b = _finetune_batch([True, True])
        b["action/crafter"] = (b["action/crafter"] + shift) % 17
        torch.manual_seed(0)  # the context noise of the agent's frames
        rewards.append(float(job.loss(model, b)["reward"].detach()))
    assert rewards[0] != rewards[1]


def test_heads_are_nonlinear_and_independent_rows_see_one_frame():
    from dreamer4.agent import MTPHead

    torch.manual_seed(0)
    head = MTPHead(4, 8, 3, 2)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    zero = torch.zeros(5, 4)
    # an affine trunk would make this exactly 0
    assert (head(a + b) - head(a) - head(b) + head(zero)).abs().max() > 1e-4
    agent = small_agent()
    z = torch.randn(1, 3, 4, 4)
    tau, d = torch.full((1, 3), 0.5), torch.full((1, 3), 0.125)
    actions, task = {"crafter": torch.tensor([[-1, 2, 5]])}, torch.tensor([[0, 1, 1]])
    with torch.no_grad():
        _, h = agent(z, tau, d, actions, task, independent=torch.tensor([True]))
        _, alone = agent(z[:, 2:], tau[:, 2:], d[:, 2:], {"crafter": actions["crafter"][:, 2:]},
                         task[:, 2:])  # fmt: skip
        _, video = agent(z, tau, d, actions, task)
    torch.testing.assert_close(h[:, 2], alone[:, 0], atol=1e-5, rtol=0)
    assert not torch.allclose(video[:, 2], alone[:, 0], atol=1e-4)


def test_agent_config_checks_its_ranges():
    with pytest.raises(ValueError, match="^AgentConfig: the task vocabulary is empty$"):
        AgentConfig(tasks=())
    need = r"^AgentConfig: need agent_tokens >= 1, mtp >= 1, bins >= 2, symlog_range > 0$"
    for bad in ({"agent_tokens": 0}, {"mtp": 0}, {"bins": 1}, {"symlog_range": 0.0}):
        with pytest.raises(ValueError, match=need):
            AgentConfig(tasks=TASKS, **bad)
    edge = AgentConfig(tasks=list(TASKS), agent_tokens=1, mtp=1, bins=2, symlog_range=0.5)
    assert edge.tasks == TASKS and edge.bins == 2


def test_log_prob_skips_only_the_components_without_labels():
    space = ActionSpace((("attack", "binary", 2), ("camera", "categorical", 5)))
    logits = torch.zeros(2, space.width)
    lp, labelled = space.log_prob(logits, {"camera": torch.tensor([1, -1])})  # no "attack"
    torch.testing.assert_close(lp, torch.tensor([-math.log(5), 0.0]))
    assert labelled.tolist() == [True, False]
    # the bins are rebuilt from the config, not saved with the weights
    assert "bins" not in TwoHot(41, 20.0).state_dict()


def test_running_rms_follows_its_decay():
    from dreamer4.nn.norm import RunningRMS

    norm = RunningRMS(0.9)
    assert norm.count.dtype == torch.long
    norm(torch.tensor(4.0))  # the first term sets the estimate: 16
    out = norm(torch.tensor(1.0))  # then 16 + (1 − 0.9)(1 − 16) = 14.5
    assert math.isclose(float(norm.mean_square), 14.5, rel_tol=1e-6)
    assert math.isclose(float(out), 1 / math.sqrt(14.5), rel_tol=1e-6) and int(norm.count) == 2
