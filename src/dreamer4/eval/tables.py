"""The evaluation's tables (the paper's Tables 7 and 8, in Crafter), built with pandas.

Every table derives from one frame of episodes, one row per episode played (or recorded):
`agent`, `episode`, `seed`, `length`, `reward`, `achievement_<name>` (Crafter's counts) and
`first/<name>` (the step at which the achievement was first reached, NaN if never).

Success rates carry a 95% Wilson score interval: with tens of episodes per agent, the normal
approximation's interval leaves [0, 100] % at rates near 0 or 100 %, where most Crafter
achievements sit; Wilson's stays inside and is not empty at 0 successes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS
from dreamer4.eval.crafter_score import crafter_score

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def wilson_interval(successes: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[Any, Any]:
    """Wilson score interval of a binomial proportion, in % (arrays or scalars)."""
    k, n = np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return 100 * np.clip(centre - half, 0, 1), 100 * np.clip(centre + half, 0, 1)


def episode_rows(agent: str, stats: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The episodes frame of one agent from stats lines (Crafter's format, plus optional
    `seed` and `first_step`: achievement → step)."""
    rows = []
    for i, s in enumerate(stats):
        first = s.get("first_step") or {}
        row: dict[str, Any] = {
            "agent": agent,
            "episode": i,
            "seed": s.get("seed"),
            "length": int(s["length"]),
            "reward": float(s["reward"]),
        }
        for name in CRAFTER_ACHIEVEMENTS:
            row[f"achievement_{name}"] = int(s.get(f"achievement_{name}", 0))
            row[f"first/{name}"] = float(first[name]) if name in first else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def success_table(episodes: pd.DataFrame) -> pd.DataFrame:
    """Long table: `agent`, `achievement`, `episodes`, `successes`, `success_rate`, `ci_low`,
    `ci_high` (all rates in %), agents in the frame's order, achievements in Crafter's."""
    counts = [f"achievement_{a}" for a in CRAFTER_ACHIEVEMENTS]
    grouped = episodes.groupby("agent", sort=False)
    successes = grouped[counts].agg(lambda c: int((c >= 1).sum()))
    successes.columns = list(CRAFTER_ACHIEVEMENTS)
    table = successes.reset_index().melt(
        id_vars="agent", var_name="achievement", value_name="successes"
    )
    table["episodes"] = table["agent"].map(grouped.size())
    table["success_rate"] = 100.0 * table["successes"] / table["episodes"]
    table["ci_low"], table["ci_high"] = wilson_interval(table["successes"], table["episodes"])
    columns = ["agent", "achievement", "episodes", "successes", "success_rate", "ci_low", "ci_high"]
    return table[columns]


def headline_table(
    episodes: pd.DataFrame, milestones: tuple[str, ...], labels: Mapping[str, str]
) -> pd.DataFrame:
    """Table 7 in Crafter: one row per agent (its label), the Crafter score over all 22
    achievements, mean return and length, then the success rate (%) of each milestone in
    tech-tree order."""
    success = success_table(episodes)
    rates = success.pivot(index="agent", columns="achievement", values="success_rate")
    grouped = episodes.groupby("agent", sort=False)
    order = list(grouped.size().index)
    table = pd.DataFrame(
        {
            "episodes": grouped.size(),
            "score": [crafter_score(rates.loc[a, list(CRAFTER_ACHIEVEMENTS)]) for a in order],
            "return": grouped["reward"].mean(),
            "length": grouped["length"].mean(),
        },
        index=order,
    )
    for m in milestones:
        table[m] = rates.loc[order, m]
    table.index = [labels.get(a, a) for a in order]
    table.index.name = "agent"
    return table


def time_to_milestone(
    episodes: pd.DataFrame, milestones: tuple[str, ...], labels: Mapping[str, str]
) -> pd.DataFrame:
    """Table 8 in Crafter: mean steps to first reach each milestone over the episodes that
    reached it (NaN where none did), one row per agent, plus `n/<milestone>` counts."""
    grouped = episodes.groupby("agent", sort=False)
    order = list(grouped.size().index)
    table = pd.DataFrame(index=order)
    for m in milestones:
        table[m] = grouped[f"first/{m}"].mean()
    for m in milestones:
        table[f"n/{m}"] = grouped[f"first/{m}"].count()
    table.index = [labels.get(a, a) for a in order]
    table.index.name = "agent"
    return table
