"""What the player held on the steps each task rule labels with a task: the check behind
`ingest.task_events`.

Evaluation prompts the first milestone an agent has not reached (after its first wood:
`place_table`). For each rule ("every": the next event counting every occurrence; "first": the
next first occurrence in the episode) this prints, per task, how many steps carry it, the share
with fewer than the 2 wood a table needs and the median wood (from the raw Crafter `.jsonl`
inventory), and the share of `place_table` presses. Under "every" on the small data no step
labelled `place_table` had < 2 wood, so a prompted agent with 1 wood was off its data.

    python bench/task_labels.py --episodes data/episodes --raw data/raw
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dreamer4.episodes.actions import CRAFTER_ACTIONS
from dreamer4.episodes.dataset import TASK_EVENTS, load_steps, next_event

TASKS = ("collect_wood", "place_table", "make_wood_pickaxe")


def labelled_steps(episodes: Path, raw: Path) -> pd.DataFrame:
    """One row per step and rule: its task under the rule, the wood held and the action."""
    steps = load_steps(episodes)
    events = [c for c in steps.columns if c.startswith("event/")]
    parts = []
    for episode, rows in steps[steps["source"] == "crafter"].groupby("episode", sort=False):
        rows = rows.sort_values("step")
        with open(raw / f"{episode}.jsonl") as f:
            wood = np.array([json.loads(line)["inventory"].get("wood", 0) for line in f])
        hits = {c.removeprefix("event/"): rows[c].to_numpy() for c in events}
        for rule in TASK_EVENTS:
            task = next_event(hits, len(rows), rule).to_numpy()
            parts.append(
                pd.DataFrame(
                    {
                        "rule": rule,
                        "task": task,
                        "wood": wood[: len(rows)],
                        "action": rows["action/crafter"].to_numpy(),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    press = CRAFTER_ACTIONS.index("place_table")
    rows = table[table["task"].isin(TASKS)]
    return rows.groupby(["rule", "task"]).agg(
        steps=("wood", "size"),
        few_wood_pct=("wood", lambda w: 100.0 * (w < 2).mean()),
        median_wood=("wood", "median"),
        place_table_pct=("action", lambda a: 100.0 * (a == press).mean()),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=Path, default=Path("data/episodes"))
    p.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = p.parse_args()
    print(summary(labelled_steps(args.episodes, args.raw)).round(1).to_markdown())


if __name__ == "__main__":
    main()
