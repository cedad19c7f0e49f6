"""Does phase 2 keep the world model? `train_dynamics`' held-out rollout test (the same windows,
noise, K=4 and baselines) run with the world model's transformer and with the phase-2 agent's.

Phase 2 (`finetune_agent`) keeps training the transformer on the video loss while the agent
heads learn, and a gridworld reimplementation found it could wreck the world model's accuracy;
phase 3 then imagines with the phase-2 transformer. The stages report rollouts only for the
world model, so this puts the two side by side (EMA weights, as both are used downstream).

    python bench/phase2_rollouts.py --world-model models/world_model --agent models/agent \
        --latents data/latents --episodes data/episodes --tokenizer models/tokenizer
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from dreamer4.agent import load_agent
from dreamer4.dynamics import Dynamics, DynamicsConfig, world_model_weights
from dreamer4.eval.tile_accuracy import is_crafter
from dreamer4.files import read_config
from dreamer4.shortcut import ShortcutConfig
from dreamer4.stages.train_dynamics import WorldModelJob
from dreamer4.train.checkpoint import CONFIG

SHOWN = ("psnr_k4", "psnr_copy_last_decoded", "tile_accuracy_k4", "action_shuffle_ratio")


@torch.no_grad()
def compare(
    world_model: Path, agent: Path, latents: Path, episodes: Path, tokenizer: Path
) -> pd.DataFrame:
    """One row per transformer (world model, phase-2 agent): the stage's rollout metrics."""
    config = read_config(world_model, CONFIG, "dreamer4 train-dynamics")["model"]
    model_cfg = DynamicsConfig(**config["model"])
    crafter = is_crafter(read_config(episodes, "dataset.json", "dreamer4 ingest"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        job = WorldModelJob(
            model_cfg, ShortcutConfig(**config["shortcut"]), None, 0.0, config["rollout"],
            latents, episodes, tokenizer, Path(tmp), crafter,
        )  # fmt: skip
        wm = nn.Module()
        wm.dynamics = Dynamics(model_cfg)
        wm.dynamics.load_state_dict(world_model_weights(world_model))
        phase2 = nn.Module()
        phase2.dynamics = load_agent(agent)[0].dynamics
        for name, model in (("world model", wm), ("phase-2 agent", phase2)):
            rows[name] = job.evaluate(model.eval(), final=False)
    return pd.DataFrame.from_dict(rows, orient="index")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world-model", type=Path, default=Path("models/world_model"))
    p.add_argument("--agent", type=Path, default=Path("models/agent"))
    p.add_argument("--latents", type=Path, default=Path("data/latents"))
    p.add_argument("--episodes", type=Path, default=Path("data/episodes"))
    p.add_argument("--tokenizer", type=Path, default=Path("models/tokenizer"))
    args = p.parse_args()
    table = compare(args.world_model, args.agent, args.latents, args.episodes, args.tokenizer)
    shown = [f"rollout/{k}" for k in SHOWN if f"rollout/{k}" in table]
    print(table[shown].to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
