"""Stage `evaluate` → asset `eval_report`: every agent in the real game (paper Table 7, Crafter).

Agents, by key (label):

- `random` (Random): uniform actions;
- `behaviour` (Behaviour data): the offline data itself, read from its recordings (the
  collection's worlds, not the held-out ones: it is the data's skill, not a player's);
- `bc` (BC): the `bc_agent` (agent heads trained from scratch on the data);
- `wm_bc` (WM+BC): the `agent` (phase 2, world model + agent heads);
- `dreamer4` (Dreamer 4): the `policy` (phase 3, after RL in imagination).

Each played agent runs `episodes` episodes of real Crafter on the held-out world seeds
`first_seed` … `first_seed + episodes − 1` (an error if the collection used one of them), the
same seeds for every agent, in `workers` processes, `batch` worlds per job played in lockstep
(one batched agent call per step: several times the steps/s of one environment; each world
generated once, then each agent plays its own copy). Agents see frames resized to the tokenizer's
resolution as `ingest` resizes the data; actions are sampled, never argmax. BC, WM+BC and
Dreamer 4 are prompted along the tech tree (`eval/prompted_play.py`, paper Table 6). Episode i of
agent a samples with its own generator seeded by (seed, a, i), so results do not depend on the
worker count, the batch (draws; a GPU's batched kernels may still round differently), or on
which other agents run (a: the agent's place in `AGENTS`). Worlds are
deterministic per seed (`envs/crafter_env.py`).

Folder (`reports/eval/`): `report.md` and a self-contained `report.html`; `<agent>/stats.jsonl`
per agent (Crafter's StatsRecorder format: `dreamer4 score reports/eval/bc` reads it);
`episodes.parquet` (one row per episode, `eval/tables.py`); `success.csv`, `headline.csv`,
`time_to_milestone.csv`, `actions.csv` (the share of steps each agent gave each action),
`scores.csv` (Crafter score with its 95 % bootstrap interval) and
`comparisons.csv` (Table 7's claims tested pairwise, `COMPARISONS`: Fisher's and, paired by
world seed, McNemar's exact tests per milestone, the score difference's bootstrap interval);
plots and clips (`success.png`, `training.png`, `real_game.gif`, `imagination.gif`,
`world_model.gif`). DVC metrics `metrics/evaluate/metrics.json` (`eval/<agent>/score`,
`…/return`, `…/length`, `…/<milestone>` success in %) and plot `metrics/evaluate/milestones.tsv`.

With `env: minerl` (the `minecraft` profile) every agent plays Minecraft instead, through MineRL
1.0 and the adapter `envs/minerl_env.py` (`evaluate_minecraft`, `eval/minecraft_play.py`): the
report is then the success per task of the 20 offline-diamond tasks (docs/minecraft.md).

`dreamer4 evaluate` also runs alone: `--agents dreamer4 --policy PATH --tokenizer PATH
--seeds 5000:5100 --out DIR` evaluates any policy (or phase-2 agent) folder on any seed range.
`--show` prints the headline table of an existing report.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dreamer4.agent import ActionSpace
from dreamer4.envs.crafter_env import make_env, reseed
from dreamer4.episodes.actions import CRAFTER_ACTIONS, VPT_SPACE
from dreamer4.episodes.crafter_format import read_jsonl
from dreamer4.episodes.dataset import write_json
from dreamer4.episodes.episode import EpisodeError
from dreamer4.errors import StageError
from dreamer4.eval import minecraft_play as minecraft
from dreamer4.eval.agent_player import RandomPlayer, episode_generator, model_player
from dreamer4.eval.prompted_play import MILESTONES, play_prompted_batch, prompt_indices
from dreamer4.eval.report import Report
from dreamer4.eval.tables import (
    action_table,
    episode_rows,
    headline_table,
    pairwise_tests,
    score_interval,
    success_table,
    time_to_milestone,
)
from dreamer4.files import atomic_path, staged_folder
from dreamer4.parallel import imap_workers
from dreamer4.params import Settings
from dreamer4.tokenizer import load_tokenizer

AGENTS: dict[str, str] = {
    "random": "Random",
    "behaviour": "Behaviour data",
    "bc": "BC",
    "wm_bc": "WM+BC",
    "dreamer4": "Dreamer 4",
}
# Table 7's claims, tested in the report (comparisons.csv): Dreamer 4 ≥ WM+BC ≥ BC, each above
# random
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("dreamer4", "wm_bc"),
    ("wm_bc", "bc"),
    ("dreamer4", "bc"),
    ("bc", "random"),
    ("wm_bc", "random"),
    ("dreamer4", "random"),
)
# keys of the stats lines kept out of <agent>/stats.jsonl (they are in episodes.parquet):
# nested dicts that Crafter's StatsRecorder format does not have (`seed`, a number, stays)
EXTRAS = ("first_step", "actions")
_WORKER: dict[str, Any] = {}  # per worker process: loaded players and the env


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "Minecraft: with evaluate.env minerl (the minecraft profile: `dreamer4 evaluate "
        "--profile minecraft`) every agent plays MineRL 1.0 through envs/minerl_env.py, one env "
        "at a time, made by evaluate.minerl_env (module:function, default MineRL's "
        "HumanSurvival); --seeds are then MineRL world seeds, --workers and --batch do not "
        "apply, and the report is the success per task of the 20 offline-diamond tasks "
        "(report.md). MineRL must be installed first: docs/minecraft.md."
    )
    p.add_argument("--agents", help=f"comma-separated subset of {','.join(AGENTS)}")
    p.add_argument("--tokenizer", help="tokenizer folder (train_tokenizer output)")
    p.add_argument("--agent", help="WM+BC: a finetune_agent output folder")
    p.add_argument("--bc-agent", help="BC: a bc_baseline output folder")
    p.add_argument("--policy", help="Dreamer 4: a train_policy output (or any agent folder)")
    p.add_argument("--raw", help="raw episodes (behaviour row; held-out seed check)")
    p.add_argument("--imagination", help="imagination dataset (its preview clip)")
    p.add_argument(
        "--seeds",
        help="world seeds START:STOP, Crafter's or MineRL's (default: first_seed, episodes)",
    )
    p.add_argument("--max-steps", type=int, help="episode length cap")
    p.add_argument("--workers", type=int, help="evaluation processes")
    p.add_argument("--batch", type=int, help="environments per worker, played in lockstep")
    p.add_argument("--out", help="report folder")
    p.add_argument("--metrics", help="folder for metrics.json and milestones.tsv")
    p.add_argument("--show", action="store_true", help="print an existing report's headline")


def parse_seeds(text: str) -> list[int]:
    """`START:STOP` → world seeds START … STOP−1."""
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise StageError(f"--seeds {text!r}: expected START:STOP, e.g. 5000:5100") from None
    if stop <= start:
        raise StageError(f"--seeds {text!r}: empty range")
    return list(range(start, stop))


def collected_seeds(raw: Path) -> set[int]:
    """World seeds of the recorded episodes (from their `-options.json`)."""
    return {
        int(json.loads(p.read_text()).get("world_seed", -1)) for p in raw.rglob("*-options.json")
    }


def behaviour_stats(raw: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Stats lines of the recorded Crafter episodes (from their JSON lines, which carry the
    step of each achievement), and why each episode that does not parse was skipped (as
    `ingest` quarantines it)."""

    stats, skipped = [], []
    for path in sorted(raw.rglob("*.jsonl")):
        if path.name == "stats.jsonl" or path.name.startswith("."):
            continue
        try:
            lines = read_jsonl(path)
        except EpisodeError as err:
            skipped.append(str(err))
            continue
        if "achievements" not in lines[0]:
            continue  # not a Crafter recording (e.g. VPT actions): no achievements to count
        counts: dict[str, int] = {}
        first: dict[str, int] = {}
        for t, line in enumerate(lines):
            for name in line.get("achievements") or []:
                counts[name] = counts.get(name, 0) + 1
                first.setdefault(name, t + 1)  # line t holds what action t unlocked
        actions = Counter(line["action"] for line in lines if line.get("action"))  # last: null
        options = path.with_name(f"{path.stem}-options.json")
        seed = json.loads(options.read_text()).get("world_seed") if options.is_file() else None
        stats.append(
            {
                "length": len(lines) - 1,
                "reward": round(sum(float(x.get("reward", 0.0)) for x in lines), 1),
                **{f"achievement_{k}": v for k, v in sorted(counts.items())},
                "seed": seed,
                "first_step": first,
                "actions": dict(actions),
            }
        )
    return stats, skipped


def load_player(name: str, folder: str | None, tokenizer: str | None) -> tuple[Any, tuple, Any]:
    """The player of one agent (loaded once per process), its tasks and the resolution it
    sees (None: as rendered, for the random player)."""

    players = _WORKER.setdefault("players", {})
    if (name, folder) not in players:
        if name == "random":
            space = ActionSpace((("crafter", "categorical", len(CRAFTER_ACTIONS)),))
            players[name, folder] = (RandomPlayer(space), (), None)
        else:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if _WORKER.get("tokenizer_key") != tokenizer:  # one load per worker, not per agent
                _WORKER["tokenizer_key"] = tokenizer
                _WORKER["tokenizer"] = load_tokenizer(Path(str(tokenizer)))
            tok, config = _WORKER["tokenizer"]
            player, tasks = model_player(Path(str(folder)), tok, device)
            players[name, folder] = (player, tasks, int(config["model"]["resolution"]))
    return players[name, folder]


def generate_worlds(env: Any, seeds: list[int]) -> tuple[list[Any], list[np.ndarray]]:
    """A copy of `env` with each seed's world as generated, and its first observation: every
    agent's episode starts from its own copy of these (Crafter's world generation costs
    seconds; a copy, milliseconds)."""
    worlds, firsts = [], []
    for seed in seeds:
        reseed(env, seed)
        firsts.append(env.reset())
        worlds.append(copy.deepcopy(env))
    return worlds, firsts


def _play_worlds(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Worker: every agent plays a batch of world seeds in lockstep (`generate_worlds`)."""

    torch.set_num_threads(job["threads"])
    key = (job["size"], job["max_steps"])
    if _WORKER.get("env_key") != key:
        _WORKER["env_key"] = key
        _WORKER["env"] = make_env(0, size=job["size"], length=job["max_steps"])
    worlds, firsts = generate_worlds(_WORKER["env"], job["seeds"])
    results = []
    for name, folder in job["agents"]:
        player, tasks, resolution = load_player(name, folder, job["tokenizer"])
        a = list(AGENTS).index(name)
        player.generator = [episode_generator(job["sample_seed"], a, i) for i in job["indices"]]
        frames: list[np.ndarray] | None = [] if job["record"] else None
        stats = play_prompted_batch(
            [copy.deepcopy(w) for w in worlds],
            player,
            prompt_indices(tasks),
            tasks,
            job["max_steps"],
            resolution,
            frames,
            obs=[f.copy() for f in firsts],
        )
        for i, (seed, line) in enumerate(zip(job["seeds"], stats, strict=True)):
            line["seed"] = seed
            clip = np.stack(frames[: job["clip_steps"]]) if frames and i == 0 else None
            results.append({"agent": name, "stats": line, "clip": clip})
    return results


def play_agents(
    agents: dict[str, str | None],
    tokenizer: Path | None,
    seeds: list[int],
    max_steps: int,
    size: int,
    workers: int,
    seed: int,
    clip_steps: int,
    batch: int = 1,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, np.ndarray]]:
    """Play every seed with every agent (key → model folder, None for random) in worker
    processes, `batch` world seeds per job played in lockstep: stats lines per agent (in seed
    order) and the first episode's clip per agent."""

    listed = [(name, None if f is None else str(f)) for name, f in agents.items()]
    jobs = [
        {
            "agents": listed,
            "tokenizer": None if tokenizer is None else str(tokenizer),
            "indices": list(range(start, min(start + batch, len(seeds)))),
            "seeds": seeds[start : start + batch],
            "sample_seed": seed,
            "max_steps": max_steps,
            "size": size,
            "record": start == 0,
            "clip_steps": clip_steps,
            "threads": 1 if workers > 1 else 2,
        }
        for start in range(0, len(seeds), batch)
    ]
    stats: dict[str, list[dict[str, Any]]] = {name: [] for name in agents}
    clips: dict[str, np.ndarray] = {}
    for worlds in imap_workers(_play_worlds, jobs, workers):
        for done in worlds:
            stats[done["agent"]].append(done["stats"])
            if done["clip"] is not None:
                clips[done["agent"]] = done["clip"]
    return stats, clips


def evaluate(
    agents: list[str],
    folders: dict[str, Path | None],
    seeds: list[int],
    settings: dict[str, Any],
    out: Path,
    metrics: Path | None,
    metrics_root: Path | None,
) -> pd.DataFrame:
    """Evaluate, write the report folder (swapped in whole) and the DVC metrics; returns the
    headline table."""

    recorded, skipped = _check_inputs(agents, folders, seeds)
    played = {a: None if a == "random" else folders[a] for a in agents if a != "behaviour"}
    stats, clips = (
        ({}, {})
        if not played
        else play_agents(
            played,
            folders.get("tokenizer"),
            seeds,
            int(settings["max_steps"]),
            int(settings["size"]),
            int(settings["workers"]),
            int(settings["seed"]),
            int(settings["clip_steps"]),
            int(settings["batch"]),
        )
    )
    if recorded:
        stats = {"behaviour": recorded, **stats}
    order = [a for a in AGENTS if a in stats]
    episodes = pd.concat([episode_rows(a, stats[a]) for a in order], ignore_index=True)
    headline = headline_table(episodes, MILESTONES, AGENTS)
    context = {
        "seeds": f"{seeds[0]}:{seeds[-1] + 1}",
        **settings,
        "agents": order,
        **({"behaviour episodes skipped (unreadable)": len(skipped)} if skipped else {}),
    }
    _write_report(out, stats, order, episodes, headline, clips, folders, metrics_root, context)
    if metrics is not None:
        _metrics(metrics, headline, order)
    return headline


def env_factory(spec: str, where: str) -> Callable[[], Any]:
    """`module:function` → the function that makes one env (MineRL's, or a stand-in)."""
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise StageError(
            f"{where} = {spec!r}: not an importable `module:function` ({err})"
        ) from err
    if not callable(factory):
        raise StageError(f"{where} = {spec!r}: not callable")
    return factory


def evaluate_minecraft(
    agents: list[str],
    folders: dict[str, Path | None],
    seeds: list[int],
    settings: dict[str, Any],
    out: Path,
    metrics: Path | None,
    make_env: Callable[[], Any],
) -> pd.DataFrame:
    """Every agent in Minecraft (`eval/minecraft_play.py`), one env at a time in this process
    (a MineRL env is a Minecraft process of its own): the report and the DVC metrics."""
    _check_inputs([a for a in agents if a != "behaviour"], folders, [])
    stats: dict[str, list[dict[str, Any]]] = {}
    if "behaviour" in agents:
        raw = folders.get("raw")
        stats["behaviour"] = minecraft.behaviour_stats(Path(str(raw))) if raw else []
        if not stats["behaviour"]:
            raise StageError(f"{raw}: no VPT recordings (.mp4 + .jsonl) for the behaviour row")
    players = {}
    for name in (a for a in AGENTS if a in agents and a != "behaviour"):
        if name == "random":
            space = ActionSpace(tuple((c.name, c.kind, c.n) for c in VPT_SPACE))
            players[name] = (RandomPlayer(space), (), int(settings["size"]))
        else:
            players[name] = load_player(name, str(folders[name]), str(folders["tokenizer"]))
    played = minecraft.play_agents(
        players, tuple(AGENTS), make_env, seeds, int(settings["max_steps"]), int(settings["seed"])
    )
    stats.update(played)
    order = {a: stats[a] for a in AGENTS if a in stats}
    episodes = minecraft.episode_table(order, AGENTS)
    context = {"seeds": f"{seeds[0]}:{seeds[-1] + 1}", **settings, "agents": list(order)}
    keys = {label: key for key, label in AGENTS.items()}
    return minecraft.write_report(out, episodes, metrics, keys, context)


def _check_inputs(
    agents: list[str], folders: dict[str, Path | None], seeds: list[int]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Fail before the long part on anything missing or wrong; returns the behaviour row's
    stats lines and the recordings it skipped (both empty without that row)."""

    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        raise StageError(f"evaluate: unknown agents {unknown} (choose from {list(AGENTS)})")
    raw = folders.get("raw")
    if raw is not None and Path(raw).is_dir():
        overlap = sorted(collected_seeds(Path(raw)) & set(seeds))
        if overlap:
            raise StageError(
                f"{raw}: world seeds {overlap[:5]} were collected; evaluation seeds must be "
                "held out (choose another first_seed or --seeds)"
            )
    recorded: list[dict[str, Any]] = []
    skipped: list[str] = []
    if "behaviour" in agents:
        if raw is None or not Path(raw).is_dir():
            raise StageError(f"{raw}: no raw episodes for the behaviour-data row")
        recorded, skipped = behaviour_stats(Path(raw))
        if not recorded:
            raise StageError(f"{raw}: no Crafter recordings (JSON lines) for the behaviour row")
        for message in skipped:
            print(f"evaluate: behaviour row skips {message}", file=sys.stderr)
    models = [a for a in agents if a not in ("random", "behaviour")]
    for a in models:
        folder = folders[a]
        if folder is None or not (Path(folder) / "config.json").is_file():
            raise StageError(f"{folder}/config.json: missing, cannot evaluate {AGENTS[a]}")
    if models:
        tok = folders.get("tokenizer")
        if tok is None or not (Path(tok) / "config.json").is_file():
            raise StageError(f"{tok}/config.json: missing (the tokenizer the agents read with)")
    return recorded, skipped


def _write_report(
    out: Path,
    stats: dict[str, list[dict[str, Any]]],
    order: list[str],
    episodes: pd.DataFrame,
    headline: pd.DataFrame,
    clips: dict[str, np.ndarray],
    folders: dict[str, Path | None],
    metrics_root: Path | None,
    context: dict[str, Any],
) -> None:
    """The report folder, built aside and swapped in whole (`staged_folder`)."""

    success = success_table(episodes)
    timing = time_to_milestone(episodes, MILESTONES, AGENTS)
    with staged_folder(out, "report.md", "an evaluation report") as tmp:
        for a in order:
            (tmp / a).mkdir()
            lines = [{k: v for k, v in s.items() if k not in EXTRAS} for s in stats[a]]
            (tmp / a / "stats.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
        episodes.to_parquet(tmp / "episodes.parquet", index=False)
        success.to_csv(tmp / "success.csv", index=False, float_format="%.2f")
        headline.to_csv(tmp / "headline.csv", float_format="%.2f")
        timing.to_csv(tmp / "time_to_milestone.csv", float_format="%.1f")
        actions = action_table(episodes, AGENTS)
        if actions is not None:
            actions.to_csv(tmp / "actions.csv", float_format="%.2f")
        scores = score_interval(episodes, AGENTS)
        tests = pairwise_tests(episodes, COMPARISONS, MILESTONES, AGENTS)
        scores.to_csv(tmp / "scores.csv", float_format="%.3f")
        tests.to_csv(tmp / "comparisons.csv", index=False, float_format="%.4g")
        report = Report(tmp, metrics_root, AGENTS, MILESTONES)
        report.write(
            headline,
            success,
            timing,
            clips,
            folders.get("imagination"),
            context,
            scores,
            tests,
            actions,
        )


def _metrics(metrics: Path, headline: pd.DataFrame, order: list[str]) -> None:

    metrics.mkdir(parents=True, exist_ok=True)
    values: dict[str, float] = {}
    for key, (_, row) in zip(order, headline.iterrows(), strict=True):
        values[f"eval/{key}/score"] = round(float(row["score"]), 4)
        values[f"eval/{key}/return"] = round(float(row["return"]), 4)
        values[f"eval/{key}/length"] = round(float(row["length"]), 2)
        values.update({f"eval/{key}/{m}": round(float(row[m]), 2) for m in MILESTONES})
    with atomic_path(metrics / "metrics.json") as tmp:
        write_json(tmp, values)
    table = headline[list(MILESTONES)].T
    table.columns = order
    table.index.name = "milestone"
    with atomic_path(metrics / "milestones.tsv") as tmp:
        table.to_csv(tmp, sep="\t", float_format="%.2f")


def show(out: Path) -> str:
    """The headline table of an existing report, as printed at the end of `make run`."""
    table = out / "headline.csv"
    if not table.is_file():
        raise StageError(f"{table}: missing (run `dvc repro evaluate` first)")
    headline = pd.read_csv(table, index_col=0)
    text = headline.rename_axis(None).to_string(float_format=lambda v: f"{v:.1f}")
    if "score" not in headline.columns:  # Minecraft: success per task, a Markdown report
        return f"{text}\n(task columns: success rate in %)\nreport: {(out / 'report.md').resolve()}"
    return (
        f"{text}\n(score: Crafter score in %; milestone columns: success rate in %)\n"
        f"report: {(out / 'report.html').resolve()}"
    )


def run(args: argparse.Namespace) -> int:

    settings = Settings.load(args, "evaluate")
    own = settings.own
    out = settings.path("report", args.out)
    if args.show:
        print(show(out))
        return 0
    if own["env"] not in ("crafter", "minerl"):
        raise StageError(f"{args.params}: evaluate.env {own['env']!r}: 'crafter' or 'minerl'")
    agents = args.agents.split(",") if args.agents else list(own["agents"])
    if args.seeds:
        seeds = parse_seeds(args.seeds)
    else:
        first = own.count("first_seed", low=0)
        seeds = list(range(first, first + own.count("episodes")))
    play = {
        "max_steps": own.count("max_steps", args.max_steps),
        "size": own.count("size"),
        "workers": own.count("workers", args.workers),
        "batch": own.count("batch", args.batch),
        "seed": own.count("seed", low=0),
        "clip_steps": own.count("clip_steps", low=0),
    }
    path = settings.path
    folders: dict[str, Path | None] = {
        "tokenizer": path("tokenizer", args.tokenizer),
        "wm_bc": path("agent", args.agent),
        "bc": path("bc_agent", args.bc_agent),
        "dreamer4": path("policy", args.policy),
        "raw": path("raw", args.raw),
        "imagination": path("imagination", args.imagination),
    }
    # A standalone run (--out without --metrics) evaluates a policy from elsewhere: this
    # repository's training curves and world-model numbers are not about it, so they stay out.
    pipeline = args.metrics is not None or args.out is None
    metrics = Path(args.metrics or "metrics/evaluate") if pipeline else None
    if own["env"] == "minerl":
        factory = env_factory(str(own["minerl_env"]), f"{args.params}: evaluate.minerl_env")
        evaluate_minecraft(agents, folders, seeds, play, out, metrics, factory)
    else:
        evaluate(agents, folders, seeds, play, out, metrics, Path("metrics") if pipeline else None)
    print(show(out))
    return 0
