"""`collect`: deterministic per seed (byte-identical files), mixed skills, readable output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dreamer4.cli import main
from dreamer4.episodes.readers import find_raw_episodes, read_raw_episode
from dreamer4.episodes.vpt import vpt_line, write_vpt_episode
from dreamer4.stages.collect import collect, episode_plan
from tests.conftest import REPO, vpt_frames


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_same_seed_gives_identical_bytes(tmp_path: Path):
    kw = dict(
        episodes=3, seed=11, max_steps=150, size=64, skills=[0.0, 0.7, 1.0], weights=[1, 1, 1]
    )
    collect(tmp_path / "a", workers=1, **kw)
    collect(tmp_path / "b", workers=2, **kw)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert sorted(a) == sorted(b) and len(a) == 3 * 3 + 1
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs of one seed"
    collect(tmp_path / "c", workers=1, **{**kw, "seed": 12})
    c = files(tmp_path / "c")
    assert c["stats.jsonl"] != a["stats.jsonl"]


def test_recording_layout_and_reader(tmp_path: Path, capsys):
    code = main(
        [
            "collect",
            "--params",
            str(REPO / "params.yaml"),
            "--out",
            str(tmp_path),
            "--episodes",
            "2",
            "--seed",
            "3",
            "--skill",
            "1.0",
            "--max-steps",
            "80",
            "--size",
            "64",
            "--workers",
            "1",
        ]
    )
    assert code == 0 and "2 episodes" in capsys.readouterr().out
    stats = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [s["length"] for s in stats] == [80, 80]  # full skill survives 80 steps
    assert {"length", "reward", "achievement_collect_wood"} <= stats[0].keys()
    options = json.loads((tmp_path / "crafter-s3-00000-options.json").read_text())
    assert options["skill"] == 1.0 and options["seed"] == 3
    lines = (tmp_path / "crafter-s3-00000.jsonl").read_text().splitlines()
    assert len(lines) == 81
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert first["step"] == 0 and first["action"] is not None and first["inventory"]["health"] == 9
    assert last["action"] is None and last["done"] is True
    ep = read_raw_episode(find_raw_episodes(tmp_path)[0], None)
    assert ep.frames.shape == (81, 64, 64, 3) and ep.labelled.sum() == 80
    unlocked = sum(ep.events[a].sum() for a in ep.events)
    assert unlocked == sum(len(json.loads(x)["achievements"]) for x in lines) > 0


def test_skill_mix_follows_weights():
    plan = episode_plan(0, 2000, None, [0.0, 0.5, 1.0], [0.1, 0.6, 0.3])
    counts = Counter(p["skill"] for p in plan)
    assert abs(counts[0.5] / 2000 - 0.6) < 0.04 and abs(counts[0.0] / 2000 - 0.1) < 0.03
    assert episode_plan(0, 5, None, [0.0, 0.5, 1.0], [0.1, 0.6, 0.3]) == plan[:5]
    assert {p["skill"] for p in episode_plan(0, 20, 0.25, [0.0], [1.0])} == {0.25}


def test_bad_skill_and_unavailable_env_are_clear_errors(tmp_path: Path, capsys):
    args = [
        "collect",
        "--params",
        str(REPO / "params.yaml"),
        "--out",
        str(tmp_path),
        "--episodes",
        "1",
        "--seed",
        "0",
        "--max-steps",
        "5",
        "--size",
        "64",
    ]
    assert main([*args, "--skill", "1.5"]) == 2
    assert "--skill must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be recorded here.*vpt-download"):
        collect(tmp_path, 1, 0, 5, 64, 1, env="minerl")


def test_other_episodes_in_out_are_never_mixed_in(tmp_path: Path):
    collect(tmp_path, 1, 0, 20, 64, 1, skill=0.0)
    collect(tmp_path, 1, 0, 20, 64, 1, skill=0.0)  # the same run again is fine
    with pytest.raises(ValueError, match="already holds 1 other episodes"):
        collect(tmp_path, 1, 5, 20, 64, 1, skill=0.0)
    assert (tmp_path / "crafter-s0-00000.mp4").exists()


def test_import_recordings_copies_episodes_and_leaves_the_source(tmp_path: Path, capsys):
    source = tmp_path / "vpt"
    for i in range(3):
        write_vpt_episode(source, f"7.1/seg-{i}", vpt_frames(6, i), [vpt_line({"jump"})] * 6)
    (source / "7.1/seg-0-options.json").write_text('{"version": "7.1"}')
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    out = tmp_path / "raw"
    code = main(
        [
            "collect",
            "--params",
            str(REPO / "params.yaml"),
            "--source",
            str(source),
            "--out",
            str(out),
            "--episodes",
            "2",
        ]
    )
    assert code == 0 and "imported 2 episodes" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "7.1/seg-0-options.json",
        "7.1/seg-0.jsonl",
        "7.1/seg-0.mp4",
        "7.1/seg-1.jsonl",
        "7.1/seg-1.mp4",
    ]
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    assert [r.id for r in find_raw_episodes(out)] == ["7.1/seg-0", "7.1/seg-1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                "collect",
                "--params",
                str(REPO / "params.yaml"),
                "--source",
                str(empty),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "holds no recordings" in capsys.readouterr().err
