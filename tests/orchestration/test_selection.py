"""Dagster's asset selection strings and DVC's `exp run -S`, both in the environment `make`
builds: the selection parser needs antlr4 4.13, DVC's hydra-core 4.9, so DVC has its own
environment (orchestration/dvc_cli.py) and neither tool is patched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration import dvc_cli
from orchestration.automation import retrain_assets
from orchestration.definitions import build_definitions
from orchestration.dvc_graph import read_stages
from orchestration.record import lock_hashes
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # the Dagster CLI and DVC on the trained repository


def dagster(repo: Path, home: Path, *args: str) -> str:
    """`dagster ARGS -m orchestration.definitions` on `repo`, as a user runs it; its stdout."""
    env = {**os.environ, "DREAMER4_REPO": str(repo), "DAGSTER_HOME": str(home)}
    command = [str(Path(sys.executable).with_name("dagster")), *args]
    command += ["-m", "orchestration.definitions"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_cli_lists_and_materializes_by_selection_string(trained_repo, tmp_path: Path):
    repo = trained_repo[0]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    stages = read_stages(repo)
    data = {s.asset for s in stages if s.group == "data"}
    assert set(dagster(repo, home, "asset", "list", "--select", "group:data").split()) == data
    children = {s.asset for s in stages if "tokenizer" in s.upstream} | {"tokenizer"}
    assert set(dagster(repo, home, "asset", "list", "--select", "tokenizer+").split()) == children

    dagster(repo, home, "asset", "materialize", "--select", "group:data")
    hashes = lock_hashes(repo)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for stage in stages:
            event = instance.get_latest_materialization_event(dg.AssetKey(stage.asset))
            if stage.asset not in data:
                assert event is None, stage.asset  # outside the selection: not run
                continue
            assert event is not None, f"{stage.asset}: not materialized"
            mat = event.asset_materialization
            assert mat.metadata["dvc_status"].value == "up to date, skipped"  # DVC decided
            assert mat.tags["dagster/data_version"] == hashes[stage.name]
    assert dvc_cli.changed_stages(repo) == set()


def test_the_schedule_runs_what_the_retrain_selection_string_allows(trained_repo):
    repo = trained_repo[0]
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    try:
        params = yaml.safe_load(original)
        params["orchestration"]["retrain_selection"] = "not group:evaluation"
        imagination = params["profiles"]["tiny"]["train_policy"]["imagination"]
        imagination["lam"] = round(imagination["lam"] - 0.05, 4)  # another test may have set it
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        assert dvc_cli.changed_stages(repo) == {"train_policy"}
        defs = build_definitions(repo)
        instance = dg.DagsterInstance.ephemeral()
        context = dg.build_schedule_context(
            instance=instance, repository_def=defs.get_repository_def()
        )
        [request] = (
            defs.resolve_schedule_def("retrain_schedule").evaluate_tick(context).run_requests
        )
        # policy and what is downstream of it are stale; the evaluation is left out
        assert {k.path[-1] for k in request.asset_selection} == {"policy", "imagination_dataset"}
        job = defs.resolve_job_def("retrain")
        assert "eval_report" not in {k.path[-1] for k in job.asset_layer.executable_asset_keys}

        params["orchestration"]["retrain_selection"] = "group:no_such_group"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        with pytest.raises(
            ValueError, match=r"retrain_selection = 'group:no_such_group': no asset"
        ):
            build_definitions(repo)
    finally:
        params_file.write_text(original)
    assert dvc_cli.changed_stages(repo) == set()


def test_a_malformed_selection_string_is_an_error_naming_the_key():
    assets = build_definitions(REPO).assets
    with pytest.raises(
        ValueError, match=r"orchestration\.retrain_selection = 'group:data \+\+ \('"
    ):
        retrain_assets("group:data ++ (", list(assets))


def test_dvc_exp_run_sets_the_profile(trained_repo, tmp_path: Path):
    """`-S profile=tiny` over a params.yaml naming another profile: every stage is then the
    one trained with `tiny`, so nothing runs (hydra's override parser is DVC's, in its env)."""
    copy = tmp_path / "repo"
    shutil.copytree(trained_repo[0], copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    assert params["profile"] == "tiny"
    params["profile"] = "alt"
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert dvc_cli.changed_stages(copy)  # under `alt` the stages would rerun
    out = dvc_cli.run(copy, "exp", "run", "-S", "profile=tiny", merged=True).stdout
    for stage in read_stages(copy):
        assert f"Stage '{stage.name}' didn't change, skipping" in out, out[-3000:]
    assert "Ran experiment(s)" in out
    assert dvc_cli.changed_stages(copy) == set()
