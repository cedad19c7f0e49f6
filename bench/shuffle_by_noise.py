"""Where does the world model use the actions? The action-shuffle ratio split by noise level.

`rollout/action_shuffle_ratio` is one number: the held-out shortcut loss with actions shuffled
across the batch over the loss with the true ones, every frame at its own sampled (τ, d). This
splits it the way the sampler meets it: the held-out windows of `train_dynamics` with their
context as the sampler sees it (τ_ctx, d_min) and only the last frame at a chosen signal level
τ (d = d_min), and reports, per τ, the last frame's x-prediction error with the true and with
shuffled actions (the same derangement and noise as the stage's ratio). Rows are also split by
whether the true action was a move: in Crafter a successful move shifts the whole view one tile,
so a model that follows the actions must be hurt most there. `error_copy_last` is the error of
repeating the previous frame's latents: a model that predicts a frame after a non-move worse
than that has not learned to carry the scene forward.

    python bench/shuffle_by_noise.py --world-model models/world_model --latents data/latents \
        --episodes data/episodes --tokenizer models/tokenizer
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch

from dreamer4.dynamics import Dynamics, DynamicsConfig, shift_actions, world_model_weights
from dreamer4.episodes.actions import CRAFTER_ACTIONS
from dreamer4.files import read_config
from dreamer4.shortcut import ShortcutConfig, context_level
from dreamer4.stages.train_dynamics import WorldModelJob
from dreamer4.train.checkpoint import CONFIG

TAUS = (0.0, 0.25, 0.5, 0.75, 0.9375)  # signal level of the predicted frame (0 = pure noise)
MOVES = {CRAFTER_ACTIONS.index(a) for a in CRAFTER_ACTIONS if a.startswith("move_")}


@torch.no_grad()
def table(world_model: Path, latents: Path, episodes: Path, tokenizer: Path) -> pd.DataFrame:
    """One row per (τ, rows: all / move / other): mean last-frame error true vs shuffled, and
    of copying the previous frame."""
    config = read_config(world_model, CONFIG, "dreamer4 train-dynamics")["model"]
    model_cfg, shortcut = DynamicsConfig(**config["model"]), ShortcutConfig(**config["shortcut"])
    with tempfile.TemporaryDirectory() as tmp:
        job = WorldModelJob(
            model_cfg, shortcut, None, 0.0, config["rollout"], latents, episodes, tokenizer,
            Path(tmp), False,
        )  # fmt: skip
        batch = job.heldout()
    model = Dynamics(model_cfg).eval()
    model.load_state_dict(world_model_weights(world_model))
    z1 = batch["latents"].float()
    b, t = z1.shape[:2]
    actions = shift_actions(batch)
    order = torch.roll(torch.arange(b), 1)  # the stage's derangement
    shuffled = {k: v[order] for k, v in actions.items()}
    last = actions["crafter"][:, -1]
    moved = torch.tensor([int(a) in MOVES for a in last])
    copy_last = (z1[:, -2] - z1[:, -1]).pow(2).flatten(1).mean(1)
    d_min, tau_ctx = 1.0 / model_cfg.k_max, context_level(shortcut.context_noise, model_cfg.k_max)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(z1.shape, generator=gen)
    rows = []
    for level in TAUS:
        tau = torch.full((b, t), tau_ctx)
        tau[:, -1] = level
        d = torch.full((b, t), d_min)
        zt = (1 - tau[..., None, None]) * noise + tau[..., None, None] * z1
        errors = {}
        for name, acts in (("true", actions), ("shuffled", shuffled)):
            pred = model(zt, tau, d, acts)
            errors[name] = (pred[:, -1] - z1[:, -1]).pow(2).flatten(1).mean(1)
        for part, mask in (("all", torch.ones(b, dtype=torch.bool)), ("move", moved),
                           ("other", ~moved)):  # fmt: skip
            if mask.any():
                true, shuf = errors["true"][mask].mean(), errors["shuffled"][mask].mean()
                rows.append({"tau": level, "rows": part, "windows": int(mask.sum()),
                             "error_true": float(true), "error_shuffled": float(shuf),
                             "ratio": float(shuf / true),
                             "error_copy_last": float(copy_last[mask].mean())})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world-model", type=Path, default=Path("models/world_model"))
    p.add_argument("--latents", type=Path, default=Path("data/latents"))
    p.add_argument("--episodes", type=Path, default=Path("data/episodes"))
    p.add_argument("--tokenizer", type=Path, default=Path("models/tokenizer"))
    args = p.parse_args()
    out = table(args.world_model, args.latents, args.episodes, args.tokenizer)
    print(out.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
