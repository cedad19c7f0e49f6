"""Stage `imagine` → asset `imagination_dataset`: what the policy does inside the world model.

From `contexts` fixed dataset windows (the eval split when it has episodes; one rollout per
context), each prompted with the task its data reaches next, two sets of rollouts of
`horizon` steps with the same contexts, tasks and noise draws: the cloned policy (the frozen
prior of phase 3, i.e. the `agent` before RL) and the trained policy. Both run in the same
frozen world model and are scored by the same reward and value heads, so their imagined
returns compare like with like: DVC metrics `imagination/return_before` and
`imagination/return_after` (mean over rollouts of the summed predicted rewards).

Folder (`data/imagination/`, columns in docs/agent.md):

- `rollouts.parquet`: one row per rollout step — `rollout`, `policy` (`bc` / `dreamer4`),
  `episode`, `start` (the context window), `task`, `step` t, `action/<name>` a_t, `reward`
  r_{t+1}, `value` v_t, `return` R^λ_t;
- `latents.npy`: (rollouts, horizon, N_b, D_b) float16, imagined frames s_1 … s_H;
- `summary.json`: counts, settings, mean return per policy;
- `validation.json`: the great-expectations result (all finite, rewards and values within the
  two-hot range, one row per rollout step; also the Dagster asset check);
- `preview.gif`: decoded by the tokenizer, cloned policy | trained policy.

`metrics/imagine/returns.tsv` is the summary table (mean return per task and policy).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
import torch

from dreamer4.agent import load_policy
from dreamer4.dynamics import shift_actions
from dreamer4.episodes.dataset import write_json
from dreamer4.episodes.validation import run_suites
from dreamer4.errors import StageError
from dreamer4.files import atomic_path, staged_folder
from dreamer4.imagination import (
    ImaginationConfig,
    Rollout,
    imagine,
    known_tasks,
    prompt_tasks,
)
from dreamer4.params import Settings
from dreamer4.pmpo import lambda_returns
from dreamer4.preview import save_grid_gif
from dreamer4.shortcut import ShortcutConfig
from dreamer4.tokenizer import load_tokenizer
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, fixed_batch, heldout_split

POLICIES = ("bc", "dreamer4")  # the cloned prior (before phase 3), the trained policy (after)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="latents folder (contexts)")
    p.add_argument("--policy", default=None, help="policy folder (train_policy output)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (decodes the preview)")
    p.add_argument("--out", default=None, help="output folder (imagination dataset)")
    p.add_argument("--metrics", default=None, help="folder for summary.json and returns.tsv")
    p.add_argument("--contexts", type=int, default=None, help="rollouts per policy")
    p.add_argument("--seed", type=int, default=None)


def validate_rollouts(table: pd.DataFrame, rollouts: int, horizon: int, low: float, high: float):
    """The great-expectations suite of the imagination dataset (also the Dagster asset check)."""

    e = gx.expectations
    numeric = ["reward", "value", "return"]
    finite = table[numeric].apply(np.isfinite).all(axis=1)
    checks = table.assign(finite=finite)
    return run_suites(
        "imagination_dataset",
        [
            (
                "rollouts",
                checks,
                [
                    e.ExpectTableRowCountToEqual(value=rollouts * horizon),
                    e.ExpectCompoundColumnsToBeUnique(column_list=["rollout", "step"]),
                    e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
                    e.ExpectColumnValuesToBeInSet(column="policy", value_set=list(POLICIES)),
                    e.ExpectColumnValuesToBeBetween(column="reward", min_value=low, max_value=high),
                    e.ExpectColumnValuesToBeBetween(column="value", min_value=low, max_value=high),
                    e.ExpectColumnValuesToNotBeNull(column="task"),
                ],
            )
        ],
    )


@torch.no_grad()
def imagine_dataset(
    policy_dir: Path,
    data: Path,
    tokenizer_dir: Path | None,
    out: Path,
    metrics: Path,
    contexts: int,
    batch: int,
    seed: int,
) -> dict[str, Any]:
    """Roll out, validate and write the imagination dataset (see the module docstring)."""

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module, config = load_policy(policy_dir)
    module.to(device).eval()
    model = config["model"]
    cfg = ImaginationConfig(**model["imagination"])
    shortcut = ShortcutConfig(**model["shortcut"])
    agent = module.agent
    tasks = agent.cfg.tasks
    split = heldout_split(data)
    spec = SequenceSpec(
        length=cfg.context, split=split, arrays=("latents",), fields=(), tasks=tasks
    )
    dataset = EpisodeSequences(data, spec)
    contexts_batch, windows = fixed_batch(dataset, contexts, seed)
    known = known_tasks(data, tasks)
    rows: list[dict[str, Any]] = []
    latents: dict[str, list[np.ndarray]] = {p: [] for p in POLICIES}
    returns: dict[str, list[np.ndarray]] = {p: [] for p in POLICIES}
    for lo in range(0, contexts, batch):
        b = {k: v[lo : lo + batch] for k, v in contexts_batch.items()}
        task = prompt_tasks(b["task"][:, -1], known, torch.Generator().manual_seed(seed + lo))
        b, task = {k: v.to(device) for k, v in b.items()}, task.to(device)
        for name in POLICIES:
            roll, values, ret = _rollout(module, name, b, task, cfg, shortcut, seed + lo)
            latents[name].append(roll.latents.cpu().half().numpy())
            returns[name].append(roll.rewards.cpu().sum(1).numpy())
            first = POLICIES.index(name) * contexts + lo
            labels = [
                (str(dataset.episode_ids[w.episode]), w.start) for w in windows[lo : lo + batch]
            ]
            rows += _rows(
                name, first, labels, [tasks[int(t)] for t in task.cpu()], roll, values, ret
            )
    table = pd.DataFrame(rows)
    arrays = np.concatenate([np.concatenate(latents[p]) for p in POLICIES])
    report = validate_rollouts(
        table, len(POLICIES) * contexts, cfg.horizon, agent.twohot.low, agent.twohot.high
    )
    mean_return = {p: float(np.concatenate(returns[p]).mean()) for p in POLICIES}
    summary = {
        "policy": str(policy_dir),
        "data": str(data),
        "split": split,
        "contexts": contexts,
        "rollouts": len(POLICIES) * contexts,
        "horizon": cfg.horizon,
        "context": cfg.context,
        "shortcut_steps": cfg.steps,
        "seed": seed,
        "mean_return": mean_return,
        "range": [agent.twohot.low, agent.twohot.high],  # of the reward and value heads
        "validation": report.to_dict(),
    }
    _write(out, table, arrays, summary, report)
    if not report.success:
        raise StageError(f"{out}: imagination suite failed:\n  " + "\n  ".join(report.failures))
    if tokenizer_dir is not None:
        _preview(out / "preview.gif", tokenizer_dir, arrays, contexts)
    _metrics(metrics, table, mean_return)
    return summary


def _rollout(
    module: Any,
    name: str,
    b: dict[str, torch.Tensor],
    task: torch.Tensor,
    cfg: ImaginationConfig,
    shortcut: ShortcutConfig,
    seed: int,
) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
    """One policy's rollouts from a batch of contexts, with their decoded values and
    λ-returns. Both policies get the same noise (seeded alike), drawn on the CPU so that any
    device gives the same draws."""

    agent = module.agent
    head = {"bc": module.prior, "dreamer4": agent.policy}[name]
    roll = imagine(
        agent,
        b["latents"].float(),
        shift_actions(b),
        task,
        cfg.horizon,
        cfg.steps,
        shortcut,
        policy=lambda h: head(h, 1)[:, 0],
        generator=torch.Generator().manual_seed(seed),
        context_window=cfg.window,
    )
    values = agent.twohot.decode(module.value(roll.features, 1)[:, :, 0])
    ret = lambda_returns(roll.rewards, values, roll.continues, cfg.gamma, cfg.lam)
    return roll, values, ret


def _rows(
    name: str,
    first: int,
    labels: list[tuple[str, int]],
    prompts: list[str],
    roll: Rollout,
    values: torch.Tensor,
    ret: torch.Tensor,
) -> list[dict[str, Any]]:
    """One table row per imagined step; rollouts numbered from `first`, `labels` the
    (episode, start) of each context."""

    rewards, values, ret = roll.rewards.cpu(), values.cpu(), ret.cpu()
    acts = {k: v.cpu() for k, v in roll.actions.items()}
    return [
        {
            "rollout": first + i,
            "policy": name,
            "episode": episode,
            "start": start,
            "task": prompts[i],
            "step": t,
            **{f"action/{k}": int(v[i, t]) for k, v in acts.items()},
            "reward": float(rewards[i, t]),
            "value": float(values[i, t]),
            "return": float(ret[i, t]),
        }
        for i, (episode, start) in enumerate(labels)
        for t in range(rewards.shape[1])
    ]


def _write(out: Path, table: pd.DataFrame, arrays: np.ndarray, summary: dict, report: Any) -> None:
    """Write the folder next to `out`, then swap it in (a failed run leaves the old one)."""

    with staged_folder(out, "rollouts.parquet", "an imagination dataset") as tmp:
        table.to_parquet(tmp / "rollouts.parquet", index=False)
        np.save(tmp / "latents.npy", arrays)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "validation.json", report.to_dict())


def _preview(path: Path, tokenizer_dir: Path, arrays: np.ndarray, contexts: int) -> None:

    tok, _ = load_tokenizer(tokenizer_dir)
    shown = min(4, contexts)
    with torch.no_grad():
        columns = [
            tok.unpatchify(
                tok.decode(torch.from_numpy(arrays[i * contexts : i * contexts + shown]).float())
            )
            for i in range(len(POLICIES))
        ]
    save_grid_gif(path, columns)


def _metrics(metrics: Path, table: pd.DataFrame, mean_return: dict[str, float]) -> None:

    metrics.mkdir(parents=True, exist_ok=True)
    per_rollout = table.groupby(["policy", "task", "rollout"])["reward"].sum().reset_index()
    by_task = per_rollout.pivot_table(
        index="task", columns="policy", values="reward", aggfunc="mean"
    ).reset_index()
    by_task["rollouts"] = per_rollout.groupby("task")["rollout"].nunique().to_numpy() // 2
    with atomic_path(metrics / "returns.tsv") as tmp:
        by_task.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    with atomic_path(metrics / "summary.json") as tmp:
        write_json(
            tmp,
            {
                "imagination/return_before": round(mean_return["bc"], 6),
                "imagination/return_after": round(mean_return["dreamer4"], 6),
            },
        )


def run(args: argparse.Namespace) -> int:

    settings = Settings.load(args, "imagine")
    own = settings.own
    out = settings.path("imagination", args.out)
    summary = imagine_dataset(
        settings.path("policy", args.policy),
        settings.path("latents", args.data),
        settings.path("tokenizer", args.tokenizer),
        out,
        Path(args.metrics or "metrics/imagine"),
        own.count("contexts", args.contexts),
        own.count("batch"),
        own.count("seed", args.seed, low=0),
    )
    before, after = summary["mean_return"]["bc"], summary["mean_return"]["dreamer4"]
    print(
        f"imagine: {summary['rollouts']} rollouts of {summary['horizon']} steps → {out}; "
        f"imagined return {before:.3f} (cloned policy) → {after:.3f} (trained policy)"
    )
    return 0
