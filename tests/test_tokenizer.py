"""The causal tokenizer: shapes, bottleneck range, causality in time, streaming = batch."""

from __future__ import annotations

import torch

from dreamer4.tokenizer import Tokenizer, TokenizerConfig, psnr, ssim

CFG = TokenizerConfig(
    resolution=16,
    patch=4,
    latents=4,
    bottleneck=3,
    width=32,
    depth=2,
    decoder_depth=2,
    heads=2,
    time_every=2,
    sequence=4,
)


def frames(b: int = 2, t: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 16, 16, 3), generator=g, dtype=torch.uint8)


def test_shapes_bottleneck_range_and_mae_masks() -> None:
    torch.manual_seed(0)
    model = Tokenizer(CFG)
    out = model(frames())
    assert out["z"].shape == (2, 5, 4, 3) and out["z"].abs().max() < 1
    assert out["recon"].shape == out["target"].shape == (2, 5, 16, 48)
    rates = out["drop"].float().mean(-1)  # per image p ~ U(0, 0.9)
    assert rates.max() <= 1.0 and rates.std() > 0
    assert torch.equal(model.unpatchify(model.patchify(frames())), frames().float() / 127.5 - 1)


def test_changing_frame_t_plus_1_leaves_latents_up_to_t_unchanged() -> None:
    torch.manual_seed(0)
    model = Tokenizer(CFG).eval()
    a = frames()
    b = a.clone()
    b[:, 3] = 255 - b[:, 3]
    with torch.no_grad():
        za, zb = model(a, mask=False)["z"], model(b, mask=False)["z"]
    assert torch.allclose(za[:, :3], zb[:, :3], atol=1e-6)
    assert not torch.allclose(za[:, 3], zb[:, 3], atol=1e-3)
    ra, rb = model(a, mask=False)["recon"], model(b, mask=False)["recon"]
    assert torch.allclose(ra[:, :3], rb[:, :3], atol=1e-6)  # the decoder is causal too


def test_frame_by_frame_encoding_equals_whole_sequence_within_the_context() -> None:
    torch.manual_seed(0)
    model = Tokenizer(CFG).eval()
    x = frames(t=4)
    with torch.no_grad():
        whole = model(x, mask=False)["z"]
    streamed = model.encode_stream(x)  # context = sequence - 1 = 3 frames before
    assert torch.allclose(whole, streamed, atol=1e-5)


def test_psnr_and_ssim_reference_values() -> None:
    a = torch.rand(2, 16, 16, 3) * 2 - 1
    assert torch.isinf(psnr(a, a)).logical_not().all() and (psnr(a, a) > 90).all()
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    noisy = (a + 0.1 * torch.randn_like(a)).clamp(-1, 1)
    worse = (a + 0.5 * torch.randn_like(a)).clamp(-1, 1)
    assert (psnr(a, noisy) > psnr(a, worse)).all() and (ssim(a, noisy) > ssim(a, worse)).all()
    # 0.1 error everywhere on a peak-to-peak range of 2: PSNR = 10 log10(4 / 0.01) = 26.02 dB
    assert torch.allclose(
        psnr(torch.zeros(1, 4, 4, 3), torch.full((1, 4, 4, 3), 0.1)),
        torch.tensor([26.0206]),
        atol=1e-3,
    )
