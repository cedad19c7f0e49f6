"""The episode dataset: frames as uint8 `.npy` chunks plus a step index in Parquet.

Layout of a dataset folder:
- `frames/chunk-NNNNN.npy` — (N, H, W, 3) uint8; whole episodes, contiguous, so any window of an
  episode is one slice of one memory-mapped array;
- `steps.parquet` — one row per frame (columns in docs/data-formats.md), with `frame_chunk` and
  `frame_index` pointing into the chunks; action components are nullable (null where the frame
  is unlabelled or the source has no such component);
- `episodes.parquet` — one row per episode (source, split, length, return, ...);
- `dataset.json` — resolution, action components, sources, counts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dreamer4.episodes.actions import COMPONENTS
from dreamer4.episodes.episode import Episode


def split_of(episode_id: str, eval_fraction: float) -> str:
    """Train/eval by a stable hash of the episode id: adding episodes never moves old ones."""
    h = int.from_bytes(hashlib.sha256(episode_id.encode()).digest()[:8], "big") / 2**64
    return "eval" if h < eval_fraction else "train"


# Which occurrences of an event make it a step's task (`ingest.task_events`).
TASK_EVENTS = ("first", "every")


def next_event(events: dict[str, np.ndarray], n: int, task_events: str = "first") -> pd.Series:
    """Per row, the name of the next event at or after it (the task the episode is on).

    task_events "first": only an event's first occurrence in the episode counts, so the task
    is the next event the episode reaches for the first time (Crafter's achievements are
    unlocks, and the agents are evaluated prompted with the first milestone not yet reached:
    a repeated `collect_wood` must not label the steps that gather wood for a table as
    "collect wood"). "every": every occurrence counts (`DatasetWriter` checks the rule)."""
    names = sorted(events)
    if not names:
        return pd.Series(pd.NA, index=range(n), dtype="string")
    hits = np.stack([np.asarray(events[name], bool) for name in names], axis=1)
    if task_events == "first":
        hits = hits & (np.cumsum(hits, axis=0) == 1)
    first = pd.Series(np.asarray(names, dtype=object)[hits.argmax(axis=1)], dtype="string")
    return first.where(hits.any(axis=1)).bfill()


class DatasetWriter:
    """Appends episodes to chunk files and collects their step-index rows."""

    def __init__(self, out: Path, chunk_frames: int, task_events: str = "first") -> None:
        if task_events not in TASK_EVENTS:
            raise ValueError(f"task_events = {task_events!r}: must be one of {TASK_EVENTS}")
        self.out, self.task_events = Path(out), task_events
        (self.out / "frames").mkdir(parents=True, exist_ok=True)
        self.chunk_frames = chunk_frames
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._chunk = 0
        self._tables: list[pd.DataFrame] = []
        self._episodes: list[dict[str, Any]] = []
        self.resolution: tuple[int, int] | None = None

    def add(self, ep: Episode, split: str) -> None:
        n = len(ep)
        shape = tuple(ep.frames.shape[1:3])
        if self.resolution is None:
            self.resolution = shape  # type: ignore[assignment]
        elif shape != self.resolution:
            raise ValueError(f"{ep.id}: frames {shape} differ from dataset {self.resolution}")
        cols: dict[str, Any] = {
            "episode": np.full(n, ep.id, dtype=object),
            "step": np.arange(n, dtype=np.int64),
            "split": np.full(n, split, dtype=object),
            "source": np.full(n, ep.source, dtype=object),
            "reward": ep.reward.astype(np.float32),
            "done": np.arange(n) == n - 1,
            "labelled": ep.labelled.astype(bool),
            "frame_chunk": np.full(n, self._chunk, dtype=np.int32),
            "frame_index": np.arange(self._pending_n, self._pending_n + n, dtype=np.int32),
        }
        for name, values in ep.actions.items():
            comp = COMPONENTS[name]
            dtype = "boolean" if comp.kind == "binary" else "Int16"
            arr = values.astype(bool) if comp.kind == "binary" else values.astype(np.int16)
            cols[comp.column] = pd.array(arr, dtype=dtype)
            cols[comp.column][~ep.labelled] = pd.NA
        if ep.null_action is not None:
            cols["null_action"] = ep.null_action.astype(bool)
        for name, hits in ep.events.items():
            cols[f"event/{name}"] = hits.astype(bool)
        cols["task"] = next_event(ep.events, n, self.task_events).array
        self._tables.append(pd.DataFrame(cols))
        self._episodes.append(
            {
                "episode": ep.id,
                "source": ep.source,
                "split": split,
                "length": n,
                "return": float(ep.reward.sum()),
                "labelled_fraction": float(ep.labelled.mean()),
                "actions": ep.records,
                "frame_chunk": self._chunk,
            }
        )
        self._pending.append(ep.frames)
        self._pending_n += n
        if self._pending_n >= self.chunk_frames:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            np.save(
                self.out / "frames" / f"chunk-{self._chunk:05d}.npy", np.concatenate(self._pending)
            )
            self._chunk += 1
            self._pending, self._pending_n = [], 0

    def close(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Write the last chunk and return (steps, episodes) tables (not yet written)."""
        self._flush()
        steps = pd.concat(self._tables, ignore_index=True) if self._tables else pd.DataFrame()
        for col in steps.columns:
            if col.startswith("event/") or col == "null_action":
                steps[col] = steps[col].astype("boolean").fillna(False).astype(bool)
            elif col.startswith("action/") and col not in ("action/crafter", "action/camera"):
                steps[col] = steps[col].astype("boolean")
            elif col.startswith("action/"):
                steps[col] = steps[col].astype("Int16")
        return steps, pd.DataFrame(self._episodes)


def load_steps(dataset: Path) -> pd.DataFrame:
    """The step index of a dataset folder."""
    return pd.read_parquet(Path(dataset) / "steps.parquet")


def load_chunk(dataset: Path, chunk: int) -> np.ndarray:
    """Frames of one chunk, memory-mapped (read-only)."""
    return np.load(Path(dataset) / "frames" / f"chunk-{chunk:05d}.npy", mmap_mode="r")


def chunk_lengths(dataset: Path) -> dict[int, int]:
    """Frames actually stored in each chunk file (read from the .npy headers)."""
    out = {}
    for path in sorted((Path(dataset) / "frames").glob("chunk-*.npy")):
        out[int(path.stem.split("-")[1])] = int(np.load(path, mmap_mode="r").shape[0])
    return out


def write_json(path: Path, obj: Any) -> None:
    """Pretty, key-sorted JSON (deterministic bytes)."""
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
