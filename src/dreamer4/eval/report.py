"""The evaluation report: Markdown (`report.md`) and one self-contained HTML page (`report.html`).

The page embeds everything as data URIs (PNG plots, GIF clips: every browser plays GIF inline,
unlike most video codecs), so it can be mailed, attached to a ticket or opened from DVC's cache
without the folder beside it. The Markdown links the same files in the folder.

Sections: the headline (Table 7 in Crafter), time to milestone (Table 8), success per
achievement with 95 % intervals, the world model (rollout PSNR/SSIM at K=4 and K=k_max, the
tokenizer, imagined returns before and after RL) and training curves from the stages' DVC plot
files, then clips: the agents in the real game, the world model's rollouts, imagination.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from dreamer4.preview import save_grid_gif

# (title, stage folder under metrics/, column of its train.tsv)
CURVES: tuple[tuple[str, str, str], ...] = (
    ("tokenizer: MSE", "train_tokenizer", "loss/mse"),
    ("world model: flow loss", "train_dynamics", "loss/flow"),
    ("WM+BC: BC loss", "finetune_agent", "loss/bc"),
    ("BC: BC loss", "bc_baseline", "loss/bc"),
    ("Dreamer 4: imagined return", "train_policy", "loss/return"),
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; max-width: 9em; font-size: 0.85em; }
.wide { overflow-x: auto; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="note">{{ settings }}</p>
{% for section in sections %}
<h2>{{ section.title }}</h2>
{% if section.note %}<p class="note">{{ section.note }}</p>{% endif %}
{% if section.table %}<div class="wide">{{ section.table | safe }}</div>{% endif %}
{% if section.image %}<img alt="{{ section.title }}" src="{{ section.image }}">{% endif %}
{% endfor %}
</body>
</html>
"""


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".gif": "image/gif"}[path.suffix]
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def display(table: pd.DataFrame, digits: int) -> pd.DataFrame:
    """The table as text cells (floats to `digits`, integers as integers, missing as "–"),
    its index a first column, so Markdown and HTML show the same thing."""

    def cell(v: Any) -> str:
        if isinstance(v, str):
            return v
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "–"
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        return f"{float(v):.{digits}f}"

    return table.reset_index().map(cell)


def _html_table(table: pd.DataFrame) -> str:
    """HTML table whose long snake_case headers may wrap after an underscore, not mid-word."""
    table = table.rename(columns=lambda c: str(c).replace("_", "_\u200b"))
    return table.to_html(index=False, border=0)


def comparison_display(tests: pd.DataFrame) -> pd.DataFrame:
    """`tables.pairwise_tests` as one row per pair: the score difference with its interval,
    then per milestone "rate vs rate (Fisher p, McNemar p)"; * marks p < 0.05 of the test the
    claims are judged by (McNemar's where the worlds pair up, else Fisher's) and only that one,
    so a reader cannot pick whichever is lower. Milestones neither agent reached are left out."""
    rows = []
    for (a, b), group in tests.groupby(["agent", "versus"], sort=False):
        row: dict[str, str] = {"agent": a, "versus": b}
        for t in group.itertuples():
            if t.measure == "score":
                row["score"] = f"{t.difference:+.2f} [{t.ci_low:+.2f}, {t.ci_high:+.2f}]"
            elif t.value or t.versus_value:
                paired = not np.isnan(t.p_paired)
                ps = {"Fisher": t.p_value, **({"McNemar": t.p_paired} if paired else {})}
                judged = "McNemar" if paired else "Fisher"
                shown = [
                    f"{k} {v:.2g}{'*' if k == judged and v < 0.05 else ''}" for k, v in ps.items()
                ]
                row[t.measure] = f"{t.value:.0f} vs {t.versus_value:.0f} ({', '.join(shown)})"
        rows.append(row)
    measures = [m for m in dict.fromkeys(tests["measure"]) if any(m in r for r in rows)]
    table = pd.DataFrame(rows).reindex(columns=["agent", "versus", *measures])  # tech-tree order
    return table.fillna("–").set_index("agent")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


class Report:
    """Writes the report files into `folder` (the stage's temporary output folder)."""

    def __init__(
        self,
        folder: Path,
        metrics_root: Path | None,
        labels: Mapping[str, str],
        milestones: tuple[str, ...],
    ) -> None:
        self.folder, self.metrics_root = Path(folder), metrics_root
        self.labels, self.milestones = labels, milestones
        self.sections: list[dict[str, Any]] = []

    # -- pieces ---------------------------------------------------------------------------

    def success_plot(self, success: pd.DataFrame) -> Path:
        """Grouped bars: success rate per milestone per agent, with the 95 % interval."""
        rows = success[success["achievement"].isin(self.milestones)]
        agents = list(dict.fromkeys(rows["agent"]))
        y = np.arange(len(self.milestones))
        height = 0.8 / max(1, len(agents))
        fig = Figure(figsize=(8, 0.5 * len(self.milestones) + 1.5), dpi=100)
        ax = fig.subplots()
        for i, agent in enumerate(agents):
            part = rows[rows["agent"] == agent].set_index("achievement").loc[list(self.milestones)]
            rate = part["success_rate"].to_numpy()
            err = np.clip(np.stack([rate - part["ci_low"], part["ci_high"] - rate]), 0, None)
            ax.barh(
                y + i * height,
                rate,
                height,
                xerr=err,
                label=self.labels[agent],
                error_kw={"elinewidth": 0.7, "ecolor": "0.35", "capsize": 1.5},
            )
        ax.set_yticks(y + height * (len(agents) - 1) / 2, self.milestones)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("success rate (% of episodes), 95 % interval")
        ax.legend(loc="lower right", fontsize="small")
        fig.tight_layout()
        path = self.folder / "success.png"
        fig.savefig(path)
        return path

    def training_plot(self) -> Path | None:
        """One panel per stage curve found in `metrics_root/<stage>/train.tsv`."""
        if self.metrics_root is None:
            return None
        curves = []
        for title, stage, column in CURVES:
            path = self.metrics_root / stage / "train.tsv"
            if path.is_file():
                table = pd.read_csv(path, sep="\t")
                if column in table:
                    curves.append((title, table[["step", column]].dropna(), column))
        if not curves:
            return None
        cols = 3
        rows = (len(curves) + cols - 1) // cols
        fig = Figure(figsize=(11, 3 * rows), dpi=90)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, (title, table, column) in zip(axes.flat, curves, strict=False):
            ax.plot(table["step"], table[column])
            ax.set_title(title, fontsize="medium")
            ax.set_xlabel("step")
        for ax in list(axes.flat)[len(curves) :]:
            ax.axis("off")
        fig.tight_layout()
        path = self.folder / "training.png"
        fig.savefig(path)
        return path

    def real_game_clip(self, clips: Mapping[str, np.ndarray]) -> Path | None:
        """The agents' first episodes side by side (held after an episode ends)."""
        if not clips:
            return None

        steps = max(len(c) for c in clips.values())
        columns = []
        for clip in clips.values():
            padded = np.concatenate([clip, np.repeat(clip[-1:], steps - len(clip), 0)])
            columns.append(torch.from_numpy(padded)[None].float() / 127.5 - 1)
        path = self.folder / "real_game.gif"
        save_grid_gif(path, columns, rows=1, min_size=128, duration=100)
        return path

    def world_model_table(self) -> pd.DataFrame | None:
        """Held-out PSNR/SSIM and, on Crafter, tile and inventory accuracy (%): tokenizer
        reconstruction, rollouts at K=4 and K=k_max, the real latents decoded (the ceiling a
        rollout can reach) and the copy-last-frame baselines, from the stages' DVC metrics."""
        if self.metrics_root is None:
            return None
        dyn = _read_json(self.metrics_root / "train_dynamics" / "summary.json")
        tok = _read_json(self.metrics_root / "train_tokenizer" / "summary.json")
        if dyn is None and tok is None:
            return None
        dyn, tok = dyn or {}, tok or {}

        def row(source: dict, psnr: str, ssim: str, tiles: str, inventory: str) -> list:
            percent = [source.get(k) for k in (tiles, inventory)]
            return [source.get(psnr), source.get(ssim)] + [
                None if v is None else 100 * v for v in percent
            ]

        def rollout(name: str) -> list:
            keys = ("psnr", "ssim", "tile_accuracy", "inventory_accuracy")
            return row(dyn, *(f"rollout/{k}_{name}" for k in keys))

        rows = {
            "tokenizer reconstruction": row(
                tok,
                "tokenizer/psnr_heldout",
                "tokenizer/ssim_heldout",
                "tokenizer/tile_accuracy",
                "tokenizer/inventory_accuracy",
            ),
            "rollout, K=4 sampling steps": rollout("k4"),
            "rollout, K=k_max (64)": rollout("k64"),
            "ceiling: the real latents, decoded": rollout("tokenizer"),
            "baseline: copy the last context frame": rollout("copy_last"),
            "baseline: copy the last context frame, through the tokenizer": rollout(
                "copy_last_decoded"
            ),
        }
        columns = ["PSNR (dB)", "SSIM", "tile accuracy (%)", "inventory accuracy (%)"]
        table = pd.DataFrame(rows, index=columns).T.astype(float)
        table = table.dropna(axis=1, how="all")  # no tile columns off Crafter
        table.index.name = "held-out frames"
        return table

    def imagination_table(self) -> pd.DataFrame | None:
        if self.metrics_root is None:
            return None
        summary = _read_json(self.metrics_root / "imagine" / "summary.json")
        if summary is None:
            return None
        table = pd.DataFrame(
            {
                "imagined return": [
                    summary["imagination/return_before"],
                    summary["imagination/return_after"],
                ]
            },
            index=["cloned policy (WM+BC)", "after RL (Dreamer 4)"],
        )
        table.index.name = "policy in the world model"
        return table

    def copy(self, source: Path | None, name: str) -> Path | None:
        if source is None or not Path(source).is_file():
            return None
        path = self.folder / name
        shutil.copyfile(source, path)
        return path

    # -- the document ---------------------------------------------------------------------

    def add(
        self,
        title: str,
        table: pd.DataFrame | None = None,
        image: Path | None = None,
        note: str = "",
        digits: int = 1,
    ) -> None:
        self.sections.append(
            {"title": title, "table": table, "image": image, "note": note, "digits": digits}
        )

    def write(
        self,
        headline: pd.DataFrame,
        success: pd.DataFrame,
        timing: pd.DataFrame,
        clips: Mapping[str, np.ndarray],
        imagination: Path | None,
        settings: dict[str, Any],
        scores: pd.DataFrame | None = None,
        tests: pd.DataFrame | None = None,
        actions: pd.DataFrame | None = None,
    ) -> None:
        chain = " → ".join(self.milestones)
        self.add(
            "Success per milestone (Table 7, Crafter)",
            headline,
            note=f"score: Crafter score (%, geometric mean over its 22 achievements); return and "
            f"length: means per episode; then success rate (%) along the tech tree {chain}.",
        )
        if scores is not None:
            self.add(
                "Crafter score, 95 % intervals",
                scores,
                note="percentile bootstrap over each agent's episodes",
                digits=2,
            )
        if tests is not None and len(tests):
            self.add(
                "Table 7's claims: pairwise tests",
                comparison_display(tests),
                note="score: difference of Crafter scores [95 % bootstrap interval]; "
                "milestones (those either agent reached): success rates in %, p of Fisher's "
                "exact test and, paired by world seed, of McNemar's exact test, both two-sided; "
                "* marks p < 0.05 of the test the claims are judged by (McNemar's, else Fisher's).",
            )
        self.add("Success per milestone, 95 % intervals", image=self.success_plot(success))
        steps = timing[list(self.milestones)]
        counts = timing[[f"n/{m}" for m in self.milestones]].to_numpy()
        shown = steps.copy().astype(object)
        for j, m in enumerate(self.milestones):
            shown[m] = [
                "–" if n == 0 else f"{v:.0f} ({n})"
                for v, n in zip(steps[m], counts[:, j], strict=True)
            ]
        self.add(
            "Time to milestone (Table 8, Crafter)",
            shown,
            note="mean environment steps to first reach each milestone over the episodes that "
            "reached it (in brackets: how many did).",
        )
        wide = success.assign(agent=success["agent"].map(self.labels)).pivot(
            index="achievement", columns="agent", values="success_rate"
        )[[self.labels[a] for a in dict.fromkeys(success["agent"])]]
        wide.columns.name = None
        low = success.pivot(index="achievement", columns="agent", values="ci_low")
        high = success.pivot(index="achievement", columns="agent", values="ci_high")
        for agent in dict.fromkeys(success["agent"]):
            label = self.labels[agent]
            wide[label] = [
                f"{r:.1f} [{lo:.1f}, {hi:.1f}]"
                for r, lo, hi in zip(wide[label], low[agent], high[agent], strict=True)
            ]
        self.add(
            "Success rate per achievement",
            wide,
            note="% of episodes, [95 % Wilson interval]",
        )
        if actions is not None:
            self.add(
                "Actions",
                actions,
                note="% of each agent's steps given to each action (as chosen). Some "
                "achievements come by chance from an action (wake_up: any `sleep` once energy "
                "dips), so an agent that stops choosing it loses them from its score.",
            )
        self.add(
            "World model: held-out rollouts",
            self.world_model_table(),
            note="PSNR and SSIM of frames decoded from the world model's rollouts against the "
            "real ones, with K=4 and K=k_max shortcut steps (from train_dynamics); on Crafter "
            "also the share of view tiles and of inventory counts shown alike (tile accuracy on "
            "the frames light enough to read: eval/tile_accuracy.py), which PSNR hides.",
            digits=3,
        )
        self.add("Imagination: before and after RL", self.imagination_table(), digits=4)
        self.add("Training curves", image=self.training_plot())
        self.add(
            "The agents in the real game",
            image=self.real_game_clip(clips),
            note="first evaluation episode of each agent, left to right: "
            + ", ".join(self.labels[a] for a in clips),
        )
        world = None if self.metrics_root is None else self.metrics_root / "train_dynamics"
        self.add(
            "World model rollouts",
            image=self.copy(None if world is None else world / "rollout.gif", "world_model.gif"),
            note="real | imagined, K=4 | imagined, K=k_max (held-out contexts)",
        )
        self.add(
            "Imagination: cloned policy | trained policy",
            image=self.copy(
                None if imagination is None else Path(imagination) / "preview.gif",
                "imagination.gif",
            ),
        )
        self.sections = [s for s in self.sections if s["table"] is not None or s["image"]]
        self._markdown(settings)
        self._html(settings)

    def _settings_line(self, settings: dict[str, Any]) -> str:
        return "; ".join(f"{k}: {v}" for k, v in settings.items())

    def _markdown(self, settings: dict[str, Any]) -> None:
        lines = ["# Evaluation report", "", self._settings_line(settings), ""]
        for s in self.sections:
            lines += [f"## {s['title']}", ""]
            if s["note"]:
                lines += [s["note"], ""]
            if s["table"] is not None:
                table = display(s["table"], s["digits"])
                align = ("left",) + ("right",) * (table.shape[1] - 1)
                lines += [table.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
            if s["image"]:
                lines += [f"![{s['title']}]({Path(s['image']).name})", ""]
        (self.folder / "report.md").write_text("\n".join(lines))

    def _html(self, settings: dict[str, Any]) -> None:

        sections = []
        for s in self.sections:
            table = s["table"]
            sections.append(
                {
                    "title": s["title"],
                    "note": s["note"],
                    "table": None if table is None else _html_table(display(table, s["digits"])),
                    "image": _data_uri(Path(s["image"])) if s["image"] else None,
                }
            )
        env = jinja2.Environment(autoescape=True)
        page = env.from_string(_PAGE).render(
            title="Dreamer 4: evaluation report",
            settings=self._settings_line(settings),
            sections=sections,
        )
        (self.folder / "report.html").write_text(page)
