"""The pipeline graph as DVC resolves it from dvc.yaml (templating and params applied).

dvc.yaml is the one place the graph is written; this module only reads it. A stage becomes an
asset named by its `meta.asset` in the group `meta.group`; stage B depends on stage A when one of
B's deps lies at or under one of A's outs. The stage's other deps (code) and its params make its
code version: a hash of the command, the content hashes DVC computes for the code deps and the
current values of its params, so Dagster calls an asset stale exactly when DVC would rerun its
stage for a reason of its own (data from upstream is Dagster's data versions, below). DVC
resolves the stages in its own environment (`dvc_cli.stages`: dvc_index.py's JSON).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration import dvc_cli


@dataclass(frozen=True)
class Stage:
    """One dvc.yaml stage as Dagster needs it."""

    name: str
    asset: str
    description: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]
    upstream: tuple[str, ...]  # asset names
    group: str = "pipeline"
    code_version: str = ""


def code_version(parts: dict[str, Any]) -> str:
    """sha256 of the stage's command, its code deps' DVC hashes and its params' values."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_stages(repo_root: Path) -> list[Stage]:
    """Stages of `repo_root/dvc.yaml` in file order; each must name its asset in `meta.asset`."""

    found = dvc_cli.stages(repo_root)
    for s in found:
        if "asset" not in s["meta"]:
            raise ValueError(f"{repo_root / 'dvc.yaml'}: stage {s['name']!r} has no meta.asset")
    assets = {s["name"]: s["meta"]["asset"] for s in found}
    return [
        Stage(
            s["name"],
            s["meta"]["asset"],
            s["meta"].get("description", ""),
            s["cmd"],
            tuple(s["deps"]),
            tuple(s["outs"]),
            tuple(s["params"]),
            tuple(sorted({assets[name] for name in s["upstream"]})),
            s["meta"].get("group", "pipeline"),
            code_version(s["code"]),
        )
        for s in found
    ]
