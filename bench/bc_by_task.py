"""Held-out behaviour cloning per task: does one agent imitate the data worse on some task?

`agent/bc_nll_heldout` is one number over every task. WM+BC and BC had the same one on the
`small` run, yet WM+BC reached `collect_wood` in 18–20 points fewer real worlds. This splits the
offset-0 BC NLL (−log π(a_t | h_t), nats; uniform over Crafter's 17 actions is 2.83) by the task
each frame was pursuing. The windows are the eval split's relevant windows (`fixed_batch`,
seeds 4321 …), with the frames at the sampler's context level, as `finetune_agent` evaluates.

    python bench/bc_by_task.py models/bc_agent models/agent [--data data/latents] [--batches 4]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from dreamer4.agent import load_agent, pursued_task
from dreamer4.dynamics import shift_actions
from dreamer4.shortcut import ShortcutConfig, as_context
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, fixed_batch


@torch.no_grad()
def nll_by_task(folder: Path, data: Path, batches: int, rows: int = 64) -> pd.DataFrame:
    """One row per labelled frame of the held-out windows: task, offset-0 NLL."""
    agent, config = load_agent(folder)
    agent.eval()
    model = config["model"]
    tasks = tuple(model["agent"]["tasks"])
    trained = {k: tuple(v) if isinstance(v, list) else v for k, v in model["sequence"].items()}
    # the windows `AgentJob.heldout` scores: the eval split, all relevant, no single images
    spec = replace(SequenceSpec(**trained), split="eval", relevant_fraction=1.0, image_fraction=0.0)
    data_set = EpisodeSequences(data, spec)
    noise = ShortcutConfig(**model["shortcut"]).context_noise
    out = []
    for b in range(batches):
        batch, _ = fixed_batch(data_set, rows, 4321 + b)
        task = pursued_task(batch["task"])
        inputs = as_context(
            batch["latents"].float(), noise, model["dynamics"]["k_max"],
            torch.Generator().manual_seed(0),
        )  # fmt: skip
        h = agent(*inputs, shift_actions(batch), task)[1]
        actions = {
            k.removeprefix("action/"): v for k, v in batch.items() if k.startswith("action/")
        }
        logp, labelled = agent.space.log_prob(agent.policy(h)[:, :, 0], actions)
        keep = labelled & (task >= 0)
        out.append(pd.DataFrame({
            "task": [tasks[i] for i in task[keep].tolist()], "nll": (-logp[keep]).tolist(),
        }))  # fmt: skip
    return pd.concat(out).assign(agent=str(folder))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("agents", nargs="+", type=Path, help="finetune_agent / bc_baseline outputs")
    p.add_argument("--data", type=Path, default=Path("data/latents"))
    p.add_argument("--batches", type=int, default=4, help="of 64 windows each")
    args = p.parse_args()
    d = pd.concat(nll_by_task(f, args.data, args.batches) for f in args.agents)
    table = d.pivot_table(index="task", columns="agent", values="nll", aggfunc="mean")
    table["frames"] = d[d["agent"] == str(args.agents[0])].groupby("task").size()
    print(d.groupby("agent")["nll"].mean().round(3).to_string(), end="\n\n")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
