"""The play server's world factory: worlds made in worker processes are the worlds the session
would make itself, and a worker that dies does not end the server's worlds."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from dreamer4.envs.crafter_env import make_env, reseed
from dreamer4.play.worlds import WorldFactory


def test_a_world_from_a_worker_plays_as_one_made_here_and_a_dead_worker_is_replaced():
    here = make_env(0, size=64)
    reseed(here, 2_000_123)
    first = here.reset()
    factory = WorldFactory(1)
    try:
        env, obs = factory(2_000_123, 64)
        np.testing.assert_array_equal(obs, first)
        for action in (3, 5, 1, 5):  # the same world: the same steps
            np.testing.assert_array_equal(env.step(action)[0], here.step(action)[0])
        for pid in list(factory.pool._processes):  # killed, as by the OOM killer
            os.kill(pid, signal.SIGKILL)
        env, obs = factory(2_000_123, 64)  # the broken pool is started again
        np.testing.assert_array_equal(obs, first)
        assert factory.pool._processes and all(
            p.is_alive() for p in factory.pool._processes.values()
        )
    finally:
        factory.close()


def test_an_order_is_made_at_the_lowest_priority_and_a_closed_factory_fails_it():
    here = make_env(0, size=64)
    reseed(here, 2_000_007)
    factory = WorldFactory(1)
    try:
        env, obs = factory.later(2_000_007, 64).result(timeout=120)
        first = here.reset()
        np.testing.assert_array_equal(obs, first)
        assert factory.background.submit(os.nice, 0).result(timeout=60) == 19
        for pid in list(factory.background._processes):  # killed: the next order restarts it
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not factory.background._broken:
            assert time.monotonic() < deadline, "the pool never saw its worker die"
            time.sleep(0.05)
        env, obs = factory.later(2_000_007, 64).result(timeout=120)
        np.testing.assert_array_equal(obs, first)
    finally:
        factory.close()
    late = factory.later(2_000_007, 64)  # the server is shutting down: the session makes it
    assert isinstance(late.exception(timeout=5), RuntimeError)
