"""Held-out quality against wall-clock minutes, for the tokenizer and the dynamics.

Joins each training stage's `train.tsv` (held-out metrics at every `eval_every`) with its
`speed.tsv` (`minutes`, kept beside the DVC plot because wall time differs between runs) and
writes one PNG of PSNR and tile accuracy against minutes, plus the same numbers as Markdown
tables on stdout: where more training time would lead.

    python bench/curves.py [--metrics metrics] [--out docs/results/small-curves.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

CURVES = {  # stage → held-out columns (PSNR in dB, accuracies as fractions)
    "train_tokenizer": ("tokenizer/psnr_heldout_world", "tokenizer/tile_accuracy"),
    "train_dynamics": (
        "rollout/psnr_k4",
        "rollout/tile_accuracy_k4",
        "rollout/psnr_copy_last_decoded",
        "rollout/tile_accuracy_copy_last_decoded",
    ),
}


def held_out(metrics: Path, stage: str) -> pd.DataFrame:
    """Rows with a held-out evaluation: step, minutes and the stage's curve columns."""
    train = pd.read_csv(metrics / stage / "train.tsv", sep="\t")
    speed = pd.read_csv(metrics / stage / "speed.tsv", sep="\t")
    if "minutes" not in speed:
        raise SystemExit(f"{metrics / stage / 'speed.tsv'}: no minutes column (an older run)")
    table = train.merge(speed[["step", "minutes"]], on="step")
    columns = [c for c in CURVES[stage] if c in table]
    table = table.dropna(subset=columns[:1])[["step", "minutes", *columns]]
    return table.astype({"step": int})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--metrics", type=Path, default=Path("metrics"))
    p.add_argument("--out", type=Path, default=Path("docs/results/small-curves.png"))
    args = p.parse_args()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex="col")
    for col, stage in enumerate(CURVES):
        table = held_out(args.metrics, stage)
        formats = [".0f", ".1f"] + [".3f"] * (table.shape[1] - 2)
        print(f"### {stage}\n\n{table.to_markdown(index=False, floatfmt=formats)}\n")
        for name in table.columns[2:]:
            ax = axes[0 if "psnr" in name else 1, col]
            ax.plot(table["minutes"], table[name], marker="o", label=name.split("/")[1])
        axes[0, col].set_title(stage)
        axes[0, col].set_ylabel("held-out PSNR (dB)")
        axes[1, col].set_ylabel("tile accuracy")
        axes[1, col].set_xlabel("wall-clock minutes")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
