"""Which Crafter tiles a tokenizer keeps: per class, the share of the held-out frames' view
tiles that its reconstructions show as the same class, and what the lost ones turn into.

`tokenizer/tile_accuracy` is one number; this splits it by what the tile really is, so a reader
sees whether the textured tiles the tech tree runs through (stone, trees, coal, iron) survive
or only the flat ones (grass, water, sand). Same held-out sequences as the stage's evaluation
(`heldout_split`, `fixed_batch` with its seed 1234), without masking, with the weights the
stage evaluates and `encode` uses (not the EMA). Like the metric, only the frames light enough
to read (`LIT`) count, unless `--dark`: deep in the night the real frame's tiles are noise, and
the classes read there (arrows, plants) are the noise's. A second table splits the tiles kept
by the light level read from each real frame, awake and asleep, every frame counted.

    python bench/tile_classes.py --tokenizer models/tokenizer --data data/episodes [--sequences 512]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from dreamer4.eval.tile_accuracy import CENTRE, DAYLIGHT, LIT, classifier
from dreamer4.tokenizer import Tokenizer, load_tokenizer
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, fixed_batch, heldout_split

HELDOUT_SEED = 1234  # TokenizerJob.heldout's (a literal there: the stage's code stays as it ran)


@torch.no_grad()
def decode(model: Tokenizer, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real frames and their reconstructions (no masking), (N, H, W, 3) in [-1, 1]."""
    recon = model.unpatchify(model(frames, mask=False)["recon"].float()).clamp(-1, 1)
    target = model.pixels(frames).float()
    return target.reshape(-1, *target.shape[-3:]), recon.reshape(-1, *recon.shape[-3:])


def reconstruct(tokenizer: Path, data: Path, sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stage's held-out frames and their reconstructions, (N, H, W, 3) in [-1, 1]."""
    model, _ = load_tokenizer(tokenizer)
    spec = SequenceSpec(
        length=model.cfg.sequence, split=heldout_split(data), actions=False, fields=()
    )
    frames = fixed_batch(EpisodeSequences(data, spec), sequences, HELDOUT_SEED)[0]["frames"]
    return decode(model, frames)


def class_table(target: torch.Tensor, recon: torch.Tensor, dark: bool = False) -> pd.DataFrame:
    """One row per class present in the real tiles: `share` of all tiles (%), `kept` (% shown
    as the same class), `becomes` (the most common wrong class and its share of the lost)."""
    tiles = classifier(target.shape[-2])
    truth, daylight = tiles.read(target)
    scored = torch.ones_like(daylight, dtype=torch.bool) if dark else daylight >= LIT
    real, seen = truth[scored].flatten(), tiles.view(recon)[scored].flatten()
    rows = []
    for index in real.unique().tolist():
        here = real == index
        wrong = seen[here & (seen != index)]
        top = wrong.mode().values.item() if len(wrong) else None
        rows.append(
            {
                "class": tiles.classes[index],
                "share": 100.0 * here.float().mean().item(),
                "kept": 100.0 * (seen[here] == index).float().mean().item(),
                "becomes": "–"
                if top is None
                else f"{tiles.classes[top]} ({100.0 * (wrong == top).float().mean().item():.0f} %)",
            }
        )
    return pd.DataFrame(rows).sort_values("share", ascending=False)


def asleep(target: torch.Tensor) -> torch.Tensor:
    """Per (N, H, W, 3) real frame: whether the player sleeps there (most of the centre tiles
    fit the asleep templates best: Crafter greys out a sleeper's view)."""
    tiles = classifier(target.shape[-2])
    best = tiles._best(target)[:, CENTRE[0], CENTRE[1]].reshape(len(target), -1)
    return (best % (2 * len(DAYLIGHT)) >= len(DAYLIGHT)).float().mean(-1) > 0.5


def light_table(target: torch.Tensor, recon: torch.Tensor) -> pd.DataFrame:
    """Tiles kept by the light level read from each real frame and whether the player sleeps
    there, every frame counted."""
    tiles = classifier(target.shape[-2])
    truth, daylight = tiles.read(target)
    sleeping = asleep(target)
    kept = (tiles.view(recon) == truth).float().mean((1, 2))
    rows = []
    for day in sorted(daylight.unique().tolist(), reverse=True):
        for sleeps in (False, True):
            here = (daylight == day) & (sleeping == sleeps)
            if here.any():
                rows.append(
                    {
                        "daylight read": round(day, 2),
                        "asleep": sleeps,
                        "frames": int(here.sum()),
                        "kept": 100.0 * kept[here].mean().item(),
                    }
                )
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path, default=Path("models/tokenizer"))
    p.add_argument("--data", type=Path, default=Path("data/episodes"))
    p.add_argument("--sequences", type=int, default=512, help="held-out sequences (small's: 512)")
    p.add_argument("--dark", action="store_true", help="also the frames too dark to read")
    args = p.parse_args()
    target, recon = reconstruct(args.tokenizer, args.data, args.sequences)
    print(class_table(target, recon, args.dark).to_markdown(index=False, floatfmt=".1f"))
    print()
    print(light_table(target, recon).to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
