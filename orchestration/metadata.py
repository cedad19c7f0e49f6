"""What the Dagster UI shows about a materialized asset, read from the stage's outputs."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from dreamer4.episodes.readers import find_raw_episodes


def raw_episodes(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:

    folder = root / outs[0]
    meta: dict[str, Any] = {"episodes": len(find_raw_episodes(folder))}
    stats_file = folder / "stats.jsonl"  # Crafter recordings only; imported VPT has none
    if stats_file.exists():
        stats = [json.loads(line) for line in stats_file.read_text().splitlines()]
        options = sorted(folder.glob("*-options.json"))
        skills = [json.loads(p.read_text()).get("skill") for p in options]
        keys = sorted({k for s in stats for k in s if k.startswith("achievement_")})
        rates = {
            k.removeprefix("achievement_"): round(
                100.0 * sum(s[k] > 0 for s in stats) / len(stats), 1
            )
            for k in keys
        }
        meta["steps"] = sum(s["length"] for s in stats)
        meta["skills"] = dg.MetadataValue.json(
            {str(k): skills.count(k) for k in sorted(set(skills))}
        )
        meta["success_rate_%"] = dg.MetadataValue.json(rates)
    return meta


def episode_dataset(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    folder = root / outs[0]
    summary = json.loads((folder / "dataset.json").read_text())
    quarantine = json.loads((folder / "quarantine.json").read_text())
    rows = "\n".join(f"| {q['episode']} | {q['reason']} |" for q in quarantine["episodes"])
    return {
        "episodes": summary["episodes"],
        "steps": summary["steps"],
        "resolution": summary["resolution"],
        "splits": dg.MetadataValue.json(summary["splits"]),
        "sources": dg.MetadataValue.json(summary["sources"]),
        "quarantined": quarantine["count"],
        "quarantine": dg.MetadataValue.md(
            "| episode | reason |\n|---|---|\n" + rows if rows else "none"
        ),
    }


def _trained_model(
    root: Path,
    outs: tuple[str, ...],
    prefix: str,
    image: str | None = None,
    name: str = "",
    caption: str = "",
) -> dict[str, Any]:
    """What a training stage outputs: steps, model config, its `prefix` DVC metrics from
    summary.json, and its `image` plot (by suffix) embedded as markdown under `name`."""

    config = json.loads((root / outs[0] / "config.json").read_text())
    meta: dict[str, Any] = {
        "steps": config["steps"],
        "model": dg.MetadataValue.json(config["model"]),
    }
    for out in outs:
        path = root / out
        if path.name == "summary.json" and path.is_file():
            summary = json.loads(path.read_text())
            meta.update({k: round(v, 4) for k, v in summary.items() if k.startswith(prefix)})
        if image and path.suffix == image and path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            kind = image.removeprefix(".")
            meta[name] = dg.MetadataValue.md(
                f"{caption}\n\n![{name}](data:image/{kind};base64,{data})"
            )
            meta[f"{name}_file"] = dg.MetadataValue.path(str(path))
    return meta


def tokenizer(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    """Held-out PSNR/SSIM and the reconstruction grid (original | recon | masked | recon)."""
    return _trained_model(
        root,
        outs,
        "tokenizer/",
        ".png",
        "reconstructions",
        "original | reconstruction | masked input | its reconstruction",
    )


def world_model(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    """Held-out rollout PSNR/SSIM (K=4, K=k_max, copy-last-frame) and the rollout animation."""
    return _trained_model(
        root, outs, "rollout/", ".gif", "rollouts", "real | imagined, K=4 | imagined, K=k_max"
    )


def agent(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    """Held-out BC NLL/accuracy and reward prediction of the phase-2 agent (or the BC baseline)."""
    meta = _trained_model(root, outs, "agent/")
    config = json.loads((root / outs[0] / "config.json").read_text())
    meta["tasks"] = len(config["model"]["agent"]["tasks"])
    meta["pretrained"] = bool(config["model"]["pretrained"])
    return meta


def policy(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    """Last logged imagined return, value and PMPO terms of phase 3."""
    return _trained_model(root, outs, "loss/")


def imagination_dataset(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    """Returns before/after phase 3, the per-task table and the decoded preview."""

    folder = root / outs[0]
    summary = json.loads((folder / "summary.json").read_text())
    meta: dict[str, Any] = {
        "rollouts": summary["rollouts"],
        "horizon": summary["horizon"],
        "return_before": round(summary["mean_return"]["bc"], 4),
        "return_after": round(summary["mean_return"]["dreamer4"], 4),
    }
    table = root / "metrics/imagine/returns.tsv"
    if table.is_file():
        meta["returns_by_task"] = dg.MetadataValue.md(
            pd.read_csv(table, sep="\t").to_markdown(index=False, floatfmt=".4f")
        )
    gif = folder / "preview.gif"
    if gif.is_file():
        data = base64.b64encode(gif.read_bytes()).decode()
        meta["preview"] = dg.MetadataValue.md(
            f"cloned policy | trained policy\n\n![preview](data:image/gif;base64,{data})"
        )
    return meta


def eval_report(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    """The headline table (success per milestone, Crafter score), scores per agent, the report
    path and the agents' real-game clip."""

    folder = root / outs[0]
    headline = pd.read_csv(folder / "headline.csv", index_col=0)
    meta: dict[str, Any] = {
        "headline": dg.MetadataValue.md(headline.to_markdown(floatfmt=".1f")),
        "crafter_score_%": dg.MetadataValue.json(
            {agent: round(float(v), 2) for agent, v in headline["score"].items()}
        ),
        "episodes_per_agent": dg.MetadataValue.json(
            {agent: int(v) for agent, v in headline["episodes"].items()}
        ),
        "report": dg.MetadataValue.path(str(folder / "report.html")),
        # one number per agent: plottable across runs in the asset's Plots tab
        **{f"score_%/{agent}": round(float(v), 2) for agent, v in headline["score"].items()},
    }
    clip = folder / "real_game.gif"
    if clip.is_file():
        data = base64.b64encode(clip.read_bytes()).decode()
        meta["real_game"] = dg.MetadataValue.md(f"![real game](data:image/gif;base64,{data})")
    return meta


def latent_tokens(root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    summary = json.loads((root / outs[0] / "latents.json").read_text())
    return {
        "steps": summary["steps"],
        "episodes": summary["episodes"],
        "shape": dg.MetadataValue.json(summary["shape"]),
        "dtype": summary["dtype"],
    }


METADATA: dict[str, Callable[[Path, tuple[str, ...]], dict[str, Any]]] = {
    "raw_episodes": raw_episodes,
    "episode_dataset": episode_dataset,
    "tokenizer": tokenizer,
    "latent_tokens": latent_tokens,
    "world_model": world_model,
    "agent": agent,
    "bc_agent": agent,
    "policy": policy,
    "imagination_dataset": imagination_dataset,
    "eval_report": eval_report,
}


def stage_metadata(asset: str, root: Path, outs: tuple[str, ...]) -> dict[str, Any]:
    """Asset-specific metadata; none for assets without a reader here."""
    fn = METADATA.get(asset)
    return fn(root, outs) if fn else {}
