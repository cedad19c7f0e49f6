"""Stage `encode` → asset `latent_tokens`: tokenizer latents for every frame of the dataset.

Each episode is encoded frame by frame with the tokenizer's KV cache, the context cut to the
length the tokenizer was trained on, exactly as the world model will see frames at play time.
Episodes are batched (padded at the end: the encoder is causal, so padding never reaches an
earlier frame).

Output folder (written beside, then renamed into place):
- `latents/chunk-NNNNN.npy` — (N, N_b, D_b) float16, row `frame_index` of chunk `frame_chunk`
  is the latent of that frame: the same addressing as the dataset's frames, so one step index
  serves both;
- `steps.parquet`, `episodes.parquet` — copied from the episode dataset (self-contained);
- `latents.json` — tokenizer config, shapes, counts, the validation report;
- `validation.json` — great-expectations suite: every latent finite, within [-1, 1], one
  latent per step, shapes as the tokenizer says. A failing suite fails the stage.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dreamer4.episodes.dataset import load_chunk, write_json
from dreamer4.episodes.validation import run_suites
from dreamer4.errors import StageError
from dreamer4.files import staged_folder
from dreamer4.params import Settings
from dreamer4.tokenizer import TokenizerConfig, load_tokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (models/tokenizer)")
    p.add_argument("--data", default=None, help="episode dataset folder")
    p.add_argument("--out", default=None, help="output folder for the latents")
    p.add_argument("--batch", type=int, default=None, help="episodes encoded together")


def latent_table(folder: Path, steps: pd.DataFrame) -> pd.DataFrame:
    """One row per step: the stats of its latent, for the suite (reads the chunk files)."""
    rows = []
    for chunk, group in steps.groupby("frame_chunk"):
        path = folder / "latents" / f"chunk-{int(chunk):05d}.npy"
        arr = np.load(path, mmap_mode="r")
        z = np.asarray(arr[group["frame_index"].to_numpy()], dtype=np.float32)
        flat = z.reshape(len(z), -1)
        rows.append(
            pd.DataFrame(
                {
                    "episode": group["episode"].to_numpy(),
                    "step": group["step"].to_numpy(),
                    "finite": np.isfinite(flat).all(1),
                    "min": np.nan_to_num(flat, nan=np.inf).min(1),
                    "max": np.nan_to_num(flat, nan=-np.inf).max(1),
                    "tokens": np.full(len(z), z.shape[1]),
                    "channels": np.full(len(z), z.shape[2]),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def validate_latents(folder: Path, latents: int, channels: int) -> Any:
    """The great-expectations suite over the latents on disk (also the Dagster asset check)."""

    steps = pd.read_parquet(folder / "steps.parquet")
    table = latent_table(folder, steps)
    e = gx.expectations
    return run_suites(
        "latent_tokens",
        [
            (
                "latents",
                table,
                [
                    e.ExpectTableRowCountToEqual(value=len(steps)),
                    e.ExpectCompoundColumnsToBeUnique(column_list=["episode", "step"]),
                    e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
                    e.ExpectColumnValuesToBeBetween(column="min", min_value=-1.0, max_value=1.0),
                    e.ExpectColumnValuesToBeBetween(column="max", min_value=-1.0, max_value=1.0),
                    e.ExpectColumnValuesToBeInSet(column="tokens", value_set=[latents]),
                    e.ExpectColumnValuesToBeInSet(column="channels", value_set=[channels]),
                ],
            )
        ],
    )


def encode(tokenizer_dir: Path, data: Path, out: Path, batch: int) -> dict[str, Any]:

    model, config = load_tokenizer(tokenizer_dir)
    cfg = model.cfg
    model_cfg = {
        k: v for k, v in config["model"].items() if k in TokenizerConfig.__dataclass_fields__
    }
    steps = pd.read_parquet(data / "steps.parquet")
    if steps.empty:
        raise StageError(f"{data / 'steps.parquet'}: no steps to encode")
    resolution = load_chunk(data, int(steps["frame_chunk"].iloc[0])).shape[1]
    if resolution != cfg.resolution:
        raise StageError(
            f"{data}: frames are {resolution}px, the tokenizer in {tokenizer_dir} "
            f"was trained on {cfg.resolution}px"
        )
    with staged_folder(out, "latents.json", "a latents folder") as tmp:
        (tmp / "latents").mkdir()
        sizes = steps.groupby("frame_chunk")["frame_index"].max() + 1
        chunks = {
            int(c): np.lib.format.open_memmap(
                tmp / "latents" / f"chunk-{int(c):05d}.npy",
                mode="w+",
                dtype=np.float16,
                shape=(int(n), cfg.latents, cfg.bottleneck),
            )
            for c, n in sizes.items()
        }
        episodes = [g for _, g in steps.sort_values(["episode", "step"]).groupby("episode")]
        episodes.sort(key=len)  # similar lengths together: little padding
        for i in tqdm(range(0, len(episodes), batch), desc="encode", unit="batch"):
            group = episodes[i : i + batch]
            longest = max(len(g) for g in group)
            frames = np.zeros((len(group), longest, resolution, resolution, 3), np.uint8)
            for j, g in enumerate(group):
                chunk = load_chunk(data, int(g["frame_chunk"].iloc[0]))
                frames[j, : len(g)] = chunk[g["frame_index"].to_numpy()]
            z = model.encode_stream(torch.from_numpy(frames)).numpy()
            for j, g in enumerate(group):
                chunks[int(g["frame_chunk"].iloc[0])][g["frame_index"].to_numpy()] = z[j, : len(g)]
        for arr in chunks.values():
            arr.flush()
        del chunks
        for name in ("steps.parquet", "episodes.parquet"):
            shutil.copy2(data / name, tmp / name)
        report = validate_latents(tmp, cfg.latents, cfg.bottleneck)
        write_json(tmp / "validation.json", report.to_dict())
        if not report.success:
            raise StageError(f"{out}: latent suite failed:\n  " + "\n  ".join(report.failures))
        summary = {
            "tokenizer": str(tokenizer_dir),
            "data": str(data),
            "model": model_cfg,
            "steps": len(steps),
            "episodes": len(episodes),
            "shape": [cfg.latents, cfg.bottleneck],
            "dtype": "float16",
            "validation": report.to_dict(),
        }
        write_json(tmp / "latents.json", summary)
    return summary


def run(args: argparse.Namespace) -> int:

    settings = Settings.load(args, "encode")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    summary = encode(
        settings.path("tokenizer", args.tokenizer),
        settings.path("episodes", args.data),
        settings.path("latents", args.out),
        settings.own.count("batch", args.batch),
    )
    print(
        f"encoded {summary['steps']} frames of {summary['episodes']} episodes → "
        f"{summary['shape'][0]}×{summary['shape'][1]} latents"
    )
    return 0
