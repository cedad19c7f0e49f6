"""The Minecraft path end to end on what runs here: `dvc exp run -S profile=minecraft` imports
three VPT-format segments and runs every stage, `evaluate` playing each agent through the MineRL
adapter against the stand-in env (MineRL itself cannot be built on these machines)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dreamer4.episodes.dataset import load_steps
from dreamer4.episodes.vpt import vpt_line, write_vpt_episode
from dreamer4.eval.minecraft_play import DIAMOND_TREE
from tests.conftest import REPO, make_dvc_repo, vpt_frames

pytestmark = pytest.mark.slow  # a real `dvc exp run` of every stage

STATS = "minecraft.mine_block:minecraft.oak_log"


def segment(i: int, n: int = 24) -> list[dict]:
    """A short contractor segment: walking and attacking, a log mined at step 10 of the first."""
    lines = []
    for t in range(n):
        stats = {STATS: 1} if i == 0 and t >= 10 else {}
        buttons = {"forward", "attack"} if t % 3 else {"jump"}
        lines.append(vpt_line(buttons, (0.62 * (t % 2), -1.61), hotbar=t // 12, stats=stats))
    return lines


def minecraft_at_test_size(root: Path) -> None:
    """params.yaml's `minecraft` profile keeps its data path and env (VPT import at 128×128
    squashed from 360×640 … here 32×32, MineRL evaluation) with the test's `tiny` models, one
    process per stage (the multi-rank paths are tested on `tiny`) and the stand-in env."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    mine = params["profiles"]["minecraft"]
    test = json.loads(json.dumps(params["profiles"]["tiny"]))
    test["train"].update(launcher="none", nproc=1)
    test["collect"] = {**mine["collect"]}
    test["ingest"].update(resolution=32, min_length=8, max_length=mine["ingest"]["max_length"])
    test["evaluate"].update(
        env="minerl",
        minerl_env="minerl_standin:StandInMineRL",
        episodes=2,
        max_steps=12,
        size=64,
    )
    params["profiles"]["minecraft"] = test
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_minecraft_profile_runs_every_stage_through_the_minerl_adapter(tmp_path: Path):
    root = make_dvc_repo(tmp_path / "repo")
    minecraft_at_test_size(root)
    shutil.copy(REPO / "tests/envs/minerl_standin.py", root / "minerl_standin.py")
    source = root / "recordings/vpt-contractor"
    for i in range(3):
        write_vpt_episode(source, f"6.13/seg-{i}", vpt_frames(24, i), segment(i))
    for sh in (["git", "add", "-A"], ["git", "commit", "-qm", "minecraft at test size"]):
        subprocess.run(sh, cwd=root, check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(root)}  # the stand-in env, importable by evaluate
    proc = subprocess.run(
        ["dvc", "exp", "run", "-S", "profile=minecraft"],
        cwd=root, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    for stage in ("collect", "ingest", "train_tokenizer", "train_dynamics", "train_policy"):
        assert f"Running stage '{stage}'" in out, stage
    assert "Running stage 'evaluate'" in out
    steps = load_steps(root / "data/episodes")
    assert set(steps["source"]) == {"vpt"} and steps["episode"].nunique() == 3

    report = root / "reports/eval"
    episodes = pd.read_parquet(report / "episodes.parquet")
    played = episodes[episodes["agent"] != "Behaviour data"]
    assert sorted(played["agent"].unique()) == ["BC", "Dreamer 4", "Random", "WM+BC"]
    assert (played.groupby("agent").size() == 2).all() and (played["length"] == 12).all()
    # the recordings' stats counters: one of three segments mined a log
    behaviour = episodes[episodes["agent"] == "Behaviour data"]
    assert len(behaviour) == 3 and behaviour["mine_log"].sum() == 1
    # the inventory cannot tell opening a table: not reported for the played agents
    assert played["open_crafting_table"].isna().all() and played["mine_log"].notna().all()
    metrics = json.loads((root / "metrics/evaluate/metrics.json").read_text())
    assert metrics["eval/behaviour/mine_log"] == pytest.approx(100 / 3, abs=0.01)
    assert {f"eval/dreamer4/{t}" for t in ("mine_log", "craft_planks")} <= metrics.keys()
    assert set(DIAMOND_TREE) >= {k.split("/")[-1] for k in metrics if "length" not in k}
    assert "Evaluation in Minecraft" in (report / "report.md").read_text()
    # what `make run PROFILE=minecraft` prints last
    shown = subprocess.run(
        ["dreamer4", "evaluate", "--show", "--profile", "minecraft"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "task columns: success rate in %" in shown.stdout and "Dreamer 4" in shown.stdout
