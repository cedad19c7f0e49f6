"""Training-engine throughput: the reference job under each ZeRO stage, precision and rank count.

Runs `dreamer4 train-reference` (the engine's reference model, a masked patch autoencoder) on an
episode dataset and prints samples/s and tokens/s, the mean of the logged windows after the
first (which includes start-up). Each configuration starts fresh in a temporary folder.

    python bench/train_speed.py [--data data/episodes] [--steps 60] [--width 256]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from dreamer4.params import load_profile
from dreamer4.train.config import resolve_precision

# (label, launcher, ranks, zero stage, precision); bf16 autocast only where the CPU has bf16 units
# (without them it is an order of magnitude slower than fp32: emulated).
CONFIGS = [
    ("1 rank, ZeRO-0", "none", 1, 0, "fp32"),
    ("2 ranks, ZeRO-0", "torchrun", 2, 0, "fp32"),
    ("2 ranks, ZeRO-2", "torchrun", 2, 2, "fp32"),
    ("2 ranks, ZeRO-3", "torchrun", 2, 3, "fp32"),
]
if resolve_precision("auto", cuda=False) == "bf16-autocast":
    CONFIGS += [
        (f"{label}, bf16 autocast", *rest[:-1], "bf16-autocast") for label, *rest in CONFIGS
    ]


def measure(
    data: Path,
    steps: int,
    width: int,
    batch: int,
    launcher: str,
    ranks: int,
    stage: int,
    precision: str,
) -> pd.Series:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = {
            **load_profile(Path("params.yaml"), "tiny")["train"],  # the defaults, then:
            "launcher": launcher,
            "nproc": ranks,
            "zero_stage": stage,
            "precision": precision,
            "micro_batch": batch,
            "log_every": 10,
            "checkpoint_every": 10**9,
            "metrics_port": None,
            "data_workers": 1,
        }
        (root / "params.yaml").write_text(
            yaml.safe_dump({"profile": "b", "paths": {}, "profiles": {"b": {"train": engine}}})
        )
        cmd = [
            sys.executable,
            "-m",
            "dreamer4.cli",
            "train-reference",
            "--params",
            str(root / "params.yaml"),
            "--data",
            str(data),
            "--out",
            str(root / "out"),
            "--metrics",
            str(root / "m"),
            "--checkpoints",
            str(root / "c"),
            "--steps",
            str(steps),
            "--width",
            str(width),
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        rows = pd.read_csv(root / "m" / "speed.tsv", sep="\t")
        return rows.iloc[1:][["samples_per_second", "tokens_per_second", "data_wait"]].mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, default=Path("data/episodes"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=16, help="micro-batch per rank (sequences of 4)")
    args = p.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU precision auto = "
        f"{resolve_precision('auto', cuda=False)}, data {args.data}, "
        f"width {args.width}, micro-batch {args.batch} × 4 frames"
    )
    print(f"{'configuration':34s} {'samples/s':>10s} {'tokens/s':>10s} {'data wait s/step':>17s}")
    for label, launcher, ranks, stage, precision in CONFIGS:
        r = measure(
            args.data, args.steps, args.width, args.batch, launcher, ranks, stage, precision
        )
        print(
            f"{label:34s} {r.samples_per_second:10.1f} {r.tokens_per_second:10.0f} "
            f"{r.data_wait:17.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
