"""Stage `train_tokenizer` → asset `tokenizer`: the causal tokenizer trained through the engine.

Reads `profiles.<profile>.train_tokenizer` (`model:` = TokenizerConfig fields, `train:` engine
overrides, `eval_sequences`, `image_fraction`) over the shared `profiles.<profile>.train`. The
frame resolution comes from the episode dataset. Held-out PSNR and SSIM (whole frame, and the
world view without Crafter's inventory band) are logged every `eval_every` steps and written as
DVC metrics `tokenizer/psnr_heldout`, `tokenizer/ssim_heldout`, `tokenizer/psnr_heldout_world`;
on Crafter data also `tokenizer/tile_accuracy` and `tokenizer/inventory_accuracy` (eval/
tile_accuracy.py: whether the reconstruction shows the same tiles and inventory counts; the
tiles on the frames light enough to read, `tokenizer/tile_accuracy_all` on every frame);
`reconstructions.png` (original | reconstruction | masked input | its reconstruction) is a DVC
plot and Dagster metadata.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from dreamer4.eval.tile_accuracy import (
    inventory_accuracy,
    is_crafter,
    scored_mean,
    tile_accuracies,
)
from dreamer4.files import atomic_path
from dreamer4.lpips import LPIPS
from dreamer4.tokenizer import Tokenizer, TokenizerConfig, psnr, ssim, to_images
from dreamer4.train.engine import Job, TrainSettings, is_rank0, train_stage
from dreamer4.train.engine import add_arguments as engine_arguments
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, fixed_batch, heldout_split

GRID = "reconstructions.png"
WORLD_ROWS = 7 / 9  # Crafter draws the world in the top 7 of 9 unit rows, the inventory below


class TokenizerJob(Job):
    stage = "train_tokenizer"

    def __init__(
        self,
        cfg: Any,
        data: Path,
        metrics: Path,
        eval_sequences: int,
        image_fraction: float,
        crafter: bool = False,
    ) -> None:

        self.cfg, self.data, self.metrics = cfg, Path(data), Path(metrics)
        self.crafter = crafter  # Crafter frames: tile accuracy is defined
        self.eval_sequences = eval_sequences
        self.spec = SequenceSpec(
            length=cfg.sequence, image_fraction=image_fraction, actions=False, fields=()
        )
        self._lpips = None
        self._heldout = None

    def config(self) -> dict[str, Any]:
        return {
            **asdict(self.cfg),
            "eval_sequences": self.eval_sequences,
            "image_fraction": self.spec.image_fraction,
        }

    def build_model(self) -> Any:

        return Tokenizer(self.cfg)

    def lpips(self, device: Any) -> Any:
        if self._lpips is None:
            self._lpips = LPIPS(self.cfg.lpips_net).to(device)
        return self._lpips

    def loss(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:

        out = model(batch["frames"], batch["independent"])
        # whole frames, so the margin outside a patch grid that does not divide them is learned
        recon, target = model.unpatchify(out["recon"].float()), model.pixels(batch["frames"])
        mse = (recon - target).pow(2).mean()
        terms = {"mse": mse}
        loss = model.mse_norm(mse)
        if self.cfg.lpips_weight > 0:
            lpips = self.lpips(recon.device)
            pair = [to_images(x) for x in (recon, target)]
            if (size := pair[0].shape[-1]) < lpips.min_size:  # upsample frames too small for it
                scale = -(-lpips.min_size // size)
                pair = [F.interpolate(x, scale_factor=scale, mode="nearest") for x in pair]
            perceptual = lpips(*pair).mean()
            loss = loss + self.cfg.lpips_weight * model.lpips_norm(perceptual)
            terms["lpips"] = perceptual
        terms["loss"] = loss
        return terms

    def tokens(self, batch: dict[str, Any]) -> int:
        b, t = batch["frames"].shape[:2]
        return b * t * (self.cfg.patches + self.cfg.latents)

    def heldout(self, device: Any) -> Any:
        """A fixed set of held-out sequences (eval split; train if a dataset has none)."""
        if self._heldout is None:
            split = heldout_split(self.data)
            data = EpisodeSequences(
                self.data,
                SequenceSpec(length=self.cfg.sequence, split=split, actions=False, fields=()),
            )
            self._heldout = fixed_batch(data, self.eval_sequences, seed=1234)[0]["frames"]
        return self._heldout.to(device)

    def evaluate(self, model: Any, final: bool) -> dict[str, float]:

        frames = self.heldout(next(model.parameters()).device)
        out = model(frames, mask=False)
        recon = model.unpatchify(out["recon"].float()).clamp(-1, 1)
        target = model.pixels(frames)
        world = round(target.shape[2] * WORLD_ROWS)
        metrics = {
            "tokenizer/psnr_heldout": psnr(recon, target).mean().item(),
            "tokenizer/ssim_heldout": ssim(recon, target).mean().item(),
            "tokenizer/psnr_heldout_world": psnr(recon[:, :, :world], target[:, :, :world])
            .mean()
            .item(),
        }
        if self.crafter:
            # frames too dark to read are not scored (eval/tile_accuracy.py); `_all` scores them.
            # A mean over no scored frame is left out, not written as NaN.
            lit, every = tile_accuracies(recon, target)
            scored = {
                "tokenizer/tile_accuracy": scored_mean(lit),
                "tokenizer/tile_accuracy_all": every.mean().item(),
                "tokenizer/inventory_accuracy": scored_mean(inventory_accuracy(recon, target)),
            }
            metrics.update({k: v for k, v in scored.items() if v is not None})
        if final and is_rank0():
            self.write_grid(model, frames[:8, -1:])
        return metrics

    def write_grid(self, model: Any, frames: Any) -> None:
        """Rows of original | reconstruction | masked input (half the patches) | its recon."""

        target = model.patchify(frames)
        torch.manual_seed(0)
        drop = torch.rand(target.shape[:3], device=target.device) < 0.5
        plain = model.decode(model.encode_patches(target))
        masked = model.decode(model.encode_patches(target, drop))
        shown = torch.where(drop[..., None], torch.zeros_like(target), target)
        columns = [target, plain.float(), shown, masked.float()]
        images = [model.unpatchify(c)[:, 0].clamp(-1, 1) for c in columns]
        images[0] = model.pixels(frames[:, 0])  # the real frame, margin included
        grid = torch.cat([torch.cat(list(img), 0) for img in images], 1)  # rows × columns
        pixels = ((grid + 1) * 127.5).round().byte().cpu().numpy()
        scale = max(1, 128 // frames.shape[2])
        image = Image.fromarray(pixels).resize(
            (pixels.shape[1] * scale, pixels.shape[0] * scale), Image.Resampling.NEAREST
        )
        self.metrics.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.metrics / GRID) as tmp:
            image.save(tmp, format="PNG")


def add_arguments(p: argparse.ArgumentParser) -> None:

    engine_arguments(p)


def run(args: argparse.Namespace) -> int:

    settings = TrainSettings.load(args, TokenizerJob.stage)
    data, meta = settings.dataset(args)
    own = settings.own
    model = own.sub("model").config(TokenizerConfig, {"resolution": meta["resolution"]})
    paths = settings.job_paths(args, data, TokenizerJob.stage, settings.path("tokenizer", args.out))
    job = TokenizerJob(
        model,
        data,
        paths.metrics,
        own.count("eval_sequences"),
        own.fraction("image_fraction"),
        is_crafter(meta),
    )
    return train_stage(args, job, settings.config(args), paths)
