"""Agents in Minecraft, prompted along the diamond tech tree: `evaluate` with `env: minerl`.

Each agent plays `episodes` episodes of MineRL 1.0 (through `envs/minerl_env.py`; a world per
seed via the env's `seed`) in one env of its own, one at a time (a MineRL env is a Minecraft
process).
The task-conditioned agents are prompted, as in Crafter, with the first task of `DIAMOND_TREE`
they know and have not done; the prompt moves on when the env shows that task happened. Success
per task is the share of episodes in which it happened at least once (paper Table 5's
measure). Only tasks the env's observations can tell are reported (`observable_tasks`); the
behaviour row reads the recordings' `stats` counters as `ingest` does.

The report folder: `episodes.parquet` (agent, seed, length, one 0/1 column per task),
`success.csv` and `headline.csv` (success in % per agent and task), `report.md`; DVC metrics
`eval/<agent>/<task>` and `eval/<agent>/length`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dreamer4.envs.minerl_env import MineRLPlayer
from dreamer4.episodes.crafter_format import read_jsonl
from dreamer4.episodes.dataset import write_json
from dreamer4.episodes.episode import EpisodeError
from dreamer4.episodes.vpt import VPT_TASKS, task_counts
from dreamer4.eval.agent_player import episode_generator
from dreamer4.eval.prompted_play import prompt_indices
from dreamer4.files import atomic_path, staged_folder

# The offline diamond challenge's tasks in the order a player meets them: the prompt sequence
DIAMOND_TREE: tuple[str, ...] = (
    "mine_log",
    "craft_planks",
    "craft_stick",
    "craft_crafting_table",
    "place_crafting_table",
    "open_crafting_table",
    "craft_wooden_pickaxe",
    "use_wooden_pickaxe",
    "mine_cobblestone",
    "craft_stone_pickaxe",
    "use_stone_pickaxe",
    "mine_coal",
    "mine_iron_ore",
    "craft_furnace",
    "place_furnace",
    "open_furnace",
    "craft_iron_ingot",
    "craft_iron_pickaxe",
    "use_iron_pickaxe",
    "mine_diamond",
)
assert sorted(DIAMOND_TREE) == sorted(VPT_TASKS), "the tree must order every VPT task"


def play_minecraft(
    env: MineRLPlayer,
    player: Any,
    tasks: tuple[str, ...],
    max_steps: int,
) -> dict[str, Any]:
    """One episode (env seeded and wrapped already): its length, how often each observable task
    happened, and the step each first happened at (1 = after the first action)."""
    frame = env.reset()
    observable = env.tasks
    prompts = prompt_indices(tasks, tuple(t for t in DIAMOND_TREE if t in observable))
    counts = {task: 0 for task in observable}
    first: dict[str, int] = {}
    player.reset()
    stage, length = 0, 0
    while length < max_steps:
        task = prompts[stage] if stage < len(prompts) else -1
        action = player.act(torch.tensor(frame[None]), torch.tensor([task]))
        frame, events, done = env.step({k: int(v[0]) for k, v in action.items()})
        length += 1
        for name, n in events.items():
            if n:
                counts[name] += n
                first.setdefault(name, length)
        while stage < len(prompts) and counts[tasks[prompts[stage]]] > 0:
            stage += 1
        if done:
            break
    return {"length": length, **{f"task_{k}": v for k, v in counts.items()}, "first_step": first}


def play_agents(
    players: dict[str, tuple[Any, tuple[str, ...], int]],
    agents: tuple[str, ...],
    make_env: Callable[[], Any],
    seeds: list[int],
    max_steps: int,
    sample_seed: int,
) -> dict[str, list[dict[str, Any]]]:
    """Every agent (key → player, its tasks, its resolution) on every seed: one env per agent
    (a Minecraft process starts in minutes), seeded before each episode's reset. Episode i of
    agent a draws from its own generator, a being its place in `agents` (as in Crafter)."""
    stats: dict[str, list[dict[str, Any]]] = {}
    for name, (player, tasks, size) in players.items():
        stats[name] = []
        env = make_env()
        try:
            for i, seed in enumerate(seeds):
                player.generator = [episode_generator(sample_seed, agents.index(name), i)]
                if hasattr(env, "seed"):
                    env.seed(int(seed))
                line = play_minecraft(MineRLPlayer(env, size), player, tasks, max_steps)
                stats[name].append({**line, "seed": seed})
        finally:
            env.close()
    return stats


def behaviour_stats(raw: Path) -> list[dict[str, Any]]:
    """The recordings as the behaviour row: each VPT segment's tasks from its `stats`."""
    out = []
    for path in sorted(raw.rglob("*.jsonl")):
        if path.name.startswith(".") or not path.with_suffix(".mp4").is_file():
            continue
        try:
            lines = read_jsonl(path)
        except EpisodeError:
            continue  # ingest quarantines it
        counts = task_counts([line.get("stats") or {} for line in lines])
        done = {task: int(c[-1] - c[0]) for task, c in counts.items()}
        out.append({"length": len(lines), **{f"task_{k}": v for k, v in done.items()}})
    return out


def episode_table(stats: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> pd.DataFrame:
    """One row per episode: agent, seed, length and 1/0 per task (NaN where not observable)."""
    rows = []
    for agent, lines in stats.items():
        for line in lines:
            row = {"agent": labels[agent], "seed": line.get("seed"), "length": line["length"]}
            for task in DIAMOND_TREE:
                n = line.get(f"task_{task}")
                row[task] = np.nan if n is None else float(n > 0)
            rows.append(row)
    return pd.DataFrame(rows)


def write_report(
    out: Path,
    episodes: pd.DataFrame,
    metrics: Path | None,
    keys: dict[str, str],
    context: dict[str, Any],
) -> pd.DataFrame:
    """The report folder (swapped in whole) and the DVC metrics; returns the headline table."""
    tasks = [t for t in DIAMOND_TREE if episodes[t].notna().any()]
    grouped = episodes.groupby("agent", sort=False)
    headline = grouped[tasks].mean().mul(100.0)
    headline.insert(0, "length", grouped["length"].mean())
    headline.insert(0, "episodes", grouped.size())
    headline.index.name = None
    success = headline[tasks].T.rename_axis("task").reset_index()
    with staged_folder(out, "report.md", "an evaluation report") as tmp:
        episodes.to_parquet(tmp / "episodes.parquet", index=False)
        success.to_csv(tmp / "success.csv", index=False, float_format="%.2f")
        headline.to_csv(tmp / "headline.csv", float_format="%.2f")
        lines = [
            "# Evaluation in Minecraft (MineRL 1.0)",
            "",
            "Success: % of episodes in which the task happened at least once.",
            "",
            headline.to_markdown(floatfmt=".1f"),
            "",
            "```",
            json.dumps(context, indent=1, default=str),
            "```",
            "",
        ]
        (tmp / "report.md").write_text("\n".join(lines))
    if metrics is not None:
        metrics.mkdir(parents=True, exist_ok=True)
        values = {}
        for label, row in headline.iterrows():
            key = keys[str(label)]
            values[f"eval/{key}/length"] = round(float(row["length"]), 2)
            # a task this agent's env could not tell (NaN) has no metric
            values.update(
                {f"eval/{key}/{t}": round(float(row[t]), 2) for t in tasks if pd.notna(row[t])}
            )
        with atomic_path(metrics / "metrics.json") as tmp_file:
            write_json(tmp_file, values)
        table = headline[tasks].T  # dvc.yaml's milestone_success plot: agent keys by task
        table.columns = [keys[str(label)] for label in table.columns]
        table.index.name = "milestone"
        with atomic_path(metrics / "milestones.tsv") as tmp_file:
            table.to_csv(tmp_file, sep="\t", float_format="%.2f")
    return headline
