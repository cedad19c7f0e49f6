"""Dagster definitions built from dvc.yaml: materializing an asset runs its stage through DVC.

`dvc repro --single-item <stage>` reruns the stage only when its deps, params or command
changed, so an up-to-date asset is skipped (the materialization says so) and dvc.lock stays the
record. Each asset's code version is its stage's command, code and params (`dvc_graph`), its
data version the md5 DVC records for its outputs (`record.data_version`), so Dagster's stale
markers follow DVC. The GPU stages carry the `dagster-k8s/config` tags of
`infra/dagster/gpu_tags.yaml` for runs on Kubernetes. The repository root is `$DREAMER4_REPO`,
else the checkout this file lives in.
"""

import json
import os
from pathlib import Path

import dagster as dg
import yaml

from orchestration import dvc_cli
from orchestration.automation import (
    RETRAIN_JOB,
    inbox_sensor,
    retrain_assets,
    retrain_schedule,
    settings,
)
from orchestration.checks import CHECKS
from orchestration.dvc_graph import Stage, read_stages
from orchestration.metadata import stage_metadata
from orchestration.record import dvc_lock_sensor, lock_hashes

DEFAULT_ROOT = Path(os.environ.get("DREAMER4_REPO", Path(__file__).resolve().parent.parent))


class DvcRepo(dg.ConfigurableResource):
    """The DVC repository whose stages the assets materialize."""

    root: str

    def repro(self, stage: str, log: dg.DagsterLogManager) -> str:
        """Bring the stage up to date; "up to date, skipped" or "ran". Raises on failure.

        DVC's own status decides (`dvc status --json`, not its printed output): a stage whose
        command, code, params and deps match dvc.lock and whose outputs are intact is skipped
        without starting DVC's reproduction at all. Otherwise `dvc repro --single-item` runs it
        (or restores it from DVC's run cache); its output goes to the step's log. Steps of one
        run may execute at once (multiprocess executor): each waits for DVC's repository lock
        rather than failing. An output another DVC process is writing (a `dvc repro` by hand of
        the same stage) fails the step (DvcBusy), as it fails DVC itself.
        """

        root = Path(self.root)
        if not dvc_cli.status(root, (stage,), wait=True):
            return "up to date, skipped"
        proc = dvc_cli.run(
            root, "repro", "--single-item", stage, wait=True, check=False, merged=True
        )
        for line in proc.stdout.splitlines():
            log.info(line)
        if proc.returncode != 0:
            raise dg.Failure(
                description=f"dvc repro {stage} failed (exit {proc.returncode})",
                metadata={"output": dg.MetadataValue.text(proc.stdout[-5000:])},
            )
        return "ran"

    def lock_hash(self, stage: str) -> str | None:
        """The asset's data version: the md5 DVC recorded for the stage's outs (record.py)."""
        return lock_hashes(Path(self.root)).get(stage)


def k8s_tags(root: Path, stages: list[str]) -> dict[str, dict[str, str]]:
    """Stage → its `dagster-k8s/config` op tag (GPU node selector and limits for training),
    from `infra/dagster/gpu_tags.yaml`; no tags where the file is absent."""

    path = root / "infra/dagster/gpu_tags.yaml"
    tags = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    found = {}
    for stage in stages:
        config = (tags.get("stages") or {}).get(stage, tags.get("default"))
        found[stage] = {"dagster-k8s/config": json.dumps(config, sort_keys=True)} if config else {}
    return found


def _asset(stage: Stage, owners: list[str], op_tags: dict[str, str]) -> dg.AssetsDefinition:
    @dg.asset(
        name=stage.asset,
        deps=[dg.AssetKey(a) for a in stage.upstream],
        description=f"{stage.description}\n\nDVC stage `{stage.name}`: `{stage.cmd}`",
        group_name=stage.group,
        kinds={"dvc"},
        owners=owners,
        code_version=stage.code_version or None,
        op_tags=op_tags,
        tags={"dvc_stage": stage.name},
        metadata={"dvc_stage": stage.name, "outs": list(stage.outs), "params": list(stage.params)},
    )
    def materialize_stage(context: dg.AssetExecutionContext, dvc: DvcRepo) -> dg.MaterializeResult:
        status = dvc.repro(stage.name, context.log)
        md5 = dvc.lock_hash(stage.name)
        metadata = {"dvc_ran": status == "ran", "dvc_status": status}
        metadata.update(stage_metadata(stage.asset, Path(dvc.root), stage.outs))
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(md5) if md5 else None
        )

    return materialize_stage


def _check(stage: Stage) -> dg.AssetChecksDefinition:
    name, description, fn = CHECKS[stage.asset]

    @dg.asset_check(asset=stage.asset, name=name, description=description, blocking=True)
    def run_check(dvc: DvcRepo) -> dg.AssetCheckResult:
        return fn(Path(dvc.root), stage.outs)

    return run_check


def executor() -> dg.ExecutorDefinition | None:
    """`DREAMER4_EXECUTOR=k8s`: one Kubernetes pod per step, shaped by the op tags (needs the
    cluster image's dagster-k8s); otherwise Dagster's default (steps in subprocesses)."""
    chosen = os.environ.get("DREAMER4_EXECUTOR", "")
    if chosen == "":
        return None
    if chosen != "k8s":
        raise ValueError(f"DREAMER4_EXECUTOR={chosen!r}: only 'k8s' (or unset) is known")
    try:
        from dagster_k8s import k8s_job_executor  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError(
            "DREAMER4_EXECUTOR=k8s needs dagster-k8s (the cluster image infra/k8s/Dockerfile "
            "installs it)"
        ) from err
    return k8s_job_executor


def build_definitions(root: Path = DEFAULT_ROOT) -> dg.Definitions:
    """Assets and checks for every stage of `root/dvc.yaml`, the retraining job, its weekly
    schedule, the inbox sensor and the sensor recording `dvc repro` runs made outside Dagster."""
    stages = read_stages(root)
    own = settings(root)
    owners = list(own["owners"])
    tags = k8s_tags(root, [s.name for s in stages])
    gpu = {
        s.asset for s in stages if "nvidia.com/gpu" in tags[s.name].get("dagster-k8s/config", "")
    }
    assets = [_asset(s, owners, tags[s.name]) for s in stages]
    allowed = retrain_assets(own["retrain_selection"], assets)
    job = dg.define_asset_job(
        RETRAIN_JOB,
        selection=own["retrain_selection"],
        description="Materialize assets through DVC (stale ones only, when the schedule or the "
        "inbox sensor asks); its assets are orchestration.retrain_selection of params.yaml",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=[_check(s) for s in stages if s.asset in CHECKS],
        jobs=[job],
        schedules=[retrain_schedule(root, stages, job, allowed, gpu)],
        sensors=[
            inbox_sensor(root, stages, job, allowed, gpu),
            dvc_lock_sensor(root, int(own["record_interval_s"])),
        ],
        resources={"dvc": DvcRepo(root=str(root))},
        executor=executor(),
    )


defs = build_definitions()
