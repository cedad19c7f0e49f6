"""Attention parts: masks from groups, RoPE, soft-capping, the SDPA and explicit paths, GQA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dreamer4.nn import Attention, RMSNorm, SwiGLU, group_mask
from dreamer4.nn.attention import apply_rope, attend, attention_explicit, attention_logits
from dreamer4.nn.mlp import swiglu_hidden


def test_group_mask_rows_follow_allowed_groups() -> None:
    mask = group_mask(
        [("patch", 3), ("latent", 2), ("agent", 1)],
        {"latent": {"patch", "latent"}, "agent": {"patch", "latent", "agent"}},
    )
    assert mask.shape == (6, 6) and mask.dtype == torch.bool
    patch, latent, agent = slice(0, 3), slice(3, 5), slice(5, 6)
    assert mask[patch, patch].all() and not mask[patch, 3:].any()  # missing = only itself
    assert mask[latent, :5].all() and not mask[latent, agent].any()
    assert mask[agent].all()


def test_group_mask_rejects_unknown_group() -> None:
    with pytest.raises(ValueError, match="latnet"):
        group_mask([("patch", 2), ("latent", 1)], {"latent": {"latnet"}})


def test_rmsnorm_and_swiglu_shapes() -> None:
    x = torch.randn(3, 16) * 7
    y = RMSNorm(16)(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3), atol=1e-4)
    assert RMSNorm(16)(x.bfloat16()).dtype == torch.bfloat16
    hidden = swiglu_hidden(64, 4.0)
    assert hidden % 8 == 0 and 64 * 4 * 2 / 3 <= hidden < 64 * 4 * 2 / 3 + 8
    assert SwiGLU(16, 24)(x).shape == x.shape


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    pos = torch.arange(8)
    scores = apply_rope(q, pos) @ apply_rope(k, pos).transpose(-2, -1)
    shifted = apply_rope(q, pos + 37) @ apply_rope(k, pos + 37).transpose(-2, -1)
    assert torch.allclose(scores, shifted, atol=1e-4)
    assert not torch.allclose(scores, q @ k.transpose(-2, -1), atol=1e-2)  # it does rotate
    assert torch.allclose(apply_rope(q, pos).norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_softcap_bounds_logits() -> None:
    q, k = torch.randn(2, 4, 8, 16) * 30, torch.randn(2, 4, 8, 16) * 30
    assert attention_logits(q, k).abs().max() > 50  # large enough to need the cap
    capped = attention_logits(q, k, softcap=50.0)
    assert capped.abs().max() <= 50.0
    small = attention_logits(q / 100, k / 100, softcap=50.0)  # near-identity for small logits
    assert torch.allclose(small, attention_logits(q / 100, k / 100), atol=1e-3)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_explicit_path_equals_sdpa(kv_heads: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(3, 4, 6, 8)
    k, v = torch.randn(3, kv_heads, 9, 8), torch.randn(3, kv_heads, 9, 8)
    mask = torch.rand(3, 1, 6, 9) > 0.4
    mask[..., 0] = True  # no empty rows
    reps = 4 // kv_heads
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(reps, 1), v.repeat_interleave(reps, 1), attn_mask=mask
    )
    assert torch.allclose(attend(q, k, v, mask, softcap=None), ref, atol=1e-5)
    assert torch.allclose(attention_explicit(q, k, v, mask), ref, atol=1e-5)
    assert torch.allclose(attend(q, k, v, mask, softcap=1e7), ref, atol=1e-5)
    assert not torch.allclose(attend(q * 20, k, v, mask, softcap=1.0), attend(q * 20, k, v, mask))


def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention written out, for an Attention with kv_heads == heads."""
    n, length, _ = x.shape
    h, dh = attn.heads, attn.head_dim

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(n, length, h, dh).transpose(1, 2)

    q, k, v = heads(attn.q(x)), heads(attn.k(x)), heads(attn.v(x))
    q, k = attn.q_norm(q), attn.k_norm(k)
    pos = torch.arange(length)
    q, k = apply_rope(q, pos), apply_rope(k, pos)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(dh)).softmax(-1)
    return attn.out((weights @ v).transpose(1, 2).reshape(n, length, -1))


def test_mha_matches_reference() -> None:
    torch.manual_seed(0)
    attn = Attention(32, heads=4, softcap=None)
    x = torch.randn(2, 7, 32)
    assert torch.allclose(attn(x), reference_attention(attn, x), atol=1e-5)


def test_gqa_equals_mha_with_tiled_kv_weights() -> None:
    torch.manual_seed(0)
    gqa = Attention(32, heads=4, kv_heads=1)
    mha = Attention(32, heads=4, kv_heads=4)
    with torch.no_grad():
        mha.q.weight.copy_(gqa.q.weight)
        mha.out.weight.copy_(gqa.out.weight)
        mha.k.weight.copy_(gqa.k.weight.repeat(4, 1))
        mha.v.weight.copy_(gqa.v.weight.repeat(4, 1))
    assert gqa.k.weight.numel() == mha.k.weight.numel() // 4
    x = torch.randn(2, 7, 32)
    mask = torch.tril(torch.ones(7, 7, dtype=torch.bool))
    for softcap in (None, 50.0):
        gqa.softcap = mha.softcap = softcap
        assert torch.allclose(gqa(x, mask), mha(x, mask), atol=1e-5)


def test_softcap_attention_matches_sdpa_path_when_cap_is_loose() -> None:
    torch.manual_seed(0)
    capped = Attention(32, heads=4, kv_heads=2, softcap=1e6)
    plain = Attention(32, heads=4, kv_heads=2, softcap=None)
    plain.load_state_dict(capped.state_dict())
    x = torch.randn(2, 7, 32)
    assert torch.allclose(capped(x), plain(x), atol=1e-5)


def test_past_keys_continue_positions() -> None:
    """Attending [past, x] with past K/V equals attending the whole sequence at once."""
    torch.manual_seed(0)
    attn = Attention(32, heads=4, kv_heads=2)
    x = torch.randn(2, 6, 32)
    causal = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    full, (k, v) = attn.step(x, causal)
    part, _ = attn.step(x[:, 4:], causal[4:], past=(k[:, :, :4], v[:, :, :4]))
    assert torch.allclose(part, full[:, 4:], atol=1e-5)
