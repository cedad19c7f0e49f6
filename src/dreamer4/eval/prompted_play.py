"""An agent playing real Crafter steered by a prompt sequence of tasks (paper Table 6).

The agent is prompted with the first milestone of the tech tree it has not reached; when the
environment reports that achievement, the prompt moves on to the next one (the paper's
Minecraft agent is steered the same way). The episode's Crafter stats line (`length`,
`reward`, `achievement_<name>` counts — Crafter's StatsRecorder format) gets the step at which
each achievement was first reached, for the time-to-milestone table (paper Table 8), and
`actions`: how often each Crafter action was taken. Why the actions: Crafter's score counts
achievements a player reaches by chance (a random player wakes up in 94 % of its episodes, as any
press of `sleep` once energy dips starts a short nap), so a policy that drops an action loses
them, whatever its prompt; the report's action table shows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dreamer4.episodes.actions import CRAFTER_ACTIONS
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
    `first_step`: achievement → the step it was first reached (1 = by the first action), and
    `actions`: action name → times taken (those taken at least once).

    size: the player sees observations resized to size×size as `ingest` resizes the training
    data (None: as rendered). frames: if given, every observation as rendered is appended.
    obs: the first observation of an `env` already reset (e.g. a copy of a generated world:
    Crafter's world generation costs more than a short episode); None resets `env` here."""
    first = None if obs is None else [obs]
    return play_prompted_batch([env], player, prompts, tasks, max_steps, size, frames, first)[0]


def play_prompted_batch(
    envs: list[Any],
    player: AgentPlayer | RandomPlayer,
    prompts: list[int],
    tasks: tuple[str, ...],
    max_steps: int,
    size: int | None = None,
    frames: list[np.ndarray] | None = None,
    obs: list[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """`play_prompted` for a batch of environments in lockstep, one player call per step for
    all episodes still running; a finished episode leaves the batch (`player.keep`). Stats per
    environment, in order; `frames` records the first environment's observations."""
    if obs is None:
        obs = [env.reset() for env in envs]
    player.reset()
    n = len(envs)
    counts: list[dict[str, int]] = [{} for _ in range(n)]
    taken = np.zeros((n, len(CRAFTER_ACTIONS)), dtype=np.int64)
    first: list[dict[str, int]] = [{} for _ in range(n)]
    stage, reward, length = [0] * n, [0.0] * n, [0] * n
    current = list(obs)
    running = [i for i in range(n) if max_steps > 0]
    if not running and frames is not None:
        frames.append(current[0])
    while running:
        if frames is not None and running[0] == 0:
            frames.append(current[0])
        task = [prompts[stage[i]] if stage[i] < len(prompts) else -1 for i in running]
        seen = torch.tensor(np.stack([resize_frame(current[i], size) for i in running]))
        action = player.act(seen, torch.tensor(task))
        name = next(iter(action))
        ended = []
        for row, i in enumerate(running):
            chosen = int(action[name][row])
            taken[i, chosen] += 1
            current[i], r, done, info = envs[i].step(chosen)
            length[i] += 1
            reward[i] += float(r)
            for k, v in info["achievements"].items():
                if v > counts[i].get(k, 0):
                    first[i].setdefault(k, length[i])
                counts[i][k] = int(v)
            while stage[i] < len(prompts) and counts[i].get(tasks[prompts[stage[i]]], 0) > 0:
                stage[i] += 1  # achieved: prompt the next milestone
            if done or length[i] >= max_steps:
                ended.append(row)
                if frames is not None and i == 0:
                    frames.append(current[0])
        if ended:
            keep = [row for row in range(len(running)) if row not in ended]
            if keep:
                player.keep(keep)
            running = [running[row] for row in keep]
    out = []
    for i in range(n):
        stats: dict[str, Any] = {"length": length[i], "reward": round(reward[i], 1)}
        stats.update({f"achievement_{k}": v for k, v in sorted(counts[i].items())})
        stats["first_step"] = first[i]
        stats["actions"] = {a: int(c) for a, c in zip(CRAFTER_ACTIONS, taken[i], strict=True) if c}
        out.append(stats)
    return out
