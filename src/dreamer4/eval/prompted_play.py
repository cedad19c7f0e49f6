"""An agent playing real Crafter steered by a prompt sequence of tasks (paper Table 6).

The agent is prompted with the first milestone of the tech tree it has not reached; when the
environment reports that achievement, the prompt moves on to the next one (the paper's
Minecraft agent is steered the same way). The episode's Crafter stats line (`length`,
`reward`, `achievement_<name>` counts — Crafter's StatsRecorder format) gets the step at which
each achievement was first reached, for the time-to-milestone table (paper Table 8).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dreamer4.episodes.episode import resize_frame
from dreamer4.eval.agent_player import AgentPlayer, RandomPlayer

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
    env: Any,
    player: AgentPlayer | RandomPlayer,
    prompts: list[int],
    tasks: tuple[str, ...],
    max_steps: int,
    size: int | None = None,
    frames: list[np.ndarray] | None = None,
    obs: np.ndarray | None = None,
) -> dict[str, Any]:
    """One episode of `env` (a Crafter env, reset here) with `player`; its stats line plus
    `first_step`: achievement → the step it was first reached (1 = by the first action).

    size: the player sees observations resized to size×size as `ingest` resizes the training
    data (None: as rendered). frames: if given, every observation as rendered is appended.
    obs: the first observation of an `env` already reset (e.g. a copy of a generated world:
    Crafter's world generation costs more than a short episode); None resets `env` here."""
    if obs is None:
        obs = env.reset()
    player.reset()
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    stage, reward, length, done = 0, 0.0, 0, False
    while not done and length < max_steps:
        if frames is not None:
            frames.append(obs)
        task = prompts[stage] if stage < len(prompts) else -1
        seen = torch.tensor(resize_frame(obs, size))[None]  # a copy: env frames are read-only
        action = player.act(seen, torch.tensor([task]))
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
    if frames is not None:
        frames.append(obs)
    stats: dict[str, Any] = {"length": length, "reward": round(reward, 1)}
    stats.update({f"achievement_{k}": v for k, v in sorted(counts.items())})
    stats["first_step"] = first
    return stats
