"""Asset checks: the great-expectations suites run again on what a stage materialized."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import yaml


def episode_dataset_suite(repo_root: Path, outs: tuple[str, ...]) -> dg.AssetCheckResult:
    """The step-index and episode suites of `dreamer4.episodes.validation` on the written files."""
    import pandas as pd

    from dreamer4.episodes.validation import episode_table, validate

    folder = repo_root / outs[0]
    steps = pd.read_parquet(folder / "steps.parquet")
    episodes = pd.read_parquet(folder / "episodes.parquet").drop(columns=["actions", "frames"])
    episodes = episodes.merge(episode_table(steps)[["episode", "actions", "frames"]], on="episode")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    ingest = params["profiles"][params["profile"]]["ingest"]
    report = validate(steps, episodes, ingest.get("min_length", 2), ingest.get("max_length", 10**6))
    return dg.AssetCheckResult(
        passed=report.success,
        metadata={
            "expectations": report.evaluated,
            "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in report.failures) or "none"),
            "episodes": len(episodes),
            "steps": len(steps),
        },
    )


# asset name -> (check name, description, function of (repo root, stage outs))
CHECKS: dict[str, tuple[str, str, Callable[[Path, tuple[str, ...]], dg.AssetCheckResult]]] = {
    "episode_dataset": (
        "episode_dataset_suite",
        "great-expectations suites over steps.parquet and episodes.parquet",
        episode_dataset_suite,
    ),
}
