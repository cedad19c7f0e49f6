"""Preview animations (GIF: browsers, DVC plots and the Dagster UI all show it) of decoded frames
side by side — real vs imagined rollouts, one policy vs another."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from dreamer4.files import atomic_path


def save_grid_gif(
    path: Path, columns: list[Tensor], rows: int = 4, min_size: int = 96, duration: int = 250
) -> None:
    """Write an animated GIF: each column (B, T, H, W, 3) in [-1, 1], the first `rows`
    sequences stacked vertically, one GIF frame per time step; small frames are enlarged
    (nearest neighbour) to at least `min_size` pixels."""

    first = columns[0]
    n, steps = min(rows, first.shape[0]), first.shape[1]
    scale = max(1, min_size // first.shape[2])
    frames = []
    for t in range(steps):
        grid = torch.cat([torch.cat([col[i, t] for col in columns], 1) for i in range(n)], 0)
        pixels = ((grid.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        frames.append(
            Image.fromarray(pixels).resize(
                (pixels.shape[1] * scale, pixels.shape[0] * scale), Image.Resampling.NEAREST
            )
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path)) as tmp:
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0
        )
