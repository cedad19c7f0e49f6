"""Dagster: assets come from dvc.yaml, materialize through DVC in-process, run the GX checks;
staleness follows DVC, the schedule and the inbox sensor ask for exactly the stale work."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from dreamer4.episodes.vpt import vpt_line, write_vpt_episode
from orchestration import dvc_cli
from orchestration.definitions import build_definitions
from orchestration.dvc_graph import read_stages
from tests.conftest import REPO, make_dvc_repo, vpt_frames


@pytest.fixture(scope="module")
def repo(trained_repo: tuple[Path, str]) -> Path:
    """The session's trained repository (every stage reproduced by `dvc repro`)."""
    return trained_repo[0]


@pytest.fixture(scope="module")
def instance() -> dg.DagsterInstance:
    """One instance for the module: staleness compares with what it recorded."""
    return dg.DagsterInstance.ephemeral()


def stale(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """Asset → reasons, for the assets Dagster calls stale (what the UI marks)."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, AssetGraphView.for_test(defs, instance))
    return {
        key.path[-1]: [c.reason for c in resolver.get_stale_root_causes(key)]
        for key in graph.materializable_asset_keys
        if resolver.get_status(key) != StaleStatus.FRESH
    }


def dvc_status(repo: Path) -> set[str]:
    return dvc_cli.changed_stages(repo)


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.materialization.asset_key.path[-1]: e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }


def test_loading_the_code_location_imports_neither_torch_nor_great_expectations():
    """Every step process and `dagster` command loads the definitions: the checks' heavy
    imports belong in the checks (about 6 s of a 12 s load on 2 cores)."""
    heavy = ("torch", "great_expectations", "deepspeed", "crafter")
    code = (
        "import sys, orchestration.definitions as d; "
        f"assert d.defs; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    env = {**os.environ, "DREAMER4_REPO": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_executor_is_dagsters_unless_the_cluster_asks(monkeypatch):
    from orchestration.definitions import executor

    monkeypatch.delenv("DREAMER4_EXECUTOR", raising=False)
    assert executor() is None
    monkeypatch.setenv("DREAMER4_EXECUTOR", "k8s")
    if importlib.util.find_spec("dagster_k8s") is None:  # installed in the cluster image only
        with pytest.raises(ImportError, match="needs dagster-k8s"):
            executor()
    else:
        assert executor().name == "k8s"
    monkeypatch.setenv("DREAMER4_EXECUTOR", "docker")
    with pytest.raises(ValueError, match="only 'k8s'"):
        executor()


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


def test_materialize_every_asset_then_skip_when_up_to_date(repo: Path, instance):
    defs = build_definitions(repo)
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("episode_dataset")).parent_keys == {dg.AssetKey("raw_episodes")}
    node = graph.get(dg.AssetKey("world_model"))
    assert node.group_name == "world_model" and node.owners == ["team:dreamer4"]
    k8s = json.loads(defs.resolve_assets_def("world_model").op.tags["dagster-k8s/config"])
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"]  # a GPU pod
    assert (
        "nvidia.com/gpu" not in defs.resolve_assets_def("eval_report").op.tags["dagster-k8s/config"]
    )
    assert node.code_version and node.code_version != graph.get(dg.AssetKey("agent")).code_version
    job = defs.resolve_implicit_global_asset_job_def()
    assert set(stale(defs, instance)) == {s.asset for s in read_stages(repo)}  # never materialized

    result = job.execute_in_process(instance=instance)
    assert result.success
    mats = materializations(result)
    # `dvc repro` made everything already: Dagster records it, DVC does no work
    assert {m["dvc_status"].value for m in mats.values()} == {"up to date, skipped"}
    assert mats["raw_episodes"]["episodes"].value == 3
    assert mats["episode_dataset"]["episodes"].value == 3
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
    assert {a for a, m in mats.items() if m["dvc_ran"].value} == set()  # no work at all
    assert stale(defs, instance) == {} and dvc_status(repo) == set()


def test_a_param_makes_its_stage_stale_and_the_schedule_reruns_only_that(repo: Path, instance):
    """The suite's one param-change rerun (for DVC and Dagster both): a phase-3 param makes
    exactly `train_policy` stale, and the schedule's run recomputes it and what is downstream."""
    # Self-sufficient: a fresh instance has recorded nothing, so every asset would be stale
    # ("never materialized"); record the reproduced repository first (DVC skips every stage).
    before = build_definitions(repo)
    record = before.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance)
    assert record.success and not any(m["dvc_ran"].value for m in materializations(record).values())
    assert stale(before, instance) == {} and dvc_status(repo) == set()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profiles"]["tiny"]["train_policy"]["imagination"]["lam"] = 0.9
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    defs = build_definitions(repo)  # a code location reload
    # the UI's stale marker and `dvc status` name the same stage, for the same reason
    assert stale(defs, instance) == {"policy": ["has a new code version"]}
    assert dvc_status(repo) == {"train_policy"}

    schedule = defs.resolve_schedule_def("retrain_schedule")
    assert schedule.cron_schedule == "0 3 * * 1"  # weekly, from params.yaml
    context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def())
    [request] = schedule.evaluate_tick(context).run_requests
    requested = {k.path[-1] for k in request.asset_selection}
    assert requested == {"policy", "imagination_dataset", "eval_report"}  # and downstream
    assert {"dreamer4/reason": "schedule", "dreamer4/gpu": "true"}.items() <= request.tags.items()

    job = defs.resolve_job_def("retrain")
    result = job.execute_in_process(
        instance=instance, asset_selection=list(request.asset_selection), tags=request.tags
    )
    assert result.success
    ran = {a for a, m in materializations(result).items() if m["dvc_ran"].value}
    assert ran == requested  # DVC recomputed exactly these stages, with the new value
    policy = json.loads((repo / "models/policy/config.json").read_text())["model"]
    assert policy["imagination"]["lam"] == 0.9
    assert stale(defs, instance) == {} and dvc_status(repo) == set()
    assert schedule.evaluate_tick(context).skip_message == "dvc status: every stage is up to date"


def test_inbox_sensor_requests_a_run_for_new_episodes(repo: Path, instance):
    defs = build_definitions(repo)
    sensor = defs.resolve_sensor_def("inbox_sensor")
    context = dg.build_sensor_context(instance=instance, definitions=defs)
    assert sensor.evaluate_tick(context).skip_message.endswith("no new episodes (0 seen)")
    lines = [vpt_line({"forward"}, (0.0, 0.0))] * 10
    write_vpt_episode(repo / "inbox", "delivered-0", vpt_frames(10, 0), lines)
    try:
        tick = sensor.evaluate_tick(context)
        [request] = tick.run_requests
        # collect depends on the inbox, so it and everything downstream are stale now
        assert dvc_status(repo) == {"collect"}
        assert {k.path[-1] for k in request.asset_selection} == {s.asset for s in read_stages(repo)}
        assert request.tags["dreamer4/reason"] == "inbox"
        later = dg.build_sensor_context(instance=instance, definitions=defs, cursor=tick.cursor)
        assert sensor.evaluate_tick(later).skip_message.endswith("no new episodes (1 seen)")
    finally:
        for path in (repo / "inbox").glob("delivered-0*"):
            path.unlink()
    assert dvc_status(repo) == set()


def test_check_fails_on_a_corrupted_step_index(repo: Path, tmp_path: Path):
    defs = build_definitions(repo)
    # a failed suite stops what is downstream of its asset in the same run (Dagster's blocking)
    specs = [spec for checks in defs.asset_checks for spec in checks.check_specs]
    assert len(specs) == 3 and all(spec.blocking for spec in specs)
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


def code_versions(root: Path) -> dict[str, str]:
    """Asset → the code version Dagster sees after a code location (re)load of `root`."""
    graph = build_definitions(root).resolve_asset_graph()
    return {key.path[-1]: graph.get(key).code_version for key in graph.materializable_asset_keys}


def test_a_code_dep_moves_the_code_version_of_its_stages_only(tmp_path: Path):
    """An edit of a file a stage lists in its dvc.yaml deps (itself, or a directory above it)
    gives a new code version to the assets whose stages list it, and to no other asset."""
    root = make_dvc_repo(tmp_path / "repo")  # no training: code versions need no outputs
    before = code_versions(root)
    assert len(set(before.values())) == len(before)  # every stage its own version

    encode = root / "src/dreamer4/stages/encode.py"  # a file dep of `encode` alone
    encode.write_text(encode.read_text() + "\n# an edit\n")
    after = code_versions(root)
    assert {a for a in before if after[a] != before[a]} == {"latent_tokens"}

    # a file inside a directory dep (`src/dreamer4/nn`), listed by every model stage
    attention = root / "src/dreamer4/nn/attention.py"
    attention.write_text(attention.read_text() + "\n# an edit\n")
    again = code_versions(root)
    data = {"raw_episodes", "episode_dataset"}  # the data stages do not list the models' code
    assert {a for a in after if again[a] != after[a]} == set(before) - data
    assert len(before) == 10 and all(again[a] == before[a] for a in data)


def test_a_failing_blocking_check_stops_the_downstream_asset(repo: Path, tmp_path: Path):
    """A failed episode_dataset suite skips latent_tokens in the same run: `encode` never runs
    on the corrupted step index (not only `blocking=True` on the spec: the run's steps)."""
    import shutil

    # a copy of the trained repository: should the check not block, `encode` reruns and
    # dvc.lock moves, and the session's repository stays as the other tests expect it
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    assert dvc_status(copy) == set()
    lock = (copy / "dvc.lock").read_bytes()
    steps_file = copy / "data/episodes/steps.parquet"
    steps = pd.read_parquet(steps_file)
    steps.loc[0, "reward"] = float("inf")
    steps.to_parquet(steps_file, index=False)

    defs = build_definitions(copy)
    # the suite and the downstream asset in one run (what a rerun of latent_tokens with its
    # upstream checks looks like); the suite reads the files on disk
    suite = dg.AssetCheckKey(dg.AssetKey("episode_dataset"), "episode_dataset_suite")
    result = dg.materialize(
        list(defs.assets) + list(defs.asset_checks),
        instance=dg.DagsterInstance.ephemeral(),
        resources=defs.resources,
        selection=dg.AssetSelection.assets("latent_tokens").without_checks()
        | dg.AssetSelection.checks(suite),
        raise_on_error=False,
    )
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "episode_dataset_suite" and not check.passed
    # the in-process executor never starts what depends on the failed blocking check
    started = {e.step_key for e in result.all_events if e.is_step_start}
    assert "latent_tokens" not in started
    assert materializations(result) == {}  # latent_tokens was not materialized
    [failure] = result.get_step_failure_events()  # the check's step, failed by the check
    assert "blocking asset check failed" in failure.step_failure_data.error.message
    assert started == {failure.step_key} and not result.success
    assert (copy / "dvc.lock").read_bytes() == lock  # DVC did not run `encode`
