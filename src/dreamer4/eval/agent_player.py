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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dreamer4.agent import ActionSpace, Agent, load_agent, load_policy
from dreamer4.files import read_config
from dreamer4.nn import KVCache
from dreamer4.shortcut import as_context
from dreamer4.tokenizer import Tokenizer
from dreamer4.train.checkpoint import CONFIG

Generators = torch.Generator | Sequence[torch.Generator] | None  # one for the batch, or per row


def per_row(fn: Callable[..., Any], x: Tensor, generator: Generators) -> list[Any]:
    """fn(part, generator) over the batch: once with a single generator, else row by row with
    each row's own generator (its draws then depend on nothing else in the batch)."""
    if generator is None or isinstance(generator, torch.Generator):
        return [fn(x, generator)]
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]} rows")
    return [fn(x[i : i + 1], g) for i, g in enumerate(generator)]


def episode_generator(seed: int, agent: int, episode: int) -> torch.Generator:
    """A CPU generator for one episode of one agent (its place in the evaluation's agent list),
    seeded by (seed, agent, episode): the same draws on any device, whatever the batch, the
    worker count or which other agents run."""
    state = np.random.SeedSequence([int(seed), int(agent), int(episode)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


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
        value: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """policy: h (B, width) → action logits (default: the agent's policy head, offset 0).
        context: past frames the agent's cache keeps (its training length − 1). value: h →
        two-hot logits of the value (phase 3's value head), for `predictions`."""
        self.tokenizer, self.agent = tokenizer.eval(), agent.eval()
        self.policy = policy or (lambda h: agent.policy(h, 1)[:, 0])
        self.value = value
        self.context_noise, self.context, self.generator = context_noise, context, generator
        self.reset()

    def reset(self) -> None:
        """Start new episodes: empty caches, no previous action."""
        self.tokenizer_cache = KVCache.empty(self.tokenizer.encoder.cfg)
        self.reset_agent()

    def reset_agent(self) -> None:
        """Forget what the agent read (its cache, the previous action), not the frames the
        tokenizer encoded: for a stream of frames that goes on while the agent read others."""
        self.agent_cache = self.agent.new_cache()
        self.previous: dict[str, Tensor] | None = None
        self.features: Tensor | None = None  # h of the last step (B, width)

    @torch.no_grad()
    def act(self, frames: Tensor, task: Tensor) -> dict[str, Tensor]:
        """frames (B, H, W, 3) uint8 at the tokenizer's resolution, task (B,) long (-1 = none)
        → sampled actions, name → (B,) long."""
        return self.act_latents(self.encode(frames), task)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """The latents (B, 1, N_b, D_b) of this step's frames, through the tokenizer's cache."""
        tok = self.tokenizer
        z = tok.encode_patches(tok.patchify(frames[:, None]), cache=self.tokenizer_cache)
        self.tokenizer_cache.crop(tok.cfg.sequence - 1)
        return z

    @torch.no_grad()
    def act_latents(self, z: Tensor, task: Tensor) -> dict[str, Tensor]:
        """`act` for a step whose latents z (B, 1, N_b, D_b) are known (a world model's dream:
        the agent reads them as it reads them in imagination)."""
        b = z.shape[0]
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

    def took(self, actions: dict[str, Tensor]) -> None:
        """The actions actually taken this step (a person overrode the agent's): they lead
        into the next frame's agent pass."""
        self.previous = {k: v.reshape(-1, 1) for k, v in actions.items()}

    @torch.no_grad()
    def predictions(self) -> dict[str, Tensor]:
        """What the heads make of the last step, name → (B,): `reward`, the reward for arriving
        at that frame, and with a value head `value`, the return expected from it."""
        if self.features is None:
            raise RuntimeError("AgentPlayer.predictions before the first act")
        twohot = self.agent.twohot
        out = {"reward": twohot.decode(self.agent.reward(self.features, 1)[:, 0])}
        if self.value is not None:
            out["value"] = twohot.decode(self.value(self.features))
        return out

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


def model_player(
    folder: Path, tokenizer: Tokenizer, device: torch.device | str = "cpu"
) -> tuple[AgentPlayer, tuple[str, ...]]:
    """An `AgentPlayer` for a phase-2 agent folder or a phase-3 policy folder (its trained
    policy head and value head), with the context it was trained on; and its task vocabulary."""

    model = read_config(folder, CONFIG, "its training stage")["model"]
    value = None
    if "imagination" in model:  # train_policy output: the agent with its RL-trained head
        module, _ = load_policy(folder)
        agent, context = module.agent, int(model["imagination"]["context_window"])
        head = module.value.to(device)
        value = lambda h: head(h, 1)[:, 0]  # noqa: E731
    else:
        agent, _ = load_agent(folder)
        context = int(model["sequence"]["length"]) - 1
    noise = float(model.get("shortcut", {}).get("context_noise", 0.1))
    player = AgentPlayer(
        tokenizer.to(device), agent.to(device), context_noise=noise, context=context, value=value
    )
    return player, agent.cfg.tasks


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
