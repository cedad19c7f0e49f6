"""What DVC produced, recorded in Dagster: the UI after `make run` or a `dvc repro` by hand.

A stage run by `dvc repro` never passes through Dagster, so without this its UI would say
"Never materialized" beside a full dvc.lock. Each stage whose outputs DVC recorded gets a
*runless materialization* (`DagsterInstance.report_runless_asset_event`, Dagster's way to record
an asset materialized outside it) with the metadata, data version (the md5 in dvc.lock) and code
version a materialization through Dagster carries, so numbers plot across runs and Dagster's
stale markers follow DVC. Materializations, not observations: DVC did materialize the data, and
an observation would leave the asset "Never materialized". Nothing is recomputed: the metadata
is read from the stage's outputs. A stage whose dvc.lock hash is the one last recorded is
skipped, so recording twice records nothing new.

Two ways in: `python -m orchestration.record` (`make run` calls it after `dvc repro`), and the
`dvc_lock_sensor` (`make dagster`'s daemon: a `dvc repro` by hand appears within its interval).
"""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
)

from orchestration.dvc_graph import Stage, read_stages
from orchestration.metadata import stage_metadata


def lock_hashes(root: Path) -> dict[str, str]:
    """Stage → the md5 DVC recorded for its first out (the asset's data version)."""
    lock = root / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    return {
        name: entry["outs"][0]["md5"]
        for name, entry in stages.items()
        if entry.get("outs") and entry["outs"][0].get("md5")
    }


def recorded_version(instance: dg.DagsterInstance, asset: str) -> str | None:
    """The data version of the asset's latest materialization, if any."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    return event.asset_materialization.tags.get(DATA_VERSION_TAG)


def pending(
    root: Path, stages: list[Stage], instance: dg.DagsterInstance
) -> list[dg.AssetMaterialization]:
    """A materialization for every stage whose dvc.lock hash is not the asset's latest
    recorded data version (and whose outputs are there to describe)."""
    hashes = lock_hashes(root)
    events = []
    for stage in stages:
        md5 = hashes.get(stage.name)
        if md5 is None or recorded_version(instance, stage.asset) == md5:
            continue
        if not all((root / out).exists() for out in stage.outs):
            continue  # dvc.lock names outputs this checkout does not have (pull them first)
        metadata = {"dvc_ran": True, "dvc_status": "ran outside Dagster (dvc repro)"}
        metadata.update(stage_metadata(stage.asset, root, stage.outs))
        tags = {DATA_VERSION_TAG: md5, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}
        if stage.code_version:
            tags[CODE_VERSION_TAG] = stage.code_version
        events.append(
            dg.AssetMaterialization(
                asset_key=stage.asset,
                description=f"DVC stage `{stage.name}`, recorded from dvc.lock",
                metadata=metadata,
                tags=tags,
            )
        )
    return events


def record(root: Path, instance: dg.DagsterInstance) -> list[str]:
    """Record what `pending` finds; the assets recorded."""
    events = pending(root, read_stages(root), instance)
    for event in events:
        instance.report_runless_asset_event(event)
    return [event.asset_key.to_user_string() for event in events]


def dvc_lock_sensor(root: Path, stages: list[Stage], interval_s: int) -> dg.SensorDefinition:
    """Polls dvc.lock; what changed there since the last recording becomes materializations."""

    @dg.sensor(
        name="dvc_lock_sensor",
        minimum_interval_seconds=interval_s,
        description="Records the outputs of `dvc repro` runs made outside Dagster as "
        "materializations (metadata read from the outputs; nothing recomputed).",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def watch(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        events = pending(root, stages, context.instance)
        if not events:
            return dg.SkipReason("dvc.lock: every stage's outputs already recorded")
        return dg.SensorResult(asset_events=events)

    return watch


def main(argv: list[str] | None = None) -> int:
    """`python -m orchestration.record [ROOT]`: record into the instance of `$DAGSTER_HOME`."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else ".").resolve()
    with dg.DagsterInstance.get() as instance:
        recorded = record(root, instance)
    print(f"dagster: recorded {', '.join(recorded) if recorded else 'nothing new'} from dvc.lock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
