"""DVC through its command line and JSON output: the one place the orchestration starts DVC.

DVC has an environment of its own (`make setup` builds `.venv-dvc` and links its `dvc` into
`.venv/bin`): its hydra-core pins antlr4-python3-runtime 4.9, while Dagster's asset selection
parser needs 4.13 (dagster-io/dagster#27487), so the two cannot share a Python and neither is
patched. What the orchestration needs from DVC comes from `dvc status --json`, `dvc repro` and
`dvc_index.py`, a script DVC's own interpreter runs to print the resolved stages as JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

INDEX_SCRIPT = Path(__file__).with_name("dvc_index.py")
# DVC's messages when another DVC process holds the repository lock, or (a stage running) the
# read/write lock of an output the command needs
LOCKED = ("Unable to acquire lock", "is busy, it is being blocked by")


class DvcError(RuntimeError):
    """A DVC command failed; the message names the command, the repository and DVC's error."""


class DvcBusy(DvcError):
    """Another DVC process (a `dvc repro` by hand, a Dagster step) holds the repository lock or
    that of an output: ask again later."""


def executable() -> str:
    """`dvc` beside this interpreter (the link `make setup` puts in `.venv/bin`), else on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    if beside.exists():
        return str(beside)
    found = shutil.which("dvc")
    if found is None:
        raise DvcError(f"dvc: not beside {sys.executable} nor on PATH (run `make setup`)")
    return found


def interpreter() -> str:
    """The Python DVC is installed in: beside its (resolved) script, else the one its launcher
    names (the shebang, or pip's `exec '...'` line for paths too long for a shebang)."""
    script = Path(os.path.realpath(executable()))
    beside = script.with_name("python")
    if beside.exists():
        return str(beside)
    head = script.read_bytes()[:1024].decode(errors="replace").splitlines()
    named = [head[0][2:].strip()] if head and head[0].startswith("#!") else []
    named += re.findall(r"exec' \"([^\"]+)\"", "\n".join(head[1:3]))
    for path in named:
        if Path(path).name.startswith("python") and Path(path).exists():
            return path
    raise DvcError(f"{script}: cannot tell which Python runs it (no python beside it or named)")


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def _failed(what: str, root: Path, proc: subprocess.CompletedProcess) -> DvcError:
    err = (proc.stderr or proc.stdout or "").strip()[-2000:]
    kind = DvcBusy if any(message in err for message in LOCKED) else DvcError
    return kind(f"`{what}` in {root} failed (exit {proc.returncode}): {err}")


def run(
    root: Path, *args: str, wait: bool = False, check: bool = True, merged: bool = False
) -> subprocess.CompletedProcess:
    """`dvc ARGS` in `root`, output captured (`merged`: stderr into stdout, in order); `wait`
    waits for the repository lock instead of failing (DvcBusy) while another DVC holds it."""
    command = [executable(), *(["--wait-for-lock"] if wait else []), *args]
    proc = subprocess.run(
        command,
        cwd=root,
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        check=False,
    )
    if check and proc.returncode != 0:
        raise _failed(f"dvc {' '.join(args)}", root, proc)
    return proc


def status(root: Path, targets: tuple[str, ...] = (), wait: bool = False) -> dict[str, Any]:
    """`dvc status --json`: stage → what changed ({} when every target is up to date)."""
    return _json(run(root, "status", "--json", *targets, wait=wait).stdout, "dvc status", root)


def changed_stages(root: Path, wait: bool = False) -> set[str]:
    """Names of the stages `dvc status` reports (keys are `<dvc.yaml>:<stage>` for stages of a
    dvc.yaml elsewhere than the working directory)."""
    return {key.rsplit(":", 1)[-1] for key in status(root, wait=wait)}


def stages(root: Path) -> list[dict[str, Any]]:
    """The stages of `root/dvc.yaml` as DVC resolves them (dvc_index.py's JSON)."""
    command = [interpreter(), "-I", str(INDEX_SCRIPT), str(root)]
    proc = subprocess.run(command, cwd=root, env=_env(), text=True, capture_output=True)
    if proc.returncode != 0:
        raise _failed(f"{INDEX_SCRIPT.name} (DVC's Python)", root, proc)
    return _json(proc.stdout, INDEX_SCRIPT.name, root)


def _json(text: str, what: str, root: Path) -> Any:
    try:
        return json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise DvcError(f"`{what}` in {root}: not JSON ({err}): {text[:500]!r}") from err
