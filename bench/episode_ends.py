"""How the agents' Crafter episodes end: death or the step cap, and what did the damage.

Table 7's milestones need steps. In the `small` run every learned agent's episodes lasted about
as long as random play's (~170 steps of a 500-step cap), so the milestones may be capped by
survival rather than by what the prompt asks. This plays the evaluation's agents on the
evaluation's worlds (the same prompts, players and seeds as `dreamer4 evaluate`, one batch in
lockstep). Each time the player's health drops, the damage is put down to one cause, as
Crafter's objects deal it (`crafter/objects.py`):

- lava under the player;
- a zombie next to the player after the step (zombies move, then hit from 1 tile);
- an arrow within 2 tiles before the step (an arrow hits and vanishes in the same update), or a
  skeleton next to the player;
- a need at 0 (food, drink or energy);
- else "other".

Damage is the health lost over the step, net of any point regained in it.

It prints per agent the mean length, the share of episodes ending in death, the daylight at the
end, and the share of the damage per cause.

    python bench/episode_ends.py [--worlds 50] [--first-seed 1000000]
"""

from __future__ import annotations

import argparse
import copy
from collections import Counter
from typing import Any

import pandas as pd
import torch

from dreamer4.envs.crafter_env import make_env
from dreamer4.eval.agent_player import episode_generator
from dreamer4.eval.prompted_play import play_prompted_batch, prompt_indices
from dreamer4.stages.evaluate import AGENTS, generate_worlds, load_player

FOLDERS = {"random": None, "bc": "models/bc_agent", "wm_bc": "models/agent",
           "dreamer4": "models/policy"}  # fmt: skip
CAUSES = ("zombie", "skeleton", "lava", "need", "other")


def watch(env: Any, log: list[dict[str, Any]]) -> None:
    """Wrap `env.step` to log, after each step, the damage taken and what was around."""
    step = env.step

    def near(radius: int) -> Counter:
        """Objects within `radius` tiles (Manhattan, as Crafter's `distance`) of the player."""
        player = env._player
        return Counter(
            type(o).__name__
            for o in env._world.objects
            if o is not player and abs(o.pos - player.pos).sum() <= radius
        )

    def logged(action: int) -> Any:
        player = env._player
        before, arrows = player.health, near(2)["Arrow"]
        out = step(action)
        adjacent = near(1)
        log.append({
            "damage": before - player.health,
            "health": player.health,
            "need_empty": min(player.inventory[k] for k in ("food", "drink", "energy")) == 0,
            "daylight": float(env._world.daylight),
            "zombie": adjacent["Zombie"] > 0,
            "skeleton": arrows + adjacent["Skeleton"] > 0,
            "lava": env._world[player.pos][0] == "lava",
        })  # fmt: skip
        return out

    env.step = logged


def cause(row: dict[str, Any]) -> str:
    for name in ("lava", "zombie", "skeleton"):
        if row[name]:
            return name
    return "need" if row["need_empty"] else "other"


def episode_ends(worlds: int, first_seed: int, max_steps: int, sample_seed: int) -> pd.DataFrame:
    """One row per agent and world: length, death, daylight at the end, damage per cause."""
    seeds = list(range(first_seed, first_seed + worlds))
    made, firsts = generate_worlds(make_env(0, size=64, length=max_steps), seeds)  # as rendered
    rows = []
    for name, folder in FOLDERS.items():
        player, tasks, size = load_player(name, folder, "models/tokenizer")
        agent = list(AGENTS).index(name)
        player.generator = [episode_generator(sample_seed, agent, i) for i in range(worlds)]
        envs = [copy.deepcopy(w) for w in made]
        logs: list[list[dict[str, Any]]] = [[] for _ in envs]
        for e, log in zip(envs, logs, strict=True):
            watch(e, log)
        stats = play_prompted_batch(
            envs, player, prompt_indices(tasks), tasks, max_steps, size,
            obs=[f.copy() for f in firsts],
        )  # fmt: skip
        for seed, log, line in zip(seeds, logs, stats, strict=True):
            damage = Counter()
            for row in log:
                if row["damage"] > 0:
                    damage[cause(row)] += row["damage"]
            rows.append({
                "agent": name, "seed": seed, "length": line["length"],
                "died": log[-1]["health"] <= 0, "daylight_at_end": log[-1]["daylight"],
                **{f"damage/{k}": damage[k] for k in CAUSES},
            })  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=int, default=50)
    p.add_argument("--first-seed", type=int, default=1_000_000)
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--sample-seed", type=int, default=0, help="evaluate.seed")
    args = p.parse_args()
    torch.set_num_threads(2)
    d = episode_ends(args.worlds, args.first_seed, args.max_steps, args.sample_seed)
    damage = d.filter(like="damage/").groupby(d["agent"]).sum()
    share = damage.div(damage.sum(axis=1), axis=0).mul(100).round(0)
    summary = d.groupby("agent")[["length", "died", "daylight_at_end"]].mean().round(2)
    print(pd.concat([summary, share.add_prefix("% ")], axis=1).loc[list(FOLDERS)].to_string())


if __name__ == "__main__":
    main()
