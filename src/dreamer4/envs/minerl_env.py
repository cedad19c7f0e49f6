"""MineRL 1.0 behind the project's factored VPT action space: the Minecraft side of `evaluate`.

MineRL cannot be built on the project machines (its build fetches Minecraft with gradle and wants
JDK 8), so only `make_minerl_env` imports it; the rest is conversion, tested against a stand-in
that follows MineRL 1.0's published spaces (tests/envs/minerl_standin.py).

- **Actions.** Ours are the 20 buttons of `actions.VPT_BUTTONS` (0/1) and the joint camera class
  11 × pitch_bin + yaw_bin. MineRL 1.0's human action dict has every key of its space
  (`MINERL_KEYS`: the 20 buttons plus `ESC`, `pickItem` and `swapHands`, which we do not model
  and always send as 0) and `camera` = [pitch, yaw] in degrees: the centres of the μ-law bins
  (`actions.bins_to_camera`), which is how VPT's own agent undoes its quantisation.
  `from_minerl` is the inverse (degrees binned as `ingest` bins a recording).
- **Frames.** `pov` (360×640×3 uint8) is resized exactly as `ingest` resizes VPT video
  (`episode.resize_frame`, area averaging to size×size), so the agent sees what it was trained on.
- **Events.** The recordings give the 20 tasks of the offline diamond challenge from `stats`
  counters (`vpt.VPT_TASKS`, `vpt.task_counts`). MineRL 1.0's HumanSurvival observes the same
  statistics, one mapping per category (`obs["mine_block"]["oak_log"]`, `craft_item`,
  `use_item`, …: ObserveFromFullStats); they are counted exactly as `ingest` counts the
  recordings' (`stats_of`). Opening a table or furnace is a `custom` statistic: counted when
  the observation has a `custom` mapping, else left out (`observable_tasks`), never counted
  failed. An env without statistics (BASALT's specs: `pov` and `inventory`) falls back to
  inventory changes (`INVENTORY_TASKS`): a gain for mining and crafting, a loss for placing,
  which also counts picking an item up as a gain and dropping one as a loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from dreamer4.episodes.actions import (
    CAMERA_BINS,
    VPT_BUTTONS,
    bins_to_camera,
    camera_class,
    camera_to_bins,
)
from dreamer4.episodes.episode import resize_frame
from dreamer4.episodes.vpt import VPT_TASKS, task_counts
from dreamer4.errors import StageError

# MineRL 1.0's human action keys (HumanControlEnvSpec: one per `mc.KEYMAP` value, and camera)
MINERL_KEYS: tuple[str, ...] = (
    "ESC",
    "attack",
    "back",
    "drop",
    "forward",
    *(f"hotbar.{i}" for i in range(1, 10)),
    "inventory",
    "jump",
    "left",
    "pickItem",
    "right",
    "sneak",
    "sprint",
    "swapHands",
    "use",
)
# What mining leaves in the inventory: the block's drop (stone → cobblestone, coal ore → coal)
MINED_DROPS: dict[str, tuple[str, ...]] = {
    "mine_log": ("*_log",),
    "mine_cobblestone": ("cobblestone",),
    "mine_iron_ore": ("iron_ore", "deepslate_iron_ore"),
    "mine_coal": ("coal",),
    "mine_diamond": ("diamond",),
}
# task → (the inventory change that marks it, item patterns): a crafted item is gained, a placed
# block is lost; the rest of VPT_TASKS (opening a GUI, using a pickaxe) leaves no mark
INVENTORY_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{task: ("gain", items) for task, items in MINED_DROPS.items()},
    **{task: ("gain", items) for task, (kind, items) in VPT_TASKS.items() if kind == "craft_item"},
    **{
        task: ("loss", items)
        for task, (kind, items) in VPT_TASKS.items()
        if task.startswith("place_")
    },
}
assert set(INVENTORY_TASKS) <= set(VPT_TASKS), "an inventory task that is not a VPT task"


def to_minerl(action: Mapping[str, Any]) -> dict[str, Any]:
    """Our factored action (every VPT button and `camera`) → MineRL 1.0's action dict."""
    missing = [k for k in (*VPT_BUTTONS, "camera") if k not in action]
    if missing:
        raise ValueError(f"action: missing components {missing}")
    out: dict[str, Any] = {key: 0 for key in MINERL_KEYS}
    for button in VPT_BUTTONS:
        out[button] = int(bool(int(action[button])))
    cls = int(action["camera"])
    if not 0 <= cls < CAMERA_BINS * CAMERA_BINS:
        raise ValueError(f"action: camera class {cls} is not in 0..{CAMERA_BINS**2 - 1}")
    out["camera"] = bins_to_camera(np.array(divmod(cls, CAMERA_BINS))).astype(np.float32)
    return out


def from_minerl(action: Mapping[str, Any]) -> dict[str, int]:
    """MineRL 1.0's action dict → our factored action (camera degrees binned as ingest does)."""
    pitch, yaw = camera_to_bins(np.asarray(action["camera"], dtype=np.float64).reshape(2))
    return {
        **{button: int(bool(action.get(button, 0))) for button in VPT_BUTTONS},
        "camera": camera_class(pitch, yaw),
    }


def frame_from_pov(obs: Mapping[str, Any], size: int) -> np.ndarray:
    """The observation's `pov` as the agent's frame: resized as `ingest` resizes VPT video."""
    pov = np.asarray(obs.get("pov"))
    if pov.ndim != 3 or pov.shape[2] != 3 or pov.dtype != np.uint8:
        raise ValueError(f"observation: pov must be (H, W, 3) uint8, got {pov.shape} {pov.dtype}")
    return resize_frame(pov, size)


# the statistics categories VPT_TASKS counts (custom, craft_item, mine_block, use_item)
STAT_CATEGORIES: tuple[str, ...] = tuple(sorted({kind for kind, _ in VPT_TASKS.values()}))


def _categories(obs: Mapping[str, Any]) -> list[str]:
    return [c for c in STAT_CATEGORIES if isinstance(obs.get(c), Mapping)]


def stats_of(obs: Mapping[str, Any]) -> dict[str, float]:
    """The observation's statistics in the recorders' form, `minecraft.<category>:minecraft.<item>`
    → count (what `vpt.task_counts` reads); empty when it has none."""
    return {
        f"minecraft.{cat}:minecraft.{str(item).removeprefix('minecraft:')}": float(value)
        for cat in _categories(obs)
        for item, value in obs[cat].items()
    }


def observable_tasks(obs: Mapping[str, Any]) -> tuple[str, ...]:
    """The VPT tasks this observation can tell: those of its statistics categories, else (none)
    those of `INVENTORY_TASKS`."""
    categories = _categories(obs)
    if categories:
        return tuple(t for t, (kind, _) in VPT_TASKS.items() if kind in categories)
    return tuple(INVENTORY_TASKS)


def task_progress(obs: Mapping[str, Any]) -> dict[str, float]:
    """Per observable task, a counter whose growth marks an event (`task_events`): the
    statistics summed as ingest sums the recordings', or the inventory gains and losses."""
    tasks = observable_tasks(obs)
    if _categories(obs):
        return {t: float(c[0]) for t, c in task_counts([stats_of(obs)]).items() if t in tasks}
    inventory = {str(k).removeprefix("minecraft:"): float(v) for k, v in obs["inventory"].items()}
    progress = {}
    for task, (change, patterns) in INVENTORY_TASKS.items():
        held = sum(
            v for item, v in inventory.items() if any(fnmatchcase(item, p) for p in patterns)
        )
        progress[task] = held if change == "gain" else -held
    return progress


def task_events(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    """Events of one step, 1 where a task's counter grew between two observations (as ingest's
    `events_from_counts` marks a recording's steps: crafting 4 sticks at once is one event)."""
    return _grown(task_progress(before), task_progress(after))


def _grown(old: dict[str, float], new: dict[str, float]) -> dict[str, int]:
    return {task: int(new[task] > old.get(task, new[task])) for task in new}


class MineRLPlayer:
    """One MineRL 1.0 env as the agent sees its data: frames at `size`, factored actions,
    task events per step. Works with gym's 4-tuple step (MineRL 1.0) and gymnasium's 5-tuple."""

    def __init__(self, env: Any, size: int) -> None:
        self.env, self.size = env, int(size)
        self.obs: Mapping[str, Any] = {}
        self.progress: dict[str, float] = {}  # task_progress(self.obs), read once per step

    @property
    def tasks(self) -> tuple[str, ...]:
        return observable_tasks(self.obs)

    def reset(self) -> np.ndarray:
        out = self.env.reset()
        self.obs = out[0] if isinstance(out, tuple) else out
        self.progress = task_progress(self.obs)
        return frame_from_pov(self.obs, self.size)

    def step(self, action: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, int], bool]:
        """Frame after the action, the task events it caused, and whether the episode ended."""
        out = self.env.step(to_minerl(action))
        obs, done = out[0], bool(out[2]) or (len(out) == 5 and bool(out[3]))
        progress = task_progress(obs)
        events = _grown(self.progress, progress)
        self.obs, self.progress = obs, progress
        return frame_from_pov(obs, self.size), events, done

    def close(self) -> None:
        self.env.close()


# VPT's agent settings of the env (its run_agent.py ENV_KWARGS): 640×360, FOV 70, GUI scale 1
ENV_KWARGS: dict[str, Any] = {
    "fov_range": [70, 70],
    "gamma_range": [2, 2],
    "guiscale_range": [1, 1],
    "resolution": [640, 360],
    "cursor_size_range": [16.0, 16.0],
}


def make_minerl_env(**kwargs: Any) -> Any:
    """MineRL 1.0's HumanSurvival env (the one VPT's agents play), with `ENV_KWARGS`."""
    try:
        from minerl.herobraine.env_specs.human_survival_specs import HumanSurvival
    except ImportError as err:  # optional: cannot be built on the project machines
        raise StageError(
            "evaluate.env 'minerl' needs MineRL 1.0, which is not installed (it needs JDK 8 and "
            "the internet at install: docs/minecraft.md)"
        ) from err
    return HumanSurvival(**{**ENV_KWARGS, **kwargs}).make()
