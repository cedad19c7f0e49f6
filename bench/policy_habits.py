"""What did RL in imagination change in what the agent does? Action shares before and after.

The `imagine` stage rolls out the cloned policy (the prior, `bc`) and the trained one
(`dreamer4`) from the same contexts, tasks and noise; the evaluation report's `actions.csv`
says how often each agent chose each action in the real game. This prints, per action, its
share of imagined steps under each policy and its share of real steps for WM+BC and Dreamer 4,
then one action's share per prompted task. An action RL pushes out of
imagination (e.g. `sleep`, whose reward, if any, lies past the imagined horizon) should drop
in the real game too, and with it the achievements it gives by chance (`wake_up`). The two
sides are prompted differently: an imagined rollout with the task its context's data reaches
next (often not a milestone: `wake_up`, `collect_drink`), the real game along the tech tree;
so compare the change from prior to trained on each side, and the per-task table.

    python bench/policy_habits.py --imagination data/imagination --report reports/eval
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dreamer4.episodes.actions import CRAFTER_ACTIONS
from dreamer4.stages.evaluate import AGENTS


def imagined_shares(rollouts: pd.DataFrame) -> pd.DataFrame:
    """% of imagined steps per action (rows) under each policy (columns)."""
    column = "action/crafter"
    if column not in rollouts:
        raise SystemExit(f"rollouts.parquet: no {column!r} column (not a Crafter agent)")
    counts = rollouts.groupby("policy")[column].value_counts().unstack(0, fill_value=0)
    counts = counts.reindex(range(len(CRAFTER_ACTIONS)), fill_value=0)
    counts.index = list(CRAFTER_ACTIONS)
    return 100.0 * counts / counts.sum()


def action_by_task(rollouts: pd.DataFrame, action: str) -> pd.DataFrame:
    """% of imagined steps given to `action`, per prompted task (rows) and policy (columns),
    and how many rollouts each task prompted (the imagined return per task is the imagine
    stage's `returns.tsv`)."""
    index = CRAFTER_ACTIONS.index(action)
    chosen = rollouts.assign(chosen=100.0 * (rollouts["action/crafter"] == index))
    table = chosen.pivot_table(index="task", columns="policy", values="chosen")
    table["rollouts"] = chosen[chosen["policy"] == "bc"].groupby("task")["rollout"].nunique()
    return table.sort_values("rollouts", ascending=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imagination", type=Path, default=Path("data/imagination"))
    p.add_argument("--report", type=Path, default=Path("reports/eval"))
    p.add_argument("--action", default="sleep", choices=CRAFTER_ACTIONS, help="per task")
    args = p.parse_args()
    rollouts = pd.read_parquet(args.imagination / "rollouts.parquet")
    table = imagined_shares(rollouts).rename(
        columns={"bc": "imagined, prior", "dreamer4": "imagined, trained"}
    )
    real = args.report / "actions.csv"
    if real.is_file():
        shares = pd.read_csv(real, index_col=0)
        for label in (AGENTS["behaviour"], AGENTS["wm_bc"], AGENTS["dreamer4"]):
            if label in shares:
                table[f"real, {label}"] = shares[label]
    pd.set_option("display.width", 200)
    print("Actions, % of steps\n")
    print(table.round(2).to_markdown())
    print(f"\n{args.action}, % of imagined steps, by prompted task\n")
    print(action_by_task(rollouts, args.action).round(2).to_markdown())


if __name__ == "__main__":
    main()
