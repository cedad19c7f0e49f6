"""Crafter's score formula on hand-made episodes, and `dreamer4 score` on real stats files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dreamer4.cli import main
from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS
from dreamer4.eval.crafter_score import crafter_score, read_stats, success_table
from tests.conftest import write_npz_episode


def test_score_matches_crafters_formula_on_hand_made_episodes():
    # 4 episodes: collect_wood in all, place_table in 2, collect_diamond in 1 (twice), rest none
    episodes = [
        {"collect_wood": 3, "place_table": 1},
        {"collect_wood": 1, "place_table": 2},
        {"collect_wood": 1, "collect_diamond": 2},
        {"collect_wood": 5},
    ]
    table = success_table(episodes).set_index("achievement")["success_rate"]
    assert len(table) == 22
    assert (table["collect_wood"], table["place_table"], table["collect_diamond"]) == (100, 50, 25)
    assert table.drop(["collect_wood", "place_table", "collect_diamond"]).eq(0).all()
    # Crafter: exp(nanmean(log(1 + rates))) − 1 over the 22 achievements
    want = math.exp((math.log(101) + math.log(51) + math.log(26)) / 22) - 1
    assert math.isclose(crafter_score(table), want, rel_tol=1e-12)
    assert math.isclose(crafter_score([0.0] * 22), 0.0, abs_tol=1e-12)
    assert math.isclose(crafter_score([100.0] * 22), 100.0, rel_tol=1e-12)


def test_score_command_reads_crafters_own_recorder(tmp_path: Path, capsys):
    for seed in (0, 1):
        write_npz_episode(tmp_path / "crafter", seed, length=30, skill=1.0)
    rows = [
        json.loads(line) for line in (tmp_path / "crafter/stats.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 and "achievement_collect_wood" in rows[0]  # Crafter's own format
    ours = tmp_path / "ours.jsonl"
    ours.write_text(json.dumps({"length": 5, "reward": 1.0, "achievement_collect_wood": 1}) + "\n")
    assert main(["score", str(tmp_path / "crafter"), str(ours)]) == 0
    out = capsys.readouterr().out
    assert f"{ours}: score " in out and "over 1 episodes" in out
    want = crafter_score(success_table(read_stats(tmp_path / "crafter"))["success_rate"])
    assert f"{tmp_path / 'crafter'}: score {want:.2f} % over 2 episodes" in out
    for name in CRAFTER_ACHIEVEMENTS:
        assert name in out


def test_bad_stats_files_are_named(tmp_path: Path, capsys):
    bad = tmp_path / "stats.jsonl"
    bad.write_text('{"length": 3, "achievement_collect_wood": 0}\n{not json\n')
    assert main(["score", str(bad)]) == 2
    assert f"{bad}:2: not JSON" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "missing")]) == 2
    with pytest.raises(Exception, match="no `achievement_<name>` counts"):
        bad.write_text('{"length": 3}\n')
        read_stats(bad)
