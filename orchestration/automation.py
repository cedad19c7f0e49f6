"""Retraining without a person: a weekly schedule and a sensor on the raw-episode inbox.

Both ask DVC what is stale (`dvc status`: stages whose code, params or deps changed, or whose
outputs are missing) and request a run of exactly those assets and everything downstream of
them, so a tick with nothing stale does no work and says why. The cron, time zone, inbox and
polling interval come from params.yaml (`orchestration`, `paths.inbox`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from dreamer4.episodes.readers import find_raw_episodes
from orchestration import dvc_cli
from orchestration.dvc_graph import Stage

RETRAIN_JOB = "retrain"


def settings(root: Path) -> dict[str, Any]:
    """`orchestration` of params.yaml, with `inbox` (from `paths`) resolved under `root`."""

    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    own = {
        "owners": [],
        "retrain_cron": "0 3 * * 1",
        "timezone": "UTC",
        "inbox_interval_s": 60,
        "record_interval_s": 30,
        "retrain_selection": "*",
        **(params.get("orchestration") or {}),
    }
    own["inbox"] = root / params.get("paths", {}).get("inbox", "inbox")
    return own


def downstream(stages: Iterable[Stage], assets: set[str]) -> set[str]:
    """`assets` and every asset that depends on one of them, transitively."""
    stages = list(stages)
    found = set(assets)
    changed = True
    while changed:
        changed = False
        for s in stages:
            if s.asset not in found and found & set(s.upstream):
                found.add(s.asset)
                changed = True
    return found


def stale_assets(root: Path, stages: list[Stage], wait: bool = False) -> set[str]:
    """Assets whose stage DVC would rerun now: those `dvc status` reports, and downstream
    (`wait`: for DVC's repository lock, else DvcBusy while another DVC holds it)."""

    changed = dvc_cli.changed_stages(root, wait=wait)
    by_stage = {s.name: s.asset for s in stages}
    return downstream(stages, {by_stage[name] for name in changed if name in by_stage})


def retrain_assets(selection: str, assets: list[dg.AssetsDefinition]) -> set[str]:
    """The assets `orchestration.retrain_selection` (a Dagster selection string: "*",
    "group:agent", "not group:world_model", …) lets the schedule and the inbox sensor run."""
    try:
        chosen = dg.AssetSelection.from_string(selection).resolve(assets)
    except Exception as err:  # Dagster's parser and resolver raise several kinds
        raise ValueError(
            f"params.yaml: orchestration.retrain_selection = {selection!r}: {err}"
        ) from err
    if not chosen:
        raise ValueError(f"params.yaml: orchestration.retrain_selection = {selection!r}: no asset")
    return {key.path[-1] for key in chosen}


def _request(
    root: Path, stages: list[Stage], allowed: set[str], gpu: set[str], reason: str, **kw: Any
) -> dg.RunRequest | str:
    """A run of the stale assets the retrain selection allows, or why there is none; tagged
    `dreamer4/gpu=true` when one of them trains on a GPU (the cluster's run queue lets one such
    run go at a time: infra/dagster/dagster.yaml)."""
    stale = stale_assets(root, stages)
    if not stale:
        return "dvc status: every stage is up to date"
    if not stale & allowed:
        return f"dvc status: stale {sorted(stale)}, none in orchestration.retrain_selection"
    ordered = [s.asset for s in stages if s.asset in stale & allowed]
    tags = {"dreamer4/reason": reason, "dreamer4/gpu": str(bool(stale & allowed & gpu)).lower()}
    return dg.RunRequest(asset_selection=[dg.AssetKey(a) for a in ordered], tags=tags, **kw)


def retrain_schedule(
    root: Path,
    stages: list[Stage],
    job: dg.UnresolvedAssetJobDefinition,
    allowed: set[str],
    gpu: set[str],
):
    """Every `retrain_cron`: materialize what is stale, or skip saying nothing is."""
    own = settings(root)

    @dg.schedule(
        name="retrain_schedule",
        cron_schedule=own["retrain_cron"],
        execution_timezone=own["timezone"],
        job=job,
        description="Materializes the stale assets (dvc status) and everything downstream.",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def retrain(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        try:
            request = _request(root, stages, allowed, gpu, "schedule")
        except dvc_cli.DvcBusy as busy:  # a `dvc repro` by hand is running: the next tick asks
            return dg.SkipReason(f"DVC is busy: {busy}")
        return dg.SkipReason(request) if isinstance(request, str) else request

    return retrain


def inbox_fingerprint(inbox: Path) -> dict[str, str]:
    """Episode id → a digest of its files' names, sizes and mtimes (a changed file counts)."""

    if not inbox.is_dir():
        return {}
    found = {}
    for raw in find_raw_episodes(inbox):
        stat = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in raw.files]
        found[raw.id] = hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:16]
    return found


def inbox_sensor(
    root: Path,
    stages: list[Stage],
    job: dg.UnresolvedAssetJobDefinition,
    allowed: set[str],
    gpu: set[str],
):
    """Polls `paths.inbox`; new or changed episodes there start a run of what is now stale
    (`collect` depends on the inbox, so at least it and everything downstream)."""
    own = settings(root)
    inbox = Path(own["inbox"])

    @dg.sensor(
        name="inbox_sensor",
        job=job,
        minimum_interval_seconds=int(own["inbox_interval_s"]),
        description=f"New raw episodes in {inbox} start a run of the stale assets.",
        default_status=dg.DefaultSensorStatus.STOPPED,
    )
    def watch(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        seen = json.loads(context.cursor) if context.cursor else {}
        now = inbox_fingerprint(inbox)
        new = sorted(k for k, v in now.items() if seen.get(k) != v)
        if not new:
            return dg.SkipReason(f"{inbox}: no new episodes ({len(now)} seen)")
        key = hashlib.sha256(json.dumps([[k, now[k]] for k in new]).encode()).hexdigest()[:16]
        try:
            request = _request(root, stages, allowed, gpu, "inbox", run_key=f"inbox-{key}")
        except dvc_cli.DvcBusy as busy:  # cursor kept: the next tick sees these episodes again
            return dg.SkipReason(f"{len(new)} new episodes; DVC is busy: {busy}")
        skip = request if isinstance(request, str) else None
        return dg.SensorResult(
            run_requests=[] if skip else [request],
            cursor=json.dumps(now, sort_keys=True),
            skip_reason=f"{len(new)} new episodes, but {skip}" if skip else None,
        )

    return watch
