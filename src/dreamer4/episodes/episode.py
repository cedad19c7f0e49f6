"""The in-memory episode every raw format is read into, and the row convention of the dataset.

Row t of an episode holds frame t, the action taken after seeing frame t (null when the frame has
no action label, e.g. the terminal frame of a Crafter episode or unlabelled video), the reward
that action earned, the events it caused (achievements unlocked, VPT task events), and
`done` = True on the episode's last frame. VPT contractor data has this layout natively; Crafter's
`.npz` (action i led to image i) is shifted by one step to match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from dreamer4.errors import StageError


class EpisodeError(StageError):
    """An episode cannot be read; the message names the file and the problem."""


@dataclass
class Episode:
    """One episode at dataset resolution, in the row convention of the module docstring."""

    id: str
    source: str  # "crafter" | "vpt" | "crafter_npz" | "video"
    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: dict[str, np.ndarray]  # component name -> (T,) int64; meaningful where labelled
    labelled: np.ndarray  # (T,) bool
    reward: np.ndarray  # (T,) float32
    events: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T,) bool
    null_action: np.ndarray | None = None  # (T,) bool, VPT only
    meta: dict[str, Any] = field(default_factory=dict)
    records: int = 0  # label records read (jsonl lines, npz steps); frames for bare video

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def check(self, path: str) -> None:
        """Raise `EpisodeError` naming `path` if the per-frame arrays disagree in length."""
        n = len(self)
        arrays = {"labelled": self.labelled, "reward": self.reward, **self.actions, **self.events}
        if self.null_action is not None:
            arrays["null_action"] = self.null_action
        for name, arr in arrays.items():
            if len(arr) != n:
                raise EpisodeError(f"{path}: {n} frames but {len(arr)} values of {name!r}")
        if not np.all(np.isfinite(self.reward)):
            raise EpisodeError(f"{path}: non-finite reward")


def resize_frame(frame: np.ndarray, size: int | None) -> np.ndarray:
    """Resize an RGB frame to `size`×`size` by area averaging (PIL BOX); None keeps it.

    Area averaging is exact for integer factors (64→32) and alias-free for VPT's 360×640→128×128
    (whose aspect ratio is squashed, as VPT itself does).
    """
    if size is None or frame.shape[:2] == (size, size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))


def events_from_counts(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Events from cumulative counters: True at row t when counter increases from t to t+1."""
    events = {}
    for name, c in counts.items():
        c = np.asarray(c, dtype=np.float64)
        inc = np.zeros(len(c), dtype=bool)
        inc[:-1] = np.diff(c) > 0
        events[name] = inc
    return events
