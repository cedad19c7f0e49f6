"""Evaluation speed: what one `evaluate` worker spends per episode step and per world.

On a profile's tokenizer, dynamics and agent config (random weights: speed does not depend on
them):
- agent: `AgentPlayer.act` (tokenizer encode against its KV cache + one agent pass + sampling),
  steps/s at batch 1 and at batch 8 with one generator per row (what an `evaluate` worker runs:
  environments batched per worker, each episode drawing from its own generator);
- env: a Crafter step with rendering, and world generation (`reset`) vs `copy.deepcopy` of a
  generated world (what `evaluate` does so every agent plays the same world).

    python bench/eval_speed.py [--profile tiny] [--steps 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from dreamer4.agent import Agent, AgentConfig
from dreamer4.dynamics import DynamicsConfig
from dreamer4.envs.crafter_env import make_env, reseed
from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS
from dreamer4.eval.agent_player import AgentPlayer
from dreamer4.params import load_profile
from dreamer4.tokenizer import Tokenizer, TokenizerConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profile", default="tiny")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a worker uses 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    params = load_profile(Path("params.yaml"), args.profile)
    res = params["ingest"]["resolution"]
    tok_model = {k: v for k, v in params["train_tokenizer"]["model"].items() if k != "lpips_net"}
    tok_cfg = TokenizerConfig(resolution=res, **tok_model)
    dyn = DynamicsConfig(
        **params["train_dynamics"]["model"],
        latents=tok_cfg.latents,
        bottleneck=tok_cfg.bottleneck,
        actions=(("crafter", "categorical", 17),),
    )
    agent = Agent(dyn, AgentConfig(tasks=CRAFTER_ACHIEVEMENTS, **params["finetune_agent"]["agent"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    context = params["finetune_agent"]["sequence"]["length"] - 1
    print(
        f"profile {args.profile}: {res}×{res} frames, agent "
        f"{sum(p.numel() for p in agent.parameters()) / 1e6:.2f}M params, context {context}, "
        f"device {device}, {torch.get_num_threads()} threads"
    )
    for batch in (1, 8):
        player = AgentPlayer(
            Tokenizer(tok_cfg).to(device), agent.to(device), context=context,
            generator=[torch.Generator().manual_seed(i) for i in range(batch)],
        )  # fmt: skip
        frames = torch.randint(0, 256, (batch, res, res, 3), dtype=torch.uint8, device=device)
        task = torch.zeros(batch, dtype=torch.long, device=device)
        for _ in range(context + 2):  # fill the caches: the steady state
            player.act(frames, task)
        start = time.perf_counter()
        for _ in range(args.steps):
            player.act(frames, task)
        seconds = (time.perf_counter() - start) / args.steps
        print(
            f"agent, batch {batch}: {batch / seconds:8.1f} env steps/s "
            f"({1000 * seconds:.1f} ms/act)"
        )
    env = make_env(0, size=params["collect"].get("size", 64), length=10_000)
    reseed(env, 12345)
    start = time.perf_counter()
    env.reset()
    generate = time.perf_counter() - start
    start = time.perf_counter()
    world = copy.deepcopy(env)
    copied = time.perf_counter() - start
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(args.steps):
        world.step(int(rng.integers(17)))
    step = (time.perf_counter() - start) / args.steps
    print(f"crafter: step {1000 * step:.2f} ms (rendered); world generation {generate:.2f} s, "
          f"deepcopy of a generated world {1000 * copied:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
