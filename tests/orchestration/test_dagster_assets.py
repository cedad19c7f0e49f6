"""Dagster: assets come from dvc.yaml, materialize through DVC in-process, and run the GX check."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from orchestration.definitions import build_definitions
from orchestration.dvc_graph import read_stages
from tests.conftest import REPO, make_dvc_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dvc_repo(tmp_path_factory.mktemp("dagster") / "repo", episodes=2, max_steps=40)


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.materialization.asset_key.path[-1]: e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }


def test_graph_is_read_from_dvc_yaml():
    stages = {s.asset: s for s in read_stages(REPO)}
    assert list(stages) == [
        "raw_episodes",
        "episode_dataset",
        "tokenizer",
        "latent_tokens",
        "world_model",
        "agent",
        "bc_agent",
        "policy",
        "imagination_dataset",
        "eval_report",
    ]
    assert stages["episode_dataset"].upstream == ("raw_episodes",)
    assert stages["tokenizer"].upstream == ("episode_dataset",)
    assert set(stages["latent_tokens"].upstream) == {"tokenizer", "episode_dataset"}
    assert set(stages["world_model"].upstream) == {"latent_tokens", "tokenizer", "episode_dataset"}
    assert set(stages["agent"].upstream) == {"latent_tokens", "world_model"}
    assert stages["bc_agent"].upstream == ("latent_tokens",)
    assert set(stages["policy"].upstream) == {"latent_tokens", "agent"}
    assert set(stages["imagination_dataset"].upstream) == {"latent_tokens", "policy", "tokenizer"}
    assert set(stages["eval_report"].upstream) == {
        "raw_episodes",
        "tokenizer",
        "world_model",  # its rollout metrics and clip
        "agent",
        "bc_agent",
        "policy",
        "imagination_dataset",
    }
    assert stages["raw_episodes"].upstream == ()
    assert stages["episode_dataset"].outs == ("data/episodes",)
    assert any(p.endswith(".ingest") for p in stages["episode_dataset"].params)


def test_materialize_both_assets_then_skip_when_up_to_date(repo: Path):
    defs = build_definitions(repo)
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("episode_dataset")).parent_keys == {dg.AssetKey("raw_episodes")}
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()

    result = job.execute_in_process(instance=instance)
    assert result.success
    mats = materializations(result)
    assert mats["raw_episodes"]["dvc_ran"].value is True
    assert mats["raw_episodes"]["episodes"].value == 2
    assert mats["episode_dataset"]["episodes"].value == 2
    assert mats["episode_dataset"]["quarantined"].value == 0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {
        "episode_dataset_suite",
        "latent_tokens_suite",
        "imagination_dataset_suite",
    }
    assert all(c.passed for c in checks.values())
    assert checks["episode_dataset_suite"].metadata["expectations"].value >= 14
    assert checks["latent_tokens_suite"].metadata["expectations"].value == 7
    assert mats["tokenizer"]["steps"].value == 4
    assert 0 < mats["tokenizer"]["tokenizer/psnr_heldout"].value < 60
    assert "data:image/png;base64," in mats["tokenizer"]["reconstructions"].value
    assert mats["latent_tokens"]["shape"].value == [4, 4]
    wm = mats["world_model"]
    assert wm["steps"].value == 4 and "data:image/gif;base64," in wm["rollouts"].value
    assert {"rollout/psnr_k4", "rollout/psnr_k8", "rollout/psnr_copy_last"} <= set(wm)
    assert (
        mats["agent"]["pretrained"].value is True and mats["bc_agent"]["pretrained"].value is False
    )
    assert "agent/bc_nll_heldout" in mats["agent"] and mats["agent"]["tasks"].value == 22
    assert mats["policy"]["steps"].value == 2 and "loss/return" in mats["policy"]
    imagined = mats["imagination_dataset"]
    assert imagined["rollouts"].value == 4 and "data:image/gif;base64," in imagined["preview"].value
    assert "| task" in imagined["returns_by_task"].value
    report = mats["eval_report"]
    for label in ("Random", "Behaviour data", "BC", "WM+BC", "Dreamer 4"):
        assert f"| {label} " in report["headline"].value, label
    assert set(report["crafter_score_%"].value) == {
        "Random", "Behaviour data", "BC", "WM+BC", "Dreamer 4"
    }  # fmt: skip
    assert report["report"].value.endswith("report.html")

    again = job.execute_in_process(instance=instance)
    mats = materializations(again)
    assert mats["raw_episodes"]["dvc_status"].value == "up to date, skipped"
    assert mats["episode_dataset"]["dvc_ran"].value is False


def test_check_fails_on_a_corrupted_step_index(repo: Path, tmp_path: Path):
    defs = build_definitions(repo)
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process().success  # both up to date (or rebuilt)
    steps_file = repo / "data/episodes/steps.parquet"
    original = steps_file.read_bytes()
    try:
        steps = pd.read_parquet(steps_file)
        steps.loc[0, "reward"] = float("inf")
        steps.to_parquet(steps_file, index=False)
        result = dg.materialize(
            [a for a in defs.assets if a.key.path[-1] == "episode_dataset"]
            + list(defs.asset_checks),
            resources=defs.resources,
            selection=dg.AssetSelection.checks_for_assets("episode_dataset"),
            raise_on_error=False,
        )
        [check] = result.get_asset_check_evaluations()
        assert not check.passed
        assert "reward" in check.metadata["failures"].value
    finally:
        steps_file.write_bytes(original)
