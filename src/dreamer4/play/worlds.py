"""New Crafter worlds for the play server, made off the event loop and off the tick threads.

Crafter's world generation is seconds of pure Python that holds the GIL: made in the server's
process it stops every page's frames (measured: 7 pages opening at once on 2 cores got no frame
in 10 s). So the server makes worlds in worker processes; an env pickles in milliseconds. This
module imports only Crafter, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from dreamer4.envs.crafter_env import make_env

WorldMaker = Callable[[int, int], tuple[Any, np.ndarray]]


def generate_world(seed: int, size: int) -> tuple[Any, np.ndarray]:
    """A Crafter env reset to world `seed` and its first observation."""
    env = make_env(seed, size=size)
    return env, env.reset()


class WorldFactory:
    """`generate_world` in `processes` worker processes: a call blocks its thread only, and
    holds no GIL while the world is made. A pool whose worker died (killed, out of memory) is
    started again once; if that fails too, the world is made in the calling thread."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=mp.get_context("spawn"),
            initializer=_ignore_ctrl_c,
        )
        for future in [pool.submit(_ready) for _ in range(self.processes)]:
            future.result()  # start the workers now, not when the first page opens
        return pool

    def __call__(self, seed: int, size: int) -> tuple[Any, np.ndarray]:
        pool = self.pool
        try:
            return pool.submit(generate_world, seed, size).result()
        except BrokenProcessPool:
            with self._lock:
                if self.pool is pool:  # the first thread to see it restarts the pool
                    try:
                        self.pool = self._start()
                    except (BrokenProcessPool, OSError):
                        return generate_world(seed, size)
            try:
                return self.pool.submit(generate_world, seed, size).result()
            except BrokenProcessPool:
                return generate_world(seed, size)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    return True


def _ignore_ctrl_c() -> None:
    """Workers: Ctrl-C in the terminal is the server's to handle (it shuts the pool down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
