"""Tile accuracy: does a decoded Crafter frame show the same world as the real one?

PSNR hides what an agent needs (a tokenizer at 28 dB turned stone tunnels to mush, lost
night-time zombies and misread inventory digits). Crafter draws its local view as a 9×7 grid of
known textures (shipped in the `crafter` package) and its inventory as 9×2 slots of an item icon
plus a digit, so each tile of a frame can be classified against templates built with Crafter's
own textures and drawing functions:

- a view tile is the material there, or the creature/object drawn on it (the classes of
  Crafter's semantic view: player, cow, zombie, skeleton, arrow, plant), or `outside` the world;
  templates are drawn at several daylight levels and asleep, as Crafter lights its view, for
  each of the 63 view positions (Crafter's night noise grows towards the view's edges: the
  templates hold its mean there), and matched up to a brightness gain;
- an inventory slot is the count 0–9 of its item (slot i always shows item i, blank at 0).

`tile_accuracy(decoded, real)` is the share of view tiles whose class in the decoded frame is
the class in the real frame; `inventory_accuracy` the share of the slots non-empty in either
frame whose count is read the same. Classification runs in fp32 on the CPU whatever the
caller's device and autocast (in bf16 the template residuals lose most of their digits).
The classifier itself is checked against Crafter's semantic map and true inventory on real
frames (tests/test_tile_accuracy.py).

Only frames the classifier can read are scored. Deep in the night Crafter blends each pixel
towards a fresh random grey, up to all of it at the view's edges, so the real frame no longer
shows its tiles: measured on rendered states (awake; asleep), the classifier agrees with
Crafter's semantic map on 100 % of the tiles down to daylight 0.3, 99 % (97 %) at 0.2, 88 %
(77 %) at 0.1 and 48 % (42 %) at 0.0, and two renders of one awake state (two noise draws) agree
on 98 %, 81 % and 45 % at 0.2, 0.1 and 0.0. Scoring the frames at 0.1 and 0.0 would measure
the noise, not the decoder (a tokenizer's darkest fifth of frames scored 45 % at 33 dB). So
each real frame's daylight is read from its centre tiles (the best templates' light level:
Crafter's noise is weakest at the centre) and a frame darker than `LIT` = 0.2 gets NaN. 0.2,
not 0.3: the classifier still reads 97 % of an asleep frame's tiles there, so a decoder that
loses them is measured, not excused. `tile_accuracy(..., dark=True)` scores every frame (the
definition before this was measured); `tile_accuracies` gives both from one classification.

Frames are classified at Crafter's render size (64: 7-pixel tiles); frames at another
resolution are resized to it first (bilinear), so on the 32×32 `tiny` data the numbers only
prove the wiring.
"""

from __future__ import annotations

import functools
from pathlib import Path

import crafter
import numpy as np
import torch
import yaml
from crafter import engine
from torch import Tensor

GRID = (9, 9)  # Crafter's view: 9 columns; 7 rows of world above 2 rows of inventory
VIEW_ROWS, ITEM_ROWS = 7, 2
GROUND = ("grass", "sand", "path")  # where creatures and objects stand
OBJECTS = {  # texture → class (Crafter's semantic view names objects by type)
    "player-left": "player",
    "player-right": "player",
    "player-up": "player",
    "player-down": "player",
    "player-sleep": "player",
    "cow": "cow",
    "zombie": "zombie",
    "skeleton": "skeleton",
    "arrow-left": "arrow",
    "arrow-right": "arrow",
    "arrow-up": "arrow",
    "arrow-down": "arrow",
    "sapling": "plant",
    "plant": "plant",
    "plant-ripe": "plant",
}
DAYLIGHT = (1.0, 0.7, 0.45, 0.3, 0.2, 0.1, 0.0)  # lighting levels the templates are drawn at
SEMANTIC = ("player", "cow", "zombie", "skeleton", "arrow", "plant")  # Crafter's object ids
NOISE_MEAN = (32 + 127) / 2  # Crafter's night noise: uniform grey levels in [32, 127)
LIT = 0.2  # the darkest of DAYLIGHT at which real frames, awake and asleep, are read ≥ 97 %
CENTRE = (slice(2, 5), slice(3, 6))  # view rows, columns whose light level is read (the
# player's tile and its neighbours: Crafter's vignette keeps the night noise weakest there)


@functools.cache
def _data() -> dict:
    """Crafter's own data.yaml: the material names (semantic ids 1…) and the item order."""
    return yaml.safe_load((Path(crafter.__file__).parent / "data.yaml").read_text())


def _color(x: np.ndarray, amount: float) -> np.ndarray:
    """PIL's ImageEnhance.Color in float: a blend with the image's luma ("L")."""
    luma = x @ np.array([0.299, 0.587, 0.114])
    return amount * x + (1 - amount) * luma[..., None]


def _light(tile: np.ndarray, daylight: float, mask: np.ndarray) -> np.ndarray:
    """Crafter's LocalView._light in expectation: its night noise (a vignette `mask` blend
    towards random greys) replaced by the noise's mean."""
    night = tile
    if daylight < 0.5:
        amount = 2 * (0.5 - daylight) * mask[..., None]
        night = (1 - amount) * tile + amount * NOISE_MEAN
    night = 0.5 * _color(night, 0.4) + 0.5 * np.array((0, 16, 64))
    return daylight * tile + (1 - daylight) * night


def _sleep(tile: np.ndarray) -> np.ndarray:
    """Crafter's LocalView._sleep."""
    return 0.5 * _color(tile, 0.0) + 0.5 * np.array((0, 0, 16))


def _vignette(shape: tuple[int, int], stddev: float = 0.5) -> np.ndarray:
    """Crafter's LocalView._vignette over the view canvas (x-major)."""
    xs, ys = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]))
    return 1 - np.exp(-0.5 * (xs**2 + ys**2) / stddev**2).T


class TileClassifier:
    """Classifies the view tiles and inventory slots of Crafter frames rendered at `size`."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.unit = size // GRID[0]
        self.border = (size - self.unit * GRID[0]) // 2
        textures = engine.Textures(Path(crafter.__file__).parent / "assets")
        unit = (self.unit, self.unit)
        self.classes = ["outside", *_data()["materials"], *sorted(set(OBJECTS.values()))]
        tiles: list[np.ndarray] = [np.full((*unit, 3), 127, np.uint8)]
        labels = [0]
        for m in _data()["materials"]:
            tiles.append(textures.get(m, unit)[..., :3])
            labels.append(self.classes.index(m))
        for texture, name in OBJECTS.items():
            for ground in GROUND:
                canvas = textures.get(ground, unit)[..., :3].copy()
                engine._draw_alpha(canvas, (0, 0), textures.get(texture, unit))
                tiles.append(canvas)
                labels.append(self.classes.index(name))
        mask = _vignette((GRID[0] * self.unit, VIEW_ROWS * self.unit))
        drawn = np.stack(tiles).astype(np.float64)  # (tiles, x, y, 3), x-major as Crafter's
        per_position = []
        for y in range(VIEW_ROWS):  # the night noise depends on where in the view a tile is
            for x in range(GRID[0]):
                m = mask[x * self.unit : (x + 1) * self.unit, y * self.unit : (y + 1) * self.unit]
                lit = [_light(drawn, day, m) for day in DAYLIGHT]
                lit = np.stack([*lit, *(_sleep(s) for s in lit)], 1)  # (tiles, levels, x, y, 3)
                per_position.append(lit.transpose(0, 1, 3, 2, 4).reshape(-1, drawn[0].size))
        # (7·9 positions, tiles·levels templates, unit²·3 row-major pixels)
        self.view_templates = torch.tensor(np.stack(per_position), dtype=torch.float32)
        self.view_labels = torch.tensor(labels).repeat_interleave(2 * len(DAYLIGHT))
        self.items = list(_data()["items"])
        self.slot_templates = self._slot_templates(textures)

    def _slot_templates(self, textures: engine.Textures) -> Tensor:
        """(slots, 10, unit²·3): slot i showing item i with count 0…9, drawn by Crafter."""
        view = engine.ItemView(textures, [GRID[0], ITEM_ROWS])
        unit2 = (self.unit, self.unit)
        slots = []
        for i, item in enumerate(self.items):
            counts = []
            for amount in range(10):
                canvas = view(
                    {k: (amount if k == item else 0) for k in self.items}, np.array(unit2)
                )
                x, y = i % GRID[0] * self.unit, i // GRID[0] * self.unit
                tile = canvas[x : x + self.unit, y : y + self.unit].transpose(1, 0, 2)
                counts.append(tile.reshape(-1))
            slots.append(np.stack(counts))
        return torch.tensor(np.stack(slots), dtype=torch.float32)

    def _uint8(self, frames: Tensor) -> Tensor:
        """(…, H, W, 3) uint8 or float in [-1, 1] → (N, size, size, 3) float32 0…255 on the
        CPU, where the templates are (frames may come from a GPU)."""
        x = frames.detach().reshape(-1, *frames.shape[-3:]).cpu()
        x = x.float() if x.dtype == torch.uint8 else (x.float().clamp(-1, 1) + 1) * 127.5
        if x.shape[1] != self.size:
            x = torch.nn.functional.interpolate(
                x.permute(0, 3, 1, 2), size=(self.size, self.size), mode="bilinear",
                align_corners=False,
            ).permute(0, 2, 3, 1)  # fmt: skip
        return x

    def _tiles(self, x: Tensor, rows: int, first_row: int) -> Tensor:
        """(N, size, size, 3) → (N, rows, 9, unit²·3)."""
        u, b = self.unit, self.border
        top = b + first_row * u
        grid = x[:, top : top + rows * u, b : b + GRID[0] * u]
        grid = grid.reshape(x.shape[0], rows, u, GRID[0], u, 3).permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(x.shape[0], rows, GRID[0], u * u * 3)

    @torch.autocast("cpu", enabled=False)  # bf16 loses the residuals below (≈10⁷ − 10⁷)
    def _best(self, frames: Tensor) -> Tensor:
        """Index of the best-fitting template of each view tile, (N, 7, 9)."""
        tiles = self._tiles(self._uint8(frames), VIEW_ROWS, 0)
        flat = tiles.reshape(tiles.shape[0], -1, tiles.shape[-1])  # (N, positions, pixels)
        t = self.view_templates
        # residual of the best gain a per template: ‖x‖² − (x·t)²/‖t‖²
        fit = torch.einsum("npd,pkd->npk", flat, t) ** 2 / (t * t).sum(-1).clamp_min(1e-6)
        best = (flat * flat).sum(-1, keepdim=True) - fit
        return best.argmin(-1).reshape(tiles.shape[:3])

    def view(self, frames: Tensor) -> Tensor:
        """Class index of each view tile, (N, 7, 9), N = all leading dims of `frames`."""
        return self.view_labels[self._best(frames)]

    def read(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Class index of each view tile (N, 7, 9) and each frame's daylight (N,): the most
        common light level of the centre tiles' best templates (awake or asleep alike)."""
        best = self._best(frames)
        levels = best[:, CENTRE[0], CENTRE[1]].reshape(len(best), -1) % len(DAYLIGHT)
        return self.view_labels[best], torch.tensor(DAYLIGHT)[levels.mode(-1).values]

    @torch.autocast("cpu", enabled=False)
    def inventory(self, frames: Tensor) -> Tensor:
        """Count shown in each item slot, (N, items)."""
        tiles = self._tiles(self._uint8(frames), ITEM_ROWS, VIEW_ROWS)
        slots = tiles.reshape(tiles.shape[0], -1, tiles.shape[-1])[:, : len(self.items)]
        dist = ((slots[:, :, None] - self.slot_templates[None]) ** 2).sum(-1)
        return dist.argmin(-1)


def is_crafter(dataset: dict) -> bool:
    """Whether a dataset.json describes Crafter frames only (the metric means nothing else)."""
    return set(dataset.get("sources", ())) == {"crafter"}


@functools.lru_cache(4)
def classifier(size: int = 64) -> TileClassifier:
    """One classifier per render size per process (building it draws ~50,000 templates)."""
    return TileClassifier(size)


def semantic_view(info: dict, size: int = 64) -> np.ndarray:
    """Crafter's own answer for a frame's view tiles, (7, 9) class indices: its semantic map
    (`info["semantic"]`: material ids, then the object types in SEMANTIC's order) around
    `info["player_pos"]`. The ground truth the classifier is tested and measured against."""
    c = classifier(size)
    names = ["outside", *_data()["materials"], *SEMANTIC]
    sem, pos = info["semantic"], np.asarray(info["player_pos"])
    out = np.zeros((VIEW_ROWS, GRID[0]), int)
    for y in range(VIEW_ROWS):
        for x in range(GRID[0]):
            p = pos + np.array([x - GRID[0] // 2, y - VIEW_ROWS // 2])
            inside = 0 <= p[0] < sem.shape[0] and 0 <= p[1] < sem.shape[1]
            out[y, x] = c.classes.index(names[sem[p[0], p[1]]] if inside else "outside")
    return out


def tile_accuracies(decoded: Tensor, real: Tensor, size: int = 64) -> tuple[Tensor, Tensor]:
    """Per frame (leading dims of the frames): the share of view tiles classified alike, NaN
    where the real frame is darker than `LIT` (too dark to read); and the same share on every
    frame. One classification of each frame for both."""
    c = classifier(size)
    truth, daylight = c.read(real)
    every = (c.view(decoded) == truth).float().mean((1, 2))
    lit = every.masked_fill(daylight < LIT, float("nan"))
    return lit.reshape(real.shape[:-3]), every.reshape(real.shape[:-3])


def tile_accuracy(decoded: Tensor, real: Tensor, size: int = 64, dark: bool = False) -> Tensor:
    """Per frame: share of view tiles classified alike; NaN where the real frame is darker
    than `LIT` (too dark to read), unless `dark` (score every frame)."""
    lit, every = tile_accuracies(decoded, real, size)
    return every if dark else lit


def scored_mean(scores: Tensor) -> float | None:
    """Mean over the frames that were scored (not NaN); None when none was (every frame too
    dark to read, every inventory empty): a metric left out rather than a NaN in the files."""
    value = scores.float().nanmean()
    return None if value.isnan() else value.item()


def inventory_accuracy(decoded: Tensor, real: Tensor, size: int = 64) -> Tensor:
    """Per frame: share of the inventory slots non-empty in either frame whose count reads the
    same in both (an invented item counts against `decoded`; NaN where both are empty)."""
    c = classifier(size)
    truth, seen = c.inventory(real), c.inventory(decoded)
    shown = (truth > 0) | (seen > 0)
    hits = ((truth == seen) & shown).float().sum(1)
    acc = hits / shown.float().sum(1)
    return acc.reshape(real.shape[:-3])
