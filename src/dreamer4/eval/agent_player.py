"""A trained agent playing from pixels, one step at a time (real environment or a person's game).

Each step the new frame goes through the causal tokenizer's encoder against its KV cache
(as `encode` did for the training data), the latent is noised to the sampler's context level
and fed once through the dynamics transformer with the agent tokens against the agent's KV
cache — the same commit pass the agent reads in imagination — and the policy head (offset 0)
samples the action, never argmax. The action taken is fed back as the next step's action
token (the action leading into the next frame). Both caches are cropped to their training
contexts, so an episode of any length costs the same per step.

A batch of environments plays in lockstep (`evaluate` runs several per worker). With one
generator per row (`generator=[g_0, …]`) every row draws its context noise and its actions from
its own generator, so an episode's draws do not depend on which other episodes share the batch;
`keep(rows)` drops finished rows from the caches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from dreamer4.agent import ActionSpace, Agent
from dreamer4.nn import KVCache
from dreamer4.shortcut import as_context
from dreamer4.tokenizer import Tokenizer

Generators = torch.Generator | Sequence[torch.Generator] | None  # one for the batch, or per row


def per_row(fn: Callable[..., Any], x: Tensor, generator: Generators) -> list[Any]:
    """fn(part, generator) over the batch: once with a single generator, else row by row with
    each row's own generator (its draws then depend on nothing else in the batch)."""
    if generator is None or isinstance(generator, torch.Generator):
        return [fn(x, generator)]
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]} rows")
    return [fn(x[i : i + 1], g) for i, g in enumerate(generator)]


def cat_actions(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class AgentPlayer:
    """Acts for a batch of B environments: `reset()`, then `act(frames, task)` each step."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        agent: Agent,
        policy: Callable[[Tensor], Tensor] | None = None,
        context_noise: float = 0.1,
        context: int = 15,
        generator: Generators = None,
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
        parts = per_row(
            lambda x, g: as_context(x, self.context_noise, k_max, g), z.float(), self.generator
        )
        inputs = [torch.cat(column) for column in zip(*parts, strict=True)]
        _, h = self.agent(*inputs, actions, task[:, None], cache=self.agent_cache)
        self.features = h[:, 0]
        logits = self.policy(self.features)
        chosen = cat_actions(per_row(self.agent.space.sample, logits, self.generator))
        self.previous = {k: v[:, None] for k, v in chosen.items()}
        return chosen

    def keep(self, rows: Sequence[int]) -> None:
        """Go on with batch rows `rows` only (the other episodes ended), in that order."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        batch = self.features.shape[0] if self.features is not None else len(index)
        for cache in (self.tokenizer_cache, self.agent_cache):
            cache.select(index.to(_device(cache)), batch)
        if self.previous is not None:
            self.previous = {k: v[index.to(v.device)] for k, v in self.previous.items()}
        if self.features is not None:
            self.features = self.features[index.to(self.features.device)]
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            self.generator = [self.generator[i] for i in rows]


class RandomPlayer:
    """The random baseline: each action component uniform (zero logits), prompts ignored."""

    def __init__(self, space: ActionSpace, generator: Generators = None) -> None:
        self.space, self.generator = space, generator

    def reset(self) -> None:
        pass

    def act(self, frames: Tensor, task: Tensor) -> dict[str, Tensor]:
        logits = torch.zeros(frames.shape[0], self.space.width)
        return cat_actions(per_row(self.space.sample, logits, self.generator))

    def keep(self, rows: Sequence[int]) -> None:
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            self.generator = [self.generator[i] for i in rows]


def _device(cache: KVCache) -> torch.device:
    """Where a cache's tensors live (CPU for an empty one)."""
    filled = [k for k in cache.keys if k is not None]
    return filled[0].device if filled else torch.device("cpu")
