"""VPT contractor recordings: `<relpath>.mp4` + `<relpath>.jsonl`, read as OpenAI publishes them.

Each JSON line is the input state at one video frame: `mouse{dx, dy, buttons, newButtons, ...}`,
`keyboard{keys, newKeys, ...}`, `isGuiOpen`, `hotbar`, `inventory`, `stats`. Mapping to the
factored action space (`actions.VPT_SPACE`) follows VPT's data loader:
- keys → buttons by `VPT_KEYS`, mouse buttons 0/1/2 → attack/use/pickItem;
- camera degrees = (dy, dx) × 360/2400 in floating point (VPT's loader truncates to whole degrees
  through an integer array); an axis over 180° is a recorder glitch and is zeroed;
- stuck attack: when the first line newly presses only the attack button, attack is dropped until
  the player presses it again;
- hotbar changes made with the scroll wheel are rebuilt from the `hotbar` field;
- `null_action`: no key, no mouse button, no hotbar change and no mouse motion. VPT drops such
  frames from BC; we keep them (the world model still learns from them) and flag them.
Events for the 20 tasks of the paper's offline diamond challenge (Table 4) come from increases of
the `stats` counters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dreamer4.episodes.actions import (
    CAMERA_NULL_BIN,
    CAMERA_SCALER,
    VPT_BUTTONS,
    VPT_KEYS,
    VPT_MOUSE_BUTTONS,
    camera_to_bins,
)
from dreamer4.episodes.crafter_format import read_jsonl
from dreamer4.episodes.episode import Episode, EpisodeError, events_from_counts
from dreamer4.episodes.video import read_video, write_video
from dreamer4.files import atomic_write_text

_ORES = ("", "deepslate_")
# task -> (stat category, items counted)
VPT_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mine_log": ("mine_block", ("*_log",)),
    "mine_cobblestone": ("mine_block", ("stone", "cobblestone")),
    "mine_iron_ore": ("mine_block", tuple(f"{p}iron_ore" for p in _ORES)),
    "mine_coal": ("mine_block", tuple(f"{p}coal_ore" for p in _ORES)),
    "mine_diamond": ("mine_block", tuple(f"{p}diamond_ore" for p in _ORES)),
    "craft_planks": ("craft_item", ("*_planks",)),
    **{
        f"craft_{x}": ("craft_item", (x,))
        for x in (
            "stick",
            "crafting_table",
            "furnace",
            "iron_ingot",
            "wooden_pickaxe",
            "stone_pickaxe",
            "iron_pickaxe",
        )
    },
    "open_crafting_table": ("custom", ("interact_with_crafting_table",)),
    "open_furnace": ("custom", ("interact_with_furnace",)),
    "place_crafting_table": ("use_item", ("crafting_table",)),
    "place_furnace": ("use_item", ("furnace",)),
    **{f"use_{m}_pickaxe": ("use_item", (f"{m}_pickaxe",)) for m in ("wooden", "stone", "iron")},
}


def _matches(item: str, patterns: tuple[str, ...]) -> bool:
    return any(item.endswith(p[1:]) if p.startswith("*") else item == p for p in patterns)


def task_counts(stats_per_line: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Cumulative counter per task, per line, summed over the matching `stats` keys."""
    out = {task: np.zeros(len(stats_per_line), dtype=np.float64) for task in VPT_TASKS}
    for t, stats in enumerate(stats_per_line):
        for key, value in stats.items():
            cat, _, item = key.partition(":")
            cat, item = cat.removeprefix("minecraft."), item.removeprefix("minecraft.")
            for task, (want_cat, patterns) in VPT_TASKS.items():
                if cat == want_cat and _matches(item, patterns):
                    out[task][t] += float(value)
    return out


def vpt_actions(
    lines: list[dict[str, Any]], path: Path
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Factored actions (`VPT_BUTTONS` bools + joint camera class) and the null-action flags."""
    n = len(lines)
    buttons = {b: np.zeros(n, dtype=bool) for b in VPT_BUTTONS}
    pitch_yaw = np.zeros((n, 2), dtype=np.float64)
    null = np.zeros(n, dtype=bool)
    attack_stuck, last_hotbar = False, 0
    for t, line in enumerate(lines):
        try:
            mouse, keys = line["mouse"], list(line["keyboard"]["keys"])
            held = list(mouse.get("buttons", []))
            new = list(mouse.get("newButtons", []))
            dx, dy = float(mouse.get("dx", 0.0)), float(mouse.get("dy", 0.0))
            hotbar = int(line.get("hotbar", last_hotbar))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise EpisodeError(f"{path}: line {t + 1} is not a VPT action ({err!r})") from err
        if t == 0:
            attack_stuck = new == [0]
        elif attack_stuck and 0 in new:
            attack_stuck = False
        if attack_stuck:
            held = [b for b in held if b != 0]
        pressed = {VPT_KEYS[k] for k in keys if k in VPT_KEYS}
        pressed |= {VPT_MOUSE_BUTTONS[b] for b in held if b in VPT_MOUSE_BUTTONS}
        if hotbar != last_hotbar:
            pressed.add(f"hotbar.{hotbar + 1}")
        last_hotbar = hotbar
        for b in pressed & buttons.keys():
            buttons[b][t] = True
        deg = np.array([dy, dx]) * CAMERA_SCALER
        deg[np.abs(deg) > 180.0] = 0.0
        pitch_yaw[t] = deg
        null[t] = not pressed and dx == 0 and dy == 0
    bins = camera_to_bins(pitch_yaw)
    actions: dict[str, np.ndarray] = {b: v.astype(np.int64) for b, v in buttons.items()}
    actions["camera"] = bins[:, 0] * 11 + bins[:, 1]
    return actions, null


def read_vpt_episode(
    video: Path, jsonl: Path, size: int | None, lines: list[dict[str, Any]] | None = None
) -> Episode:
    """Read one contractor segment at `size`×`size` (VPT trains at 128×128)."""
    lines = read_jsonl(jsonl) if lines is None else lines
    actions, null = vpt_actions(lines, jsonl)
    events = events_from_counts(task_counts([line.get("stats") or {} for line in lines]))
    n = len(lines)
    ep = Episode(
        id=jsonl.stem,
        source="vpt",
        frames=read_video(video, size, n, jsonl.name),
        actions=actions,
        labelled=np.ones(n, dtype=bool),
        records=n,
        reward=np.zeros(n, dtype=np.float32),
        events=events,
        null_action=null,
    )
    ep.check(str(jsonl))
    return ep


def vpt_line(
    buttons: set[str],
    camera_deg: tuple[float, float] = (0.0, 0.0),
    hotbar: int = 0,
    stats: dict[str, int] | None = None,
    gui: bool = False,
) -> dict[str, Any]:
    """A JSON line in the contractor format for the given env action (the inverse mapping)."""
    key_of = {button: key for key, button in VPT_KEYS.items()}
    mouse_of = {button: code for code, button in VPT_MOUSE_BUTTONS.items()}
    return {
        "mouse": {
            "x": 640.0,
            "y": 360.0,
            "dx": camera_deg[1] / CAMERA_SCALER,
            "dy": camera_deg[0] / CAMERA_SCALER,
            "scaledX": 0.0,
            "scaledY": 0.0,
            "dwheel": 0.0,
            "buttons": sorted(mouse_of[b] for b in buttons if b in mouse_of),
            "newButtons": [],
        },
        "keyboard": {
            "keys": sorted(key_of[b] for b in buttons if b in key_of and b not in mouse_of),
            "newKeys": [],
            "chars": "",
        },
        "isGuiOpen": gui,
        "isGuiInventory": gui and "inventory" in buttons,
        "hotbar": hotbar,
        "yaw": 0.0,
        "pitch": 0.0,
        "xpos": 0.0,
        "ypos": 64.0,
        "zpos": 0.0,
        "tick": 0,
        "milli": 0,
        "inventory": [],
        "stats": dict(stats or {}),
    }


def write_vpt_episode(
    directory: Path, relpath: str, frames: np.ndarray, lines: list[dict[str, Any]]
) -> None:
    """Write a segment as the contractor recorder does: `<relpath>.mp4` + `<relpath>.jsonl`."""
    if len(frames) != len(lines):
        raise ValueError(f"{relpath}: {len(frames)} frames but {len(lines)} lines")
    base = Path(directory) / relpath
    base.parent.mkdir(parents=True, exist_ok=True)
    write_video(base.with_name(base.name + ".mp4"), frames)
    body = "".join(json.dumps(line) + "\n" for line in lines)
    atomic_write_text(base.with_name(base.name + ".jsonl"), body)


NULL_CAMERA_CLASS = CAMERA_NULL_BIN * 11 + CAMERA_NULL_BIN
