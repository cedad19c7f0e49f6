"""The space-time transformer: block causality, masks, independent frames and the KV cache."""

from __future__ import annotations

import pytest
import torch

from dreamer4.nn import KVCache, SpaceTimeTransformer, TransformerConfig, group_mask

CFG = TransformerConfig(width=32, depth=4, heads=4, kv_heads=2, time_every=2)
B, T, S = 2, 5, 6


def model(cfg: TransformerConfig = CFG, seed: int = 0) -> SpaceTimeTransformer:
    torch.manual_seed(seed)
    return SpaceTimeTransformer(cfg).eval()


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, S, CFG.width, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-5)


def test_layer_layout_and_init() -> None:
    m = model(TransformerConfig(width=32, depth=8, heads=4, time_every=4))
    assert [b.time for b in m.blocks] == [False, False, False, True] * 2
    assert abs(m.blocks[0].attn.q.weight.std().item() - 0.02) < 0.005
    assert m.blocks[0].attn.out.weight.std() < m.blocks[0].attn.q.weight.std() / 3
    with pytest.raises(ValueError):
        TransformerConfig(width=32, depth=2, heads=4, kv_heads=3)


def test_causal_in_time() -> None:
    m, x = model(), inputs()
    y = m(x)
    assert y.shape == x.shape
    for t in range(T - 1):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        y2 = m(x2)
        assert close(y2[:, : t + 1], y[:, : t + 1])
        assert not close(y2[:, t + 1], y[:, t + 1])


def test_block_causal_within_step() -> None:
    """A token sees the other tokens of its own step (space layers)."""
    m, x = model(), inputs()
    x2 = x.clone()
    x2[:, 2, 0] += 1.0
    assert not close(m(x2)[:, 2, 1:], m(x)[:, 2, 1:])


def test_space_mask_isolates_patches_from_latents() -> None:
    m = model(TransformerConfig(width=32, depth=3, heads=4, time_every=100))
    mask = group_mask([("patch", 4), ("latent", 2)], {"latent": {"patch", "latent"}})
    x = inputs()
    x2 = x.clone()
    x2[:, :, 4] += torch.randn_like(x2[:, :, 4])  # one latent token of every step
    assert close(m(x2, space_mask=mask)[:, :, :4], m(x, space_mask=mask)[:, :, :4])
    assert not close(m(x2, space_mask=mask)[:, :, 5], m(x, space_mask=mask)[:, :, 5])
    assert not close(m(x2)[:, :, :4], m(x)[:, :, :4])  # unrestricted: patches see it


def test_time_mask_keeps_positions_out_of_time_attention() -> None:
    """With each token seeing only itself in space, a position outside time_mask depends on
    its own step only, while a position inside depends on earlier steps."""
    m, x = model(), inputs()
    own = torch.eye(S, dtype=torch.bool)
    time_mask = torch.tensor([True, True, False, False, True, False])
    x2 = x.clone()
    x2[:, 0] += torch.randn_like(x2[:, 0])
    y, y2 = m(x, own, time_mask), m(x2, own, time_mask)
    assert close(y2[:, 1:, ~time_mask], y[:, 1:, ~time_mask])
    assert not close(y2[:, 1:, time_mask], y[:, 1:, time_mask])


def test_independent_sequences_ignore_other_steps() -> None:
    m, x = model(), inputs()
    independent = torch.tensor([True, False])
    y = m(x, independent=independent)
    t = 2
    x2 = x.clone()
    others = [i for i in range(T) if i != t]
    x2[:, others] += torch.randn_like(x2[:, others])
    y2 = m(x2, independent=independent)
    assert close(y2[0, t], y[0, t])
    assert not close(y2[1, t], y[1, t])
    # an independent frame equals the same frame run alone
    assert close(m(x[:1, t : t + 1]), y[:1, t : t + 1])


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1], [2, 3], [1, 4]])
def test_kv_cache_matches_full_sequence(chunks: list[int]) -> None:
    m, x = model(), inputs()
    time_mask = torch.tensor([True, True, True, True, False, False])
    independent = torch.tensor([False, True])
    space = group_mask([("a", 4), ("b", 2)], {"b": {"a", "b"}})
    y = m(x, space, time_mask, independent)
    cache, outs, start = KVCache.empty(CFG), [], 0
    for n in chunks:
        outs.append(m(x[:, start : start + n], space, time_mask, independent, cache=cache))
        start += n
        assert cache.length == start
    assert close(torch.cat(outs, 1), y)
    assert len(cache.keys) == CFG.time_layers == 2
    assert cache.keys[0].shape == (B * S, 2, T, CFG.width // CFG.heads)


def test_kv_cache_truncate_and_crop() -> None:
    m, x = model(), inputs()
    cache = KVCache.empty(CFG)
    m(x[:, :3], cache=cache)
    first = m(x[:, 3:4], cache=cache)
    cache.truncate(3)  # roll back, e.g. between denoising passes of one step
    assert cache.length == 3 and cache.keys[0].shape[2] == 3
    assert close(m(x[:, 3:4], cache=cache), first)
    keys = cache.keys[1]
    cache.crop(2)  # context window: keep steps 2, 3
    assert cache.length == 2 and torch.equal(cache.keys[1], keys[:, :, 2:])
    with pytest.raises(ValueError, match="KVCache"):
        m(x[:1, :1], cache=cache)


def test_kv_cache_crop_equals_rerunning_the_window() -> None:
    """With one time layer (after a space layer) cached K/V depend only on their own step, so a
    cropped cache must give exactly what a fresh run over the window gives: positions re-based."""
    cfg = TransformerConfig(width=32, depth=2, heads=4, time_every=2)
    m, x = model(cfg), inputs()
    cache = KVCache.empty(cfg)
    m(x[:, :4], cache=cache)
    cache.crop(2)
    assert close(m(x[:, 4:5], cache=cache), m(x[:, 2:5])[:, 2:])
    cache.crop(0)
    assert cache.length == 0 and close(m(x[:, 4:5], cache=cache), m(x[:, 4:5]))


def test_bf16_autocast_and_gradients() -> None:
    m, x = model(), inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x, space_mask=group_mask([("a", 3), ("b", 3)], {}))
    assert y.isfinite().all()
    m.train()
    m(x, independent=torch.tensor([True, False])).square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
