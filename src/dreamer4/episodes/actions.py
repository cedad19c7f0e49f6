"""Factored action spaces: Crafter's categorical(17) and VPT's buttons + μ-law camera.

The paper (App. A) encodes each action component separately, so a space is a dict of
components. Each component becomes one column `action/<name>` of the step index.

VPT conventions follow OpenAI's Video-Pre-Training code (`run_inverse_dynamics_model.py`,
`lib/actions.py`; summarised in docs/data-formats.md): keyboard keys and mouse buttons map to
20 buttons, the camera is mouse dx/dy × 360/2400 degrees, quantised per axis with μ-law (μ=10,
±10°) into 11 bins, joined as 11 × pitch_bin + yaw_bin. Unlike VPT's loader, which stores
degrees in an integer array and so truncates them to whole degrees, we keep them in floating
point before binning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

CRAFTER_ACTIONS: tuple[str, ...] = (
    "noop",
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "do",
    "sleep",
    "place_stone",
    "place_table",
    "place_furnace",
    "place_plant",
    "make_wood_pickaxe",
    "make_stone_pickaxe",
    "make_iron_pickaxe",
    "make_wood_sword",
    "make_stone_sword",
    "make_iron_sword",
)
CRAFTER_ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal",
    "collect_diamond",
    "collect_drink",
    "collect_iron",
    "collect_sapling",
    "collect_stone",
    "collect_wood",
    "defeat_skeleton",
    "defeat_zombie",
    "eat_cow",
    "eat_plant",
    "make_iron_pickaxe",
    "make_iron_sword",
    "make_stone_pickaxe",
    "make_stone_sword",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_furnace",
    "place_plant",
    "place_stone",
    "place_table",
    "wake_up",
)

VPT_BUTTONS: tuple[str, ...] = (
    "attack",
    "back",
    "forward",
    "jump",
    "left",
    "right",
    "sneak",
    "sprint",
    "use",
    "drop",
    "inventory",
    *(f"hotbar.{i}" for i in range(1, 10)),
)
# Keys as the VPT recorder names them → env buttons. ESC and swapHands exist in the env's action
# space but not in the 20 modelled buttons; they still make an action non-null.
VPT_KEYS: dict[str, str] = {
    "key.keyboard.w": "forward",
    "key.keyboard.s": "back",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.space": "jump",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.e": "inventory",
    "key.keyboard.q": "drop",
    "key.keyboard.f": "swapHands",
    "key.keyboard.escape": "ESC",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
}
VPT_MOUSE_BUTTONS: dict[int, str] = {0: "attack", 1: "use", 2: "pickItem"}
CAMERA_SCALER = 360.0 / 2400.0  # degrees per mouse count (VPT CAMERA_SCALER)
CAMERA_MAXVAL = 10.0
CAMERA_BINSIZE = 2.0
CAMERA_MU = 10.0
CAMERA_BINS = 11
CAMERA_NULL_BIN = 5


@dataclass(frozen=True)
class Component:
    """One factor of an action space: `binary` (bool) or `categorical` with `n` classes."""

    name: str
    kind: Literal["binary", "categorical"]
    n: int = 2

    @property
    def column(self) -> str:
        return f"action/{self.name}"


CRAFTER_SPACE: tuple[Component, ...] = (Component("crafter", "categorical", len(CRAFTER_ACTIONS)),)
VPT_SPACE: tuple[Component, ...] = (
    *(Component(b, "binary") for b in VPT_BUTTONS),
    Component("camera", "categorical", CAMERA_BINS * CAMERA_BINS),
)
COMPONENTS: dict[str, Component] = {c.name: c for c in (*CRAFTER_SPACE, *VPT_SPACE)}


def camera_to_bins(degrees: np.ndarray) -> np.ndarray:
    """Quantise camera degrees per axis with VPT's μ-law scheme into bins 0..10 (5 = still)."""
    x = (
        np.clip(np.asarray(degrees, dtype=np.float64), -CAMERA_MAXVAL, CAMERA_MAXVAL)
        / CAMERA_MAXVAL
    )
    x = np.sign(x) * np.log1p(CAMERA_MU * np.abs(x)) / np.log1p(CAMERA_MU) * CAMERA_MAXVAL
    return np.round((x + CAMERA_MAXVAL) / CAMERA_BINSIZE).astype(np.int64)


def bins_to_camera(bins: np.ndarray) -> np.ndarray:
    """Inverse of `camera_to_bins`: bin centres in degrees (±10, ±5.81, ±3.22, ±1.61, ±0.62, 0)."""
    x = (np.asarray(bins, dtype=np.float64) * CAMERA_BINSIZE - CAMERA_MAXVAL) / CAMERA_MAXVAL
    return np.sign(x) * ((1.0 + CAMERA_MU) ** np.abs(x) - 1.0) / CAMERA_MU * CAMERA_MAXVAL


def camera_class(pitch_bin: int, yaw_bin: int) -> int:
    """Joint camera class of the 121-way categorical: 11 × pitch_bin + yaw_bin."""
    return CAMERA_BINS * int(pitch_bin) + int(yaw_bin)
