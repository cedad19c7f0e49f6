"""New Crafter worlds for the play server, made off the event loop and off the tick threads.

Crafter's world generation is seconds of pure Python that holds the GIL: made in the server's
process it stops every page's frames (measured: 7 pages opening at once on 2 cores got no frame
in 10 s). So the server makes worlds in worker processes; an env pickles in milliseconds. This
module imports only Crafter, so a worker starts in a fraction of a second.

A session also orders its *next* world while the current one is played (`WorldFactory.later`),
so a reset or an episode's end does not wait seconds for one. Those orders run in one worker
at the lowest CPU priority (nice 19): they use the cores only when pages opening now and the
ticks leave them idle, and a page opening never queues behind another page's next world. An
order not ready when it is needed is made then, at normal priority (the session does that).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from dreamer4.envs.crafter_env import make_env

WorldMaker = Callable[[int, int], tuple[Any, np.ndarray]]
# (seed, size) → a future world: made in the background, read when the session needs it
WorldOrder = Callable[[int, int], Future[tuple[Any, np.ndarray]]]


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
        self.background = self._start_background()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=mp.get_context("spawn"),
            initializer=_ignore_ctrl_c,
        )
        for future in [pool.submit(_ready) for _ in range(self.processes)]:
            future.result()  # start the workers now, not when the first page opens
        return pool

    @staticmethod
    def _start_background() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1, mp_context=mp.get_context("spawn"), initializer=_low_priority
        )

    def later(self, seed: int, size: int) -> Future[tuple[Any, np.ndarray]]:
        """`generate_world` at the lowest CPU priority, for when it is needed (a `WorldOrder`).
        A background worker that died fails the orders it had (the session then makes those
        worlds with `__call__`) and is started again at the next order; a closed factory fails
        the order. Never raises."""
        background = self.background
        try:
            try:
                return background.submit(generate_world, seed, size)
            except BrokenProcessPool:
                with self._lock:
                    if self.background is background:  # the first thread to see it restarts
                        self.background = self._start_background()
                return self.background.submit(generate_world, seed, size)
        except RuntimeError as err:  # shut down (BrokenProcessPool is one too)
            failed: Future[tuple[Any, np.ndarray]] = Future()
            failed.set_exception(err)
            return failed

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
        self.background.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    return True


def _ignore_ctrl_c() -> None:
    """Workers: Ctrl-C in the terminal is the server's to handle (it shuts the pool down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _low_priority() -> None:
    """The background worker: idle CPU only, and Ctrl-C left to the server."""
    _ignore_ctrl_c()
    os.nice(19)
