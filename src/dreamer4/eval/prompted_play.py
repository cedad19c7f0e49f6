"""An agent playing real Crafter steered by a prompt sequence of tasks (paper Table 6).

The agent is prompted with the first milestone of the tech tree it has not reached; when the
environment reports that achievement, the prompt moves on to the next one (the paper's
Minecraft agent is steered the same way). The episode's Crafter stats line (`length`,
`reward`, `achievement_<name>` counts — Crafter's StatsRecorder format) gets the step at which
each achievement was first reached, for the time-to-milestone table (paper Table 8).
"""

from __future__ import annotations

from typing import Any

import torch

from dreamer4.eval.agent_player import AgentPlayer

# Crafter's tech tree, the order the prompts follow (and the report's milestone chain).
MILESTONES: tuple[str, ...] = (
    "collect_wood",
    "place_table",
    "make_wood_pickaxe",
    "collect_stone",
    "make_stone_pickaxe",
    "collect_coal",
    "collect_iron",
    "place_furnace",
    "make_iron_pickaxe",
    "collect_diamond",
)


def prompt_indices(tasks: tuple[str, ...], milestones: tuple[str, ...] = MILESTONES) -> list[int]:
    """Indices in the agent's task vocabulary of the milestones it knows, in order."""
    return [tasks.index(m) for m in milestones if m in tasks]


def play_prompted(
    env: Any, player: AgentPlayer, prompts: list[int], tasks: tuple[str, ...], max_steps: int
) -> dict[str, Any]:
    """One episode of `env` (a Crafter env, reset here) with `player`; its stats line plus
    `first_step`: achievement → the step it was first reached."""
    obs = env.reset()
    player.reset()
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    stage, reward, length, done = 0, 0.0, 0, False
    while not done and length < max_steps:
        task = prompts[stage] if stage < len(prompts) else -1
        action = player.act(torch.from_numpy(obs)[None], torch.tensor([task]))
        name = next(iter(action))
        obs, r, done, info = env.step(int(action[name][0]))
        length += 1
        reward += float(r)
        for k, v in info["achievements"].items():
            if v > counts.get(k, 0):
                first.setdefault(k, length)
            counts[k] = int(v)
        while stage < len(prompts) and counts.get(tasks[prompts[stage]], 0) > 0:
            stage += 1  # achieved: prompt the next milestone
    stats: dict[str, Any] = {"length": length, "reward": reward}
    stats.update({f"achievement_{k}": v for k, v in sorted(counts.items())})
    stats["first_step"] = first
    return stats
