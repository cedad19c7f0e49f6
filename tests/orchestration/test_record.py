"""What `dvc repro` produced outside Dagster becomes materializations, once, with the metadata
and data version a run through Dagster records (orchestration/record.py)."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from orchestration.dvc_graph import read_stages
from orchestration.record import dvc_lock_sensor, lock_hashes, record


def latest(instance: dg.DagsterInstance, asset: str) -> dg.AssetMaterialization:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None, f"{asset}: never materialized"
    return event.asset_materialization


def test_dvc_outputs_are_recorded_once_with_metadata_and_data_versions(trained_repo):
    repo = trained_repo[0]
    stages = read_stages(repo)
    hashes = lock_hashes(repo)
    with dg.DagsterInstance.ephemeral() as instance:
        assert sorted(record(repo, instance)) == sorted(s.asset for s in stages)
        world = latest(instance, "world_model")
        assert world.tags[DATA_VERSION_TAG] == hashes["train_dynamics"]
        assert isinstance(world.metadata["rollout/psnr_k4"].value, float)  # plottable
        report = latest(instance, "eval_report")
        assert report.metadata["report"].value.endswith("reports/eval/report.html")
        assert record(repo, instance) == []  # recorded already: nothing new, nothing rerun

        # a stage DVC reran since (its lock hash is not the last one recorded): the sensor
        # records that asset alone
        instance.report_runless_asset_event(
            dg.AssetMaterialization("imagination_dataset", tags={DATA_VERSION_TAG: "older"})
        )
        sensor = dvc_lock_sensor(repo, stages, 30)
        result = sensor(dg.build_sensor_context(instance=instance))
        assert [e.asset_key.to_user_string() for e in result.asset_events] == [
            "imagination_dataset"
        ]
        assert result.asset_events[0].tags[DATA_VERSION_TAG] == hashes["imagine"]
