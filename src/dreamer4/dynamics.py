"""The interactive dynamics transformer (paper §3.2): noised latents + actions → clean latents.

The tokenizer turns each frame into z ∈ (-1, 1)^(N_b × D_b). The dynamics model sees a noised
copy z̃ = (1 − τ) z0 + τ z per frame (τ = signal level, 0 = pure noise, 1 = clean; z0 ~ N(0, I))
and predicts the clean z (x-prediction). It runs on the block-causal space-time transformer
(`dreamer4.nn`), so frame t sees frames ≤ t only and generation can reuse a KV cache.

Tokens of one time step, in this order (S = S_z + S_r + 2):

- S_z = N_b / pack spatial tokens: consecutive latent tokens packed into pack · D_b channels
  (paper: 512 × 16 → 256 × 32), then a linear projection plus a learned position embedding
  (RoPE already gives relative positions; the absolute one makes "which latent" explicit).
- S_r learned register tokens (scratch space; the paper sees better temporal consistency).
- One (τ, d) token: two discrete embeddings, width/2 channels each, concatenated (§3.2).
  τ index = round(τ · k_max); d index = log2(1/d), so d ∈ {1, 1/2, …, 1/k_max}.
- One action token (S_a = 1): a learned base embedding plus, per labelled component, an
  embedding lookup (categorical: n rows; binary: 2 rows, so "off" differs from "unlabelled").
  Missing components (value -1, or absent from the dict) contribute nothing, so an unlabelled
  frame gets the base embedding alone. The action at step t is the one *leading into* frame t
  (the data pipeline shifts; the model does not).

Choices (defaults in `DynamicsConfig`):

- Clean frames: the τ table has k_max rows, indices 0 … k_max − 1. Shortcut forcing samples
  τ ∈ {0, d, …, 1 − d}, so τ = 1 never occurs in training and a row for it would stay at its
  initial value. τ = 1 is therefore accepted and mapped to the last trained level 1 − 1/k_max
  (index clipped), the closest the model has seen to clean. The sampler normally labels its
  context with the context-noise level instead (see `dreamer4.shortcut`).
- Space mask: none, every token attends every token of its step, which keeps the fast
  fused-attention path. Agent tokens (phase 2, `dreamer4.agent`) are appended after the
  action token when a caller passes them (`forward(..., agent=)`); then a mask lets them
  attend to every token while no other token attends to them (§3.3), and in time layers each
  agent position attends only its own past, so the world model's predictions cannot depend on
  the task.
- Time: every token attends over time (block-causal); `independent` rows attend only their own
  step, which is how the paper's "30% of videos treated as separate images" is trained.
- Output: the S_z spatial tokens' outputs, linearly projected to pack · D_b and unpacked. No
  tanh although the target lies in (-1, 1): the paper names no squashing head, and tanh would
  make targets near ±1 hard to reach (vanishing gradient).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, overload

import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from dreamer4.episodes.actions import COMPONENTS
from dreamer4.files import read_config
from dreamer4.nn import KVCache, SpaceTimeTransformer, TransformerConfig
from dreamer4.shortcut import ShortcutConfig
from dreamer4.train.checkpoint import CONFIG, load_exported

if TYPE_CHECKING:
    from dreamer4.params import Section

ACTION_KINDS = ("binary", "categorical")


@dataclass(frozen=True)
class DynamicsConfig:
    latents: int = 16  # N_b latent tokens per frame (tokenizer)
    bottleneck: int = 8  # D_b channels per latent token (tokenizer)
    pack: int = 2  # latent tokens packed into one spatial token: S_z = latents // pack
    width: int = 128
    depth: int = 4
    heads: int = 4
    kv_heads: int | None = None  # GQA (the paper uses it in all dynamics layers; ratio unstated)
    time_every: int = 4
    softcap: float | None = 50.0
    registers: int = 4  # S_r
    k_max: int = 64  # finest step d_min = 1/k_max (the paper's baseline samples with 64 steps)
    # (name, kind, n) per action component; kind 'binary' (n must be 2) or 'categorical'.
    actions: tuple[tuple[str, str, int], ...] = (("crafter", "categorical", 17),)

    def __post_init__(self) -> None:
        # Configs read from YAML/JSON arrive as lists; keep the dataclass hashable.
        object.__setattr__(self, "actions", tuple(tuple(a) for a in self.actions))
        if self.latents < 1 or self.pack < 1 or self.latents % self.pack:
            raise ValueError(
                f"DynamicsConfig: latents ({self.latents}) must be a positive multiple of "
                f"pack ({self.pack})"
            )
        if self.k_max < 1 or self.k_max & (self.k_max - 1):
            raise ValueError(f"DynamicsConfig: k_max must be a power of two, got {self.k_max}")
        if self.registers < 0 or self.bottleneck < 1:
            raise ValueError("DynamicsConfig: registers must be >= 0 and bottleneck >= 1")
        names = [a[0] for a in self.actions]
        if len(set(names)) != len(names):
            raise ValueError(f"DynamicsConfig: duplicate action component names in {names}")
        for name, kind, n in self.actions:
            if kind not in ACTION_KINDS:
                raise ValueError(f"action {name!r}: kind must be one of {ACTION_KINDS}, got {kind}")
            if (kind == "binary" and n != 2) or n < 1:
                raise ValueError(f"action {name!r}: {kind} needs n {'= 2' if n >= 1 else '>= 1'}")
        self.transformer()  # validates width/heads/depth

    @property
    def spatial(self) -> int:
        """S_z: spatial tokens per step."""
        return self.latents // self.pack

    @property
    def packed(self) -> int:
        """Channels of a packed spatial token."""
        return self.pack * self.bottleneck

    @property
    def tokens(self) -> int:
        """Tokens per time step: spatial, registers, (τ, d), action."""
        return self.spatial + self.registers + 2

    @property
    def step_levels(self) -> int:
        """Number of step sizes d ∈ {1, 1/2, …, 1/k_max}."""
        return int(math.log2(self.k_max)) + 1

    def transformer(self) -> TransformerConfig:
        return TransformerConfig(
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            kv_heads=self.kv_heads,
            time_every=self.time_every,
            softcap=self.softcap,
        )


class _HasComponent(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def n(self) -> int: ...


def action_spec(components: Iterable[_HasComponent]) -> tuple[tuple[str, str, int], ...]:
    """`DynamicsConfig.actions` from `episodes.actions` components (e.g. `VPT_SPACE`)."""
    return tuple((c.name, c.kind, c.n) for c in components)


def world_model_configs(params: Section, data: Path) -> tuple[DynamicsConfig, ShortcutConfig]:
    """(DynamicsConfig, ShortcutConfig) of a `train_dynamics` params section for a latents
    folder: latents and bottleneck from its latents.json, action components from the
    `action/<name>` columns of its step index; every other field from params."""
    latents, bottleneck = read_config(data, "latents.json", "dreamer4 encode")["shape"]
    columns = pq.read_schema(Path(data) / "steps.parquet").names
    components = [COMPONENTS[c.removeprefix("action/")] for c in columns if c.startswith("action/")]
    derived = {"latents": latents, "bottleneck": bottleneck, "actions": action_spec(components)}
    return params.sub("model").config(DynamicsConfig, derived), params.sub("shortcut").config(
        ShortcutConfig
    )


def world_model_weights(folder: Path, ema: bool = True) -> dict[str, Tensor]:
    """The `Dynamics` state dict of a `train_dynamics` output folder (EMA weights by default:
    the ones its evaluation and the agent's finetuning start from)."""
    weights, _ = load_exported(folder, ema)
    return {k.removeprefix("dynamics."): v for k, v in weights.items() if k[:9] == "dynamics."}


def load_world_model(folder: Path, ema: bool = True) -> tuple[Dynamics, ShortcutConfig, dict]:
    """The world model of a `train_dynamics` output folder (eval mode), the shortcut settings
    it was trained with and its config.json."""
    config = read_config(folder, CONFIG, "dreamer4 train-dynamics")
    model = Dynamics(DynamicsConfig(**config["model"]["model"]))
    model.load_state_dict(world_model_weights(folder, ema))
    return model.eval(), ShortcutConfig(**config["model"]["shortcut"]), config


def pack_latents(z: Tensor, pack: int) -> Tensor:
    """(…, N_b, D_b) → (…, N_b / pack, pack · D_b): consecutive latent tokens side by side."""
    *lead, n, c = z.shape
    return z.reshape(*lead, n // pack, pack * c)


def unpack_latents(x: Tensor, pack: int) -> Tensor:
    """Inverse of `pack_latents`."""
    *lead, s, c = x.shape
    return x.reshape(*lead, s * pack, c // pack)


def tau_index(tau: Tensor, k_max: int) -> Tensor:
    """Grid index round(τ · k_max), clipped to k_max − 1 so τ = 1 (clean) maps to 1 − 1/k_max."""
    return torch.round(tau.float() * k_max).long().clamp(0, k_max - 1)


def step_index(d: Tensor, k_max: int) -> Tensor:
    """log2(1/d) ∈ {0, …, log2 k_max} (0 = one step of size 1, log2 k_max = d_min)."""
    levels = int(math.log2(k_max))
    return torch.round(-torch.log2(d.float())).long().clamp(0, levels)


def shift_actions(batch: dict[str, Tensor], drop: Tensor | None = None) -> dict[str, Tensor]:
    """Step-index actions (`action/<name>`, taken *after* frame t) → the model's action tokens
    (the action leading *into* frame t; -1 = none at the first step). Rows of `drop` (B,) bool
    lose all actions (the unlabelled-video path)."""
    out = {}
    for key, a in batch.items():
        if key.startswith("action/"):
            shifted = torch.cat([torch.full_like(a[:, :1], -1), a[:, :-1]], 1)
            if drop is not None:
                shifted = torch.where(drop[:, None], torch.full_like(shifted, -1), shifted)
            out[key.removeprefix("action/")] = shifted
    return out


def agent_mask(tokens: int, agents: int, device: torch.device | None = None) -> Tensor:
    """Space mask (S, S) for a step whose last `agents` tokens are agent tokens: they attend to
    everything; the others attend to everything but them."""
    allowed = torch.ones(tokens, tokens, dtype=torch.bool, device=device)
    allowed[: tokens - agents, tokens - agents :] = False
    return allowed


class Dynamics(nn.Module):
    """x-prediction network f(z̃, τ, d, a) → ẑ1 over (B, T) sequences of tokenizer latents."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.latent_in = nn.Linear(cfg.packed, w)
        self.latent_pos = nn.Parameter(torch.randn(cfg.spatial, w) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(cfg.registers, w) * 0.02)
        self.tau_embed = nn.Embedding(cfg.k_max, w // 2)
        self.step_embed = nn.Embedding(cfg.step_levels, w - w // 2)
        self.action_base = nn.Parameter(torch.randn(w) * 0.02)
        # All components share one table; component i owns rows offsets[i] … offsets[i] + n_i.
        sizes = [2 if kind == "binary" else n for _, kind, n in cfg.actions]
        self.action_names = tuple(name for name, _, _ in cfg.actions)
        self.action_embed = nn.Embedding(sum(sizes), w) if sizes else None
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.register_buffer("action_offsets", torch.tensor(offsets, dtype=torch.long), False)
        self.register_buffer("action_sizes", torch.tensor(sizes, dtype=torch.long), False)
        self.transformer = SpaceTimeTransformer(cfg.transformer())
        self.readout = nn.Linear(w, cfg.packed)
        for table in (self.tau_embed, self.step_embed, self.action_embed):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model's time layers (frame-by-frame generation)."""
        return KVCache.empty(self.transformer.cfg)

    def action_tokens(self, actions: dict[str, Tensor] | None, b: int, t: int) -> Tensor:
        """(B, T, width): base embedding + Σ embeddings of the labelled (≥ 0) components."""
        token = self.action_base.expand(b, t, -1)
        if not actions:
            return token
        unknown = set(actions) - set(self.action_names)
        if unknown:
            raise ValueError(
                f"unknown action components {sorted(unknown)}; known: {list(self.action_names)}"
            )
        assert self.action_embed is not None  # actions non-empty and all names known
        present = [i for i, name in enumerate(self.action_names) if name in actions]
        values = torch.stack([actions[self.action_names[i]] for i in present], -1).long()
        if values.shape[:2] != (b, t):
            raise ValueError(f"actions must be (B, T) = {(b, t)}, got {tuple(values.shape[:2])}")
        index = torch.tensor(present, device=values.device)
        sizes, offsets = self.action_sizes[index], self.action_offsets[index]
        if (values >= sizes).any():
            raise ValueError(f"action value out of range; component sizes {sizes.tolist()}")
        labelled = values >= 0
        rows = torch.where(labelled, values + offsets, 0)
        embedded = self.action_embed(rows) * labelled[..., None].to(token.dtype)
        return token + embedded.sum(-2)

    @overload
    def forward(
        self,
        z: Tensor,
        tau: Tensor,
        d: Tensor,
        actions: dict[str, Tensor] | None,
        independent: Tensor | None = None,
        cache: KVCache | None = None,
        agent: None = None,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        z: Tensor,
        tau: Tensor,
        d: Tensor,
        actions: dict[str, Tensor] | None,
        independent: Tensor | None = None,
        cache: KVCache | None = None,
        *,
        agent: Tensor,
    ) -> tuple[Tensor, Tensor]: ...

    def forward(
        self,
        z: Tensor,
        tau: Tensor,
        d: Tensor,
        actions: dict[str, Tensor] | None,
        independent: Tensor | None = None,
        cache: KVCache | None = None,
        agent: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Predict clean latents (B, T, N_b, D_b) from noised ones.

        z: (B, T, N_b, D_b) noised latents z̃. tau: (B, T) signal level per frame, on the grid
        {0, 1/k_max, …, 1} (1 is treated as 1 − 1/k_max, see the module docstring). d: (B, T)
        step size per frame, a power of two in [1/k_max, 1]. actions: name → (B, T) long, the
        action leading into frame t, -1 = unlabelled. independent: (B,) bool, rows whose frames
        are separate images. cache: K/V of earlier steps; z then holds only the new steps.
        agent: (B, T, A, width) agent tokens appended to every step (read-only: nothing else
        attends to them); then the result is (prediction, agent-token outputs (B, T, A,
        width)). A KV cache must always see the same number of agent tokens.
        """
        cfg = self.cfg
        b, t, n, c = z.shape
        if (n, c) != (cfg.latents, cfg.bottleneck):
            raise ValueError(f"z must be (B, T, {cfg.latents}, {cfg.bottleneck}), got {z.shape}")
        if tau.shape != (b, t) or d.shape != (b, t):
            raise ValueError(f"tau and d must be (B, T) = {(b, t)}, got {tau.shape}, {d.shape}")
        x = self.latent_in(pack_latents(z, cfg.pack))
        dtype = x.dtype  # the matmul's dtype (bf16 under autocast)
        x = x + self.latent_pos.to(dtype)
        registers = self.register_tokens.to(dtype).expand(b, t, -1, -1)
        noise = torch.cat(
            [self.tau_embed(tau_index(tau, cfg.k_max)), self.step_embed(step_index(d, cfg.k_max))],
            -1,
        ).to(dtype)
        action = self.action_tokens(actions, b, t).to(dtype)
        parts = [x, registers, noise[:, :, None], action[:, :, None]]
        mask, agents = None, 0
        if agent is not None:
            agents = agent.shape[2]
            if agent.shape != (b, t, agents, cfg.width):
                raise ValueError(f"agent tokens must be (B, T, A, {cfg.width}), got {agent.shape}")
            parts.append(agent.to(dtype))
            mask = agent_mask(cfg.tokens + agents, agents, z.device)
        h = self.transformer(torch.cat(parts, 2), mask, independent=independent, cache=cache)
        pred = unpack_latents(self.readout(h[:, :, : cfg.spatial]), cfg.pack)
        return pred if agent is None else (pred, h[:, :, cfg.tokens :])
