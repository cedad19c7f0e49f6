"""Stage `ingest` → asset `episode_dataset`: raw episodes of any kind → validated dataset.

Reads every episode under the raw folder (our Crafter recordings, VPT contractor segments,
Crafter recorder `.npz`, bare `.mp4` video), resizes frames to the profile's resolution and
writes the dataset of `episodes/dataset.py`. An episode that cannot be read (corrupt or
truncated video, truncated jsonl, frame/line count mismatch, length out of bounds) is
quarantined: `quarantine.json` names its files and the reason, and the good episodes go on.
The raw folder is a DVC-tracked input and is never modified. The dataset is built in a
temporary folder beside `--out` and renamed into place only after the great-expectations
suites pass, so a failed ingest leaves no half-written output.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dreamer4.episodes.dataset import (
    TASK_EVENTS,
    DatasetWriter,
    chunk_lengths,
    split_of,
    write_json,
)
from dreamer4.episodes.episode import Episode, EpisodeError
from dreamer4.episodes.readers import RawEpisode, find_raw_episodes, read_raw_episode
from dreamer4.episodes.validation import episode_table, validate
from dreamer4.errors import StageError
from dreamer4.files import staged_folder
from dreamer4.params import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", type=Path, help="raw episode folder (default: paths.raw)")
    p.add_argument("--out", type=Path, help="dataset folder (default: paths.episodes)")
    p.add_argument("--resolution", type=int, help="frame size stored (pixels, square)")
    p.add_argument("--eval-fraction", type=float, help="fraction of episodes held out")


class ValidationFailed(StageError):
    """The dataset suites failed: a bug or a kind of bad data no per-episode check caught."""


def ingest(
    raw: Path,
    out: Path,
    resolution: int,
    chunk_frames: int = 4096,
    eval_fraction: float = 0.1,
    min_length: int = 2,
    max_length: int = 1_000_000,
    task_events: str = "first",
) -> dict[str, Any]:
    """Build the dataset at `out`; returns the summary also written to `dataset.json`."""

    out = Path(out)
    _check_out(Path(raw), out)
    raws = find_raw_episodes(raw)
    quarantined: list[dict[str, Any]] = []
    with staged_folder(out, "dataset.json", "an episode dataset") as tmp:
        writer = DatasetWriter(tmp, chunk_frames, task_events)
        for r in tqdm(raws, desc="ingest", unit="episode"):
            ep = _read(r, resolution, min_length, max_length, quarantined)
            if ep is not None:
                writer.add(ep, split_of(ep.id, eval_fraction))
        steps, episodes = writer.close()
        if steps.empty:
            first = f"; first: {quarantined[0]['reason']}" if quarantined else ""
            raise EpisodeError(
                f"{raw}: no readable episodes ({len(quarantined)} quarantined{first})"
            )
        table = episode_table(steps, episodes.set_index("episode")["actions"], chunk_lengths(tmp))
        episodes = episodes.merge(table[["episode", "frames"]], on="episode")
        report = validate(steps, table, min_length, max_length)
        write_json(tmp / "validation.json", report.to_dict())
        if not report.success:
            raise ValidationFailed("dataset suites failed:\n  " + "\n  ".join(report.failures))
        steps.to_parquet(tmp / "steps.parquet", index=False)
        episodes.to_parquet(tmp / "episodes.parquet", index=False)
        write_json(
            tmp / "quarantine.json",
            {"raw": str(raw), "count": len(quarantined), "episodes": quarantined},
        )
        summary = {
            "raw": str(raw),
            "resolution": resolution,
            "episodes": int(len(episodes)),
            "steps": int(len(steps)),
            "quarantined": len(quarantined),
            "splits": {k: int(v) for k, v in episodes["split"].value_counts().sort_index().items()},
            "sources": sorted(episodes["source"].unique().tolist()),
            "action_columns": [c for c in steps.columns if c.startswith("action/")],
            "event_columns": [c for c in steps.columns if c.startswith("event/")],
            "task_events": task_events,
            "chunks": int(steps["frame_chunk"].max()) + 1,
            "validation": report.to_dict(),
        }
        write_json(tmp / "dataset.json", summary)
    return summary


# What a reader raises on input it cannot make sense of: all of it is quarantined, named.
_BAD_INPUT = (StageError, ValueError, TypeError, KeyError, AttributeError, IndexError, OSError)


def _read(
    raw: RawEpisode,
    resolution: int,
    min_length: int,
    max_length: int,
    quarantined: list[dict[str, Any]],
) -> Episode | None:
    """The episode, or None after adding it to `quarantined` with the reason (also printed)."""

    try:
        ep = read_raw_episode(raw, resolution)
        if not min_length <= len(ep) <= max_length:
            raise StageError(
                f"{raw.files[0]}: {len(ep)} frames, outside [{min_length}, {max_length}]"
            )
        return ep
    except _BAD_INPUT as err:
        reason = str(err) if isinstance(err, StageError) else f"{raw.files[0]}: {err!r}"
        quarantined.append(
            {"episode": raw.id, "files": [str(f) for f in raw.files], "reason": reason}
        )
        print(f"ingest: quarantined {raw.id}: {reason}")
        return None


def _check_out(raw: Path, out: Path) -> None:
    """Refuse an `out` that would replace the raw data or a folder that is not a dataset."""
    r, o = raw.resolve(), out.resolve()
    if r == o or r.is_relative_to(o) or o.is_relative_to(r):
        raise StageError(f"ingest: --out {out} and --raw {raw} must not contain one another")
    if o.exists() and any(o.iterdir()) and not (o / "dataset.json").exists():
        raise StageError(
            f"ingest: {out} exists and is not an episode dataset; refusing to replace it"
        )


def run(args: argparse.Namespace) -> int:
    settings = Settings.load(args, "ingest")
    own = settings.own
    out = settings.path("episodes", args.out)
    summary = ingest(
        raw=settings.path("raw", args.raw),
        out=out,
        resolution=own.count("resolution", args.resolution),
        chunk_frames=own.count("chunk_frames"),
        eval_fraction=own.fraction("eval_fraction", args.eval_fraction),
        min_length=own.count("min_length"),
        max_length=own.count("max_length"),
        task_events=own.check(
            "task_events", lambda v: v in TASK_EVENTS, f"must be one of {list(TASK_EVENTS)}"
        ),
    )
    print(
        f"ingest: {summary['episodes']} episodes, {summary['steps']} steps {summary['splits']}, "
        f"{summary['quarantined']} quarantined → {out}"
    )
    return 0
