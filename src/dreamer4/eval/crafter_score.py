"""Crafter's success rates and score, computed as Crafter's `analysis/common.py` does.

success_rate[k] = 100 · mean over episodes of (count_k ≥ 1);
score = exp(nanmean(log(1 + success_rate))) − 1  (a geometric mean with a +1 % offset).

`dreamer4 score PATH...` prints both for any Crafter `stats.jsonl` (ours, or Crafter's own).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS
from dreamer4.errors import StageError


def success_table(episodes: Iterable[Mapping[str, int]]) -> pd.DataFrame:
    """One row per achievement: `achievement`, `success_rate` (% of episodes with count ≥ 1)."""
    counts = pd.DataFrame(list(episodes), columns=list(CRAFTER_ACHIEVEMENTS)).fillna(0)
    if counts.empty:
        raise ValueError("success_table needs at least one episode")
    rates = (counts >= 1).mean(axis=0) * 100.0
    return pd.DataFrame({"achievement": rates.index, "success_rate": rates.to_numpy()})


def crafter_score(success_rates: Iterable[float] | np.ndarray) -> Any:
    """Crafter's score from per-achievement success rates in % (a float), or one score per
    row of an array whose last axis runs over the achievements (the bootstrap's resamples)."""
    if not isinstance(success_rates, np.ndarray):
        success_rates = np.asarray(list(success_rates), dtype=np.float64)
    score = np.exp(np.nanmean(np.log1p(success_rates.astype(np.float64)), axis=-1)) - 1.0
    return float(score) if score.ndim == 0 else score


def read_stats(path: Path) -> list[dict[str, int]]:
    """Achievement counts per episode from a Crafter `stats.jsonl` (Crafter's StatsRecorder
    format, also written by `collect` and the evaluation), or from the `stats.jsonl` inside a
    folder. Errors name the file and the line."""
    path = Path(path)
    file = path / "stats.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such stats file (Crafter stats.jsonl expected)")
    episodes = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise StageError(f"{file}:{number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not any(k.startswith("achievement_") for k in row):
            raise StageError(f"{file}:{number}: no `achievement_<name>` counts (not Crafter stats)")
        episodes.append(
            {
                k.removeprefix("achievement_"): int(v)
                for k, v in row.items()
                if k[:12] == "achievement_"
            }
        )
    if not episodes:
        raise StageError(f"{file}: no episodes")
    return episodes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, help="stats.jsonl files or folders holding one")


def run(args: argparse.Namespace) -> int:
    """Print the success rate per achievement (one column per path) and each Crafter score."""
    columns, scores = {}, {}
    for path in args.paths:
        episodes = read_stats(path)
        table = success_table(episodes)
        columns[str(path)] = table.set_index("achievement")["success_rate"]
        scores[str(path)] = (crafter_score(table["success_rate"]), len(episodes))
    print(pd.DataFrame(columns).to_string(float_format=lambda v: f"{v:.1f}"))
    for path, (score, n) in scores.items():
        print(f"{path}: score {score:.2f} % over {n} episodes")
    return 0
