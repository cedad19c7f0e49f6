"""Multi-head attention with RoPE, QKNorm, logit soft-capping, grouped-query heads and masks.

Two code paths compute the same attention:

- `softcap=None`: `torch.nn.functional.scaled_dot_product_attention` (SDPA), so CUDA picks the
  flash or memory-efficient kernel and never materialises the (L, L) logits. Grouped-query
  heads go through SDPA's `enable_gqa`, so K/V are never copied per query head.
- `softcap=c`: soft-capping (`c * tanh(logits / c)`, Gemma 2 / Dreamer 4) changes the logits
  between the matmul and the softmax, and SDPA has no hook for that. So this path computes the
  logits explicitly (`attention_explicit`). `torch.nn.attention.flex_attention` can express the
  cap as a `score_mod`, but it is only fast under `torch.compile` on CUDA; eager it builds the
  same dense logits, so the explicit path is the plain, portable choice. Softmax runs in fp32.

Masks are boolean, True = the query may attend the key (SDPA's convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamer4.nn.norm import RMSNorm


def apply_rope(x: Tensor, pos: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of `x` (..., L, Dh) at integer positions `pos` (L,).

    Rotating q and k by angles proportional to their positions makes q·k depend only on the
    position difference, which is what lets a KV cache re-base positions freely. Pairs are
    (i, i + Dh/2) ("rotate half"); angles are computed in fp32.
    """
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = pos.to(device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().split(half, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


def attention_logits(q: Tensor, k: Tensor, softcap: float | None = None) -> Tensor:
    """Scaled logits q·k/sqrt(Dh) in fp32, soft-capped to (-c, c) when `softcap` is c.

    q (..., H, L, Dh) and k (..., H, Lk, Dh) with the same head count (repeat GQA heads first).
    """
    logits = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def attention_explicit(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, softcap: float | None = None
) -> Tensor:
    """Attention with materialised logits: q (N, H, L, Dh), k/v (N, Hkv, Lk, Dh), H % Hkv == 0.

    Query head h uses key/value head h // (H / Hkv), as SDPA's `enable_gqa` does.
    """
    groups = q.shape[-3] // k.shape[-3]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=-3)
        v = v.repeat_interleave(groups, dim=-3)
    logits = attention_logits(q, k, softcap)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1).to(v.dtype) @ v


def attend(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, softcap: float | None = None
) -> Tensor:
    """SDPA when nothing modifies the logits, else the explicit path (see module docstring)."""
    if softcap is not None:
        return attention_explicit(q, k, v, mask, softcap)
    gqa = q.shape[-3] != k.shape[-3]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def group_mask(groups: list[tuple[str, int]], allowed: dict[str, set[str]]) -> Tensor:
    """(S, S) bool mask from token groups in order, e.g. `[("patch", 64), ("latent", 16)]`,
    and which groups each group's queries may attend, e.g.
    `{"latent": {"patch", "latent"}, "patch": {"patch"}}`.

    A group missing from `allowed` attends only to itself. Tokens are labelled by group name,
    so a name listed twice is one group.
    """
    names = [name for name, _ in groups]
    unknown = (set(allowed) | set().union(*allowed.values())) - set(names)
    if unknown:
        raise ValueError(f"group_mask: unknown groups {sorted(unknown)}; groups are {names}")
    if any(n < 0 for _, n in groups):
        raise ValueError(f"group_mask: negative group size in {groups}")
    labels = [name for name, n in groups for _ in range(n)]
    index = {name: i for i, name in enumerate(dict.fromkeys(names))}
    ids = torch.tensor([index[name] for name in labels], dtype=torch.long)
    table = torch.zeros(len(index), len(index), dtype=torch.bool)
    for name, i in index.items():
        for other in allowed.get(name, {name}):
            table[i, index[other]] = True
    return table[ids[:, None], ids[None, :]]


class Attention(nn.Module):
    """Self-attention over the second-to-last axis of x (N, L, D), with optional past K/V.

    Positions for RoPE are indices in the concatenated sequence (past, then x), so queries of x
    sit at `past_len + arange(L)`. Past keys are kept *before* RoPE (after QKNorm): a cache can
    then drop its oldest entries and re-base positions at 0 without re-rotating anything.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        kv_heads: int | None = None,
        qk_norm: bool = True,
        softcap: float | None = 50.0,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        if width % heads or heads % kv_heads or (width // heads) % 2:
            raise ValueError(
                f"Attention: need width % heads == 0, heads % kv_heads == 0 and an even head "
                f"dim; got width={width}, heads={heads}, kv_heads={kv_heads}"
            )
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.softcap, self.rope_base = softcap, rope_base
        self.q = nn.Linear(width, heads * self.head_dim, bias=False)
        self.k = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(heads * self.head_dim, width, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self, x: Tensor, mask: Tensor | None = None, past: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """x (N, L, D); mask bool, broadcastable to (N, H, L, past_len + L); returns (N, L, D)."""
        return self.step(x, mask, past)[0]

    def step(
        self, x: Tensor, mask: Tensor | None = None, past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Like `forward`, also returning keys and values of past + x, (N, Hkv, Lk, Dh) each,
        keys before RoPE, for a cache to keep."""
        n, length, _ = x.shape
        q = self.q_norm(self.q(x).view(n, length, self.heads, self.head_dim).transpose(1, 2))
        k = self.k_norm(self.k(x).view(n, length, self.kv_heads, self.head_dim).transpose(1, 2))
        v = self.v(x).view(n, length, self.kv_heads, self.head_dim).transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        pos = torch.arange(k.shape[2], device=x.device)
        q_rot = apply_rope(q, pos[-length:], self.rope_base)
        k_rot = apply_rope(k, pos, self.rope_base)
        y = attend(q_rot, k_rot, v, mask, self.softcap)
        return self.out(y.transpose(1, 2).reshape(n, length, -1)), (k, v)
