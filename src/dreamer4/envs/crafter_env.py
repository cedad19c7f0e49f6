"""Crafter made deterministic per seed.

Stock Crafter 1.8.3 does not replay a seed identically: `Env._balance_object` picks the creature
to despawn by index into a list built from a chunk's `set` of objects, and sets of objects iterate
in an order given by their memory addresses. We order those creatures by position (then type)
before the draw, so one seed gives one trajectory. Every other source of randomness in Crafter
goes through the world's seeded `RandomState`. Note that rendering at night draws noise from that
same generator, so a run that renders and one that does not diverge (each is deterministic).
"""

from __future__ import annotations

from typing import Any

import crafter
import numpy as np

from dreamer4.episodes.actions import CRAFTER_ACTIONS

assert tuple(crafter.constants.actions) == CRAFTER_ACTIONS, "unexpected Crafter action list"


class DeterministicCrafter(crafter.Env):
    """`crafter.Env` whose despawn choice no longer depends on object identity."""

    def _balance_object(self, chunk: Any, objs: Any, cls: type, *args: Any) -> None:
        ordered = sorted(objs, key=lambda o: (int(o.pos[0]), int(o.pos[1]), type(o).__name__))
        super()._balance_object(chunk, ordered, cls, *args)


def make_env(
    seed: int, size: int = 64, length: int = 10000, render: bool = True
) -> DeterministicCrafter:
    """A deterministic Crafter env rendering `size`×`size` observations.

    `render=False` returns a blank observation instead of drawing one (about 2× faster steps):
    for measuring players, not for recording. It changes the world's random stream at night.
    """
    env = DeterministicCrafter(size=(size, size), length=length, seed=int(seed))
    if not render:
        blank = np.zeros((size, size, 3), np.uint8)
        env._obs = lambda: blank  # type: ignore[method-assign]
    return env


def reseed(env: DeterministicCrafter, seed: int) -> None:
    """Make the next `reset` generate the world of `seed`, as a new env would (reuses textures)."""
    env._seed = int(seed)
    env._episode = 0


def episode_seed(seed: int, index: int) -> int:
    """The world seed of episode `index` of a collection run with base `seed` (stable, 31-bit)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] % (2**31 - 1))
