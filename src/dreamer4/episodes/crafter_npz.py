"""Episodes written by Crafter's own `crafter.Recorder(save_episode=True)`: one `.npz` each.

Keys: `image` (T+1, H, W, 3), `action`, `reward`, `done` (step 0 holds zeros: transition i is the
action i that led to image i), `achievement_*` and `inventory`-derived `ainventory_*` counters,
plus `semantic`, `player_pos`, `discount`. This is the format of Crafter's published human
dataset. We shift it by one step into the dataset's row convention (`episode.py`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS, CRAFTER_ACTIONS
from dreamer4.episodes.episode import Episode, EpisodeError, events_from_counts, resize_frame


def read_crafter_npz(path: Path, size: int | None) -> Episode:
    """Read one Crafter recorder episode at `size`×`size`."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise EpisodeError(f"{path}: unreadable npz ({err})") from err
    missing = {"image", "action", "reward", "done"} - arrays.keys()
    if missing:
        raise EpisodeError(f"{path}: missing keys {sorted(missing)}")
    image, action = arrays["image"], arrays["action"].astype(np.int64)
    n = len(image)
    if image.ndim != 4 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise EpisodeError(f"{path}: image must be (T, H, W, 3) uint8, got {image.shape}")
    for key in ("action", "reward", "done"):
        if len(arrays[key]) != n:
            raise EpisodeError(f"{path}: {n} images but {len(arrays[key])} values of {key!r}")
    if n < 2:
        raise EpisodeError(f"{path}: fewer than two images")
    if action[1:].min() < 0 or action[1:].max() >= len(CRAFTER_ACTIONS):
        raise EpisodeError(f"{path}: action outside 0..{len(CRAFTER_ACTIONS) - 1}")
    shifted = np.zeros(n, dtype=np.int64)
    shifted[:-1] = action[1:]
    reward = np.zeros(n, dtype=np.float32)
    reward[:-1] = arrays["reward"][1:]
    labelled = np.ones(n, dtype=bool)
    labelled[-1] = False
    counts = {
        a: arrays[f"achievement_{a}"] for a in CRAFTER_ACHIEVEMENTS if f"achievement_{a}" in arrays
    }
    events = {a: np.zeros(n, dtype=bool) for a in CRAFTER_ACHIEVEMENTS}
    events.update(events_from_counts(counts))
    ep = Episode(
        id=path.stem,
        source="crafter_npz",
        frames=np.stack([resize_frame(f, size) for f in image]),
        actions={"crafter": shifted},
        labelled=labelled,
        records=len(arrays["action"]),
        reward=reward,
        events=events,
    )
    ep.check(str(path))
    return ep
