"""The causal tokenizer: shapes, bottleneck range, causality in time, streaming = batch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dreamer4.stages.train_tokenizer import TokenizerJob
from dreamer4.tokenizer import (
    Tokenizer,
    TokenizerConfig,
    config_dict,
    load_tokenizer,
    psnr,
    ssim,
)
from dreamer4.train.checkpoint import export

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


def test_a_patch_grid_that_does_not_divide_the_frame_leaves_a_learned_margin() -> None:
    """Patch 5 on 16 pixels (Crafter: 7 on 64): 3×3 patches from the top-left corner; the last
    pixel row and column are the learned `margin`, and the stage's loss trains it."""
    torch.manual_seed(0)
    model = Tokenizer(replace(CFG, patch=5))
    x = frames()
    patches = model.patchify(x)
    assert patches.shape == (2, 5, 9, 75)
    assert torch.equal(patches[0, 0, 4].reshape(5, 5, 3), x[0, 0, 5:10, 5:10].float() / 127.5 - 1)
    with torch.no_grad():  # every margin pixel its own value: each strip must come from its place
        model.margin.copy_(torch.arange(16 * 16 * 3.0).reshape(16, 16, 3))
    images = model.unpatchify(patches)
    assert images.shape == (2, 5, 16, 16, 3)
    assert torch.equal(images[:, :, :15, :15], model.pixels(x)[:, :, :15, :15])
    assert torch.equal(images[:, :, 15], model.margin[15].expand(2, 5, -1, -1).detach())
    assert torch.equal(images[:, :, :15, 15], model.margin[:15, 15].expand(2, 5, -1, -1).detach())
    with pytest.raises(
        ValueError, match=r"frames of \(17, 17\) pixels; this tokenizer takes 16×16"
    ):
        model.patchify(torch.zeros(1, 1, 17, 17, 3, dtype=torch.uint8))
    job = TokenizerJob(replace(CFG, patch=5, lpips_weight=0.0), Path(), Path(), 1, 0.0)
    job.loss(model, {"frames": x, "independent": None})["loss"].backward()
    assert model.margin.grad is not None, "the loss must score whole frames, margin included"
    assert model.margin.grad[15].abs().min() > 0 and model.margin.grad[:15, 15].abs().min() > 0


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


def test_psnr_is_per_image_over_any_leading_shape() -> None:
    # errors 0.1 / 0.2 / 0.4 / 0.05 everywhere (peak-to-peak 2): PSNR = 10 log10(4 / e²)
    errors = torch.tensor([[0.1, 0.2], [0.4, 0.05]])
    b = errors[:, :, None, None, None].expand(2, 2, 4, 4, 3)
    want = 10 * torch.log10(4 / errors**2)
    torch.testing.assert_close(psnr(torch.zeros(2, 2, 4, 4, 3), b), want)


def _ssim_by_formula(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wang et al. (2004) on one 11×11 window (the whole image): Gaussian-weighted (σ 1.5)
    means, variances and covariance per channel, then the mean over channels."""
    i = torch.arange(11, dtype=torch.float64) - 5
    w = torch.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2 * 1.5**2))
    w = w / w.sum()
    x, y = (a.double() + 1) / 2, (b.double() + 1) / 2
    out = []
    for ch in range(x.shape[-1]):
        u, v = x[..., ch], y[..., ch]
        mu, mv = (w * u).sum(), (w * v).sum()
        vu, vv = (w * (u - mu) ** 2).sum(), (w * (v - mv) ** 2).sum()
        cov = (w * (u - mu) * (v - mv)).sum()
        c1, c2 = 0.01**2, 0.03**2
        out.append((2 * mu * mv + c1) * (2 * cov + c2) / ((mu**2 + mv**2 + c1) * (vu + vv + c2)))
    return float(torch.stack(out).mean())


def test_ssim_matches_the_formula_on_one_gaussian_window() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(11, 11, 3, generator=gen) * 2 - 1
    b = (a + 0.6 * torch.rand(11, 11, 3, generator=gen) - 0.3).clamp(-1, 1)
    got = ssim(a[None], b[None])
    assert got.shape == (1,)
    assert abs(float(got[0]) - _ssim_by_formula(a, b)) < 1e-5
    # dark constant images 0.02 and 0.06 (in [0, 1]): the luminance term only, c1 = 0.01² counts
    lum = (2 * 0.02 * 0.06 + 0.01**2) / (0.02**2 + 0.06**2 + 0.01**2)  # 0.6098, not 0.6
    got = ssim(torch.full((1, 11, 11, 3), -0.96), torch.full((1, 11, 11, 3), -0.88))
    assert abs(float(got[0]) - lum) < 1e-4


def test_ssim_scores_pixels_beyond_the_range_as_saturated() -> None:
    # values outside [-1, 1] (a decoder's raw output) are clamped before scoring
    ones, minus = torch.ones(1, 11, 11, 3), -torch.ones(1, 11, 11, 3)
    torch.testing.assert_close(ssim(2 * ones, ones), torch.ones(1))
    torch.testing.assert_close(ssim(3 * minus, minus), torch.ones(1))


def test_load_tokenizer_reads_the_raw_weights_and_ignores_stage_fields(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, ema = Tokenizer(CFG), Tokenizer(CFG)
    # the stage's config holds the model fields and its own (eval_sequences, …)
    config = {"model": {**config_dict(CFG), "eval_sequences": 2, "image_fraction": 0.5}}
    export(tmp_path, model.state_dict(), ema.state_dict(), config)
    loaded, got = load_tokenizer(tmp_path)  # the raw weights by default
    assert loaded.cfg == CFG and not loaded.training and got["model"]["eval_sequences"] == 2
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    smoothed, _ = load_tokenizer(tmp_path, ema=True)
    want = ema.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in smoothed.state_dict().items())
    assert not torch.equal(loaded.state_dict()["patch_embed.weight"], want["patch_embed.weight"])


def test_the_config_reaches_both_transformers_and_checks_the_patch_grid() -> None:
    cfg = replace(CFG, kv_heads=1, time_every=1, softcap=7.0)
    t = cfg.transformer(3)
    assert (t.width, t.depth, t.heads, t.kv_heads, t.time_every, t.softcap) == (32, 3, 2, 1, 1, 7.0)
    model = Tokenizer(cfg)
    assert model.encoder.cfg == cfg.transformer(2) and model.decoder.cfg == cfg.transformer(2)
    with pytest.raises(ValueError, match=r"patch 20 must be in 1..resolution \(16\)"):
        Tokenizer(replace(CFG, patch=20))
    assert not hasattr(Tokenizer(CFG), "margin")  # a dividing grid: no parameter for nothing


def test_learned_inputs_start_small_and_masks_are_not_saved() -> None:
    torch.manual_seed(0)
    model = Tokenizer(CFG)
    # one position and one query per patch (16), one token per latent (4): all init std 0.02
    shapes = {"patch_pos": (16, 32), "patch_queries": (16, 32), "latent_tokens": (4, 32),
              "mask_embed": (32,)}  # fmt: skip
    for name, shape in shapes.items():
        p = getattr(model, name)
        assert p.shape == shape and 0.005 < float(p.std()) < 0.05, name
    keys = set(model.state_dict())
    assert "encoder_mask" not in keys and "decoder_mask" not in keys  # rebuilt from the config
    assert {"mse_norm.mean_square", "lpips_norm.count"} <= keys  # the loss normalisers resume
    assert model.mse_norm.decay == model.lpips_norm.decay == CFG.rms_decay


def test_independent_frames_are_encoded_and_decoded_alone() -> None:
    torch.manual_seed(0)
    model = Tokenizer(CFG).eval()
    frames = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    alone = [model(frames[:, t : t + 1], mask=False) for t in range(3)]
    both = model(frames, independent=torch.tensor([True, False]), mask=False)
    assert "drop" not in both
    for t in range(3):  # row 0 (independent): each frame as if it were the whole sequence
        torch.testing.assert_close(both["z"][0, t], alone[t]["z"][0, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(both["recon"][0, t], alone[t]["recon"][0, 0], atol=1e-5, rtol=0)
    # row 1 (a video): the later frames see the earlier ones
    assert not torch.allclose(both["z"][1, 2], alone[2]["z"][1, 0], atol=1e-4)


def test_streaming_decode_equals_whole_sequence_within_the_context() -> None:
    torch.manual_seed(0)
    model = Tokenizer(CFG).eval()
    z = torch.rand(2, 4, 4, 3) * 2 - 1
    with torch.no_grad():
        whole = model.decode(z)
    torch.testing.assert_close(model.decode_stream(z, context=3), whole, atol=1e-5, rtol=0)


def test_mae_drop_rates_are_drawn_per_image() -> None:
    torch.manual_seed(0)
    model = Tokenizer(CFG)
    frames = torch.randint(0, 256, (64, 2, 16, 16, 3), dtype=torch.uint8)
    drop = model(frames)["drop"]  # (B, T, P): rate p ~ U(0, 0.9) per image, then per patch
    first = drop[:, 0].float()  # the first frame of each of the 64 sequences
    # one rate per image spreads the drop fractions far wider than Binomial(16, p) noise alone
    assert float(first.mean(-1).std()) > 0.2
    # and independent draws per patch: one shared draw thresholded at two rates would make
    # every pair of drop sets nested
    inter, sizes = first @ first.T, first.sum(-1)
    nested = (inter == sizes[:, None]) | (inter == sizes[None, :])
    assert not nested.all()
