"""The efficient 2D (time × space) transformer shared by the causal tokenizer and the dynamics.

Dreamer 4 §3.4: pre-norm blocks (RMSNorm, RoPE, SwiGLU, QKNorm, soft-capping), attention
factorised into space-only and time-only layers, time attention only every `time_every`-th
layer and causal in time. Together the stack is block-causal: every token of step t sees all
tokens of steps ≤ t (through a time layer, then space layers) and nothing later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamer4.nn.attention import Attention
from dreamer4.nn.mlp import SwiGLU, swiglu_hidden
from dreamer4.nn.norm import RMSNorm


@dataclass(frozen=True)
class TransformerConfig:
    width: int
    depth: int
    heads: int
    kv_heads: int | None = None  # grouped-query attention; None = heads (plain MHA)
    time_every: int = 4  # layers k-1, 2k-1, ... attend over time (causally), the rest over space
    mlp_ratio: float = 4.0  # SwiGLU hidden = mlp_ratio * width * 2/3, rounded up to 8
    qk_norm: bool = True  # RMSNorm on queries and keys per head
    softcap: float | None = 50.0  # attention logits = c * tanh(logits / c)
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        kv = self.heads if self.kv_heads is None else self.kv_heads
        if self.width % self.heads or self.heads % kv or (self.width // self.heads) % 2:
            raise ValueError(
                f"TransformerConfig: need width % heads == 0, heads % kv_heads == 0 and an even "
                f"head dim; got width={self.width}, heads={self.heads}, kv_heads={kv}"
            )
        if self.depth < 1 or self.time_every < 1:
            raise ValueError(
                f"TransformerConfig: depth and time_every must be >= 1, got {self.depth}, "
                f"{self.time_every}"
            )
        if self.softcap is not None and self.softcap <= 0:
            raise ValueError(f"TransformerConfig: softcap must be > 0 or None, got {self.softcap}")

    def is_time_layer(self, index: int) -> bool:
        return (index + 1) % self.time_every == 0

    @property
    def time_layers(self) -> int:
        return self.depth // self.time_every


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig, time: bool) -> None:
        super().__init__()
        self.time = time
        self.attn_norm = RMSNorm(cfg.width)
        self.attn = Attention(
            cfg.width, cfg.heads, cfg.kv_heads, cfg.qk_norm, cfg.softcap, cfg.rope_base
        )
        self.mlp_norm = RMSNorm(cfg.width)
        self.mlp = SwiGLU(cfg.width, swiglu_hidden(cfg.width, cfg.mlp_ratio))

    def forward(
        self, x: Tensor, mask: Tensor | None = None, past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, kv = self.attn.step(self.attn_norm(x), mask, past)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), kv


class KVCache:
    """Keys and values of past steps for every time layer, so step t+1 costs one step's work.

    Space layers need no cache (they only mix tokens of one step). Keys are stored before RoPE
    and get positions 0..length-1 at every call, so `crop` can slide a context window without
    re-rotating and positions stay in the range seen in training. Each entry is
    (B·S, kv_heads, length, head_dim); the batch layout is fixed by the first call.

    Cropped entries keep the K/V computed with their longer context (as any sliding-window KV
    cache does): deeper time layers' K/V are not what re-encoding the window alone would give.

    A sampler that runs several passes for the same new step (shortcut denoising) can roll
    back with `truncate(length_before)` and commit the final pass only.
    """

    def __init__(self, layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * layers
        self.values: list[Tensor | None] = [None] * layers
        self.length = 0

    @classmethod
    def empty(cls, cfg: TransformerConfig) -> KVCache:
        return cls(cfg.time_layers)

    def past(self, layer: int) -> tuple[Tensor, Tensor] | None:
        k, v = self.keys[layer], self.values[layer]
        return None if k is None or v is None else (k, v)

    def store(self, layer: int, kv: tuple[Tensor, Tensor]) -> None:
        self.keys[layer], self.values[layer] = kv

    def truncate(self, length: int) -> None:
        """Keep the first `length` steps (undo later appends)."""
        self._keep(slice(0, max(0, min(length, self.length))))

    def crop(self, steps: int) -> None:
        """Keep the last `steps` steps (context window); they become positions 0..steps-1."""
        self._keep(slice(max(0, self.length - max(0, steps)), self.length))

    def select(self, rows: Tensor, batch: int) -> None:
        """Keep batch rows `rows` of a cache filled for `batch` rows (finished episodes of a
        batch of environments leave it; the others go on unchanged)."""
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is not None and v is not None:
                s, rest = divmod(k.shape[0], batch)
                if rest:
                    raise ValueError(f"a cache of {k.shape[0]} rows is not {batch} batch rows")
                self.keys[i] = k.view(batch, s, *k.shape[1:])[rows].flatten(0, 1)
                self.values[i] = v.view(batch, s, *v.shape[1:])[rows].flatten(0, 1)

    def _keep(self, steps: slice) -> None:
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is not None and v is not None:
                self.keys[i], self.values[i] = k[:, :, steps], v[:, :, steps]
        self.length = steps.stop - steps.start


class SpaceTimeTransformer(nn.Module):
    """Factorised space/time transformer over x (B, T, S, D), block-causal in time."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg, cfg.is_time_layer(i)) for i in range(cfg.depth))
        self.norm = RMSNorm(cfg.width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0.02) weights; residual output projections scaled by 1/sqrt(2·depth) so the
        residual stream's variance does not grow with depth (GPT-2)."""
        out_std = 0.02 / math.sqrt(2 * self.cfg.depth)
        for block in self.blocks:
            assert isinstance(block, Block)
            for layer in (block.attn.q, block.attn.k, block.attn.v, block.mlp.gate_up):
                nn.init.normal_(layer.weight, std=0.02)
            for layer in (block.attn.out, block.mlp.out):
                nn.init.normal_(layer.weight, std=out_std)

    def forward(
        self,
        x: Tensor,
        space_mask: Tensor | None = None,
        time_mask: Tensor | None = None,
        independent: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """x (B, T, S, D) -> (B, T, S, D), final RMSNorm applied.

        space_mask (S, S) bool: query token i may attend key token j within a step.
        time_mask (S,) bool: token positions that attend over time; the others, and every token
        of an `independent` (B,) sequence, attend only themselves in time layers.
        cache: K/V of earlier steps for the time layers; x holds only the new steps, which are
        appended to it.
        """
        b, t, s, d = x.shape
        past_len = 0 if cache is None else cache.length
        smask = None if space_mask is None else self._space_mask(space_mask, s, x.device)
        tmask = self._time_mask(b, t, s, past_len, time_mask, independent, x.device)
        time_index = 0
        for block in self.blocks:
            assert isinstance(block, Block)
            if block.time:
                past = None if cache is None else cache.past(time_index)
                if past is not None and past[0].shape[0] != b * s:
                    raise ValueError(
                        f"KVCache holds {past[0].shape[0]} sequences, input has B·S = {b * s}"
                    )
                h = x.transpose(1, 2).reshape(b * s, t, d)
                h, kv = block(h, tmask, past)
                x = h.view(b, s, t, d).transpose(1, 2).contiguous()
                if cache is not None:
                    cache.store(time_index, kv)
                time_index += 1
            else:
                x = block(x.reshape(b * t, s, d), smask)[0].view(b, t, s, d)
        if cache is not None:
            cache.length = past_len + t
        return self.norm(x)

    @staticmethod
    def _space_mask(mask: Tensor, s: int, device: torch.device) -> Tensor:
        if mask.shape != (s, s) or mask.dtype != torch.bool:
            raise ValueError(f"space_mask must be bool ({s}, {s}), got {mask.dtype} {mask.shape}")
        return mask.to(device)

    @staticmethod
    def _time_mask(
        b: int,
        t: int,
        s: int,
        past_len: int,
        time_mask: Tensor | None,
        independent: Tensor | None,
        device: torch.device,
    ) -> Tensor:
        """Bool mask for time layers, broadcastable to (B·S, H, T, past_len + T).

        Row b·S + s is causal over steps, or attends only its own step when sequence b is
        independent or position s is outside `time_mask`.
        """
        query = past_len + torch.arange(t, device=device)[:, None]
        key = torch.arange(past_len + t, device=device)[None, :]
        causal = key <= query
        if time_mask is None and independent is None:
            return causal[None, None]
        joins = torch.ones(b, s, dtype=torch.bool, device=device)
        if time_mask is not None:
            if time_mask.shape != (s,) or time_mask.dtype != torch.bool:
                raise ValueError(f"time_mask must be bool ({s},), got {time_mask.dtype}")
            joins = joins & time_mask.to(device)[None, :]
        if independent is not None:
            if independent.shape != (b,) or independent.dtype != torch.bool:
                raise ValueError(f"independent must be bool ({b},), got {independent.dtype}")
            joins = joins & ~independent.to(device)[:, None]
        own_step = key == query
        return torch.where(joins.reshape(b * s, 1, 1, 1), causal, own_step)
