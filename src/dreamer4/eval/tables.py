"""The evaluation's tables (the paper's Tables 7 and 8, in Crafter), built with pandas.

Every table derives from one frame of episodes, one row per episode played (or recorded):
`agent`, `episode`, `seed`, `length`, `reward`, `achievement_<name>` (Crafter's counts) and
`first/<name>` (the step at which the achievement was first reached, NaN if never), and
`actions/<name>` (times each Crafter action was chosen; NaN for episodes that did not count
them).

Success rates carry a 95% Wilson score interval: with tens of episodes per agent, the normal
approximation's interval leaves [0, 100] % at rates near 0 or 100 %, where most Crafter
achievements sit; Wilson's stays inside and is not empty at 0 successes.

The Crafter score (a geometric mean of 1 + rate over 22 rates, minus 1) has no closed-form
interval: its 95 % interval is a percentile bootstrap over episodes (seeded per agent, so a
report is reproducible and an agent's interval does not depend on the others). Two agents are
compared (`pairwise_tests`, Table 7's claims) per milestone by two exact two-sided tests, exact
at any count, where most milestones have a handful of successes:
- `p_paired`, McNemar's exact test (a binomial test on the worlds where exactly one of the two
  agents succeeded): the evaluation plays every agent on the same world seeds, so the episodes
  come in pairs, and a world that makes both succeed or both fail says nothing about which is
  better. This is the test the report's claims are judged by.
- `p_value`, Fisher's exact test, which treats the two agents' episodes as independent samples
  (the only choice where the seeds do not match, e.g. against recorded data).
The score is compared by the bootstrap interval of the difference (episodes resampled
independently: conservative where worlds make both agents succeed or fail together).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest, fisher_exact

from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS, CRAFTER_ACTIONS
from dreamer4.eval.crafter_score import crafter_score

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal
# the columns of `pairwise_tests`
TEST_COLUMNS = (
    *"agent versus measure value versus_value difference".split(),
    *"ci_low ci_high p_value p_paired test".split(),
)


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
    `seed`, `first_step`: achievement → step, and `actions`: action → count)."""
    rows = []
    for i, s in enumerate(stats):
        first = s.get("first_step") or {}
        actions = s.get("actions")
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
        for name in CRAFTER_ACTIONS:
            row[f"actions/{name}"] = np.nan if actions is None else float(actions.get(name, 0))
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


def action_table(episodes: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame | None:
    """Share of steps (%) each agent spent on each Crafter action: one row per action, one
    column per agent (its label) that counted its actions; None if none did (or no steps). A
    policy's habits show here where the score hides them (RL that stops pressing `sleep` loses
    `wake_up`)."""
    columns = [f"actions/{a}" for a in CRAFTER_ACTIONS]
    counted = episodes.dropna(subset=columns)
    if counted.empty or counted["length"].sum() == 0:
        return None
    grouped = counted.groupby("agent", sort=False)
    steps = grouped[columns].sum()
    shares = 100.0 * steps.div(steps.sum(axis=1), axis=0)
    table = shares.T
    table.index = list(CRAFTER_ACTIONS)
    table.index.name = "action"
    table.columns = [labels.get(a, a) for a in table.columns]
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


def _successes(episodes: pd.DataFrame, agent: str) -> np.ndarray:
    """(episodes, 22) bool: which achievements each of `agent`'s episodes reached (count ≥ 1,
    as `success_table` counts a success)."""
    columns = [f"achievement_{a}" for a in CRAFTER_ACHIEVEMENTS]
    counts = episodes.loc[episodes["agent"] == agent, columns]
    if counts.empty:
        raise ValueError(f"no episodes of agent {agent!r}")
    return counts.to_numpy() >= 1


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p of paired successes `a`, `b` (bool, same worlds in the same
    order): a binomial test at 1/2 on the discordant pairs; 1 when there are none."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def _paired_order(episodes: pd.DataFrame, a: str, b: str) -> np.ndarray | None:
    """Row positions of `b`'s episodes that put them on `a`'s world seeds in `a`'s order (so
    `_successes(b)[order]` pairs with `_successes(a)`); None unless both played exactly the same
    set of distinct, known seeds."""
    sa, sb = (episodes.loc[episodes["agent"] == x, "seed"].reset_index(drop=True) for x in (a, b))
    if sa.isna().any() or sb.isna().any() or not (sa.is_unique and sb.is_unique):
        return None
    if set(sa) != set(sb):
        return None
    return pd.Series(sb.index, index=sb.values).loc[sa.values].to_numpy()


def _bootstrap_scores(reached: np.ndarray, resamples: int, rng: np.random.Generator) -> Any:
    """Crafter scores (resamples,) of resamples (with replacement) of the episodes' rows."""
    rows = rng.integers(0, len(reached), size=(resamples, len(reached)))
    return crafter_score(100.0 * reached[rows].mean(axis=1))


def score_interval(
    episodes: pd.DataFrame, labels: Mapping[str, str], resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per agent (its label): `score` and its 95 % percentile-bootstrap interval `ci_low`,
    `ci_high`, from `resamples` resamples of its episodes."""
    rows = {}
    for agent in dict.fromkeys(episodes["agent"]):
        reached = _successes(episodes, agent)
        # a generator per agent: its interval does not depend on which agents came before
        boot = _bootstrap_scores(reached, resamples, np.random.default_rng(seed))
        score = crafter_score(100.0 * reached.mean(axis=0))
        rows[labels.get(agent, agent)] = (score, *np.percentile(boot, [2.5, 97.5]))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["score", "ci_low", "ci_high"])
    table.index.name = "agent"
    return table


def pairwise_tests(
    episodes: pd.DataFrame,
    pairs: Iterable[tuple[str, str]],
    milestones: tuple[str, ...],
    labels: Mapping[str, str],
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Table 7's claims as tests, one row per (pair, measure) for the pairs whose agents both
    played: `agent`, `versus` (labels), `measure` ("score" or a milestone), `value`,
    `versus_value` (score, or success rate in %), `difference`, then for the score the 95 %
    bootstrap interval of the difference (`ci_low`, `ci_high`), for a milestone Fisher's
    exact two-sided `p_value` and, where both agents played the same world seeds, McNemar's
    exact two-sided `p_paired` (NaN otherwise); `test` names them."""
    present = set(episodes["agent"])
    index = {m: CRAFTER_ACHIEVEMENTS.index(m) for m in milestones}
    rows = []
    for a, b in pairs:
        if a not in present or b not in present:
            continue
        rng = np.random.default_rng(seed)
        ra, rb = _successes(episodes, a), _successes(episodes, b)
        boot = _bootstrap_scores(ra, resamples, rng) - _bootstrap_scores(rb, resamples, rng)
        sa, sb = crafter_score(100.0 * ra.mean(0)), crafter_score(100.0 * rb.mean(0))
        pair = {"agent": labels.get(a, a), "versus": labels.get(b, b)}
        low, high = np.percentile(boot, [2.5, 97.5])
        rows.append({**pair, "measure": "score", "value": sa, "versus_value": sb,
                     "difference": sa - sb, "ci_low": low, "ci_high": high, "p_value": np.nan,
                     "p_paired": np.nan,
                     "test": "bootstrap 95 % interval of the difference"})  # fmt: skip
        order = _paired_order(episodes, a, b)
        test = "Fisher's exact, two-sided" + (
            "; McNemar's exact, two-sided, paired by world seed" if order is not None else ""
        )
        for m, j in index.items():
            ka, kb = int(ra[:, j].sum()), int(rb[:, j].sum())
            _, p = fisher_exact([[ka, len(ra) - ka], [kb, len(rb) - kb]], "two-sided")
            pp = mcnemar_exact(ra[:, j], rb[order, j]) if order is not None else np.nan
            va, vb = 100.0 * ka / len(ra), 100.0 * kb / len(rb)
            rows.append({**pair, "measure": m, "value": va, "versus_value": vb,
                         "difference": va - vb, "ci_low": np.nan, "ci_high": np.nan,
                         "p_value": float(p), "p_paired": pp, "test": test})  # fmt: skip
    return pd.DataFrame(rows, columns=list(TEST_COLUMNS))
