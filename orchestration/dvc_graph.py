"""The pipeline graph as DVC resolves it from dvc.yaml (templating and params applied).

dvc.yaml is the one place the graph is written; this module only reads it. A stage becomes an
asset named by its `meta.asset` in the group `meta.group`; stage B depends on stage A when one of
B's deps lies at or under one of A's outs. The stage's other deps (code) and its params make its
code version: a hash of the command, the content hashes DVC computes for the code deps and the
current values of its params, so Dagster calls an asset stale exactly when DVC would rerun its
stage for a reason of its own (data from upstream is Dagster's data versions, below).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dvc.repo import Repo


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


def _under(path: str, root: str) -> bool:
    p, r = PurePosixPath(path), PurePosixPath(root)
    return p == r or r in p.parents


def _code_version(stage: Any, produced: set[str]) -> str:
    """sha256 of the stage's command, its code deps' DVC hashes and its params' values."""
    parts: dict[str, Any] = {"cmd": str(stage.cmd)}
    for d in stage.deps:
        if hasattr(d, "params"):
            parts[f"params:{d.def_path}"] = d.read_params()
        elif not any(_under(d.def_path, out) for out in produced):
            h = d.get_hash() if d.exists else None
            parts[d.def_path] = h.value if h else None
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_stages(repo_root: Path) -> list[Stage]:
    """Stages of `repo_root/dvc.yaml` in file order; each must name its asset in `meta.asset`."""

    with Repo(str(repo_root)) as repo:
        found = [s for s in repo.index.stages if getattr(s, "name", None)]  # not .dvc files
        produced = {o.def_path for s in found for o in s.outs}
        raw = []
        for s in found:
            meta = s.meta or {}
            if "asset" not in meta:
                raise ValueError(f"{repo_root / 'dvc.yaml'}: stage {s.name!r} has no meta.asset")
            params = tuple(
                f"{Path(d.def_path).name}:{key}"
                for d in s.deps
                if hasattr(d, "params")
                for key in (d.params or [])
            )
            deps = tuple(d.def_path for d in s.deps if not hasattr(d, "params"))
            outs = tuple(o.def_path for o in s.outs)
            raw.append((s.name, meta, str(s.cmd), deps, outs, params, _code_version(s, produced)))
    producers = {out: meta["asset"] for _, meta, _, _, outs, _, _ in raw for out in outs}
    stages = []
    for name, meta, cmd, deps, outs, params, version in raw:
        upstream = sorted({a for d in deps for out, a in producers.items() if _under(d, out)})
        stages.append(
            Stage(
                name,
                meta["asset"],
                meta.get("description", ""),
                cmd,
                deps,
                outs,
                params,
                tuple(upstream),
                meta.get("group", "pipeline"),
                version,
            )
        )
    return stages
