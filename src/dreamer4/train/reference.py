"""`dreamer4 train-reference`: the engine's reference job, to check a machine and measure speed.

Not a pipeline stage: a small masked patch autoencoder over episode-dataset frames that goes
through exactly the path a real stage does (launcher, ZeRO, checkpoints, metrics), so a new
GPU node or CPU box can be checked, and the engine benchmarked, without the paper's models.
Two loss terms (masked and visible patches) exercise per-term metrics; the random masks
exercise RNG restore on resume.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dreamer4.train.engine import Job, TrainSettings, train_stage
from dreamer4.train.engine import add_arguments as engine_arguments
from dreamer4.train.sequences import SequenceSpec


@dataclass(frozen=True)
class ReferenceConfig:
    patch: int = 8
    width: int = 128
    depth: int = 2
    heads: int = 4
    mask_ratio: float = 0.5
    sequence: int = 4  # frames per sequence (each frame is encoded on its own)


class ReferenceModel(nn.Module):
    def __init__(self, cfg: ReferenceConfig, resolution: int) -> None:
        super().__init__()
        self.cfg = cfg
        n = (resolution // cfg.patch) ** 2
        dim = cfg.patch * cfg.patch * 3
        self.patch_embed = nn.Linear(dim, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(n, cfg.width))
        self.mask_embed = nn.Parameter(torch.zeros(cfg.width))
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.width, dim)

    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 → (N, patches, p·p·3) floats in [0, 1]."""
        p = self.cfg.patch
        x = frames.float() / 255.0
        n, h, w, c = x.shape
        x = x.reshape(n, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(patches)
        x = torch.where(mask[..., None], self.mask_embed.to(x.dtype), x) + self.pos_embed
        return self.head(self.blocks(x))


class ReferenceJob(Job):
    stage = "train_reference"

    def __init__(self, cfg: ReferenceConfig, resolution: int) -> None:
        self.cfg, self.resolution = cfg, resolution
        self.spec = SequenceSpec(length=cfg.sequence, actions=False, fields=())

    def config(self) -> dict[str, Any]:
        return {**asdict(self.cfg), "resolution": self.resolution}

    def build_model(self) -> nn.Module:
        return ReferenceModel(self.cfg, self.resolution)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        frames = batch["frames"].flatten(0, 1)
        target = model.patchify(frames)
        mask = torch.rand(target.shape[:2], device=target.device) < self.cfg.mask_ratio
        err = (model(target, mask).float() - target).pow(2).mean(-1)
        masked = (err * mask).sum() / mask.sum().clamp(min=1)
        visible = (err * ~mask).sum() / (~mask).sum().clamp(min=1)
        return {"loss": masked + visible, "masked": masked, "visible": visible}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        b, t, h, w, _ = batch["frames"].shape
        return b * t * (h // self.cfg.patch) * (w // self.cfg.patch)


def add_arguments(p: argparse.ArgumentParser) -> None:

    engine_arguments(p)
    p.add_argument("--width", type=int, default=None, help="model width (default 128)")


def run(args: argparse.Namespace) -> int:

    settings = TrainSettings.load(args, None)
    data, meta = settings.dataset(args)
    job = ReferenceJob(
        ReferenceConfig(**({"width": args.width} if args.width else {})), meta["resolution"]
    )
    return train_stage(
        args,
        job,
        settings.config(args),
        settings.job_paths(args, data, job.stage, "models/reference"),
    )
