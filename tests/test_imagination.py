"""`imagine` wiring (paper §3.3, phase 3): what each input reaches. The context goes into the
KV cache with its actions, s_0 is the agent output at the *last* context frame, the sampled
action conditions the next frame, every imagined frame is committed to the cache for the next
one, and bad shapes are refused. Tested by perturbing one input at a time on a tiny agent (the
generator fixed, so every random draw is the same in both runs)."""

from __future__ import annotations

import pytest
import torch

from dreamer4.imagination import Rollout, imagine
from dreamer4.shortcut import ShortcutConfig, as_context
from tests.stages.test_policy_terms import ACTIONS, small_module

pytestmark = pytest.mark.usefixtures("one_thread")

B, C, H = 2, 3, 2


@pytest.fixture(scope="module")
def agent() -> torch.nn.Module:
    """The tiny agent of the phase-3 tests with its world model at unit gain (weights of std
    1/√fan-in, embeddings of std 1): at the 0.02 init what crosses the one time-attention layer
    is below float noise, and these tests measure exactly that."""
    agent = small_module().agent
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in agent.dynamics.modules():
            if isinstance(layer, torch.nn.Linear | torch.nn.Embedding):
                fan_in = layer.weight.shape[1] if isinstance(layer, torch.nn.Linear) else 1
                w = layer.weight
                w.copy_(torch.randn(w.shape, generator=gen) / fan_in**0.5)
    return agent


def inputs(seed: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    context = torch.rand(B, C, 4, 4, generator=gen) * 2 - 1
    return context, {"act": torch.randint(0, ACTIONS, (B, C), generator=gen)}, torch.tensor([0, 1])


def roll(agent, context, actions, task, policy=None, **kw) -> Rollout:
    kw.setdefault("steps", 2)
    gen = torch.Generator().manual_seed(2)
    return imagine(agent, context, actions, task, H, policy=policy, generator=gen, **kw)


def forced(first: int, then: int = 0):
    """A policy that takes `first` at s_0 and `then` afterwards (logits ±30: sampling is sure,
    and it draws from the generator exactly as any other policy does)."""
    calls = []

    def policy(h: torch.Tensor) -> torch.Tensor:
        logits = torch.full((h.shape[0], ACTIONS), -30.0)
        logits[:, then if calls else first] = 30.0
        calls.append(1)
        return logits

    return policy


def differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() > 1e-4)


def test_s0_is_the_agent_output_at_the_last_context_frame(agent):
    context, actions, task = inputs()
    r = roll(agent, context, actions, task)
    # the rollout's first draws are the context's noise: the same seed gives the same inputs
    cfg = ShortcutConfig()
    noised = as_context(context, cfg.context_noise, agent.dynamics.cfg.k_max,
                        torch.Generator().manual_seed(2))  # fmt: skip
    with torch.no_grad():
        _, h = agent(*noised, actions, task[:, None].expand(B, C))
    torch.testing.assert_close(r.features[:, 0], h[:, -1])
    assert differ(h[:, -1], h[:, -2]) and differ(h[:, -1], h[:, 1])
    assert r.task is task and r.latents.shape == (B, H, 4, 4)
    assert r.features.shape == (B, H + 1, h.shape[-1]) and r.actions["act"].shape == (B, H)


def test_imagined_frames_see_the_whole_context_and_its_actions(agent):
    """Frames before the last one and the actions leading into them reach the imagined frames
    only through the KV cache (context pass and sampler both use it). The policy is fixed:
    s_0, which sees the whole context, must not reach s_1 through the action it picks."""
    context, actions, task = inputs()
    base = roll(agent, context, actions, task, policy=forced(1)).latents
    earlier = context.clone()
    earlier[:, 0] = -earlier[:, 0]  # the last context frame unchanged
    assert differ(roll(agent, earlier, actions, task, policy=forced(1)).latents[:, 0], base[:, 0])
    other = {"act": (actions["act"] + 1) % ACTIONS}
    assert differ(roll(agent, context, other, task, policy=forced(1)).latents[:, 0], base[:, 0])


def test_the_sampled_action_conditions_the_next_frame_and_frames_are_committed(agent):
    context, actions, task = inputs()
    a = roll(agent, context, actions, task, policy=forced(1))
    b = roll(agent, context, actions, task, policy=forced(3))
    assert (a.actions["act"][:, 0] == 1).all() and (b.actions["act"][:, 0] == 3).all()
    assert (a.actions["act"][:, 1] == 0).all() and (b.actions["act"][:, 1] == 0).all()
    assert differ(a.latents[:, 0], b.latents[:, 0])  # a_0 → s_1
    # s_2 sees s_1 (and a_0) only if s_1 was committed to the cache: the samplers roll back
    assert differ(a.latents[:, 1], b.latents[:, 1])


def test_default_is_four_shortcut_steps(agent):
    context, actions, task = inputs()
    gen = torch.Generator
    default = imagine(agent, context, actions, task, H, generator=gen().manual_seed(2))
    four = imagine(agent, context, actions, task, H, steps=4, generator=gen().manual_seed(2))
    five = imagine(agent, context, actions, task, H, steps=5, generator=gen().manual_seed(2))
    torch.testing.assert_close(default.latents, four.latents)
    assert differ(default.latents, five.latents)


def test_one_frame_of_context_and_one_step_are_enough(agent):
    context, actions, task = inputs()
    r = roll(agent, context[:, -1:], {"act": actions["act"][:, -1:]}, task)
    assert r.latents.shape == (B, H, 4, 4)
    r = imagine(agent, context, actions, task, 1, steps=2)
    assert r.latents.shape == (B, 1, 4, 4) and r.rewards.shape == (B, 1)


@pytest.mark.parametrize(
    "bad", ["no context", "no horizon", "task per frame", "task per other batch"]
)
def test_bad_shapes_are_refused_with_what_is_needed(agent, bad: str):
    context, actions, task = inputs()
    horizon = 0 if bad == "no horizon" else H
    if bad == "no context":
        context, actions = context[:, :0], {"act": actions["act"][:, :0]}
    if bad == "task per frame":
        task = task[:, None].expand(B, C)
    if bad == "task per other batch":
        task = torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"context of >= 1 frame, horizon >= 1 and task \(B,\)"):
        imagine(agent, context, actions, task, horizon)
