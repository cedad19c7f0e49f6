"""The pipeline graph as DVC resolves it from dvc.yaml (templating and params applied).

dvc.yaml is the one place the graph is written; this module only reads it. A stage becomes an
asset named by its `meta.asset`; stage B depends on stage A when one of B's deps lies at or
under one of A's outs. Other deps (code, params) are shown as metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath


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


def _under(path: str, root: str) -> bool:
    p, r = PurePosixPath(path), PurePosixPath(root)
    return p == r or r in p.parents


def read_stages(repo_root: Path) -> list[Stage]:
    """Stages of `repo_root/dvc.yaml` in file order; each must name its asset in `meta.asset`."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        raw = []
        for s in repo.index.stages:
            if not getattr(s, "name", None):
                continue  # a .dvc file, not a pipeline stage
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
            raw.append((s.name, meta, str(s.cmd), deps, tuple(o.def_path for o in s.outs), params))
    producers = {out: meta["asset"] for _, meta, _, _, outs, _ in raw for out in outs}
    stages = []
    for name, meta, cmd, deps, outs, params in raw:
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
            )
        )
    return stages
