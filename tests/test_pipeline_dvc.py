"""`dvc repro`: every stage runs, a second run is a no-op, profiles switch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dreamer4.episodes.dataset import load_chunk, load_steps
from dreamer4.episodes.vpt import vpt_line, write_vpt_episode
from tests.conftest import make_dvc_repo, vpt_frames

pytestmark = pytest.mark.slow  # real `dvc repro` / `dvc exp run` pipelines

STAGES = (
    "collect",
    "ingest",
    "train_tokenizer",
    "encode",
    "train_dynamics",
    "finetune_agent",
    "bc_baseline",
    "train_policy",
    "imagine",
    "evaluate",
)


def dvc(root: Path, *args: str) -> str:
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_repro_is_incremental_and_profiles_switch(trained_repo: tuple[Path, str], tmp_path: Path):
    root, first = trained_repo  # after `dvc repro` (and possibly the Dagster tests)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first, stage
    # the training stage ran 2 ranks through torchrun (launcher and nproc from params.yaml)
    config = json.loads((root / "models/tokenizer/config.json").read_text())
    assert (config["world_size"], config["steps"]) == (2, 4)
    latents = json.loads((root / "data/latents/latents.json").read_text())
    assert latents["steps"] == len(load_steps(root / "data/episodes"))
    shown = dvc(root, "metrics", "show")
    assert "tokenizer/psnr_heldout" in shown and "rollout/psnr_copy_last" in shown
    # Crafter data: tile and inventory accuracy of reconstructions, rollouts and baselines
    tok = json.loads((root / "metrics/train_tokenizer/summary.json").read_text())
    dyn = json.loads((root / "metrics/train_dynamics/summary.json").read_text())
    for name, value in [*tok.items(), *dyn.items()]:
        if "tile_accuracy" in name or "inventory_accuracy" in name:
            assert 0 <= value <= 1, (name, value)
    assert {
        "tokenizer/tile_accuracy",
        "tokenizer/tile_accuracy_all",
        "tokenizer/inventory_accuracy",
    } <= tok.keys()
    dynamics = json.loads((root / "models/world_model/config.json").read_text())["model"]
    k_max = dynamics["model"]["k_max"]
    for run in ("k4", f"k{k_max}", "copy_last", "copy_last_decoded", "tokenizer"):
        for metric in ("tile_accuracy", "tile_accuracy_all", "inventory_accuracy"):
            assert f"rollout/{metric}_{run}" in dyn, (metric, run)
    for metric in ("agent/bc_nll_heldout", "imagination/return_before", "imagination/return_after"):
        assert metric in shown, metric
    # agent (WM+BC), its BC-from-scratch baseline, the policy, and what the policy imagines
    agent = json.loads((root / "models/agent/config.json").read_text())["model"]
    bc = json.loads((root / "models/bc_agent/config.json").read_text())["model"]
    assert agent["pretrained"] and not bc["pretrained"]
    assert "collect_wood" in agent["agent"]["tasks"] and len(agent["agent"]["tasks"]) == 22
    rollouts = pd.read_parquet(root / "data/imagination/rollouts.parquet")
    assert len(rollouts) == 2 * 2 * 2  # (bc, dreamer4) × 2 contexts × horizon 2
    assert set(rollouts["policy"]) == {"bc", "dreamer4"}
    assert np.isfinite(rollouts[["reward", "value", "return"]].to_numpy()).all()
    assert len(list((root / "data/raw").glob("*.mp4"))) == 3
    # the report: every agent's row, Crafter stats per agent, DVC metrics per agent
    headline = pd.read_csv(root / "reports/eval/headline.csv", index_col=0)
    assert list(headline.index) == ["Random", "Behaviour data", "BC", "WM+BC", "Dreamer 4"]
    assert list(headline["episodes"]) == [2, 3, 2, 2, 2]
    assert "eval/dreamer4/score" in shown and "eval/behaviour/collect_wood" in shown
    assert "Dreamer 4" in (root / "reports/eval/report.html").read_text()
    steps = load_steps(root / "data/episodes")
    assert steps["episode"].nunique() == 3 and load_chunk(root / "data/episodes", 0).shape[1] == 32

    again = dvc(root, "repro")
    assert "Data and pipelines are up to date." in again
    assert "Running stage" not in again

    # A param change reruns exactly its stage and what is downstream: one test for DVC and
    # Dagster together (tests/orchestration/test_dagster_assets.py, the schedule's rerun).

    # A whole-profile switch as a DVC experiment reruns collect and ingest with the other profile
    # (the training stages downstream would rerun too; they were exercised above). On a copy, so
    # the session's trained repository stays as reproduced for the tests that share it.
    root = tmp_path / "copy"
    shutil.copytree(trained_repo[0], root, symlinks=True)
    exp = dvc(root, "exp", "run", "-S", "profile=alt", "ingest")  # training stages: above
    assert "Running stage 'collect'" in exp and "Running stage 'ingest'" in exp
    assert yaml.safe_load((root / "params.yaml").read_text())["profile"] == "alt"
    assert '"seed": 1' in next((root / "data/raw").glob("*-options.json")).read_text()
    assert np.array_equal(
        sorted(load_steps(root / "data/episodes")["episode"].unique()),
        [f"crafter-s1-{i:05d}" for i in range(3)],
    )


def test_minecraft_profile_imports_vpt_recordings(tmp_path: Path):
    root = make_dvc_repo(tmp_path / "repo")
    source = root / "recordings/vpt-contractor"
    for i in range(2):
        lines = [vpt_line({"forward", "attack"}, (1.61, -3.22))] * 20
        write_vpt_episode(source, f"6.13/seg-{i}", vpt_frames(20, i), lines)
    exp = dvc(root, "exp", "run", "-S", "profile=minecraft", "ingest")  # a GPU cluster trains
    assert "imported 2 episodes" in exp and "Running stage 'ingest'" in exp
    steps = load_steps(root / "data/episodes")
    assert set(steps["source"]) == {"vpt"} and steps["episode"].nunique() == 2
    assert load_chunk(root / "data/episodes", 0).shape[1:] == (128, 128, 3)
    assert (steps["action/camera"] == 7 * 11 + 2).all() and steps["action/attack"].all()
    assert len(list(source.rglob("*.mp4"))) == 2, "the source recordings must survive"
