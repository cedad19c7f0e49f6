"""Crafter's success rates and score, computed as Crafter's `analysis/common.py` does.

success_rate[k] = 100 · mean over episodes of (count_k ≥ 1);
score = exp(nanmean(log(1 + success_rate))) − 1  (a geometric mean with a +1 % offset).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS


def success_table(episodes: Iterable[Mapping[str, int]]) -> pd.DataFrame:
    """One row per achievement: `achievement`, `success_rate` (% of episodes with count ≥ 1)."""
    counts = pd.DataFrame(list(episodes), columns=list(CRAFTER_ACHIEVEMENTS)).fillna(0)
    if counts.empty:
        raise ValueError("success_table needs at least one episode")
    rates = (counts >= 1).mean(axis=0) * 100.0
    return pd.DataFrame({"achievement": rates.index, "success_rate": rates.to_numpy()})


def crafter_score(success_rates: Iterable[float]) -> float:
    """Crafter's score from per-achievement success rates in %."""
    rates = np.asarray(list(success_rates), dtype=np.float64)
    return float(np.exp(np.nanmean(np.log1p(rates))) - 1.0)
