"""The causal tokenizer (paper §3.1, App. A): frames → a small continuous latent per frame.

Encoder: each frame's patches plus N_b learned latent tokens go through the block-causal
space-time transformer; latents attend to everything, patches only to patches (so the latents
are the one path information takes). The latents' outputs are projected to D_b channels with
tanh: the bottleneck z ∈ (-1, 1)^(N_b × D_b) the dynamics model predicts.

Decoder: z is projected back to the model width and joined by learned patch queries; patches
attend to patches and latents, latents only to latents; patches are read out as pixels.

Training is masked autoencoding: per image a drop probability p ~ U(0, mask_max) (0.9 in the
paper), dropped patches replaced by a learned embedding, so p = 0 (inference) is seen too. The
loss is MSE + lpips_weight · LPIPS (0.2 in the paper), each term divided by a running estimate
of its RMS (§3: the paper says no more than "running RMS"; we use an EMA of the squared term
with decay `rms_decay`, kept per rank, and divide by its square root, without gradient).

Both transformers are causal in time, so encoding frame by frame with a KV cache gives the
latents the world model sees at play time; `Tokenizer.encode_stream` does exactly that, with
the context limited to the `sequence` length the tokenizer was trained on.

Patch grid: `patch` need not divide the resolution. The grid of ⌊H/p⌋² patches is anchored at
the top-left corner and the pixels past it (the margin) are decoded as a learned constant
image. Why: Crafter draws its view as 7-pixel tiles from the top-left of a 64-pixel frame and
leaves the last row and column black, so `patch: 7` gives one patch per tile, and each patch
is one texture instead of a different slice of up to four at each of 8-pixel patches' phases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamer4.nn import KVCache, SpaceTimeTransformer, TransformerConfig, group_mask
from dreamer4.nn.norm import RunningRMS
from dreamer4.train.checkpoint import load_exported


@dataclass(frozen=True)
class TokenizerConfig:
    resolution: int = 32
    patch: int = 4
    latents: int = 16  # N_b latent tokens per frame
    bottleneck: int = 16  # D_b channels per latent token
    width: int = 128
    depth: int = 4  # encoder layers
    decoder_depth: int = 4
    heads: int = 4
    kv_heads: int | None = None
    time_every: int = 4
    softcap: float | None = 50.0
    mask_max: float = 0.9  # MAE drop probability p ~ U(0, mask_max) per image
    lpips_weight: float = 0.2
    lpips_net: str = "vgg"
    rms_decay: float = 0.99
    sequence: int = 4  # frames per training sequence = the encoder's context at encode time

    @property
    def grid(self) -> int:
        """Patches per side; they cover the top-left grid·patch pixels."""
        return self.resolution // self.patch

    @property
    def patches(self) -> int:
        return self.grid**2

    def transformer(self, depth: int) -> TransformerConfig:
        return TransformerConfig(
            width=self.width,
            depth=depth,
            heads=self.heads,
            kv_heads=self.kv_heads,
            time_every=self.time_every,
            softcap=self.softcap,
        )


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        if not 0 < cfg.patch <= cfg.resolution:
            raise ValueError(f"patch {cfg.patch} must be in 1..resolution ({cfg.resolution})")
        self.cfg = cfg
        pixels = cfg.patch * cfg.patch * 3
        p, n = cfg.patches, cfg.latents
        self.patch_embed = nn.Linear(pixels, cfg.width)
        self.patch_pos = nn.Parameter(torch.randn(p, cfg.width) * 0.02)
        self.mask_embed = nn.Parameter(torch.randn(cfg.width) * 0.02)
        self.latent_tokens = nn.Parameter(torch.randn(n, cfg.width) * 0.02)
        self.encoder = SpaceTimeTransformer(cfg.transformer(cfg.depth))
        self.to_bottleneck = nn.Linear(cfg.width, cfg.bottleneck)
        self.from_bottleneck = nn.Linear(cfg.bottleneck, cfg.width)
        self.patch_queries = nn.Parameter(torch.randn(p, cfg.width) * 0.02)
        self.decoder = SpaceTimeTransformer(cfg.transformer(cfg.decoder_depth))
        self.to_pixels = nn.Linear(cfg.width, pixels)
        if cfg.resolution % cfg.patch:  # pixels outside the patch grid: a learned constant
            self.margin = nn.Parameter(torch.zeros(cfg.resolution, cfg.resolution, 3))
        groups = [("patch", p), ("latent", n)]
        self.register_buffer(
            "encoder_mask",
            group_mask(groups, {"latent": {"patch", "latent"}, "patch": {"patch"}}),
            persistent=False,
        )
        self.register_buffer(
            "decoder_mask",
            group_mask(groups, {"patch": {"patch", "latent"}, "latent": {"latent"}}),
            persistent=False,
        )
        self.mse_norm = RunningRMS(cfg.rms_decay)
        self.lpips_norm = RunningRMS(cfg.rms_decay)

    # -- pixels <-> patches --------------------------------------------------------------------
    @staticmethod
    def pixels(frames: Tensor) -> Tensor:
        """(…, H, W, 3) uint8 → floats in [-1, 1]: the frames reconstructions are scored on."""
        return frames.float() / 127.5 - 1.0

    def patchify(self, frames: Tensor) -> Tensor:
        """(B, T, H, W, 3) uint8 → (B, T, P, p·p·3) in [-1, 1]; the margin is left out."""
        p, g, r = self.cfg.patch, self.cfg.grid, self.cfg.resolution
        if tuple(frames.shape[-3:-1]) != (r, r):  # else the crop below would hide the mismatch
            raise ValueError(
                f"frames of {tuple(frames.shape[-3:-1])} pixels; this tokenizer takes {r}×{r}"
            )
        x = self.pixels(frames[:, :, : g * p, : g * p])
        b, t, _, _, c = x.shape
        x = x.reshape(b, t, g, p, g, p, c).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, t, g * g, p * p * c)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, T, P, p·p·3) in [-1, 1] → (B, T, H, W, 3) floats in [-1, 1], the margin filled
        with the learned constant."""
        p, g = self.cfg.patch, self.cfg.grid
        b, t = patches.shape[:2]
        x = patches.reshape(b, t, g, g, p, p, 3).permute(0, 1, 2, 4, 3, 5, 6)
        x = x.reshape(b, t, g * p, g * p, 3)
        if g * p == self.cfg.resolution:
            return x
        margin = self.margin.to(x.dtype)
        right = margin[: g * p, g * p :].expand(b, t, -1, -1, -1)
        bottom = margin[g * p :].expand(b, t, -1, -1, -1)
        return torch.cat([torch.cat([x, right], 3), bottom], 2)

    # -- encoder / decoder ---------------------------------------------------------------------
    def encode_patches(
        self,
        patches: Tensor,
        drop: Tensor | None = None,
        independent: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Patches (B, T, P, p·p·3) → latents z (B, T, N_b, D_b) in (-1, 1)."""
        x = self.patch_embed(patches) + self.patch_pos
        if drop is not None:
            x = torch.where(drop[..., None], self.mask_embed.to(x.dtype), x)
        b, t = x.shape[:2]
        latents = self.latent_tokens.to(x.dtype).expand(b, t, -1, -1)
        h = self.encoder(
            torch.cat([x, latents], 2),
            space_mask=self.encoder_mask,
            independent=independent,
            cache=cache,
        )
        return torch.tanh(self.to_bottleneck(h[:, :, self.cfg.patches :]))

    def decode(
        self, z: Tensor, independent: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """Latents (B, T, N_b, D_b) → patches (B, T, P, p·p·3) in about [-1, 1]."""
        lat = self.from_bottleneck(z)
        b, t = lat.shape[:2]
        queries = self.patch_queries.to(lat.dtype).expand(b, t, -1, -1)
        h = self.decoder(
            torch.cat([queries, lat], 2),
            space_mask=self.decoder_mask,
            independent=independent,
            cache=cache,
        )
        return self.to_pixels(h[:, :, : self.cfg.patches])

    def forward(
        self, frames: Tensor, independent: Tensor | None = None, mask: bool = True
    ) -> dict[str, Tensor]:
        """Reconstruct (B, T, H, W, 3) uint8 frames; with `mask`, MAE drops patches first."""
        target = self.patchify(frames)
        b, t, p = target.shape[:3]
        drop = None
        if mask:
            rate = torch.rand(b, t, 1, device=target.device) * self.cfg.mask_max
            drop = torch.rand(b, t, p, device=target.device) < rate
        z = self.encode_patches(target, drop, independent)
        recon = self.decode(z, independent)
        return {
            "target": target,
            "recon": recon,
            "z": z,
            **({"drop": drop} if drop is not None else {}),
        }

    @torch.no_grad()
    def encode_stream(self, frames: Tensor, context: int | None = None) -> Tensor:
        """Latents of (B, T, H, W, 3) frames computed one frame at a time with a KV cache whose
        context is cut to the `context` frames before (default: training length − 1)."""
        context = self.cfg.sequence - 1 if context is None else context
        cache = KVCache.empty(self.encoder.cfg)
        out = []
        patches = self.patchify(frames)
        for t in range(patches.shape[1]):
            out.append(self.encode_patches(patches[:, t : t + 1], cache=cache))
            cache.crop(context)
        return torch.cat(out, 1)

    @torch.no_grad()
    def decode_stream(self, z: Tensor, context: int | None = None) -> Tensor:
        """Patches of latents (B, T, N_b, D_b) decoded one frame at a time with a KV cache cut
        to the `context` frames before (default: training length − 1), as at play time: a
        decoder trained on `sequence` frames never sees a longer past."""
        context = self.cfg.sequence - 1 if context is None else context
        cache = KVCache.empty(self.decoder.cfg)
        out = []
        for t in range(z.shape[1]):
            out.append(self.decode(z[:, t : t + 1], cache=cache))
            cache.crop(context)
        return torch.cat(out, 1)


def to_images(x: Tensor) -> Tensor:
    """(..., H, W, 3) in [-1, 1] → (N, 3, H, W) for LPIPS."""
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).clamp(-1, 1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2), shape (..., H, W, C) → (...)."""
    mse = (a.float() - b.float()).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-10))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image SSIM (Wang et al. 2004: 11×11 Gaussian window σ 1.5, per channel, averaged) of
    images in [-1, 1], shape (..., H, W, C) → (...)."""
    lead = a.shape[:-3]
    x = (to_images(a.float()) + 1) / 2
    y = (to_images(b.float()) + 1) / 2
    c = x.shape[1]
    g = torch.exp(-((torch.arange(11, dtype=x.dtype, device=x.device) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, 11, 11).contiguous()

    def blur(v: Tensor) -> Tensor:
        return F.conv2d(v, kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).reshape(lead)


def config_dict(cfg: TokenizerConfig) -> dict[str, Any]:
    return asdict(cfg)


def load_tokenizer(folder: Path, ema: bool = False) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer of a `train_tokenizer` output folder (eval mode) and its config."""

    weights, config = load_exported(folder, ema=ema)
    fields = TokenizerConfig.__dataclass_fields__
    model = Tokenizer(TokenizerConfig(**{k: v for k, v in config["model"].items() if k in fields}))
    model.load_state_dict(weights)
    return model.eval(), config
