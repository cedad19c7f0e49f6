"""`dreamer4 player-report`: how well the scripted player plays, per Crafter achievement.

Runs N episodes at full skill (world seeds from `--seed`, as `collect` derives them) without
rendering, about 2× faster. The player reads the game state, not pixels; skipping rendering only
changes Crafter's night-time noise draws, so trajectories differ from rendered ones but are just
as representative. Prints one row per achievement with its success rate in %, then Crafter's
score and the mean episode length.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dreamer4.envs.crafter_env import episode_seed, make_env
from dreamer4.envs.play import play_episode
from dreamer4.envs.scripted_player import ScriptedPlayer
from dreamer4.eval.crafter_score import crafter_score, success_table
from dreamer4.parallel import imap_workers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=int, default=100, help="episodes to play (default 100)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument(
        "--max-steps", type=int, default=10000, help="episode length cap (default 10000)"
    )
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--csv", type=Path, help="also write the table as CSV here")


def _play(job: tuple[int, int, int]) -> dict[str, Any]:

    seed, index, max_steps = job
    env = make_env(episode_seed(seed, index), length=max_steps, render=False)
    played = play_episode(env, ScriptedPlayer(1.0, seed=index), record=False)
    return {**played.achievements, "_length": played.length}


def player_report(episodes: int, seed: int, max_steps: int = 10000, workers: int = 1):
    """(success table, score, mean length) over `episodes` full-skill episodes."""

    jobs = [(seed, i, max_steps) for i in range(episodes)]
    results = list(
        tqdm(
            imap_workers(_play, jobs, workers),
            total=len(jobs),
            desc="player-report",
            unit="episode",
        )
    )
    lengths = [r.pop("_length") for r in results]
    table = success_table(results)
    return table, crafter_score(table["success_rate"]), sum(lengths) / len(lengths)


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise SystemExit("player-report: --episodes must be at least 1")
    table, score, mean_length = player_report(
        args.episodes, args.seed, args.max_steps, args.workers
    )
    print(table.to_string(index=False, float_format=lambda x: f"{x:6.1f}"))
    print(f"score {score:.1f}  episodes {args.episodes}  mean length {mean_length:.0f}")
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0
