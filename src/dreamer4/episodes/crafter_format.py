"""Our Crafter recordings in the VPT contractor layout: `<id>.mp4` + `<id>.jsonl`.

Per episode of T actions: T+1 lossless frames and T+1 JSON lines. Line t describes frame t:
`{"step": t, "action": "<one of 17 names>" | null, "reward": float, "done": bool,
"achievements": [names unlocked by this action], "inventory": {item: count at frame t}}`.
The last line (the terminal frame) has `"action": null`. `<id>-options.json` holds how the
episode was made (seed, skill, player); `stats.jsonl` in the folder is Crafter's StatsRecorder
format, so Crafter's own analysis scripts read it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS, CRAFTER_ACTIONS
from dreamer4.episodes.episode import Episode, EpisodeError
from dreamer4.episodes.video import read_video, write_video
from dreamer4.files import atomic_write_text


def write_crafter_episode(
    directory: Path,
    episode_id: str,
    frames: np.ndarray,
    lines: list[dict[str, Any]],
    options: dict[str, Any],
) -> None:
    """Write one recording; `lines[t]` describes `frames[t]` as in the module docstring."""
    if len(frames) != len(lines):
        raise ValueError(f"{episode_id}: {len(frames)} frames but {len(lines)} lines")
    write_video(directory / f"{episode_id}.mp4", frames)
    body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    atomic_write_text(directory / f"{episode_id}-options.json", json.dumps(options, indent=2))
    atomic_write_text(directory / f"{episode_id}.jsonl", body)


def stats_line(length: int, reward: float, achievements: dict[str, int]) -> dict[str, Any]:
    """One line of Crafter's `stats.jsonl` (StatsRecorder format)."""
    stats: dict[str, Any] = {"length": length, "reward": round(reward, 1)}
    stats.update({f"achievement_{k}": int(v) for k, v in sorted(achievements.items())})
    return stats


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines file; a truncated or malformed line raises `EpisodeError` naming it."""
    try:
        text = path.read_text()
    except OSError as err:
        raise EpisodeError(f"{path}: cannot read ({err})") from err
    lines = []
    raws = text.splitlines()
    for i, raw in enumerate(raws, 1):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            what = "truncated" if i == len(raws) else "not valid JSON"
            raise EpisodeError(f"{path}: line {i} is {what} ({err.msg})") from err
        if not isinstance(obj, dict):
            raise EpisodeError(f"{path}: line {i} is not a JSON object")
        lines.append(obj)
    if not lines:
        raise EpisodeError(f"{path}: empty")
    return lines


def read_crafter_episode(
    video: Path, jsonl: Path, size: int | None, lines: list[dict[str, Any]] | None = None
) -> Episode:
    """Read one of our Crafter recordings at `size`×`size`."""
    lines = read_jsonl(jsonl) if lines is None else lines
    index = {name: i for i, name in enumerate(CRAFTER_ACTIONS)}
    n = len(lines)
    action = np.zeros(n, dtype=np.int64)
    labelled = np.zeros(n, dtype=bool)
    reward = np.zeros(n, dtype=np.float32)
    events = {name: np.zeros(n, dtype=bool) for name in CRAFTER_ACHIEVEMENTS}
    for t, line in enumerate(lines):
        name = line.get("action")
        if name is not None:
            if name not in index:
                raise EpisodeError(f"{jsonl}: line {t + 1} has unknown action {name!r}")
            action[t], labelled[t] = index[name], True
        try:
            reward[t] = float(line.get("reward", 0.0))
        except (TypeError, ValueError) as err:
            raise EpisodeError(f"{jsonl}: line {t + 1} has a bad reward") from err
        achievements = line.get("achievements", [])
        if not isinstance(achievements, list):
            raise EpisodeError(f"{jsonl}: line {t + 1}: achievements must be a list")
        for ach in achievements:
            if ach not in events:
                raise EpisodeError(f"{jsonl}: line {t + 1} has unknown achievement {ach!r}")
            events[ach][t] = True
    ep = Episode(
        id=jsonl.stem,
        source="crafter",
        frames=read_video(video, size, n, jsonl.name),
        actions={"crafter": action},
        labelled=labelled,
        records=n,
        reward=reward,
        events=events,
    )
    ep.check(str(jsonl))
    return ep
