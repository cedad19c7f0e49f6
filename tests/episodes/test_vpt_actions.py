"""VPT action mapping: known mouse counts → known camera bins, keys → buttons, VPT's fixes."""

import numpy as np
import pytest

from dreamer4.episodes.actions import bins_to_camera, camera_class, camera_to_bins
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


def test_keys_and_mouse_buttons_map_to_buttons():
    lines = [
        _line(keys=["key.keyboard.w", "key.keyboard.left.shift", "key.keyboard.3"]),
        _line(buttons=[0, 1]),
        _line(keys=["key.keyboard.space", "key.keyboard.left.control", "key.keyboard.e"]),
        _line(keys=["key.keyboard.escape"]),
    ]
    a, null = vpt_actions(lines, "test.jsonl")
    pressed = [{k for k, v in a.items() if k != "camera" and v[t]} for t in range(len(lines))]
    assert pressed == [
        {"forward", "sneak", "hotbar.3"},
        {"attack", "use"},
        {"jump", "sprint", "inventory"},
        set(),
    ]
    # ESC is not one of the 20 modelled buttons but is still an action, so not null.
    assert null.tolist() == [False, False, False, False]


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


def test_writer_line_maps_back_to_the_same_action():
    buttons = {"attack", "forward", "jump", "hotbar.2"}
    line = vpt_line(buttons, camera_deg=(-1.61, 3.22))
    a, null = vpt_actions([line], "test.jsonl")
    assert {k for k, v in a.items() if k != "camera" and v[0]} == buttons
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
