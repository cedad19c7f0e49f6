"""great-expectations suites over the episode dataset: the step index and the episode table.

Run inside `ingest` (a failing suite fails the stage, so a bad dataset never becomes an output)
and again by the Dagster asset check on the materialized files. Bad *episodes* never reach these
suites: `ingest` quarantines them first; the suites guard the dataset as a whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from dreamer4.episodes.actions import CRAFTER_ACTIONS

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


@dataclass
class ValidationReport:
    """Outcome of both suites: overall success and one line per failed expectation."""

    success: bool
    failures: list[str] = field(default_factory=list)
    evaluated: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "evaluated": self.evaluated, "failures": self.failures}


def _steps_suite(gx: Any, steps: pd.DataFrame) -> list[Any]:
    e = gx.expectations
    cols = [
        e.ExpectCompoundColumnsToBeUnique(column_list=["episode", "step"]),
        e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "eval"]),
        e.ExpectColumnValuesToBeBetween(column="reward", min_value=-1e6, max_value=1e6),
        e.ExpectColumnValuesToBeBetween(column="step", min_value=0),
    ]
    cols += [
        e.ExpectColumnValuesToNotBeNull(column=c)
        for c in ("episode", "step", "split", "reward", "done", "labelled", "frame_chunk")
    ]
    if "action/crafter" in steps:
        cols.append(
            e.ExpectColumnValuesToBeBetween(
                column="action/crafter", min_value=0, max_value=len(CRAFTER_ACTIONS) - 1
            )
        )
    if "action/camera" in steps:
        cols.append(
            e.ExpectColumnValuesToBeBetween(column="action/camera", min_value=0, max_value=120)
        )
    return cols


def _episodes_suite(gx: Any, min_length: int, max_length: int) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="episode"),
        e.ExpectColumnPairValuesToBeEqual(column_A="frames", column_B="actions"),
        e.ExpectColumnPairValuesToBeEqual(column_A="frames", column_B="length"),
        e.ExpectColumnValuesToBeBetween(
            column="length", min_value=min_length, max_value=max_length
        ),
    ]


def episode_table(
    steps: pd.DataFrame, actions: pd.Series, chunk_lengths: Mapping[int, int]
) -> pd.DataFrame:
    """Per episode, three counts that must agree, each from a different place.

    `length`: rows of the step index (max step + 1); `actions`: label records the reader read
    from the source (jsonl lines, npz steps), indexed by episode; `frames`: index rows pointing
    at a frame that exists in its chunk file.
    """
    limit = steps["frame_chunk"].astype("Int64").map(chunk_lengths).fillna(-1)
    stored = steps["frame_index"].astype("Int64").fillna(10**12) < limit
    g = steps.assign(_stored=stored.astype(bool)).groupby("episode", sort=True)
    table = pd.DataFrame({"length": g["step"].max() + 1, "frames": g["_stored"].sum()})
    table["actions"] = actions.reindex(table.index).astype("Int64")
    return table.reset_index()


def validate(
    steps: pd.DataFrame, episodes: pd.DataFrame, min_length: int, max_length: int
) -> ValidationReport:
    """Run both suites; `episodes` is an `episode_table`."""

    return run_suites(
        "episode_dataset",
        [
            ("steps", steps, _steps_suite(gx, steps)),
            ("episodes", episodes, _episodes_suite(gx, min_length, max_length)),
        ],
    )


def run_suites(
    source_name: str, suites: list[tuple[str, pd.DataFrame, list[Any]]]
) -> ValidationReport:
    """Run named suites of GX expectations over dataframes in an ephemeral context; every failed
    expectation becomes one line naming the table, the expectation and example values."""

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas(source_name)
    failures: list[str] = []
    evaluated = 0
    for name, frame, expectations in suites:
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        run = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        ).run(batch_parameters={"dataframe": frame})
        for res in run.results:
            evaluated += 1
            if not res.success:
                cfg = res.expectation_config
                args = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
                sample = res.result.get("partial_unexpected_list", [])[:3]
                failures.append(f"{name}: {cfg.type} {args} failed (e.g. {sample})")
    return ValidationReport(success=not failures, failures=failures, evaluated=evaluated)
