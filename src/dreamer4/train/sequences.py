"""Training sequences: windows of T consecutive steps drawn from the episode dataset.

Each training stage declares what it needs in a `SequenceSpec`: the short batch length T1, an
optional long length T2 used for every k-th batch (the paper's alternating batch lengths, §3.4),
and the fraction of sequences the model should treat as separate images (30% in §4, so it learns
to generate start frames without context). Windows are uniform over all valid start positions.

Batch `i` of rank `r` is a pure function of (seed, r, i): the loader has no hidden state, so a
resumed job continues exactly where it stopped by starting at its saved data position, and
DataLoader workers need no random state of their own.

Agent stages (paper §4.1) also name a task vocabulary (`tasks`: the dataset's `event/<name>`
columns) and a `relevant_fraction`: that share of each micro-batch (always its last rows, the
same count on every rank) is drawn around a task event — an event row is picked uniformly over
all of them, then the window start uniformly among the starts whose window holds it — and
flagged `relevant`; the rest stay uniform. Items then carry `task` (index of the row's `task`
column in the vocabulary, -1 when none) and `events` (T, K) bool.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dreamer4.episodes.dataset import load_steps
from dreamer4.errors import StageError
from dreamer4.train.launch import die_with_parent

# Step-index columns a stage may ask for, besides the frames and the action components.
STEP_FIELDS = ("reward", "done", "labelled")


@dataclass(frozen=True)
class SequenceSpec:
    """What one training stage reads per sequence."""

    length: int  # T1: steps per sequence in most batches
    long_length: int = 0  # T2: steps per sequence in long batches (0 = none)
    long_every: int = 0  # every k-th batch is long (0 = never)
    image_fraction: float = 0.0  # sequences flagged `independent`: frames without temporal context
    split: str = "train"
    arrays: tuple[str, ...] = ("frames",)  # per-frame arrays: `frames` (uint8), `latents` (f16)
    actions: bool = True
    fields: tuple[str, ...] = STEP_FIELDS
    tasks: tuple[str, ...] = ()  # task vocabulary (event names): items get `task` and `events`
    relevant_fraction: float = 0.0  # share of rows drawn around a task event (`relevant`)

    def relevant_rows(self, batch: int) -> int:
        """Rows of a micro-batch drawn around an event: the last ones, a fixed count."""
        return int(round(batch * self.relevant_fraction)) if self.tasks else 0

    def length_of(self, index: int) -> int:
        """Sequence length of batch `index` (all ranks agree, so steps stay in lockstep)."""
        if self.long_length and self.long_every and index % self.long_every == self.long_every - 1:
            return self.long_length
        return self.length


@dataclass(frozen=True)
class Window:
    """One sequence: `length` steps of the episode at row `episode`, from `start`."""

    episode: int
    start: int
    length: int
    independent: bool
    relevant: bool = False


class EpisodeSequences(Dataset):
    """Reads windows of a dataset folder: per-frame arrays (memory-mapped `<name>/chunk-N.npy`,
    addressed by the step index's frame_chunk/frame_index: `frames/` of the episode dataset,
    `latents/` of the latent tokens) and step columns."""

    def __init__(self, dataset: Path, spec: SequenceSpec) -> None:
        self.dataset, self.spec = Path(dataset), spec
        steps = load_steps(self.dataset)
        steps = steps[steps["split"] == spec.split].sort_values(["episode", "step"])
        if steps.empty:
            raise StageError(f"{self.dataset}: no `{spec.split}` steps to train on")
        first = steps.groupby("episode", sort=False).head(1)
        self.lengths = steps.groupby("episode", sort=False).size().to_numpy()
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.episode_ids = first["episode"].to_numpy()
        chunks = steps["frame_chunk"].to_numpy()
        index = steps["frame_index"].to_numpy()
        self.frame_chunk, self.frame_index = chunks, index
        self.actions = {
            c: _ints(steps[c]) for c in steps.columns if c.startswith("action/") and spec.actions
        }
        self.columns = {
            f: steps[f].to_numpy(dtype=np.float32 if f == "reward" else bool).copy()
            for f in spec.fields
        }
        self.task = self.events = None
        if spec.tasks:
            missing = [t for t in spec.tasks if f"event/{t}" not in steps.columns]
            if missing or "task" not in steps.columns:
                raise StageError(
                    f"{self.dataset}: step index lacks task columns "
                    f"{['task'] if 'task' not in steps.columns else []}"
                    f"{[f'event/{t}' for t in missing]}"
                )
            codes = pd.Categorical(steps["task"], categories=list(spec.tasks)).codes
            self.task = codes.astype(np.int64)  # -1 where no task or one outside the vocabulary
            self.events = np.stack([steps[f"event/{t}"].to_numpy(bool) for t in spec.tasks], 1)
        self._chunks: dict[tuple[str, int], np.ndarray] = {}
        for length in {spec.length, spec.long_length} - {0}:
            if self.lengths.max() < length:
                raise StageError(
                    f"{self.dataset}: no `{spec.split}` episode has {length} steps "
                    f"(longest {self.lengths.max()}); lower the sequence length"
                )

    def __len__(self) -> int:
        return int(self.lengths.sum())

    def window_weights(self, length: int) -> np.ndarray:
        """Probability of each episode: its number of valid start positions."""
        counts = np.clip(self.lengths - length + 1, 0, None).astype(np.float64)
        return counts / counts.sum()

    def __getitem__(self, w: Window) -> dict[str, Any]:
        rows = slice(
            self.offsets[w.episode] + w.start, self.offsets[w.episode] + w.start + w.length
        )
        item: dict[str, Any] = {"independent": w.independent, "relevant": w.relevant}
        chunk, first = int(self.frame_chunk[rows.start]), int(self.frame_index[rows.start])
        for name in self.spec.arrays:
            if (name, chunk) not in self._chunks:  # opened lazily, inside each worker process
                path = self.dataset / name / f"chunk-{chunk:05d}.npy"
                self._chunks[name, chunk] = np.load(path, mmap_mode="r")
            item[name] = torch.from_numpy(
                np.array(self._chunks[name, chunk][first : first + w.length])
            )
        for name, values in self.actions.items():
            item[name] = torch.from_numpy(values[rows])
        for name, values in self.columns.items():
            item[name] = torch.from_numpy(values[rows])
        if self.task is not None and self.events is not None:
            item["task"] = torch.from_numpy(self.task[rows])
            item["events"] = torch.from_numpy(self.events[rows])
        return item

    def event_rows(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(episode, step) of every task event in an episode at least `length` long."""
        if self.events is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = np.flatnonzero(self.events.any(1))
        episode = np.searchsorted(self.offsets, rows, side="right") - 1
        keep = self.lengths[episode] >= length
        return episode[keep], (rows - self.offsets[episode])[keep]


def _ints(column: pd.Series) -> np.ndarray:
    """A nullable action column as int64, -1 where missing (unlabelled or absent component)."""
    return column.astype("Int64").fillna(-1).to_numpy(dtype=np.int64).copy()


class WindowSampler(Sampler):
    """Infinite stream of micro-batches of windows, batch i a function of (seed, rank, i)."""

    def __init__(
        self, data: EpisodeSequences, batch: int, seed: int, rank: int, start: int = 0
    ) -> None:
        self.data, self.batch, self.seed, self.rank, self.start = data, batch, seed, rank, start
        spec = data.spec
        lengths = {spec.length, spec.long_length} - {0}
        self._weights = {t: data.window_weights(t) for t in lengths}
        self.relevant = spec.relevant_rows(batch)
        self._events = {t: data.event_rows(t) for t in lengths} if self.relevant else {}
        for t, (episodes, _) in self._events.items():
            if not len(episodes):
                raise StageError(
                    f"{data.dataset}: no `{spec.split}` episode of {t}+ steps has a task event "
                    f"({', '.join(spec.tasks)}); relevant windows cannot be drawn"
                )

    def windows(self, index: int) -> list[Window]:
        rng = np.random.default_rng([self.seed, self.rank, index])
        length = self.data.spec.length_of(index)
        episodes = rng.choice(len(self.data.lengths), size=self.batch, p=self._weights[length])
        starts = rng.integers(0, self.data.lengths[episodes] - length + 1)
        independent = rng.random(self.batch) < self.data.spec.image_fraction
        windows = [
            Window(int(e), int(s), length, bool(i))
            for e, s, i in zip(episodes, starts, independent, strict=True)
        ]
        if self.relevant:
            event_episodes, event_steps = self._events[length]
            pick = rng.integers(0, len(event_episodes), self.relevant)
            for row, k in zip(range(self.batch - self.relevant, self.batch), pick, strict=True):
                e, at = int(event_episodes[k]), int(event_steps[k])
                lo, hi = max(0, at - length + 1), min(at, int(self.data.lengths[e]) - length)
                windows[row] = Window(e, int(rng.integers(lo, hi + 1)), length, False, True)
        return windows

    def __iter__(self) -> Iterator[list[Window]]:
        index = self.start
        while True:
            yield self.windows(index)
            index += 1


def heldout_split(dataset: Path) -> str:
    """The split held-out checks read: `eval`, or `train` where a dataset has no eval episode
    (a tiny or single-episode dataset still gets its curves)."""
    split = pd.read_parquet(Path(dataset) / "steps.parquet", columns=["split"])["split"]
    return "eval" if bool((split == "eval").any()) else "train"


def fixed_batch(
    data: EpisodeSequences, count: int, seed: int
) -> tuple[dict[str, torch.Tensor], list[Window]]:
    """`count` windows, always the same for a seed (rank 0's first batch), stacked per key, and
    the windows. Floating arrays come as float32: the latents are stored as float16, which CPU
    autocast's stack rejects."""
    windows = WindowSampler(data, count, seed, 0).windows(0)
    items = [data[w] for w in windows]
    batch = {k: torch.stack([_float32(torch.as_tensor(it[k])) for it in items]) for k in items[0]}
    return batch, windows


def _float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() else x


def sequence_loader(
    dataset: Path, spec: SequenceSpec, batch: int, seed: int, rank: int, start: int, workers: int
) -> DataLoader:
    """Micro-batches from `start` on (the saved data position), read by `workers` processes."""
    data = EpisodeSequences(dataset, spec)
    return DataLoader(
        data,
        batch_sampler=WindowSampler(data, batch, seed, rank, start),
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        # its own generator: starting workers must not draw from the global RNG, which a resumed
        # job restores to the checkpoint's state before the loader starts
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_own_process_group,
    )


def _own_process_group(_worker: int) -> None:
    """Readers leave the rank's process group, which a launcher signals as a whole (torchrun
    sends SIGTERM to it): the rank decides when to stop, after its checkpoint, and a reader
    dying first would abort that save. They still die with the rank."""
    os.setpgrp()
    die_with_parent()
