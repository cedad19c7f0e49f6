"""The MineRL 1.0 adapter (envs/minerl_env.py): actions both ways, frames as ingest makes them,
task events from the inventory (or stats), played against a stand-in with MineRL's spaces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dreamer4.envs.minerl_env import (
    INVENTORY_TASKS,
    MineRLPlayer,
    frame_from_pov,
    from_minerl,
    make_minerl_env,
    observable_tasks,
    to_minerl,
)
from dreamer4.episodes.actions import VPT_BUTTONS
from dreamer4.episodes.video import iter_video
from dreamer4.episodes.vpt import (
    VPT_TASKS,
    read_vpt_episode,
    vpt_actions,
    vpt_line,
    write_vpt_episode,
)
from dreamer4.errors import StageError
from tests.envs.minerl_standin import KEYS, StandInMineRL

# VPT's camera quantisation (lib/actions.py: mu-law, mu 10, maxval 10, binsize 2), written
# here from its formula and not taken from the project's code
MU, MAXVAL, BINSIZE = 10.0, 10.0, 2.0


def vpt_discretize(deg: np.ndarray) -> np.ndarray:
    x = np.clip(deg, -MAXVAL, MAXVAL) / MAXVAL
    x = np.sign(x) * np.log(1 + MU * np.abs(x)) / np.log(1 + MU) * MAXVAL
    return np.round((x + MAXVAL) / BINSIZE).astype(int)


def vpt_undiscretize(bins: np.ndarray) -> np.ndarray:
    x = (bins * BINSIZE - MAXVAL) / MAXVAL
    return np.sign(x) * ((1 + MU) ** np.abs(x) - 1) / MU * MAXVAL


KEY_ACTIONS = {"key.keyboard.w": "forward", "key.keyboard.s": "back", "key.keyboard.a": "left",
               "key.keyboard.d": "right", "key.keyboard.space": "jump",
               "key.keyboard.left.shift": "sneak", "key.keyboard.left.control": "sprint",
               "key.keyboard.e": "inventory", "key.keyboard.q": "drop",
               "key.keyboard.f": "swapHands", "key.keyboard.escape": "ESC",
               **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)}}  # fmt: skip


def vpt_loader_action(line: dict, last_hotbar: int) -> dict:
    """What VPT's data loader makes of one JSON line (keys, mouse buttons, camera degrees,
    scroll-wheel hotbar changes), as the env action its agent is trained to emit, quantised."""
    action = {key: 0 for key in KEYS}
    for key in line["keyboard"]["keys"]:
        if key in KEY_ACTIONS:
            action[KEY_ACTIONS[key]] = 1
    for button in line["mouse"]["buttons"]:
        action[{0: "attack", 1: "use", 2: "pickItem"}[button]] = 1
    if line["hotbar"] != last_hotbar:
        action[f"hotbar.{line['hotbar'] + 1}"] = 1
    camera = np.array([line["mouse"]["dy"], line["mouse"]["dx"]]) * 360.0 / 2400.0
    camera[np.abs(camera) > 180] = 0
    action["camera"] = vpt_undiscretize(vpt_discretize(camera))
    for unmodelled in ("ESC", "pickItem", "swapHands"):  # not among the 20 buttons
        action[unmodelled] = 0
    return action


def lines() -> list[dict]:
    out = [
        vpt_line(set()),
        vpt_line({"forward", "sprint", "attack"}, (1.2, -30.0)),
        vpt_line({"jump", "use"}, (0.0, 4.0), hotbar=3),
        vpt_line({"inventory", "drop"}, (-7.5, 0.3), hotbar=3),
        vpt_line({"back", "left", "sneak"}, (200.0, 2.0), hotbar=0),  # a recorder glitch: zeroed
        vpt_line({"right", "hotbar.5"}, (15.0, -15.0), hotbar=0),
    ]
    out[3]["keyboard"]["keys"].append("key.keyboard.escape")  # unmodelled, still non-null
    out[5]["mouse"]["buttons"].append(2)  # pickItem: unmodelled
    return out


def test_a_recorded_line_reaches_minerl_as_vpts_loader_makes_it_and_comes_back():
    recorded = lines()
    ours, _ = vpt_actions(recorded, Path("segment.jsonl"))
    last = 0
    for t, line in enumerate(recorded):
        action = {k: int(v[t]) for k, v in ours.items()}
        sent = to_minerl(action)
        StandInMineRL()._check(sent)  # inside MineRL 1.0's action space
        expected = vpt_loader_action(line, last)
        last = line["hotbar"]
        assert {k: sent[k] for k in KEYS} == {k: expected[k] for k in KEYS}, t
        np.testing.assert_allclose(sent["camera"], expected["camera"], atol=1e-5)
        assert from_minerl(sent) == action, t


def test_every_camera_class_round_trips_and_bad_actions_are_named():
    still = {b: 0 for b in VPT_BUTTONS}
    for cls in range(121):
        sent = to_minerl({**still, "camera": cls})
        assert from_minerl(sent)["camera"] == cls
        assert np.abs(sent["camera"]).max() <= 10.0
    assert list(to_minerl({**still, "camera": 60})["camera"]) == [0.0, 0.0]  # the null class
    with pytest.raises(ValueError, match="camera class 121"):
        to_minerl({**still, "camera": 121})
    with pytest.raises(ValueError, match=r"missing components \['attack'\]"):
        to_minerl({k: v for k, v in {**still, "camera": 60}.items() if k != "attack"})


def test_frames_are_resized_as_ingest_resizes_vpt_video(tmp_path: Path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 360, 640, 3), dtype=np.uint8)
    write_vpt_episode(tmp_path, "seg", frames, [vpt_line(set())] * 4)
    ingested = read_vpt_episode(tmp_path / "seg.mp4", tmp_path / "seg.jsonl", 64).frames
    for decoded, expected in zip(iter_video(tmp_path / "seg.mp4"), ingested, strict=True):
        assert np.array_equal(frame_from_pov({"pov": decoded}, 64), expected)
    with pytest.raises(ValueError, match="pov must be"):
        frame_from_pov({"pov": np.zeros((360, 640), np.uint8)}, 64)


def play(env: StandInMineRL, script: list[set[str]]) -> tuple[MineRLPlayer, list[dict], np.ndarray]:
    player = MineRLPlayer(env, 64)
    frame = player.reset()
    events = []
    for buttons in script:
        action = {b: int(b in buttons) for b in VPT_BUTTONS}
        action["camera"] = 5 * 11 + 6  # yaw a little right, every step
        frame, happened, done = player.step(action)
        events.append(happened)
        assert not done
    return player, events, frame


SCRIPT = [{"attack"}] * 3 + [{"inventory"}] + [set()] + [{"inventory"}] + [{"use"}]


def test_inventory_changes_are_the_tasks_events():
    player, events, frame = play(StandInMineRL(), SCRIPT)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    happened = {t: task for t, e in enumerate(events) for task, n in e.items() if n}
    assert happened == {
        2: "mine_log",
        3: "craft_planks",
        5: "craft_crafting_table",
        6: "place_crafting_table",
    }
    # what the inventory cannot tell is left out, not counted as failed
    assert set(player.tasks) == set(INVENTORY_TASKS)
    assert {"open_crafting_table", "use_wooden_pickaxe"} <= set(VPT_TASKS) - set(player.tasks)
    # the camera went to MineRL in degrees, [pitch, yaw]
    yaw = player.env.actions[0]["camera"]
    assert yaw[0] == 0 and 0.5 < yaw[1] < 0.7


def test_stats_when_the_env_has_them_count_every_task_as_ingest_does():
    player, events, _ = play(StandInMineRL(stats=True), SCRIPT)
    assert observable_tasks(player.obs) == tuple(VPT_TASKS)
    happened = {(t, task) for t, e in enumerate(events) for task, n in e.items() if n}
    assert (6, "open_crafting_table") in happened and (6, "place_crafting_table") in happened
    assert (2, "mine_log") in happened


@pytest.mark.skipif(importlib.util.find_spec("minerl") is not None, reason="MineRL is installed")
def test_without_minerl_the_error_says_what_to_install():
    with pytest.raises(StageError, match="MineRL 1.0.*docs/minecraft.md"):
        make_minerl_env()


def test_evaluate_help_documents_the_minecraft_form():
    from dreamer4.cli import build_parser

    parser = build_parser("evaluate")
    text = parser._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "evaluate.env minerl" in text and "docs/minecraft.md" in text
    assert "MineRL's" in text  # --seeds


def test_statistics_without_custom_leave_the_gui_tasks_out():
    from dreamer4.envs.minerl_env import task_events

    pov = np.zeros((360, 640, 3), np.uint8)
    before = {"pov": pov, "inventory": {}, "mine_block": {"oak_log": 2.0}, "craft_item": {}}
    after = {**before, "mine_block": {"oak_log": 3.0, "stone": 1.0}, "craft_item": {"stick": 4}}
    tasks = observable_tasks(after)
    assert "open_crafting_table" not in tasks and "use_wooden_pickaxe" not in tasks
    events = {t: n for t, n in task_events(before, after).items() if n}
    # marked as ingest marks the recordings: one event per step whose counter grew
    assert events == {"mine_log": 1, "mine_cobblestone": 1, "craft_stick": 1}
