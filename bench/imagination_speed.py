"""Phase-3 speed: imagined policy steps/s and the time of one `train_policy` update.

On the dynamics and agent config of a profile (random weights: speed does not depend on them):
- imagination: rollouts of the policy in the world model (`dreamer4.imagination.imagine`), K
  shortcut steps per frame plus the commit pass, with the KV cache; imagined steps/s over all
  rollouts of a batch;
- update: one phase-3 loss (rollout + value and PMPO terms) with its backward pass through the
  heads, as `train_policy` runs it per micro-batch.

    python bench/imagination_speed.py [--profile tiny] [--batch 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from world_model_speed import timed  # bench/ is the script's folder, on sys.path

from dreamer4.agent import Agent, AgentConfig, policy_module
from dreamer4.dynamics import DynamicsConfig
from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS
from dreamer4.imagination import ImaginationConfig, imagine
from dreamer4.params import load_profile
from dreamer4.pmpo import policy_terms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profile", default="tiny")
    p.add_argument("--latents", type=int, nargs=2, default=(16, 8), help="N_b D_b")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    params = load_profile(Path("params.yaml"), args.profile)
    dyn = DynamicsConfig(
        **params["train_dynamics"]["model"], latents=args.latents[0], bottleneck=args.latents[1]
    )
    agent_cfg = AgentConfig(tasks=CRAFTER_ACHIEVEMENTS, **params["finetune_agent"]["agent"])
    cfg = ImaginationConfig(**params["train_policy"]["imagination"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = policy_module(Agent(dyn, agent_cfg)).to(device)
    n = sum(p.numel() for p in module.agent.parameters())
    print(
        f"profile {args.profile}: agent {n / 1e6:.2f}M params, context {cfg.context}, horizon "
        f"{cfg.horizon}, K={cfg.steps}, batch {args.batch}, device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    b = args.batch
    context = torch.randn(b, cfg.context, *args.latents, device=device).clamp(-1, 1)
    actions = {
        name: torch.randint(0, k, (b, cfg.context), device=device) for name, _, k in dyn.actions
    }
    task = torch.randint(0, len(CRAFTER_ACHIEVEMENTS), (b,), device=device)

    def rollout():
        return imagine(
            module.agent, context, actions, task, cfg.horizon, cfg.steps,
            context_window=cfg.window,
        )  # fmt: skip

    def update() -> None:
        terms = policy_terms(module, rollout(), cfg)
        terms["loss"].backward()

    seconds = timed(rollout, args.repeat)
    print(f"imagination: {b * cfg.horizon / seconds:8.1f} imagined steps/s ({seconds:.2f} s/batch)")
    step = timed(update, args.repeat)
    print(f"update (rollout + value/PMPO + backward): {step:.2f} s per micro-batch of {b}")


if __name__ == "__main__":
    main()
