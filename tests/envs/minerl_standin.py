"""A stand-in for MineRL 1.0's HumanSurvival env (MineRL cannot be built here): its published
observation and action spaces, checked strictly, over a toy world.

Spaces as MineRL 1.0 documents them (HumanControlEnvSpec): observation `pov` Box(0, 255,
(360, 640, 3), uint8) and `inventory` (item → count, FlatInventoryObservation); action: one
Discrete(2) per key of `mc.KEYMAP` and `camera` Box(-180, 180, (2,)) = [pitch, yaw] degrees.
Written from that description, not from the adapter, so a wrong key or type in the adapter fails
here. gym's 4-tuple `step` (MineRL 1.0 uses gym 0.23).

The toy world: the view's colour follows pitch and yaw; 3 steps of `attack` give an oak log;
`inventory` with a log crafts 4 planks, with 4 planks a crafting table; `use` with a crafting
table places it; a `stats` variant also observes the statistics as HumanSurvival does, one
mapping per category (ObserveFromFullStats: `mine_block`, `craft_item`, `use_item`, `custom`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

KEYS = (
    ["forward", "back", "left", "right", "jump", "sneak", "sprint", "inventory", "drop"]
    + ["swapHands", "ESC", "attack", "use", "pickItem"]
    + [f"hotbar.{i}" for i in range(1, 10)]
)
POV_SHAPE = (360, 640, 3)


class StandInMineRL:
    def __init__(self, length: int = 100, stats: bool = False) -> None:
        self.length, self.with_stats, self.world = length, stats, 0
        self.actions: list[dict[str, Any]] = []

    def seed(self, seed: int) -> None:
        """gym 0.23's way to choose the world of the next `reset`."""
        self.world = int(seed)

    def _obs(self) -> dict[str, Any]:
        pov = np.zeros(POV_SHAPE, np.uint8)
        pov[..., 0] = int(self.pitch + 90) % 256
        pov[..., 1] = int(self.yaw + 180) % 256
        pov[:180, :320, 2] = (self.t * 7 + self.world) % 256
        obs: dict[str, Any] = {"pov": pov, "inventory": dict(self.inventory)}
        if self.with_stats:
            for category in ("mine_block", "craft_item", "use_item", "custom", "pickup"):
                obs[category] = {
                    item: n for (cat, item), n in self.stats.items() if cat == category
                }
        return obs

    def reset(self) -> dict[str, Any]:
        self.t, self.pitch, self.yaw, self.swings = 0, 0.0, 0.0, 0
        self.inventory = {"oak_log": 0, "oak_planks": 0, "crafting_table": 0, "dirt": 2}
        self.stats: dict[tuple[str, str], int] = {}
        return self._obs()

    def _check(self, action: dict[str, Any]) -> None:
        if set(action) != {*KEYS, "camera"}:
            raise ValueError(f"action keys differ: {sorted(set(action) ^ {*KEYS, 'camera'})}")
        for key in KEYS:
            value = action[key]
            if not isinstance(value, (int, np.integer)) or value not in (0, 1):
                raise ValueError(f"action[{key!r}] = {value!r}: not in Discrete(2)")
        camera = np.asarray(action["camera"])
        if camera.shape != (2,) or camera.dtype.kind != "f" or np.abs(camera).max() > 180:
            raise ValueError(f"action['camera'] = {camera!r}: not in Box(-180, 180, (2,))")

    def _count(self, category: str, item: str) -> None:
        self.stats[category, item] = self.stats.get((category, item), 0) + 1

    def step(self, action: dict[str, Any]) -> tuple[dict[str, Any], float, bool, dict]:
        self._check(action)
        self.actions.append(action)
        self.t += 1
        self.pitch = float(np.clip(self.pitch + action["camera"][0], -90, 90))
        self.yaw = (self.yaw + float(action["camera"][1]) + 180) % 360 - 180
        self.swings = self.swings + 1 if action["attack"] else 0
        inv = self.inventory
        if self.swings == 3:
            self.swings = 0
            inv["oak_log"] += 1
            self._count("mine_block", "oak_log")
        if action["inventory"] and inv["oak_log"]:
            inv["oak_log"] -= 1
            inv["oak_planks"] += 4
            self._count("craft_item", "oak_planks")
        elif action["inventory"] and inv["oak_planks"] >= 4:
            inv["oak_planks"] -= 4
            inv["crafting_table"] += 1
            self._count("craft_item", "crafting_table")
        if action["use"] and inv["crafting_table"]:
            inv["crafting_table"] -= 1
            self._count("use_item", "crafting_table")
            self._count("custom", "interact_with_crafting_table")
        return self._obs(), 0.0, self.t >= self.length, {}

    def close(self) -> None:
        pass
