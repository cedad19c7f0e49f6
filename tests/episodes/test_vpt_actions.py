"""VPT action mapping: known mouse counts → known camera bins, keys → buttons, VPT's fixes."""

import numpy as np
import pytest

from dreamer4.episodes.actions import (
    VPT_BUTTONS,
    VPT_KEYS,
    VPT_MOUSE_BUTTONS,
    bins_to_camera,
    camera_class,
    camera_to_bins,
)
from dreamer4.episodes.vpt import NULL_CAMERA_CLASS, task_counts, vpt_actions, vpt_line


def _line(keys=(), buttons=(), new=(), dx=0.0, dy=0.0, hotbar=0):
    return {
        "mouse": {"dx": dx, "dy": dy, "buttons": list(buttons), "newButtons": list(new)},
        "keyboard": {"keys": list(keys), "newKeys": []},
        "hotbar": hotbar,
    }


def test_camera_bins_known_degrees():
    deg = np.array([0.0, 10.0, -10.0, 25.0, -400.0, 0.62, -0.62, 5.81, 1.61, 3.6])
    assert camera_to_bins(deg).tolist() == [5, 10, 0, 10, 0, 6, 4, 9, 7, 8]


def test_bin_centres_are_vpt_foveated_values():
    centres = bins_to_camera(np.arange(11))
    expected = [-10, -5.81, -3.22, -1.61, -0.62, 0, 0.62, 1.61, 3.22, 5.81, 10]
    np.testing.assert_allclose(centres, expected, atol=0.01)
    assert camera_to_bins(centres).tolist() == list(range(11))


def test_mouse_counts_to_joint_camera_class():
    # 24 counts × 360/2400 = 3.6° of yaw → bin 8; -66.7 counts = -10° of pitch → bin 0.
    lines = [_line(dx=24.0), _line(dy=-2400 / 36), _line(), _line(dx=24.0, dy=24.0)]
    actions, _ = vpt_actions(lines, "test.jsonl")
    assert actions["camera"].tolist() == [5 * 11 + 8, 0 * 11 + 5, NULL_CAMERA_CLASS, 8 * 11 + 8]
    assert camera_class(8, 8) == 96


def test_camera_degrees_stay_floating_point():
    # 5 counts = 0.75°: VPT's integer array would truncate this to 0° (bin 5); we keep bin 6.
    actions, null = vpt_actions([_line(dx=5.0)], "test.jsonl")
    assert actions["camera"].tolist() == [5 * 11 + 6]
    assert not null[0]


def test_glitch_camera_over_180_degrees_is_zeroed():
    actions, _ = vpt_actions([_line(dx=2400.0 * 200 / 360)], "test.jsonl")
    assert actions["camera"].tolist() == [NULL_CAMERA_CLASS]


# The recorder's names → the env's buttons, written out from VPT's `run_inverse_dynamics_model.py`
# (its KEYBOARD_BUTTON_MAPPING), not derived from the table under test: a swap of
# two entries (a/d, q/e, mouse 1/2) must fail here.
RECORDER_KEYS: dict[str, str] = {
    "key.keyboard.w": "forward",
    "key.keyboard.s": "back",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.space": "jump",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.q": "drop",
    "key.keyboard.e": "inventory",
    "key.keyboard.f": "swapHands",
    "key.keyboard.escape": "ESC",
    "key.keyboard.1": "hotbar.1",
    "key.keyboard.2": "hotbar.2",
    "key.keyboard.3": "hotbar.3",
    "key.keyboard.4": "hotbar.4",
    "key.keyboard.5": "hotbar.5",
    "key.keyboard.6": "hotbar.6",
    "key.keyboard.7": "hotbar.7",
    "key.keyboard.8": "hotbar.8",
    "key.keyboard.9": "hotbar.9",
}
RECORDER_MOUSE: dict[int, str] = {0: "attack", 1: "use", 2: "pickItem"}
# in the env's action space but not among the 20 modelled buttons (§3.2)
UNMODELLED = {"swapHands", "ESC", "pickItem"}


def _pressed(actions: dict[str, np.ndarray], t: int = 0) -> set[str]:
    return {k for k, v in actions.items() if k != "camera" and v[t]}


def test_key_and_mouse_tables_are_vpts():
    """The whole table at once, so a new or dropped key fails too."""
    assert VPT_KEYS == RECORDER_KEYS
    assert VPT_MOUSE_BUTTONS == RECORDER_MOUSE
    assert set(RECORDER_KEYS.values()) - UNMODELLED <= set(VPT_BUTTONS)


@pytest.mark.parametrize(("key", "button"), sorted(RECORDER_KEYS.items()))
def test_each_key_presses_its_button(key: str, button: str):
    """One line with one key held: exactly its button (none for ESC/swapHands), never null."""
    a, null = vpt_actions([_line(keys=[key])], "test.jsonl")
    assert _pressed(a) == ({button} - UNMODELLED)
    assert a["camera"].tolist() == [NULL_CAMERA_CLASS]
    assert not null[0]  # an unmodelled key is still an action


@pytest.mark.parametrize(("code", "button"), sorted(RECORDER_MOUSE.items()))
def test_each_mouse_button_presses_its_button(code: int, button: str):
    """Mouse 0/1/2 → attack/use/pickItem (pickItem is unmodelled: no button, still an action)."""
    a, null = vpt_actions([_line(buttons=[code])], "test.jsonl")
    assert _pressed(a) == ({button} - UNMODELLED)
    assert not null[0]


def test_keys_and_mouse_buttons_combine():
    lines = [
        _line(keys=["key.keyboard.w", "key.keyboard.left.shift", "key.keyboard.3"]),
        _line(buttons=[0, 1]),
        _line(keys=["key.keyboard.space", "key.keyboard.left.control", "key.keyboard.e"]),
        _line(keys=["key.keyboard.a", "key.keyboard.q"], buttons=[2]),
        _line(keys=["key.keyboard.escape"]),
        _line(keys=["key.keyboard.unknown"]),
    ]
    a, null = vpt_actions(lines, "test.jsonl")
    assert [_pressed(a, t) for t in range(len(lines))] == [
        {"forward", "sneak", "hotbar.3"},
        {"attack", "use"},
        {"jump", "sprint", "inventory"},
        {"left", "drop"},
        set(),
        set(),
    ]
    # ESC is not one of the 20 modelled buttons but is still an action; an unknown key is not
    assert null.tolist() == [False, False, False, False, False, True]


def test_stuck_attack_is_removed_until_pressed_again():
    lines = [
        _line(buttons=[0], new=[0]),  # attack held from the start: stuck
        _line(buttons=[0]),
        _line(buttons=[0, 1], new=[1]),
        _line(buttons=[0], new=[0]),  # pressed again: real from here on
        _line(buttons=[0]),
    ]
    a, null = vpt_actions(lines, "test.jsonl")
    assert a["attack"].tolist() == [0, 0, 0, 1, 1]
    assert a["use"].tolist() == [0, 0, 1, 0, 0]
    assert null.tolist() == [True, True, False, False, False]


def test_attack_pressed_with_other_buttons_at_start_is_not_stuck():
    a, _ = vpt_actions([_line(buttons=[0, 1], new=[0, 1]), _line(buttons=[0])], "test.jsonl")
    assert a["attack"].tolist() == [1, 1]


def test_scroll_wheel_hotbar_changes_are_rebuilt():
    lines = [_line(hotbar=0), _line(hotbar=3), _line(hotbar=3), _line(hotbar=8)]
    a, null = vpt_actions(lines, "test.jsonl")
    assert a["hotbar.4"].tolist() == [0, 1, 0, 0]
    assert a["hotbar.9"].tolist() == [0, 0, 0, 1]
    assert null.tolist() == [True, False, True, False]


def test_writer_line_uses_the_recorders_names():
    """The writer inverts the table: its output is checked against the recorder's literal names,
    since a round trip alone (next test) passes with any table, swapped entries included."""
    line = vpt_line({"left", "drop", "sprint", "hotbar.7", "use"})
    assert line["keyboard"]["keys"] == sorted(
        ["key.keyboard.a", "key.keyboard.q", "key.keyboard.left.control", "key.keyboard.7"]
    )
    assert line["mouse"]["buttons"] == [1]
    assert vpt_line({"right", "inventory", "pickItem"})["keyboard"]["keys"] == sorted(
        ["key.keyboard.d", "key.keyboard.e"]
    )
    assert vpt_line({"pickItem", "attack"})["mouse"]["buttons"] == [0, 2]


def test_writer_line_maps_back_to_the_same_action():
    buttons = {"attack", "forward", "jump", "hotbar.2"}
    line = vpt_line(buttons, camera_deg=(-1.61, 3.22))
    a, null = vpt_actions([line], "test.jsonl")
    assert _pressed(a) == buttons
    assert a["camera"][0] == camera_class(3, 8)
    assert not null[0]


def test_malformed_line_names_the_file():
    from dreamer4.episodes.episode import EpisodeError

    with pytest.raises(EpisodeError, match=r"seg\.jsonl: line 2"):
        vpt_actions([_line(), {"mouse": {}}], "seg.jsonl")


def test_task_events_from_stats_counters():
    stats = [
        {},
        {"minecraft.mine_block:minecraft.oak_log": 1},
        {
            "minecraft.mine_block:minecraft.oak_log": 2,
            "minecraft.craft_item:minecraft.oak_planks": 4,
        },
        {
            "minecraft.mine_block:minecraft.birch_log": 1,
            "minecraft.mine_block:minecraft.oak_log": 2,
            "minecraft.craft_item:minecraft.oak_planks": 4,
        },
    ]
    counts = task_counts(stats)
    assert counts["mine_log"].tolist() == [0, 1, 2, 3]
    assert counts["craft_planks"].tolist() == [0, 0, 4, 4]
    assert counts["mine_diamond"].sum() == 0
