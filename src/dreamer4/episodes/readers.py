"""Find raw episodes in a folder and read each with the reader its files call for.

Kinds, told apart by their files: `<id>.npz` → Crafter recorder; `<id>.jsonl` + `<id>.mp4` →
our Crafter recordings (lines carry `action`) or VPT contractor data (lines carry `mouse` and
`keyboard`); an `.mp4` alone → unlabelled video. VPT's `-options.json` / `.zip` siblings and
Crafter's `stats.jsonl` are not episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamer4.episodes.crafter_format import read_crafter_episode, read_jsonl
from dreamer4.episodes.crafter_npz import read_crafter_npz
from dreamer4.episodes.episode import Episode, EpisodeError
from dreamer4.episodes.video import read_video
from dreamer4.episodes.vpt import read_vpt_episode

NOT_EPISODES = {"stats.jsonl"}


@dataclass(frozen=True)
class RawEpisode:
    """One episode's files; `id` is its path under the raw folder without suffix."""

    id: str
    files: tuple[Path, ...]


def find_raw_episodes(raw_dir: Path) -> list[RawEpisode]:
    """All episodes under `raw_dir` (recursively), sorted by id."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw episode folder does not exist")
    stems: dict[str, list[Path]] = {}
    for path in sorted(raw_dir.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(raw_dir).parts)
        if hidden or not path.is_file() or path.name in NOT_EPISODES:
            continue
        if path.suffix in (".npz", ".jsonl", ".mp4"):
            rel = path.relative_to(raw_dir).with_suffix("").as_posix()
            stems.setdefault(rel, []).append(path)
    return [RawEpisode(k, tuple(sorted(v))) for k, v in sorted(stems.items())]


def read_raw_episode(raw: RawEpisode, size: int | None) -> Episode:
    """Read an episode at `size`×`size`; any problem raises `EpisodeError` naming the file."""
    by_suffix = {p.suffix: p for p in raw.files}
    if ".npz" in by_suffix:
        ep = read_crafter_npz(by_suffix[".npz"], size)
    elif ".jsonl" in by_suffix:
        jsonl = by_suffix[".jsonl"]
        video = by_suffix.get(".mp4")
        if video is None:
            raise EpisodeError(f"{jsonl}: no video {jsonl.with_suffix('.mp4').name} beside it")
        lines = read_jsonl(jsonl)
        if "mouse" in lines[0] and "keyboard" in lines[0]:
            ep = read_vpt_episode(video, jsonl, size, lines)
        elif "action" in lines[0]:
            ep = read_crafter_episode(video, jsonl, size, lines)
        else:
            raise EpisodeError(f"{jsonl}: line 1 is neither a Crafter nor a VPT action")
    else:
        frames = read_video(by_suffix[".mp4"], size)
        n = len(frames)
        ep = Episode(
            id=raw.id,
            source="video",
            frames=frames,
            actions={},
            labelled=np.zeros(n, dtype=bool),
            records=n,
            reward=np.zeros(n, dtype=np.float32),
        )
    ep.id = raw.id
    return ep
