"""Reader/writer round trips for the three raw formats and bare video."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dreamer4.episodes.actions import VPT_BUTTONS, camera_class
from dreamer4.episodes.crafter_format import read_crafter_episode, write_crafter_episode
from dreamer4.episodes.crafter_npz import read_crafter_npz
from dreamer4.episodes.readers import find_raw_episodes, read_raw_episode
from dreamer4.episodes.video import read_video, write_video
from dreamer4.episodes.vpt import read_vpt_episode, vpt_line, write_vpt_episode
from tests.conftest import crafter_lines, vpt_frames, write_npz_episode


def test_video_is_bit_exact(tmp_path: Path):
    frames = np.random.default_rng(0).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "a.mp4", frames)
    np.testing.assert_array_equal(read_video(tmp_path / "a.mp4"), frames)
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_crafter_recording_round_trip(tmp_raw: Path):
    rng = np.random.default_rng(1)
    n = 12
    frames = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    actions = rng.integers(0, 17, n - 1)
    rewards = [0.1 * (t % 3) for t in range(n - 1)]
    lines = crafter_lines(actions.tolist(), rewards, {4: "collect_wood"})
    write_crafter_episode(tmp_raw, "ep", frames, lines, {"seed": 1})
    ep = read_crafter_episode(tmp_raw / "ep.mp4", tmp_raw / "ep.jsonl", None)
    np.testing.assert_array_equal(ep.frames, frames)
    assert ep.actions["crafter"][:-1].tolist() == actions.tolist()
    assert ep.labelled.tolist() == [True] * (n - 1) + [False]
    np.testing.assert_allclose(ep.reward[:-1], [0.1 * (t % 3) for t in range(n - 1)], rtol=1e-6)
    assert np.flatnonzero(ep.events["collect_wood"]).tolist() == [4]
    small = read_crafter_episode(tmp_raw / "ep.mp4", tmp_raw / "ep.jsonl", 32)
    assert small.frames.shape == (n, 32, 32, 3)
    # area averaging: each stored pixel is the mean of a 2×2 block
    block = frames[3, :2, :2].astype(float).mean(axis=(0, 1))
    np.testing.assert_allclose(small.frames[3, 0, 0], block, atol=1)


def test_vpt_round_trip(tmp_raw: Path):
    rng = np.random.default_rng(2)
    n = 30
    frames = vpt_frames(n, seed=2)
    pressed, cams, lines = [], [], []
    centres = [-5.81, -1.61, 0.0, 0.62, 3.22, 10.0]
    bins = {c: b for c, b in zip(centres, [1, 3, 5, 6, 8, 10], strict=True)}
    for t in range(n):
        buttons = {b for b in VPT_BUTTONS[:9] if rng.random() < 0.3}
        cam = (float(rng.choice(centres)), float(rng.choice(centres)))
        stats = {"minecraft.mine_block:minecraft.oak_log": t // 10}
        pressed.append(buttons)
        cams.append(camera_class(bins[cam[0]], bins[cam[1]]))
        lines.append(vpt_line(buttons, cam, stats=stats))
    write_vpt_episode(tmp_raw, "7.0/cheeky-cornflower-setter-abc-20220101-120000", frames, lines)
    [raw] = find_raw_episodes(tmp_raw)
    assert raw.id == "7.0/cheeky-cornflower-setter-abc-20220101-120000"
    ep = read_raw_episode(raw, None)
    assert ep.source == "vpt"
    np.testing.assert_array_equal(ep.frames, frames)
    for t in range(n):
        assert {b for b in VPT_BUTTONS if ep.actions[b][t]} == pressed[t]
    assert ep.actions["camera"].tolist() == cams
    assert np.flatnonzero(ep.events["mine_log"]).tolist() == [9, 19]
    assert ep.null_action is not None and ep.labelled.all()
    assert read_vpt_episode(raw.files[1], raw.files[0], 16).frames.shape == (n, 16, 16, 3)


def test_crafter_npz_round_trip(tmp_raw: Path):
    actions = write_npz_episode(tmp_raw, seed=3, length=60, skill=1.0)  # collects wood early
    [npz] = tmp_raw.glob("*.npz")
    with np.load(npz) as data:
        images, rewards = data["image"], data["reward"]
        wood = data["achievement_collect_wood"]
    ep = read_crafter_npz(npz, None)
    assert len(ep) == len(actions) + 1 == 61
    assert ep.actions["crafter"][:-1].tolist() == actions  # shifted: row t = action after frame t
    assert ep.labelled.tolist() == [True] * 60 + [False]
    np.testing.assert_array_equal(ep.frames, images)
    np.testing.assert_allclose(ep.reward[:-1], rewards[1:])  # reward of the row's own action
    assert rewards.max() >= 1.0 and ep.reward[-1] == 0.0
    # the wood events sit on the rows whose action raised the counter (the `do` on a tree)
    rows = np.flatnonzero(ep.events["collect_wood"])
    assert len(rows) == wood[-1] >= 1
    assert all(wood[t + 1] == wood[t] + 1 and actions[t] == 5 for t in rows)
    assert ep.reward[rows[0]] >= 0.9  # the first unlock earns +1
    # the recorder's stats.jsonl is not mistaken for an episode
    assert [r.files[0].suffix for r in find_raw_episodes(tmp_raw)] == [".npz"]


def test_bare_video_is_unlabelled(tmp_raw: Path):
    write_video(tmp_raw / "clip.mp4", vpt_frames(8, seed=4))
    [raw] = find_raw_episodes(tmp_raw)
    ep = read_raw_episode(raw, 16)
    assert ep.source == "video" and not ep.labelled.any() and ep.actions == {}
