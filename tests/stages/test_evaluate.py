"""`evaluate`: a small real evaluation in Crafter gives a report with every agent's row, Crafter
stats that `dreamer4 score` reads, an HTML page that opens in headless Chromium, and results
that do not depend on the worker count; held-out seeds are enforced."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from dreamer4.agent import policy_module
from dreamer4.cli import main
from dreamer4.eval.crafter_score import read_stats
from dreamer4.eval.prompted_play import MILESTONES
from dreamer4.stages.collect import collect
from dreamer4.stages.evaluate import AGENTS, COMPARISONS
from dreamer4.tokenizer import Tokenizer, TokenizerConfig
from dreamer4.train.checkpoint import export
from tests.conftest import REPO
from tests.test_agent import small_agent

LABELS = list(AGENTS.values())


def _export(folder: Path, module: torch.nn.Module, model: dict) -> Path:
    weights = module.state_dict()
    export(folder, weights, weights, {"model": model})
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small untrained models in the stages' output format, and two recorded episodes."""
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    tok_cfg = TokenizerConfig(
        resolution=32, patch=8, latents=4, bottleneck=4, width=32, depth=2, decoder_depth=1,
        heads=2, time_every=2, sequence=4,
    )  # fmt: skip
    paths = {
        "tokenizer": _export(root / "tokenizer", Tokenizer(tok_cfg), dataclasses.asdict(tok_cfg))
    }
    agent = small_agent()
    model = {
        "dynamics": dataclasses.asdict(agent.dynamics.cfg),
        "agent": dataclasses.asdict(agent.cfg),
        "sequence": {"length": 8},
        "shortcut": {"context_noise": 0.1},
    }
    wrapper = torch.nn.Module()
    wrapper.agent = agent
    paths["agent"] = _export(root / "agent", wrapper, model)
    paths["bc_agent"] = _export(root / "bc_agent", wrapper, model)
    policy = {**model, "imagination": {"context_window": 7}}
    paths["policy"] = _export(root / "policy", policy_module(small_agent()), policy)
    paths["raw"] = root / "raw"
    collect(paths["raw"], episodes=2, seed=3, max_steps=30, size=64, workers=1, skill=1.0)
    return paths


def _argv(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        *("--params", str(REPO / "params.yaml")),  # settings from its defaults, paths from here
        *("--tokenizer", str(paths["tokenizer"]), "--agent", str(paths["agent"])),
        *("--bc-agent", str(paths["bc_agent"]), "--policy", str(paths["policy"])),
        *("--raw", str(paths["raw"]), "--max-steps", "12", "--out", str(out)),
        *extra,
    ]


def test_report_has_every_agent_and_stats_crafter_reads(
    setup, tmp_path, capsys, monkeypatch, chromium
):
    monkeypatch.chdir(tmp_path)  # paths from the command line
    out, metrics = tmp_path / "report", tmp_path / "metrics"
    code = main(
        _argv(setup, out, "--seeds", "500:502", "--workers", "2", "--metrics", str(metrics))
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    report = (out / "report.md").read_text()
    for label in LABELS:
        assert f"| {label} " in report, label
    headline = pd.read_csv(out / "headline.csv", index_col=0)
    assert list(headline.index) == LABELS
    assert headline.loc["Behaviour data", "episodes"] == 2
    # Table 7's claims as tests: every pair of COMPARISONS, the score and each milestone
    tests = pd.read_csv(out / "comparisons.csv")
    pairs = {(AGENTS[a], AGENTS[b]) for a, b in COMPARISONS}
    assert set(zip(tests["agent"], tests["versus"], strict=True)) == pairs
    assert len(tests) == len(COMPARISONS) * (1 + len(MILESTONES))
    assert tests["p_value"].dropna().between(0, 1).all()
    milestones = tests[tests["measure"] != "score"]  # every agent played the same worlds: paired
    assert (
        milestones["p_paired"].between(0, 1).all()
        and milestones["test"].str.contains("McNemar").all()
    )
    assert "## Table 7's claims: pairwise tests" in report
    assert re.search(r"\n\| Dreamer 4 +\| +BC \| +[-+]\d", report)  # a row with its score
    scores = pd.read_csv(out / "scores.csv", index_col=0)
    assert list(scores.index) == LABELS
    assert scores["score"].to_numpy() == pytest.approx(headline["score"].to_numpy(), abs=0.005)
    assert (scores["ci_low"] <= scores["score"]).all() and (
        scores["score"] <= scores["ci_high"]
    ).all()
    for key in AGENTS:
        episodes = read_stats(out / key)  # Crafter's stats.jsonl, per agent
        assert len(episodes) == 2, key
    assert code == 0 and main(["score", str(out / "dreamer4"), str(out / "behaviour")]) == 0
    assert f"{out / 'dreamer4'}: score " in capsys.readouterr().out
    table = pd.read_parquet(out / "episodes.parquet")
    played = table[table["agent"] != "behaviour"]
    assert (played["length"] <= 12).all() and set(played["seed"]) == {500, 501}
    # every step of an episode, played or recorded, is one counted action
    assert (table.filter(like="actions/").sum(axis=1) == table["length"]).all()
    actions = pd.read_csv(out / "actions.csv", index_col=0)
    assert list(actions.columns) == LABELS
    assert actions.sum().to_numpy() == pytest.approx(100.0, abs=0.1)  # 17 cells, 2 decimals
    assert "## Actions" in report and "| sleep " in report
    for key in AGENTS:  # Crafter's format: the nested extras stay out of stats.jsonl
        lines = (out / key / "stats.jsonl").read_text().splitlines()
        assert all(not {"actions", "first_step"} & set(json.loads(x)) for x in lines), key
    values = json.loads((metrics / "metrics.json").read_text())
    assert {k.split("/")[1] for k in values} == set(AGENTS)
    assert {"eval/wm_bc/collect_wood", "eval/wm_bc/collect_diamond"} <= set(values)
    assert 0 <= values["eval/dreamer4/score"] <= 100
    assert (out / "real_game.gif").is_file() and (out / "success.png").is_file()

    # the same seeds with one process, one environment at a time, give the same episodes
    # (sampling seeded per episode; above: params' batch of 8 environments per worker)
    alone = tmp_path / "alone"
    one = ("--seeds", "500:502", "--workers", "1", "--batch", "1")
    assert main(_argv(setup, alone, "--agents", "dreamer4", *one)) == 0
    assert read_stats(alone / "dreamer4") == read_stats(out / "dreamer4")
    assert list(pd.read_csv(alone / "headline.csv", index_col=0).index) == ["Dreamer 4"]
    assert pd.read_csv(alone / "comparisons.csv").empty  # one agent: nothing to compare
    assert not (tmp_path / "metrics/evaluate").exists()  # standalone: no pipeline metrics

    _open_in_chromium(chromium, out / "report.html", tmp_path / "report.png")


def _open_in_chromium(browser, page: Path, screenshot: Path) -> None:
    """The page loads in headless Chromium with no console errors, every image decodes and
    the headline table has a row per agent."""
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(page.as_uri(), timeout=60_000)
    images = tab.evaluate("[...document.images].map(i => i.complete && i.naturalWidth)")
    rows = tab.locator("table").first.locator("tbody tr").all_inner_texts()
    tab.screenshot(path=str(screenshot), full_page=True)
    assert errors == []
    assert len(images) >= 2 and all(w > 0 for w in images), images
    assert [r.split("\t")[0] for r in rows] == LABELS


def test_evaluation_seeds_must_be_held_out(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    world = json.loads(next(setup["raw"].glob("*-options.json")).read_text())["world_seed"]
    code = main(_argv(setup, tmp_path / "out", "--seeds", f"{world}:{world + 1}"))
    assert code == 2
    err = capsys.readouterr().err
    assert str(setup["raw"]) in err and "held out" in err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_recording_is_skipped_and_reported(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    shutil.copytree(setup["raw"], raw)
    bad = sorted(raw.glob("*.jsonl"))[0]
    bad.write_text(bad.read_text()[:-40])  # a truncated last line
    out = tmp_path / "out"
    code = main([*_argv({**setup, "raw": raw}, out), "--agents", "behaviour", "--seeds", "9:10"])
    assert code == 0
    assert f"skips {bad}: line" in capsys.readouterr().err
    assert len(read_stats(out / "behaviour")) == 1  # the good one goes on
    assert "behaviour episodes skipped (unreadable): 1" in (out / "report.md").read_text()
