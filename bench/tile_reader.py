"""How well the tile classifier reads *real* Crafter frames at each light level, awake and
asleep: the evidence for `LIT` in eval/tile_accuracy.py.

Random walks; every `--every`-th state is re-rendered at each of the templates' light levels,
with the player awake and asleep, twice (two draws of Crafter's night noise). Per level it
prints the share of view tiles read as Crafter's semantic map has them, and the share read alike
in the two renders (what any reader of the real frame could agree with itself on).

    python bench/tile_reader.py [--seeds 0 1] [--steps 400] [--every 8]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from dreamer4.envs.crafter_env import make_env
from dreamer4.eval.tile_accuracy import DAYLIGHT, classifier, semantic_view


def reliability(seeds: list[int], steps: int, every: int) -> pd.DataFrame:
    c = classifier(64)
    rows: dict[tuple[float, bool], list[tuple[float, float]]] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        env = make_env(seed, size=64, length=10_000)
        env.reset()
        for t in range(steps):
            action = int(rng.integers(0, 17)) if rng.random() < 0.5 else int(rng.integers(1, 6))
            _, _, done, info = env.step(action)
            if done:
                break
            if t % every:
                continue
            truth = semantic_view(info)
            light, asleep = env._world.daylight, env._player.sleeping
            for day in DAYLIGHT:
                env._world.daylight = day
                for env._player.sleeping in (False, True):
                    first, second = (
                        c.view(torch.tensor(env.render())[None])[0].numpy() for _ in "12"
                    )
                    rows.setdefault((day, env._player.sleeping), []).append(
                        ((first == truth).mean(), (first == second).mean())
                    )
            env._world.daylight, env._player.sleeping = light, asleep
    return pd.DataFrame(
        [
            {
                "daylight": day,
                "asleep": sleeps,
                "states": len(v),
                "vs semantic map (%)": 100 * np.mean([a for a, _ in v]),
                "two renders alike (%)": 100 * np.mean([b for _, b in v]),
            }
            for (day, sleeps), v in rows.items()
        ]
    ).sort_values(["asleep", "daylight"], ascending=[True, False])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=8)
    args = p.parse_args()
    table = reliability(args.seeds, args.steps, args.every)
    print(table.to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
