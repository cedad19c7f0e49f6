"""Imagination rollouts (paper §3.3, phase 3): the policy acting inside the world model.

A rollout starts from a context of real latents (one rollout per context, as the paper does,
for diversity and memory) and a task. The context, noised to the sampler's context level, is
fed once into the KV cache with the agent tokens; the agent output at the last context frame is
s_0. Then, H times: the policy head (offset 0) samples a_t from h_t — sampled, never argmax —,
the shortcut sampler generates the next frame given a_t (K steps against the cache, rolled
back), and one commit pass of that frame at the context level appends it to the cache and gives
h_{t+1}, from which the reward head reads r_{t+1} (the reward arriving with the frame, see
`dreamer4.agent`) and the value head v_{t+1}.

The world model has no termination head (Crafter episodes in the data end by time limit or
death, rarely within an imagined horizon), so every continuation flag is 1. Rewards are the
two-hot expectation of the reward head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from dreamer4.agent import Agent
from dreamer4.errors import StageError
from dreamer4.shortcut import ShortcutConfig, as_context, constant, denoise, randn_like


@dataclass(frozen=True)
class ImaginationConfig:
    horizon: int = 16  # imagined steps per rollout
    context: int = 8  # real frames before the first imagined one
    context_window: int = 0  # most frames the KV cache keeps (0 = context + horizon)
    steps: int = 4  # shortcut steps per imagined frame (K)
    gamma: float = 0.997
    lam: float = 0.95
    alpha: float = 0.5  # PMPO weight of the positive set
    beta: float = 0.3  # PMPO weight of KL(π ‖ π_prior)
    # The value head starts at 0, far below its fixed point (docs/agent.md, "Phase 3"):
    value_warmup: int = 50  # first optimizer steps train the value only, the policy frozen
    value_lr: float = 3e-3  # the value head's own peak learning rate (policy: train.lr)
    center_advantages: bool = True  # A − mean(A) over the batch before PMPO takes its sign

    @property
    def window(self) -> int | None:
        return self.context_window or None


def known_tasks(data: Path, tasks: tuple[str, ...]) -> list[int]:
    """Indices of the tasks some episode of the data reaches (prompts for task-less contexts)."""
    seen = set(pd.read_parquet(Path(data) / "steps.parquet", columns=["task"])["task"].dropna())
    known = [i for i, t in enumerate(tasks) if t in seen]
    if not known:
        raise StageError(f"{data}: no episode reaches any task ({', '.join(tasks)})")
    return known


def prompt_tasks(
    task: Tensor, known: list[int], generator: torch.Generator | None = None
) -> Tensor:
    """Each rollout's task: its context's task at the last frame, else a known task at random."""
    pool = torch.tensor(known, device=task.device)
    pick = torch.randint(0, len(pool), task.shape, generator=generator, device=pool.device)
    return torch.where(task >= 0, task, pool[pick])


@dataclass
class Rollout:
    """What one batch of rollouts produced (index t = state s_t)."""

    latents: Tensor  # (B, H, N_b, D_b) imagined frames s_1 … s_H
    actions: dict[str, Tensor]  # name → (B, H): a_t taken at s_t, t = 0 … H−1
    features: Tensor  # (B, H + 1, width): agent outputs h_0 … h_H
    rewards: Tensor  # (B, H): r_1 … r_H (reward head, offset 0, at s_1 … s_H)
    task: Tensor  # (B,)

    @property
    def continues(self) -> Tensor:
        return torch.ones_like(self.rewards)


def imagine(
    agent: Agent,
    context: Tensor,
    context_actions: dict[str, Tensor] | None,
    task: Tensor,
    horizon: int,
    steps: int = 4,
    cfg: ShortcutConfig | None = None,
    policy: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    context_window: int | None = None,
) -> Rollout:
    """Roll out `horizon` steps from context (B, C, N_b, D_b), C ≥ 1.

    context_actions: name → (B, C), the actions leading into the context frames (model
    convention, `dynamics.shift_actions`). task: (B,) long, the task each rollout is prompted
    with. policy: h (B, width) → action logits (B, A) (default: the agent's policy head at
    offset 0). context_window: most past frames the cache keeps (None = all); keep C + H within
    the lengths the world model was trained on, or crop to them.

    Without autograd (phase 3's losses re-read `features` with the trainable heads), written
    as a `with` block rather than a decorator so that mutation testing reaches the body.
    """
    with torch.no_grad():
        b, c = context.shape[:2]
        if c < 1 or horizon < 1 or task.shape != (b,):
            raise ValueError(f"need a context of >= 1 frame, horizon >= 1 and task (B,) = ({b},)")
        cfg = cfg or ShortcutConfig()
        act = policy or (lambda h: agent.policy(h, 1)[:, 0])
        k_max, noise = agent.dynamics.cfg.k_max, cfg.context_noise
        cache = agent.new_cache()
        one_task = task[:, None]
        inputs = as_context(context.float(), noise, k_max, generator)
        _, h = agent(*inputs, context_actions, one_task.expand(b, c), cache=cache)
        features, frames, rewards = [h[:, -1]], [], []
        actions: dict[str, list[Tensor]] = {name: [] for name, _, _ in agent.space.components}
        for _ in range(horizon):
            chosen = agent.space.sample(act(features[-1]), generator)
            for name, value in chosen.items():
                actions[name].append(value)
            step_actions = {name: value[:, None] for name, value in chosen.items()}
            if context_window is not None:
                cache.crop(context_window)
            length = cache.length

            def predict(
                x: Tensor,
                tau: float,
                d: float,
                step_actions: dict = step_actions,
                length: int = length,
            ) -> Tensor:
                pred, _ = agent(
                    x,
                    constant(b, 1, tau, x),
                    constant(b, 1, d, x),
                    step_actions,
                    one_task,
                    cache=cache,
                )
                cache.truncate(length)
                return pred

            x = denoise(
                predict, randn_like(context[:, :1].float(), generator), steps, cfg.tau_clamp
            )
            frames.append(x)
            _, h = agent(
                *as_context(x, noise, k_max, generator), step_actions, one_task, cache=cache
            )
            features.append(h[:, 0])
            rewards.append(agent.twohot.decode(agent.reward(h[:, 0], 1)[:, 0]))
        return Rollout(
            latents=torch.cat(frames, 1),
            actions={name: torch.stack(v, 1) for name, v in actions.items()},
            features=torch.stack(features, 1),
            rewards=torch.stack(rewards, 1),
            task=task,
        )
