"""The stages of a dvc.yaml as DVC resolves them, printed as JSON; run by DVC's own interpreter.

Never imported by the orchestration: DVC lives in an environment of its own (`.venv-dvc`; its
hydra-core pins an antlr that Dagster's selection parser cannot use), so `dvc_cli.stages` runs
this file with that environment's Python (`python -I dvc_index.py ROOT`). Standard library and
DVC only. Per stage, in dvc.yaml order: its name, `meta`, command, deps (params files apart),
outs, params keys and values, the stages producing its deps, and the parts of its code version
(the command, its params' values and the DVC hashes of the deps no stage produces: its code).
"""

from __future__ import annotations

import json
import sys
from pathlib import PurePosixPath
from typing import Any

from dvc.repo import Repo


def _under(path: str, root: str) -> bool:
    p, r = PurePosixPath(path), PurePosixPath(root)
    return p == r or r in p.parents


def _stage(stage: Any, found: list[Any], produced: set[str]) -> dict[str, Any]:
    params = [d for d in stage.deps if hasattr(d, "params")]
    deps = [d for d in stage.deps if not hasattr(d, "params")]
    values = {d.def_path: d.read_params() for d in params}
    code: dict[str, Any] = {"cmd": str(stage.cmd)}
    code.update({f"params:{path}": v for path, v in values.items()})
    for d in deps:
        if not any(_under(d.def_path, out) for out in produced):
            h = d.get_hash() if d.exists else None
            code[d.def_path] = h.value if h else None
    upstream = {
        other.name
        for other in found
        for out in other.outs
        for d in deps
        if _under(d.def_path, out.def_path)
    }
    return {
        "name": stage.name,
        "meta": stage.meta or {},
        "cmd": str(stage.cmd),
        "deps": [d.def_path for d in deps],
        "outs": [o.def_path for o in stage.outs],
        "params": [
            f"{PurePosixPath(d.def_path).name}:{key}" for d in params for key in (d.params or [])
        ],
        "param_values": values,
        "upstream": sorted(upstream),
        "code": code,
    }


def main(root: str) -> None:
    with Repo(root) as repo:
        found = [s for s in repo.index.stages if getattr(s, "name", None)]  # not .dvc files
        produced = {o.def_path for s in found for o in s.outs}
        stages = [_stage(s, found, produced) for s in found]
    json.dump(stages, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
