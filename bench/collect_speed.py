"""Throughput of recording and ingesting Crafter gameplay, one process each.

Prints steps/s for: Crafter alone (random actions, with and without rendering), Crafter driven
by the scripted player (full skill), the whole `collect` path (player + render + lossless mp4 +
jsonl), and frames/s of `ingest` (decode + resize + index + GX suites).

    python bench/collect_speed.py [--episodes 4] [--max-steps 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from dreamer4.envs.crafter_env import episode_seed, make_env
from dreamer4.envs.play import play_episode
from dreamer4.envs.scripted_player import ScriptedPlayer
from dreamer4.stages.collect import collect
from dreamer4.stages.ingest import ingest


def env_only(render: bool, steps: int) -> tuple[float, float]:
    """(steps/s excluding resets, seconds per reset) with random actions."""
    env = make_env(episode_seed(0, 0), render=render, length=10**9)
    rng = np.random.default_rng(0)
    step_s, reset_s, resets, done = 0.0, 0.0, 0, True
    for a in rng.integers(0, 17, steps):
        if done:
            t = time.perf_counter()
            env.reset()
            reset_s, resets = reset_s + time.perf_counter() - t, resets + 1
        t = time.perf_counter()
        _, _, done, _ = env.step(int(a))
        step_s += time.perf_counter() - t
    return steps / step_s, reset_s / resets


def with_player(render: bool, episodes: int, max_steps: int) -> tuple[float, float]:
    steps, seconds, act_seconds = 0, 0.0, 0.0
    for i in range(episodes):
        env = make_env(episode_seed(0, i), render=render, length=max_steps)
        player = ScriptedPlayer(1.0, seed=i)
        act = player.act

        def timed(e, act=act):
            nonlocal act_seconds
            t = time.perf_counter()
            a = act(e)
            act_seconds += time.perf_counter() - t
            return a

        player.act = timed  # type: ignore[method-assign]
        start = time.perf_counter()
        played = play_episode(env, player, record=False)
        seconds += time.perf_counter() - start
        steps += played.length
    return steps / seconds, 1000 * act_seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=1000)
    args = parser.parse_args()
    for render in (True, False):
        rate, reset = env_only(render, 3000)
        label = "render" if render else "no render"
        print(f"crafter step, random actions, {label:10s} {rate:8.0f} steps/s  reset {reset:.2f} s")
    rate, act_ms = with_player(True, args.episodes, args.max_steps)
    print(f"scripted player + render (no files):      {rate:8.0f} steps/s  act {act_ms:.2f} ms")
    rate, act_ms = with_player(False, args.episodes, args.max_steps)
    print(f"scripted player, no render:               {rate:8.0f} steps/s  act {act_ms:.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        start = time.perf_counter()
        stats = collect(raw, args.episodes, 0, args.max_steps, 64, workers=1, skill=1.0)
        seconds = time.perf_counter() - start
        steps = sum(s["length"] for s in stats)
        print(
            f"collect, 1 worker (incl. world gen, mp4): {steps / seconds:8.0f} steps/s "
            f"({steps} steps, {seconds:.1f} s)"
        )
        start = time.perf_counter()
        summary = ingest(raw, Path(tmp) / "episodes", resolution=32)
        seconds = time.perf_counter() - start
        print(
            f"ingest to 32×32 (incl. GX suites):        {summary['steps'] / seconds:8.0f} frames/s "
            f"({summary['steps']} frames, {seconds:.1f} s)"
        )


if __name__ == "__main__":
    main()
