"""What DVC produced, recorded in Dagster: the UI after `make run` or a `dvc repro` by hand.

A stage run by `dvc repro` never passes through Dagster, so without this its UI would say "Never
materialized" beside a full dvc.lock. Each stage whose outputs DVC recorded gets a *runless
materialization* (`DagsterInstance.report_runless_asset_event`, Dagster's way to record an asset
materialized outside it) with the metadata, data version (the md5 in dvc.lock, or one over the
stage's several outputs) and code version a materialization through Dagster carries, so numbers
plot across runs and Dagster's stale markers follow DVC. Materializations, not observations: DVC
did materialize the data, and an observation would leave the asset "Never materialized". Nothing
is recomputed: the metadata is read from the stage's outputs. Each event also names the data
versions and events of the asset's upstream assets, as Dagster's own do, so Dagster calls it
fresh until an upstream one changes. Recorded: only stages `dvc status` calls up to date (not
one DVC is running or would rerun), upstream first, none while a Dagster run is under way (it
records its own); a stage whose dvc.lock hash is the one last recorded is skipped, so recording
twice records nothing new.

Two ways in: `python -m orchestration.record` (`make run` calls it after `dvc repro`), and the
`dvc_lock_sensor` (`make dagster`'s daemon: a `dvc repro` by hand appears within its interval).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    NULL_EVENT_POINTER,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)

from orchestration import dvc_cli
from orchestration.automation import stale_assets
from orchestration.dvc_graph import read_stages
from orchestration.metadata import stage_metadata


def data_version(outs: list[dict]) -> str | None:
    """The md5 DVC recorded for a stage's one out; for several, an md5 over every out's path
    and md5 (a change to any of them is a new version); None while one has no md5 yet."""
    if not outs or not all(isinstance(o, dict) and o.get("md5") for o in outs):
        return None
    if len(outs) == 1:
        return outs[0]["md5"]
    lines = sorted(f"{o['path']} {o['md5']}" for o in outs)
    return hashlib.md5("\n".join(lines).encode()).hexdigest()


def lock_hashes(root: Path) -> dict[str, str]:
    """Stage → its outputs' data version in dvc.lock (`data_version`); empty while dvc.lock is
    missing or being rewritten (DVC writes it in place)."""
    lock = root / "dvc.lock"
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return {}
    found = {
        name: data_version(entry.get("outs") or [])
        for name, entry in stages.items()
        if isinstance(entry, dict)
    }
    return {name: version for name, version in found.items() if version}


def latest(instance: dg.DagsterInstance, asset: str) -> tuple[str | None, int | None]:
    """The data version and the event's storage id of the asset's latest materialization."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None, None
    return records[0].asset_materialization.tags.get(DATA_VERSION_TAG), records[0].storage_id


def busy(instance: dg.DagsterInstance) -> bool:
    """A Dagster run is under way: it records its own materializations (no doubles)."""
    active = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    return bool(instance.get_runs_count(dg.RunsFilter(statuses=active)))


def record(root: Path, instance: dg.DagsterInstance, wait: bool = False) -> list[str]:
    """Record, upstream first, every stage DVC calls up to date whose dvc.lock hash is not the
    asset's latest data version; the assets recorded. Each carries, as a materialization
    through Dagster would, the data versions and events of its upstream assets, so Dagster
    calls it fresh until one of them changes. Nothing while a Dagster run is under way."""
    if busy(instance):
        return []
    stages, hashes = read_stages(root), lock_hashes(root)
    stale = stale_assets(root, stages, wait)  # running, or not rerun since inputs changed
    by_asset = {s.asset: s for s in stages}
    recorded = []
    for stage in stages:  # dvc.yaml order: every upstream stage comes first
        md5 = hashes.get(stage.name)
        if md5 is None or stage.asset in stale or latest(instance, stage.asset)[0] == md5:
            continue
        if not all((root / out).exists() for out in stage.outs):
            continue  # dvc.lock names outputs this checkout does not have (pull them first)
        try:
            metadata = stage_metadata(stage.asset, root, stage.outs)
        except (OSError, ValueError, KeyError) as err:  # an output DVC is rewriting, …
            print(f"dagster: {stage.asset} not recorded: {err!r}", file=sys.stderr)
            continue
        tags = {DATA_VERSION_TAG: md5, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}
        if stage.code_version:
            tags[CODE_VERSION_TAG] = stage.code_version
        for up in stage.upstream:
            version, pointer = latest(instance, up)
            key = dg.AssetKey(up)
            tags[get_input_data_version_tag(key)] = version or hashes.get(by_asset[up].name, "")
            tags[get_input_event_pointer_tag(key)] = str(pointer or NULL_EVENT_POINTER)
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=stage.asset,
                description=f"DVC stage `{stage.name}`, recorded from dvc.lock",
                metadata={"dvc_ran": True, "dvc_status": "ran outside Dagster", **metadata},
                tags=tags,
            )
        )
        recorded.append(stage.asset)
    return recorded


def dvc_lock_sensor(root: Path, interval_s: int) -> dg.SensorDefinition:
    """Polls dvc.lock; what changed there since the last recording becomes materializations
    (the stages read anew each tick: their code versions are those of what DVC ran)."""

    @dg.sensor(
        name="dvc_lock_sensor",
        minimum_interval_seconds=interval_s,
        description="Records the outputs of `dvc repro` runs made outside Dagster as "
        "materializations (metadata read from the outputs; nothing recomputed).",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def watch(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        try:
            recorded = record(root, context.instance)
        except dvc_cli.DvcBusy as busy:  # a `dvc repro` is running: recorded when it is done
            return dg.SkipReason(f"DVC is busy: {busy}")
        return dg.SkipReason(
            f"recorded {', '.join(recorded)} from dvc.lock" if recorded else "nothing new"
        )

    return watch


def main(argv: list[str] | None = None) -> int:
    """`python -m orchestration.record [ROOT]`: record into the instance of `$DAGSTER_HOME`."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else ".").resolve()
    with dg.DagsterInstance.get() as instance:
        try:  # the daemon's sensor may be asking DVC at this moment: wait for it
            recorded = record(root, instance, wait=True)
        except dvc_cli.DvcBusy as busy:  # a stage is running: its outputs are not done
            print(f"dagster: nothing recorded, DVC is busy: {busy}", file=sys.stderr)
            return 1
    print(f"dagster: recorded {', '.join(recorded) if recorded else 'nothing new'} from dvc.lock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
