"""Stage `collect` → asset `raw_episodes`: offline gameplay in the VPT contractor layout.

`env: crafter` records new Crafter gameplay (below). `env: vpt` imports recordings someone
already has (VPT contractor segments, Crafter `.npz`, any layout `ingest` reads) from the
profile's `source` folder, so DVC versions them as this stage's output; `source` itself is never
written, so DVC clearing the output before a rerun loses nothing. `env: minerl` (recording new
Minecraft play) is not built in: Minecraft data comes from VPT recordings (docs/minecraft.md).

Like VPT's contractor data, the recordings come from players of varying skill: each episode
draws a skill from the profile's mix (`skills` / `skill_weights`; skill 0 is a random player)
and a scripted player (`envs/scripted_player.py`) follows its plan with that probability per
step. Episodes run in a pool of worker processes that reuse one Crafter env each (world
generation, not env construction, is the per-episode cost). Episode i's world seed, skill and
player seed derive from (seed, i) alone, and Crafter is made deterministic
(`envs/crafter_env.py`), so one seed gives byte-identical files whatever the worker count.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dreamer4.envs.crafter_env import episode_seed, make_env, reseed
from dreamer4.envs.play import play_episode
from dreamer4.envs.scripted_player import ScriptedPlayer
from dreamer4.episodes.crafter_format import stats_line, write_crafter_episode
from dreamer4.episodes.readers import find_raw_episodes
from dreamer4.files import atomic_path, atomic_write_text
from dreamer4.parallel import imap_workers
from dreamer4.params import ParamsError, Settings

_ENV: dict[str, Any] = {}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: paths.raw)")
    p.add_argument("--episodes", type=int, help="number of episodes")
    p.add_argument("--seed", type=int, help="base seed; episode i derives from (seed, i)")
    p.add_argument("--skill", type=float, help="one skill for every episode instead of the mix")
    p.add_argument("--max-steps", type=int, help="episode length cap in steps")
    p.add_argument("--size", type=int, help="rendered frame size in pixels")
    p.add_argument("--workers", type=int, help="collection processes")
    p.add_argument("--source", type=Path, help="env vpt: folder of recordings to import")
    p.add_argument(
        "--inbox", type=Path, help="also import the recordings delivered here (paths.inbox)"
    )


def episode_plan(
    seed: int, episodes: int, skill: float | None, skills: list[float], weights: list[float]
) -> list[dict[str, Any]]:
    """Per episode: id, world seed, player seed and skill, from (seed, index) alone."""

    if skill is None and (len(skills) != len(weights) or not skills):
        raise ParamsError("collect: skills and skill_weights must be non-empty and equally long")
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    plan = []
    for i in range(episodes):
        rng = np.random.default_rng([seed, i, 1])
        s = float(skill) if skill is not None else float(skills[rng.choice(len(skills), p=p)])
        plan.append(
            {
                "id": f"crafter-s{seed}-{i:05d}",
                "index": i,
                "world_seed": episode_seed(seed, i),
                "player_seed": int(rng.integers(2**31 - 1)),
                "skill": s,
            }
        )
    return plan


def _record(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: play and write one episode; return its stats.jsonl line."""

    key = (job["size"], job["max_steps"])
    if _ENV.get("key") != key:
        _ENV["key"], _ENV["env"] = key, make_env(0, size=job["size"], length=job["max_steps"])
    env = _ENV["env"]
    reseed(env, job["world_seed"])
    played = play_episode(env, ScriptedPlayer(job["skill"], job["player_seed"]), record=True)
    options = {
        k: job[k]
        for k in ("id", "index", "world_seed", "player_seed", "skill", "max_steps", "size", "seed")
    }
    options.update(env="crafter", crafter_version="1.8.3", player="scripted", fps=20)
    write_crafter_episode(
        Path(job["out"]), job["id"], np.stack(played.frames), played.lines, options
    )
    return stats_line(played.length, played.reward, played.achievements)


def collect(
    out: Path,
    episodes: int,
    seed: int,
    max_steps: int,
    size: int,
    workers: int,
    skill: float | None = None,
    skills: list[float] | None = None,
    weights: list[float] | None = None,
    env: str = "crafter",
) -> list[dict[str, Any]]:
    """Record `episodes` episodes into `out`; returns the stats.jsonl lines in episode order."""

    if env != "crafter":
        raise ParamsError(
            f"collect: env {env!r} cannot be recorded here; for Minecraft, download VPT "
            "recordings (`dreamer4 vpt-download`, docs/minecraft.md) and set `env: vpt` and "
            "`source:` in the profile."
        )
    if skill is not None and not 0.0 <= skill <= 1.0:
        raise ParamsError(f"collect: --skill must be in [0, 1], got {skill}")
    plan = episode_plan(seed, episodes, skill, skills or [1.0], weights or [1.0])
    _refuse_foreign_episodes(out, {p["id"] for p in plan})
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        {**p, "out": str(out), "max_steps": max_steps, "size": size, "seed": seed} for p in plan
    ]
    stats: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="collect", unit="episode")
    for line in imap_workers(_record, jobs, workers):
        stats.append(line)
        bar.update()
    bar.close()
    atomic_write_text(out / "stats.jsonl", "".join(json.dumps(s) + "\n" for s in stats))
    return stats


def _refuse_foreign_episodes(out: Path, ids: set[str]) -> None:
    """Stop before mixing this run with other episodes already in `out` (nothing is deleted)."""

    if not out.is_dir():
        return
    foreign = [r.id for r in find_raw_episodes(out) if r.id not in ids]
    if foreign:
        raise ParamsError(
            f"collect: {out} already holds {len(foreign)} other episodes (e.g. {foreign[0]!r}); "
            "remove them or choose another --out"
        )


def import_recordings(
    source: Path, out: Path, episodes: int = 0, keep: list[str] | None = None
) -> list[str]:
    """Copy the episodes under `source` (all, or the first `episodes`) into `out`; their ids.

    Each file is copied to a temporary name and renamed, so an interrupted import leaves no
    half-written episode. VPT's `-options.json` sidecars come along. `keep`: ids already in
    `out` that belong there (episodes just recorded); any other stops the import.
    """

    found = find_raw_episodes(source)
    if not found:
        raise ParamsError(f"collect: {source} holds no recordings (.mp4 + .jsonl, .npz, .mp4)")
    chosen = found[:episodes] if episodes > 0 else found
    clash = sorted({r.id for r in chosen} & set(keep or ()))
    if clash:
        raise ParamsError(f"collect: {source} delivers {clash[0]!r}, which was just recorded")
    _refuse_foreign_episodes(out, {r.id for r in chosen} | set(keep or ()))
    for raw in chosen:
        sidecar = source / f"{raw.id}-options.json"
        for src in (*raw.files, *([sidecar] if sidecar.is_file() else [])):
            dst = out / src.relative_to(source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    return [r.id for r in chosen]


def run(args: argparse.Namespace) -> int:

    settings = Settings.load(args, "collect")
    prm = settings.own
    out = settings.path("raw", args.out)
    if args.source is not None or prm["env"] == "vpt":
        source = Path(prm.check("source", lambda v: v is not None, "a folder", args.source))
        ids = import_recordings(source, out, prm.count("episodes", args.episodes, low=0))
        print(f"collect: imported {len(ids)} episodes from {source} → {out}")
        return 0
    inbox = Path(args.inbox) if args.inbox else None
    delivered = inbox is not None and inbox.is_dir() and bool(find_raw_episodes(inbox))
    stats = collect(
        out=out,
        episodes=prm.count("episodes", args.episodes, low=0),
        seed=prm.count("seed", args.seed, low=0),
        max_steps=prm.count("max_steps", args.max_steps),
        size=prm.count("size", args.size),
        workers=prm.count("workers", args.workers),
        skill=args.skill,
        skills=prm["skills"],
        weights=prm["skill_weights"],
        env=prm["env"],
    )
    steps = sum(s["length"] for s in stats)
    print(f"collect: {len(stats)} episodes, {steps} steps → {out}")
    if delivered:
        recorded = [r.id for r in find_raw_episodes(out)]
        ids = import_recordings(inbox, out, keep=recorded)
        print(f"collect: imported {len(ids)} delivered episodes from {inbox} → {out}")
    return 0
