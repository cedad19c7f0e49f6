"""Play one Crafter episode with a scripted player and keep what a recording needs.

Shared by `collect` (which records frames and JSON lines) and `player-report` (which only needs
the achievement counters and can skip rendering).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dreamer4.envs.crafter_env import DeterministicCrafter
from dreamer4.envs.scripted_player import ScriptedPlayer
from dreamer4.episodes.actions import CRAFTER_ACTIONS


def inventory_of(env: DeterministicCrafter) -> dict[str, int]:
    """The player's inventory now (what frame t's JSON line records)."""
    return {k: int(v) for k, v in env._player.inventory.items()}


@dataclass
class PlayedEpisode:
    """Frames (T+1) and JSON lines (T+1) in the format of `episodes.crafter_format`."""

    frames: list[np.ndarray] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    achievements: dict[str, int] = field(default_factory=dict)
    length: int = 0
    reward: float = 0.0

    def add_step(
        self,
        frame: np.ndarray,
        inventory: dict[str, int],
        action: int,
        reward: float,
        unlocked: list[str],
    ) -> None:
        """Frame t and its line: the action taken there, the reward and the achievements it
        brought, the inventory shown in the frame."""
        self.frames.append(frame)
        self.lines.append(
            {
                "step": len(self.lines),
                "action": CRAFTER_ACTIONS[action],
                "reward": round(float(reward), 6),
                "done": False,
                "achievements": unlocked,
                "inventory": inventory,
            }
        )

    def finish(self, frame: np.ndarray, inventory: dict[str, int], done: bool = True) -> None:
        """The last frame: no action taken there; `done` False for a recording cut short."""
        self.frames.append(frame)
        self.lines.append(
            {
                "step": len(self.lines),
                "action": None,
                "reward": 0.0,
                "done": done,
                "achievements": [],
                "inventory": inventory,
            }
        )


def play_episode(env: DeterministicCrafter, player: ScriptedPlayer, record: bool) -> PlayedEpisode:
    """Run until Crafter says done; with `record`, keep every frame and its JSON line."""
    out = PlayedEpisode()
    obs = env.reset()
    player.reset()
    counts = dict(env._player.achievements)
    done = False
    while not done:
        inventory = inventory_of(env) if record else {}
        action = int(player.act(env))
        next_obs, reward, done, info = env.step(action)
        unlocked = sorted(k for k, v in info["achievements"].items() if v > counts.get(k, 0))
        counts = dict(info["achievements"])
        out.length += 1
        out.reward += float(info["reward"])
        if record:
            out.add_step(obs, inventory, action, reward, unlocked)
        obs = next_obs
    if record:
        out.finish(obs, inventory_of(env))
    out.achievements = {k: int(v) for k, v in counts.items()}
    return out
