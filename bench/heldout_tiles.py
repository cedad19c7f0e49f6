"""How much of `tokenizer/tile_accuracy` is the held-out sample: the stage's fixed batch at a few
sizes against every held-out frame, and how much the held-out episodes differ from each other.

The stage scores a fixed batch of `eval_sequences` held-out windows (`fixed_batch`, seed 1234).
Asleep frames (Crafter greys out a sleeper's view) keep far fewer tiles than awake ones, so a
small batch that happens to draw more of them reads lower. Here: per batch size, the frames
scored (lit enough to read, `LIT`), the asleep share among them, and the tile accuracy; then
every held-out frame once (consecutive windows of the tokenizer's sequence length: an
episode's last `length - 1` frames or fewer are left out, as are episodes shorter than a
window), awake and asleep apart, per episode, and a 95 % bootstrap interval over episodes (the
held-out set is a dozen episodes, so they, not the frames, are the unit of sampling).

    python bench/heldout_tiles.py --tokenizer models/tokenizer --data data/episodes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tile_classes import HELDOUT_SEED, asleep, decode

from dreamer4.eval.tile_accuracy import tile_accuracies
from dreamer4.tokenizer import Tokenizer, load_tokenizer
from dreamer4.train.sequences import (
    EpisodeSequences,
    SequenceSpec,
    Window,
    fixed_batch,
    heldout_split,
)


def score(model: Tokenizer, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame: tile accuracy (NaN where too dark to read) and whether the player sleeps."""
    target, recon = decode(model, frames)
    lit, _ = tile_accuracies(recon, target)
    return lit, asleep(target)


def row(name: str, lit: torch.Tensor, sleeps: torch.Tensor) -> dict:
    scored = lit.isfinite()
    return {
        "sample": name,
        "frames": lit.numel(),
        "scored": int(scored.sum()),
        "asleep %": 100.0 * sleeps[scored].float().mean().item(),
        "tiles %": 100.0 * lit[scored].mean().item(),
        "awake %": 100.0 * lit[scored & ~sleeps].mean().item(),
        "asleep tiles %": 100.0 * lit[scored & sleeps].mean().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path, default=Path("models/tokenizer"))
    p.add_argument("--data", type=Path, default=Path("data/episodes"))
    p.add_argument("--sizes", default="32,128,512", help="fixed-batch sizes (sequences)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples of episodes")
    args = p.parse_args()
    model, _ = load_tokenizer(args.tokenizer)
    length = model.cfg.sequence
    spec = SequenceSpec(length=length, split=heldout_split(args.data), actions=False, fields=())
    data = EpisodeSequences(args.data, spec)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        frames = fixed_batch(data, size, HELDOUT_SEED)[0]["frames"]
        rows.append(row(f"fixed batch of {size}", *score(model, frames)))
    windows = [
        Window(e, s, length, False)
        for e, n in enumerate(data.lengths)
        for s in range(0, n - length + 1, length)
    ]
    lits, sleeps, episodes = [], [], []
    for i in range(0, len(windows), 64):
        part = windows[i : i + 64]
        frames = torch.stack([torch.as_tensor(data[w]["frames"]) for w in part])
        lit, sleep = score(model, frames)
        lits.append(lit)
        sleeps.append(sleep)
        episodes += [w.episode for w in part for _ in range(length)]
    lit, sleep, episode = torch.cat(lits), torch.cat(sleeps), np.array(episodes)
    rows.append(row("every held-out frame", lit, sleep))
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".1f"))
    acc = lit.numpy()
    per = pd.DataFrame(
        [
            {
                "episode": data.episode_ids[e],
                "scored": int(np.isfinite(acc[episode == e]).sum()),
                "asleep %": 100.0 * sleep.numpy()[(episode == e) & np.isfinite(acc)].mean(),
                "tiles %": 100.0 * np.nanmean(acc[episode == e]),
            }
            for e in sorted(set(episode.tolist()))
        ]
    )
    print()
    print(per.to_markdown(index=False, floatfmt=".1f"))
    rng = np.random.default_rng(0)
    kept = np.array(sorted(set(episode.tolist())))  # episodes with at least one window
    n = len(kept)
    boot = [
        np.nanmean(np.concatenate([acc[episode == e] for e in rng.choice(kept, n)]))
        for _ in range(args.boot)
    ]
    low, high = np.percentile(boot, [2.5, 97.5])
    print(
        f"\nevery held-out frame: {100 * np.nanmean(acc):.1f} % of tiles; 95 % bootstrap interval "
        f"over the {n} episodes: {100 * low:.1f} – {100 * high:.1f} %"
    )


if __name__ == "__main__":
    main()
