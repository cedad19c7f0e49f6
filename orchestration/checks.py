"""Asset checks: the great-expectations suites run again on what a stage materialized.

The suites' modules (great-expectations, torch) are imported inside the checks, not at the
top: every Dagster step process, the UI's code server and each `dagster` command load this code
location, and those two imports were about 6 s of its 12 s load on a 2-core machine, paid by
every step though only the three check steps use them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from dreamer4.params import load_profile


def _result(report: Any, **counts: int) -> dg.AssetCheckResult:
    """A check result from a `run_suites` report: passed, expectations, failures, counts."""
    failures = "\n".join(f"- {f}" for f in report.failures) or "none"
    return dg.AssetCheckResult(
        passed=report.success,
        metadata={
            "expectations": report.evaluated,
            "failures": dg.MetadataValue.md(failures),
            **counts,
        },
    )


def episode_dataset_suite(repo_root: Path, outs: tuple[str, ...]) -> dg.AssetCheckResult:
    """The suites of `dreamer4.episodes.validation` on the files as they are on disk now.

    Counts come from three places (step index, the readers' record counts in episodes.parquet,
    the frame chunk files), so a truncated chunk or an edited index fails the check.
    """

    from dreamer4.episodes.dataset import chunk_lengths
    from dreamer4.episodes.validation import episode_table, validate

    folder = repo_root / outs[0]
    steps = pd.read_parquet(folder / "steps.parquet")
    records = pd.read_parquet(folder / "episodes.parquet").set_index("episode")["actions"]
    table = episode_table(steps, records, chunk_lengths(folder))
    ingest = load_profile(repo_root / "params.yaml").get("ingest", {})
    report = validate(steps, table, ingest.get("min_length", 2), ingest.get("max_length", 10**6))
    return _result(report, episodes=len(table), steps=len(steps))


def latent_tokens_suite(repo_root: Path, outs: tuple[str, ...]) -> dg.AssetCheckResult:
    """The latents suite of `encode` on the files as they are on disk now: every latent
    finite and within [-1, 1], one per step, shapes as the tokenizer says."""

    from dreamer4.stages.encode import validate_latents

    folder = repo_root / outs[0]
    shape = json.loads((folder / "latents.json").read_text())["shape"]
    report = validate_latents(folder, *shape)
    return _result(report)


def imagination_dataset_suite(repo_root: Path, outs: tuple[str, ...]) -> dg.AssetCheckResult:
    """The imagination suite of `imagine` on the files on disk: all finite, rewards and values
    within the two-hot range of the heads, one row per rollout step."""

    from dreamer4.stages.imagine import validate_rollouts

    folder = repo_root / outs[0]
    summary = json.loads((folder / "summary.json").read_text())
    table = pd.read_parquet(folder / "rollouts.parquet")
    report = validate_rollouts(table, summary["rollouts"], summary["horizon"], *summary["range"])
    return _result(report, rows=len(table))


# asset name -> (check name, description, function of (repo root, stage outs))
CHECKS: dict[str, tuple[str, str, Callable[[Path, tuple[str, ...]], dg.AssetCheckResult]]] = {
    "episode_dataset": (
        "episode_dataset_suite",
        "great-expectations suites over steps.parquet and episodes.parquet",
        episode_dataset_suite,
    ),
    "latent_tokens": (
        "latent_tokens_suite",
        "great-expectations suite over the latents: finite, within [-1, 1], shapes, one per step",
        latent_tokens_suite,
    ),
    "imagination_dataset": (
        "imagination_dataset_suite",
        "great-expectations suite over the rollouts: finite, rewards/values in the two-hot range",
        imagination_dataset_suite,
    ),
}
