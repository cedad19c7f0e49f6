"""The tokenizer's masks, through behaviour (issue 16): the MAE drop rate p ~ U(0, mask_max) per
image, dropped patches replaced by the mask embedding, and the attention groups — encoder
patches blind to the latents, latents reading patches and each other; decoder latents blind
to the patch queries, patches reading latents and each other (paper §3.1). Each group rule is
checked by perturbing one input and seeing which outputs move."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dreamer4.tokenizer import Tokenizer, TokenizerConfig

CFG = TokenizerConfig(
    resolution=16, patch=2, latents=4, bottleneck=3, width=16, depth=2, decoder_depth=2,
    heads=2, time_every=2, sequence=2, mask_max=0.5,
)  # fmt: skip
P = CFG.patches  # 64 patches per image


pytestmark = pytest.mark.usefixtures("one_thread")


def model() -> Tokenizer:
    """Weights at 1/√fan-in (not the 0.02 init), so every path the masks allow carries an O(1)
    signal and "moves" vs "exactly unchanged" is far from rounding noise."""
    torch.manual_seed(0)
    tok = Tokenizer(CFG).eval()
    with torch.no_grad():
        for p in tok.parameters():
            p.normal_(0, 1 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.5)
    return tok


def frames(b: int, t: int = 1, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 16, 16, 3), generator=g, dtype=torch.uint8)


def kick(seed: int) -> Tensor:
    """An O(1) random change of one token's embedding (width,)."""
    return torch.randn(CFG.width, generator=torch.Generator().manual_seed(seed))


def outputs(module: torch.nn.Module, run: Callable[[], object]) -> Tensor:
    """The output (B, T, S, width) of `module` (an encoder/decoder transformer) during `run()`."""
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_mae_drop_rate_is_uniform_up_to_mask_max() -> None:
    """Per image p ~ U(0, mask_max): over 256 images of 64 patches, no observed rate is above
    mask_max beyond binomial noise, the mean is ≈ mask_max / 2, about half the images lie
    below it, some near 0 — and rates differ between images (one p per image)."""
    tok = model()
    torch.manual_seed(1)
    with torch.no_grad():
        drop = tok(frames(64, 4))["drop"]
    assert drop.shape == (64, 4, P)
    rates = drop.float().mean(-1).flatten()
    half = CFG.mask_max / 2
    assert rates.max() <= CFG.mask_max + 0.2  # binomial sd ≤ 0.0625 per image
    assert abs(float(rates.mean()) - half) < 0.04  # sd of the mean ≈ 0.01
    assert 0.35 < float((rates < half).float().mean()) < 0.65
    assert float(rates.min()) < 0.05
    assert 0.1 < float(rates.std()) < 0.2  # U(0, 0.5): 0.144 plus binomial noise


def test_dropped_patches_are_replaced_by_the_mask_embedding() -> None:
    tok = model()
    x = frames(2, 2)
    patches = tok.patchify(x)
    drop = torch.rand(2, 2, P, generator=torch.Generator().manual_seed(3)) < 0.4
    assert drop.any() and not drop.all()

    def encode(p: Tensor, d: Tensor | None) -> Tensor:
        with torch.no_grad():
            return tok.encode_patches(p, d)

    z = encode(patches, drop)
    # what a dropped patch held is gone; a kept patch still counts
    other = torch.rand(patches.shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    assert torch.equal(encode(torch.where(drop[..., None], other, patches), drop), z)
    assert not torch.allclose(encode(torch.where(drop[..., None], patches, other), drop), z)
    # the mask embedding stands in for the dropped patches, and only for them
    plain, none = encode(patches, None), encode(patches, torch.zeros_like(drop))
    assert torch.equal(plain, none)
    with torch.no_grad():
        tok.mask_embed.add_(kick(5))
    assert (encode(patches, drop) - z).abs().max() > 1e-3
    assert torch.equal(encode(patches, None), plain)
    # training's forward encodes with the drop it reports
    torch.manual_seed(6)
    with torch.no_grad():
        out = tok(x)
    assert out["drop"].any()
    torch.testing.assert_close(out["z"], encode(out["target"], out["drop"]), rtol=0, atol=0)
    assert not torch.allclose(out["z"], plain)


def test_encoder_patches_are_blind_to_latents_and_latents_read_both() -> None:
    tok = model()
    patches = tok.patchify(frames(2))
    before = outputs(tok.encoder, lambda: tok.encode_patches(patches))
    with torch.no_grad():
        tok.latent_tokens[0].add_(kick(1))
    after = outputs(tok.encoder, lambda: tok.encode_patches(patches))
    torch.testing.assert_close(after[:, :, :P], before[:, :, :P], rtol=0, atol=0)  # blind
    # latents 1 … N−1 read latent 0
    assert (after[:, :, P + 1 :] - before[:, :, P + 1 :]).abs().amax((0, 1, 3)).min() > 1e-4
    # every latent reads the patches: one changed patch moves all of them
    moved = patches.clone()
    moved[:, :, 5] = -moved[:, :, 5]
    again = outputs(tok.encoder, lambda: tok.encode_patches(moved))
    assert (again[:, :, P:] - after[:, :, P:]).abs().amax((0, 1, 3)).min() > 1e-4


def test_decoder_latents_are_blind_to_patch_queries_and_patches_read_both() -> None:
    tok = model()
    z = torch.rand(2, 1, CFG.latents, CFG.bottleneck, generator=torch.Generator().manual_seed(2))
    z = z * 2 - 1
    before = outputs(tok.decoder, lambda: tok.decode(z))
    with torch.no_grad():
        tok.patch_queries[0].add_(kick(1))
    after = outputs(tok.decoder, lambda: tok.decode(z))
    torch.testing.assert_close(after[:, :, P:], before[:, :, P:], rtol=0, atol=0)  # blind
    # patches 1 … P−1 read patch 0
    assert (after[:, :, 1:P] - before[:, :, 1:P]).abs().amax((0, 1, 3)).min() > 1e-4
    # every output patch reads the latents: the pixels follow z
    with torch.no_grad():
        a, b = tok.decode(z), tok.decode(-z)
    assert (a - b).abs().amax((0, 1, 3)).min() > 1e-4


def test_reconstruction_follows_the_frames_through_the_latents() -> None:
    """Unmasked recon: another frame gives other latents and other pixels; the same latents
    give the same pixels (the decoder reads only z)."""
    tok = model()
    a, b = frames(2, seed=0), frames(2, seed=1)
    with torch.no_grad():
        ra, rb = tok(a, mask=False), tok(b, mask=False)
        assert (ra["recon"] - rb["recon"]).abs().amax((0, 1, 3)).min() > 1e-4
        torch.testing.assert_close(tok.decode(ra["z"]), ra["recon"], rtol=0, atol=0)
