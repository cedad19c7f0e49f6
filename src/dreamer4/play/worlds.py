"""New Crafter worlds for the play server, made off the event loop and off the tick threads.

Crafter's world generation is seconds of pure Python that holds the GIL: made in the server's
process it stops every page's frames (measured: 7 pages opening at once on 2 cores got no frame
in 10 s). So the server makes worlds in worker processes; an env pickles in milliseconds. This
module imports only Crafter, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from dreamer4.envs.crafter_env import make_env, reseed

WorldMaker = Callable[[int, int], tuple[Any, np.ndarray]]


def generate_world(seed: int, size: int) -> tuple[Any, np.ndarray]:
    """A Crafter env reset to world `seed` and its first observation."""
    env = make_env(seed, size=size)
    reseed(env, seed)
    return env, env.reset()


class WorldFactory:
    """`generate_world` in `processes` worker processes, started (and warm) at construction:
    a call blocks its thread only, and holds no GIL while the world is made."""

    def __init__(self, processes: int) -> None:
        self.pool = ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn"))
        for future in [self.pool.submit(_ready) for _ in range(processes)]:
            future.result()

    def __call__(self, seed: int, size: int) -> tuple[Any, np.ndarray]:
        return self.pool.submit(generate_world, seed, size).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    return True
