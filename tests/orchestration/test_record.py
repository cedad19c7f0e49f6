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

        # the upstream data versions and events it was made from, as Dagster's own events
        # carry them: it stays fresh until one of them changes
        (latents,) = instance.fetch_materializations(dg.AssetKey("latent_tokens"), 1).records
        assert world.tags["dagster/input_data_version/latent_tokens"] == hashes["encode"]
        assert world.tags["dagster/input_event_pointer/latent_tokens"] == str(latents.storage_id)
        assert isinstance(report.metadata["score_%/Dreamer 4"].value, float)

        # a stage DVC reran since (its lock hash is not the last one recorded): the sensor
        # records that asset alone
        instance.report_runless_asset_event(
            dg.AssetMaterialization("imagination_dataset", tags={DATA_VERSION_TAG: "older"})
        )
        sensor = dvc_lock_sensor(repo, 30)
        result = sensor(dg.build_sensor_context(instance=instance))
        assert "recorded imagination_dataset from dvc.lock" in result.skip_message
        event = latest(instance, "imagination_dataset")
        assert event.tags[DATA_VERSION_TAG] == hashes["imagine"]


def test_a_data_version_covers_every_output():
    from orchestration.record import data_version

    one = [{"path": "models/tokenizer", "md5": "a1.dir"}]
    assert data_version(one) == "a1.dir"  # one output: DVC's own md5, as dvc.lock shows it
    two = [*one, {"path": "metrics/tokenizer.json", "md5": "b2"}]
    changed = [*one, {"path": "metrics/tokenizer.json", "md5": "b3"}]
    assert data_version(two) != data_version(changed)  # the second output alone changed
    assert data_version(two) == data_version(two[::-1])  # not the order dvc.lock lists them
    assert data_version([*one, {"path": "x"}]) is None  # an output not hashed yet
