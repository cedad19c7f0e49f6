"""A trained agent playing from pixels, one step at a time (real environment or a person's game).

Each step the new frame goes through the causal tokenizer's encoder against its KV cache
(as `encode` did for the training data), the latent is noised to the sampler's context level
and fed once through the dynamics transformer with the agent tokens against the agent's KV
cache — the same commit pass the agent reads in imagination — and the policy head (offset 0)
samples the action, never argmax. The action taken is fed back as the next step's action
token (the action leading into the next frame). Both caches are cropped to their training
contexts, so an episode of any length costs the same per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dreamer4.agent import ActionSpace, Agent
from dreamer4.nn import KVCache
from dreamer4.shortcut import as_context
from dreamer4.tokenizer import Tokenizer


class AgentPlayer:
    """Acts for a batch of B environments: `reset()`, then `act(frames, task)` each step."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        agent: Agent,
        policy: Callable[[Tensor], Tensor] | None = None,
        context_noise: float = 0.1,
        context: int = 15,
        generator: torch.Generator | None = None,
    ) -> None:
        """policy: h (B, width) → action logits (default: the agent's policy head, offset 0).
        context: past frames the agent's cache keeps (its training length − 1)."""
        self.tokenizer, self.agent = tokenizer.eval(), agent.eval()
        self.policy = policy or (lambda h: agent.policy(h, 1)[:, 0])
        self.context_noise, self.context, self.generator = context_noise, context, generator
        self.reset()

    def reset(self) -> None:
        """Start new episodes: empty caches, no previous action."""
        self.tokenizer_cache = KVCache.empty(self.tokenizer.encoder.cfg)
        self.agent_cache = self.agent.new_cache()
        self.previous: dict[str, Tensor] | None = None
        self.features: Tensor | None = None  # h of the last step (B, width)

    @torch.no_grad()
    def act(self, frames: Tensor, task: Tensor) -> dict[str, Tensor]:
        """frames (B, H, W, 3) uint8 at the tokenizer's resolution, task (B,) long (-1 = none)
        → sampled actions, name → (B,) long."""
        b = frames.shape[0]
        tok = self.tokenizer
        z = tok.encode_patches(tok.patchify(frames[:, None]), cache=self.tokenizer_cache)
        self.tokenizer_cache.crop(tok.cfg.sequence - 1)
        self.agent_cache.crop(self.context)
        names = [name for name, _, _ in self.agent.space.components]
        actions = self.previous or {n: torch.full((b, 1), -1, device=z.device) for n in names}
        k_max = self.agent.dynamics.cfg.k_max
        inputs = as_context(z.float(), self.context_noise, k_max, self.generator)
        _, h = self.agent(*inputs, actions, task[:, None], cache=self.agent_cache)
        self.features = h[:, 0]
        chosen = self.agent.space.sample(self.policy(self.features), self.generator)
        self.previous = {k: v[:, None] for k, v in chosen.items()}
        return chosen


class RandomPlayer:
    """The random baseline: each action component uniform (zero logits), prompts ignored."""

    def __init__(self, space: ActionSpace, generator: torch.Generator | None = None) -> None:
        self.space, self.generator = space, generator

    def reset(self) -> None:
        pass

    def act(self, frames: Tensor, task: Tensor) -> dict[str, Tensor]:
        return self.space.sample(torch.zeros(frames.shape[0], self.space.width), self.generator)
