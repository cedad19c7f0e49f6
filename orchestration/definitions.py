"""Dagster definitions built from dvc.yaml: materializing an asset runs its stage through DVC.

`dvc repro --single-item <stage>` reruns the stage only when its deps, params or command
changed, so an up-to-date asset is skipped (the materialization says so) and dvc.lock stays the
record. The repository root is `$DREAMER4_REPO`, else the checkout this file lives in.
"""

import os
import subprocess
from pathlib import Path

import dagster as dg

from orchestration.checks import CHECKS
from orchestration.dvc_graph import Stage, read_stages
from orchestration.metadata import stage_metadata

DEFAULT_ROOT = Path(os.environ.get("DREAMER4_REPO", Path(__file__).resolve().parent.parent))


class DvcRepo(dg.ConfigurableResource):
    """The DVC repository whose stages the assets materialize."""

    root: str

    def repro(self, stage: str, log: dg.DagsterLogManager) -> str:
        """Run `dvc repro --single-item stage`; its status. Raises on failure with the output.

        Status: "ran", "up to date, skipped" or "restored from run cache" (DVC had run these
        exact deps and params before and checked the outputs out of its cache).
        """
        proc = subprocess.run(
            ["dvc", "repro", "--single-item", stage],
            cwd=self.root,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        for line in proc.stdout.splitlines():
            log.info(line)
        if proc.returncode != 0:
            raise dg.Failure(
                description=f"dvc repro {stage} failed (exit {proc.returncode})",
                metadata={"output": dg.MetadataValue.text(proc.stdout[-5000:])},
            )
        if f"Stage '{stage}' didn't change, skipping" in proc.stdout:
            return "up to date, skipped"
        if f"Stage '{stage}' is cached - skipping run" in proc.stdout:
            return "restored from run cache"
        return "ran"

    def lock_hash(self, stage: str) -> str | None:
        """The md5 DVC recorded for the stage's first out (the asset's data version)."""
        import yaml

        lock = Path(self.root) / "dvc.lock"
        if not lock.exists():
            return None
        outs = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage, {}).get("outs")
        return outs[0].get("md5") if outs else None


def _asset(stage: Stage) -> dg.AssetsDefinition:
    @dg.asset(
        name=stage.asset,
        deps=[dg.AssetKey(a) for a in stage.upstream],
        description=f"{stage.description}\n\nDVC stage `{stage.name}`: `{stage.cmd}`",
        group_name="pipeline",
        kinds={"dvc"},
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


def build_definitions(root: Path = DEFAULT_ROOT) -> dg.Definitions:
    """Assets and checks for every stage of `root/dvc.yaml`."""
    stages = read_stages(root)
    return dg.Definitions(
        assets=[_asset(s) for s in stages],
        asset_checks=[_check(s) for s in stages if s.asset in CHECKS],
        resources={"dvc": DvcRepo(root=str(root))},
    )


defs = build_definitions()
