"""Stage `train_dynamics` → asset `world_model`: the dynamics transformer by shortcut forcing.

Reads the latent tokens (frozen tokenizer, `encode`) and trains `dynamics.Dynamics` with
`shortcut.shortcut_loss` through the training engine. Params `profiles.<profile>.train_dynamics`:
`model:` (DynamicsConfig; latents/bottleneck come from the latents, actions from the step
index), `shortcut:` (ShortcutConfig), `sequence:` (T1, T2, long_every, image_fraction — the
paper's alternating batch lengths and 30% single images), `unlabelled_fraction` (sequences
trained without actions, so the unlabelled-video path is exercised), `rollout:` (evaluation).

Actions: row t of the step index holds the action taken *after* frame t; the model's action
token at step t carries the action leading *into* frame t, so actions are shifted by one and
the first frame of a window gets none.

At the end, with the EMA weights (what the sampler uses), held-out rollouts: `context` real
frames, then `horizon` imagined ones given the real actions, decoded by the tokenizer and
compared with the real frames — PSNR/SSIM per step at K=4 and K=k_max shortcut steps beside a
copy-last-frame baseline and the tokenizer's own ceiling (the real latents decoded). Latents are
decoded frame by frame with the tokenizer's KV cache, as at play time. Two honest baselines:
`psnr_copy_last` (the last real frame in pixels) and `psnr_copy_last_decoded` (the last context
latent repeated and decoded: what a world model that predicts "nothing changes" scores through
this tokenizer, the bar a rollout must clear). `rollout/action_shuffle_ratio`: held-out loss
with actions shuffled across the batch over the loss with the true ones (> 1: actions are used).
DVC metrics `rollout/psnr_k4`, `rollout/psnr_k64`, `rollout/psnr_copy_last`, … (horizon means),
`rollout.tsv` per step (DVC plot) and `rollout.gif` (real | K=4 | K=k_max), a DVC plot and
Dagster metadata. On Crafter data each row also has `tile_accuracy_*` and `inventory_accuracy_*`
(eval/tile_accuracy.py: the same tiles and inventory counts as the real frame; tiles on the
frames light enough to read, `tile_accuracy_all_*` on every frame). With
`eval_every` > 0 the K=4 rollout and the baselines are also scored during training (train.tsv),
so the curve against time shows where more training would lead.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dreamer4.dynamics import Dynamics, shift_actions, world_model_configs
from dreamer4.errors import StageError
from dreamer4.eval.tile_accuracy import (
    inventory_accuracy,
    is_crafter,
    scored_mean,
    tile_accuracies,
)
from dreamer4.files import atomic_path, read_config
from dreamer4.preview import save_grid_gif
from dreamer4.shortcut import generate, loss_norms, sample_tau_d, shortcut_loss
from dreamer4.tokenizer import load_tokenizer, psnr, ssim
from dreamer4.train.engine import (
    Job,
    TrainSettings,
    add_draws,
    draw_generator,
    is_rank0,
    train_stage,
)
from dreamer4.train.engine import add_arguments as engine_arguments
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, fixed_batch, heldout_split

ROLLOUT_TSV, ROLLOUT_GIF = "rollout.tsv", "rollout.gif"
# SequenceSpec fields the stage sets (the rest come from `sequence:` in params)
SEQUENCE_FROM_DATA = {
    "split": "train",
    "arrays": ("latents",),
    "actions": True,
    "fields": (),
    "tasks": (),
    "relevant_fraction": 0.0,
}


class WorldModelJob(Job):
    stage = "train_dynamics"
    evaluate_with_ema = True

    def __init__(
        self,
        model_cfg: Any,
        shortcut: Any,
        spec: Any,
        unlabelled: float,
        rollout: dict[str, int],
        data: Path,
        episodes: Path,
        tokenizer: Path,
        metrics: Path,
        crafter: bool = False,
    ) -> None:
        self.model_cfg, self.shortcut, self.spec = model_cfg, shortcut, spec
        self.unlabelled, self.rollout = unlabelled, rollout
        self.data, self.episodes, self.tokenizer_dir, self.metrics = (
            data,
            episodes,
            tokenizer,
            metrics,
        )
        self.crafter = crafter  # Crafter frames: tile accuracy is defined
        self._heldout = None
        self._baselines: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "model": asdict(self.model_cfg),
            "shortcut": asdict(self.shortcut),
            "sequence": asdict(self.spec),
            "unlabelled_fraction": self.unlabelled,
            "rollout": self.rollout,
        }

    def build_model(self) -> Any:

        model = nn.Module()
        model.dynamics = Dynamics(self.model_cfg)
        model.norms = loss_norms(self.shortcut.rms_decay)
        return add_draws(model)  # (τ, d) alike on all ranks: see `loss`

    def loss(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:

        z1 = batch["latents"].float()
        drop = torch.rand(z1.shape[0], device=z1.device) < self.unlabelled
        # (τ, d) per frame from a generator every rank seeds alike (a checkpointed counter):
        # all ranks then run the same number of bootstrap passes, which ZeRO-3 needs (each
        # forward gathers parameters collectively); noise and data still differ per rank.
        gen = draw_generator(model)
        tau, d = sample_tau_d(*z1.shape[:2], self.model_cfg.k_max, self.shortcut, gen)
        terms = shortcut_loss(
            model.dynamics,
            z1,
            shift_actions(batch, drop),
            self.shortcut,
            self.model_cfg.k_max,
            independent=batch["independent"],
            tau=tau,
            d=d,
            norms=model.norms,
        )
        return {k: terms[k] for k in ("loss", "flow", "bootstrap")}

    def tokens(self, batch: dict[str, Any]) -> int:
        b, t = batch["latents"].shape[:2]
        return b * t * self.model_cfg.tokens

    # -- held-out rollouts ----------------------------------------------------------------
    def heldout(self) -> dict[str, Any]:
        """Fixed held-out windows: latents, shifted actions, and the real frames."""
        if self._heldout is None:
            split = heldout_split(self.data)
            length = self.rollout["context"] + self.rollout["horizon"]
            spec = SequenceSpec(length=length, split=split, arrays=("latents",), fields=())
            data = EpisodeSequences(self.data, spec)
            batch, windows = fixed_batch(data, self.rollout["sequences"], 4321)
            frames = EpisodeSequences(
                self.episodes, SequenceSpec(length=length, split=split, actions=False, fields=())
            )
            if not np.array_equal(frames.episode_ids, data.episode_ids):
                raise StageError(f"{self.data} and {self.episodes} index different episodes")
            batch = {k: v for k, v in batch.items() if k not in ("independent", "relevant")}
            batch["frames"] = torch.stack([frames[w]["frames"] for w in windows])
            self._heldout = batch
        return self._heldout

    def evaluate(self, model: Any, final: bool) -> dict[str, float]:
        """Rollouts at K=4 every `eval_every` steps (a curve against time), at K=4 and K=k_max
        at the end; the baselines (frozen tokenizer) are decoded once."""

        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self.heldout().items()}
        c, h = self.rollout["context"], self.rollout["horizon"]
        actions = shift_actions(batch)
        latents = batch["latents"].float()
        base = self.baselines(batch)
        rows: dict[str, Any] = {"step": torch.arange(1, h + 1), **base["rows"]}
        shown = {}
        for k in sorted({4, self.model_cfg.k_max}) if final else [4]:
            gen = torch.Generator(device=device).manual_seed(0)
            z = generate(
                model.dynamics, latents[:, :c], actions, h, steps=k, cfg=self.shortcut,
                generator=gen,
            )  # fmt: skip
            shown[k] = base["decode"](z)
            rows.update(self.fidelity(f"k{k}", shown[k], base["real"]))
        # float32: under autocast SSIM's convolutions come out bf16, which numpy cannot hold
        per_step = {k: (v if k == "step" else v.float().nanmean(0)).cpu() for k, v in rows.items()}
        if final and is_rank0():
            self.write_rollouts(per_step, base["real"], shown)
        metrics = {f"rollout/{k}": float(v.nanmean()) for k, v in per_step.items() if k != "step"}
        for k in [k for k in per_step if "_accuracy_" in k]:  # none scored: left out, not NaN
            if scored_mean(per_step[k]) is None:
                del metrics[f"rollout/{k}"]
        metrics["rollout/action_shuffle_ratio"] = self.action_shuffle_ratio(model, batch)
        return metrics

    def baselines(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The real frames, a decoder for latents, and the per-sequence scores of the tokenizer's
        ceiling and the copy-last baselines (cached: the tokenizer is frozen)."""
        if self._baselines is None:
            tok = load_tokenizer(self.tokenizer_dir)[0].to(batch["latents"].device)
            c, h = self.rollout["context"], self.rollout["horizon"]
            latents = batch["latents"].float()
            real = tok.pixels(batch["frames"][:, c:])

            def decode(z: Any) -> Any:  # frame by frame with the decoder's cache, as at play
                frames = tok.unpatchify(tok.decode_stream(torch.cat([latents[:, :c], z], 1)))
                return frames[:, c:].float().clamp(-1, 1)

            last = tok.pixels(batch["frames"][:, c - 1 : c]).expand_as(real)
            rows = {
                # decoded real latents: the upper bound
                **self.fidelity("tokenizer", decode(latents[:, c:]), real),
                **self.fidelity("copy_last", last, real),
                # the baseline a world model can beat: the last context latent repeated, decoded
                **self.fidelity(
                    "copy_last_decoded", decode(latents[:, c - 1 : c].expand(-1, h, -1, -1)), real
                ),
            }
            self._baselines = {"real": real, "decode": decode, "rows": rows}
        return self._baselines

    def fidelity(self, name: str, frames: Any, real: Any) -> dict[str, Any]:
        """(B, horizon) PSNR, SSIM and, on Crafter, tile and inventory accuracy of `frames`."""

        out = {f"psnr_{name}": psnr(frames, real), f"ssim_{name}": ssim(frames, real)}
        if self.crafter:
            # frames too dark to read are not scored (eval/tile_accuracy.py); `_all` scores them
            out[f"tile_accuracy_{name}"], out[f"tile_accuracy_all_{name}"] = tile_accuracies(
                frames, real
            )
            out[f"inventory_accuracy_{name}"] = inventory_accuracy(frames, real)
        return out

    def action_shuffle_ratio(self, model: Any, batch: dict[str, Any]) -> float:
        """Held-out shortcut loss with the actions shuffled across the batch over the loss with
        the true actions, same noise and (τ, d): > 1 means the model uses the actions."""

        z1 = batch["latents"].float()
        b, t = z1.shape[:2]
        actions = shift_actions(batch)
        order = torch.roll(torch.arange(b, device=z1.device), 1)  # a derangement for b > 1
        shuffled = {k: v[order] for k, v in actions.items()}
        losses = []
        for acts in (actions, shuffled):
            gen = torch.Generator().manual_seed(0)
            tau, d = sample_tau_d(b, t, self.model_cfg.k_max, self.shortcut, gen)
            noise = torch.randn(z1.shape, generator=gen).to(z1)
            terms = shortcut_loss(
                model.dynamics, z1, acts, self.shortcut, self.model_cfg.k_max,
                noise=noise, tau=tau, d=d,
            )  # fmt: skip
            losses.append(float(terms["flow"]) + float(terms["bootstrap"]))
        return losses[1] / max(losses[0], 1e-12)

    def write_rollouts(self, per_step: dict[str, Any], real: Any, shown: dict[int, Any]) -> None:

        self.metrics.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame({k: v.numpy() for k, v in per_step.items()})
        with atomic_path(self.metrics / ROLLOUT_TSV) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
        columns = [real, *(shown[k] for k in sorted(shown))]  # real | K=4 | K=k_max
        save_grid_gif(self.metrics / ROLLOUT_GIF, columns)


def add_arguments(p: argparse.ArgumentParser) -> None:

    engine_arguments(p)
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (to decode rollouts)")
    p.add_argument("--episodes", default=None, help="episode dataset (real frames for rollouts)")


def run(args: argparse.Namespace) -> int:

    settings = TrainSettings.load(args, WorldModelJob.stage)
    own = settings.own
    episodes = settings.path("episodes", args.episodes)
    data = settings.path("latents", args.data)
    model_cfg, shortcut = world_model_configs(own, data)
    spec = own.sub("sequence").config(SequenceSpec, SEQUENCE_FROM_DATA)
    rollout = own.sub("rollout")
    rollout = {k: rollout.count(k) for k in ("sequences", "context", "horizon")}
    job_paths = settings.job_paths(
        args, data, WorldModelJob.stage, settings.path("world_model", args.out)
    )
    job = WorldModelJob(
        model_cfg,
        shortcut,
        spec,
        own.fraction("unlabelled_fraction"),
        rollout,
        data,
        episodes,
        settings.path("tokenizer", args.tokenizer),
        job_paths.metrics,
        is_crafter(read_config(episodes, "dataset.json", "dreamer4 ingest")),
    )
    return train_stage(args, job, settings.config(args), job_paths)
