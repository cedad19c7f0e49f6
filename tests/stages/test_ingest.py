"""`ingest`: every raw kind into one dataset; bad episodes quarantined, good ones kept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dreamer4.cli import main
from dreamer4.episodes.crafter_format import write_crafter_episode
from dreamer4.episodes.dataset import load_chunk, load_steps
from dreamer4.episodes.video import write_video
from dreamer4.episodes.vpt import vpt_line, write_vpt_episode
from dreamer4.errors import StageError
from dreamer4.stages.ingest import ingest
from tests.conftest import REPO, crafter_lines, vpt_frames, write_npz_episode, write_params


def lines(n: int) -> list[dict]:
    return crafter_lines([t % 17 for t in range(n - 1)])


def make_raw(raw: Path) -> None:
    """Three good episodes (one per format) and one bad episode of each kind."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    write_crafter_episode(raw, "good-crafter", frames, lines(20), {})
    write_npz_episode(raw, seed=5, length=15)
    write_vpt_episode(raw, "6.13/good-vpt", vpt_frames(12, 1), [vpt_line({"forward"})] * 12)
    # corrupt mp4: not a video at all
    write_crafter_episode(raw, "bad-corrupt", frames, lines(20), {})
    (raw / "bad-corrupt.mp4").write_bytes(b"\x00not an mp4\x00" * 50)
    # truncated mp4: the recording stopped half way
    write_crafter_episode(raw, "bad-truncated-video", frames, lines(20), {})
    data = (raw / "bad-truncated-video.mp4").read_bytes()
    (raw / "bad-truncated-video.mp4").write_bytes(data[: len(data) // 2])
    # truncated jsonl: cut in the middle of a line
    write_crafter_episode(raw, "bad-truncated-jsonl", frames, lines(20), {})
    text = (raw / "bad-truncated-jsonl.jsonl").read_text()
    (raw / "bad-truncated-jsonl.jsonl").write_text(text[: len(text) - 30])
    # length mismatch: 18 frames, 20 lines
    write_crafter_episode(raw, "bad-mismatch", frames, lines(20), {})
    write_video(raw / "bad-mismatch.mp4", frames[:18])
    # actions without video
    write_crafter_episode(raw, "bad-novideo", frames, lines(20), {})
    (raw / "bad-novideo.mp4").unlink()
    # a field of the wrong type
    write_crafter_episode(
        raw, "bad-field", frames, [*lines(19), {"action": None, "achievements": None}], {}
    )
    # VPT: a line that is not an action, and a segment with more frames than lines
    write_vpt_episode(
        raw,
        "6.13/bad-vpt-line",
        vpt_frames(12, 2),
        [vpt_line(set())] * 11 + [{"mouse": None, "keyboard": {"keys": []}}],
    )
    write_vpt_episode(raw, "6.13/bad-vpt-mismatch", vpt_frames(12, 3), [vpt_line(set())] * 12)
    write_video(raw / "6.13/bad-vpt-mismatch.mp4", vpt_frames(14, 3))
    # npz: not a zip at all, and a recorder file missing its actions
    (raw / "bad-npz-corrupt.npz").write_bytes(b"PK\x03\x04 not really")
    np.savez_compressed(raw / "bad-keys.npz", image=frames, reward=np.zeros(20))


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_bad_episodes_are_quarantined_and_good_ones_go_on(tmp_raw: Path, tmp_path: Path):
    make_raw(tmp_raw)
    before = _digest(tmp_raw)
    out = tmp_path / "episodes"
    summary = ingest(tmp_raw, out, resolution=32, eval_fraction=0.5, min_length=4)

    quarantine = json.loads((out / "quarantine.json").read_text())
    reasons = {q["episode"]: q["reason"] for q in quarantine["episodes"]}
    assert quarantine["count"] == 10 == summary["quarantined"]
    assert "bad-corrupt.mp4: unreadable video" in reasons["bad-corrupt"]
    assert "bad-truncated-video.mp4: unreadable video" in reasons["bad-truncated-video"]
    assert "bad-truncated-jsonl.jsonl: line 20 is truncated" in reasons["bad-truncated-jsonl"]
    assert (
        "bad-mismatch.mp4: 18 frames but bad-mismatch.jsonl has 20 lines" in reasons["bad-mismatch"]
    )
    assert "bad-novideo.jsonl: no video" in reasons["bad-novideo"]
    assert "bad-field.jsonl: line 20: achievements must be a list" in reasons["bad-field"]
    assert "bad-vpt-line.jsonl: line 12 is not a VPT action" in reasons["6.13/bad-vpt-line"]
    assert "bad-vpt-mismatch.mp4: 14 frames but" in reasons["6.13/bad-vpt-mismatch"]
    assert "bad-npz-corrupt.npz: unreadable npz" in reasons["bad-npz-corrupt"]
    assert "bad-keys.npz: missing keys ['action', 'done']" in reasons["bad-keys"]
    assert _digest(tmp_raw) == before, "ingest must not modify or move raw files"

    steps = load_steps(out)
    assert set(steps["source"]) == {"crafter", "crafter_npz", "vpt"}
    assert steps.groupby("episode").size().to_dict() == {
        "good-crafter": 20,
        "6.13/good-vpt": 12,
        next(e for e in steps.episode if "ach" in e): 16,
    }
    # one column per action component; nulls where a component does not apply
    assert steps["action/crafter"].dtype == "Int16" and steps["action/forward"].dtype == "boolean"
    vpt = steps[steps.source == "vpt"]
    assert vpt["action/forward"].all() and vpt["action/crafter"].isna().all()
    assert (vpt["action/camera"] == 60).all() and vpt["null_action"].eq(False).all()
    crafter = steps[steps.episode == "good-crafter"]
    assert crafter["action/crafter"].iloc[:-1].tolist() == [t % 17 for t in range(19)]
    assert pd.isna(crafter["action/crafter"].iloc[-1]) and not crafter["labelled"].iloc[-1]
    assert crafter["done"].tolist() == [False] * 19 + [True]
    assert set(steps["split"]) <= {"train", "eval"}
    assert len(steps.drop_duplicates(["episode", "split"])) == 3  # split is per episode
    # frames: right resolution, reachable through the index
    row = steps[steps.episode == "6.13/good-vpt"].iloc[3]
    frame = load_chunk(out, int(row.frame_chunk))[int(row.frame_index)]
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    assert json.loads((out / "validation.json").read_text())["success"] is True
    assert not list(tmp_path.glob(".episodes.*")), "temporary build folder left behind"


def test_too_short_episodes_are_quarantined(tmp_raw: Path, tmp_path: Path):
    make_raw(tmp_raw)
    summary = ingest(tmp_raw, tmp_path / "out", resolution=16, min_length=13)
    q = json.loads((tmp_path / "out" / "quarantine.json").read_text())
    assert summary["episodes"] == 2  # the 12-frame VPT segment is too short
    assert any("12 frames, outside [13" in e["reason"] for e in q["episodes"])


def test_cli_with_explicit_paths_and_no_readable_episode(tmp_raw: Path, tmp_path: Path, capsys):
    (tmp_raw / "x.jsonl").write_text('{"action": "noop"}\n')
    code = main(
        [
            "ingest",
            "--params",
            str(REPO / "params.yaml"),
            "--raw",
            str(tmp_raw),
            "--out",
            str(tmp_path / "out"),
            "--resolution",
            "16",
        ]
    )
    assert code == 2
    assert "no readable episodes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_reads_profile_from_params(tmp_raw: Path, tmp_path: Path, capsys):
    make_raw(tmp_raw)
    params = tmp_path / "params.yaml"
    overlay = {"ingest": {"resolution": 8, "min_length": 4, "eval_fraction": 0.0}}
    write_params(params, overlay, {"raw": str(tmp_raw), "episodes": str(tmp_path / "ds")})
    assert main(["ingest", "--params", str(params)]) == 0
    assert "3 episodes" in capsys.readouterr().out
    assert load_chunk(tmp_path / "ds", 0).shape[1:] == (8, 8, 3)
    assert set(load_steps(tmp_path / "ds")["split"]) == {"train"}


def test_cli_task_rule_from_params_and_a_bad_one_named(tmp_raw: Path, tmp_path: Path, capsys):
    """collect_wood at steps 2 and 5, place_table at 8: `every` keeps steps 3-5 on
    collect_wood, `first` (the default) puts them on place_table; a bad rule is named."""
    frames = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    unlocked = {2: "collect_wood", 5: "collect_wood", 8: "place_table"}
    write_crafter_episode(tmp_raw, "wood", frames, crafter_lines([0] * 11, None, unlocked), {})
    params = tmp_path / "params.yaml"
    tasks = {}
    for rule in ("every", "first"):
        paths = {"raw": str(tmp_raw), "episodes": str(tmp_path / rule)}
        write_params(params, {"ingest": {"min_length": 4, "task_events": rule}}, paths)
        assert main(["ingest", "--params", str(params)]) == 0
        assert json.loads((tmp_path / rule / "dataset.json").read_text())["task_events"] == rule
        tasks[rule] = load_steps(tmp_path / rule)["task"].fillna("-").tolist()
    assert tasks["every"][:9] == ["collect_wood"] * 6 + ["place_table"] * 3
    assert tasks["first"][:9] == ["collect_wood"] * 3 + ["place_table"] * 6
    write_params(params, {"ingest": {"min_length": 4, "task_events": "once"}}, paths)
    assert main(["ingest", "--params", str(params), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "ingest.task_events = 'once'" in err and str(params) in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("missing", ["profile", "section"])
def test_params_errors_name_the_file(tmp_path: Path, capsys, missing):
    params = tmp_path / "params.yaml"
    body = {
        "profile": "profile: nope\nprofiles: {p: {}}\n",
        "section": "profile: p\nprofiles: {p: {collect: {}}}\n",
    }[missing]
    params.write_text(body)
    assert main(["ingest", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert str(params) in err and ("no profile 'nope'" in err or "no `ingest` section" in err)


def test_out_that_is_not_a_dataset_is_never_replaced(tmp_raw: Path, tmp_path: Path):
    make_raw(tmp_raw)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(StageError, match="not an episode dataset"):
        ingest(tmp_raw, keep, resolution=8)
    with pytest.raises(StageError, match="must not contain one another"):
        ingest(tmp_raw, tmp_path, resolution=8)
    assert (keep / "notes.txt").read_text() == "precious" and (
        tmp_raw / "good-crafter.mp4"
    ).exists()
    ingest(tmp_raw, tmp_path / "ds", resolution=8, min_length=4)
    ingest(tmp_raw, tmp_path / "ds", resolution=8, min_length=4)  # a dataset may be rebuilt
