"""DVC in its own environment, reached through its command line (orchestration/dvc_cli.py): the
resolved stages, `dvc status`, and a repository another DVC process holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration import dvc_cli

DVC_YAML = """\
stages:
  make:
    cmd: python -c "open('out.txt', 'w').write('${word}')" && sleep ${pause}
    deps: [code.py]
    params: [word, pause]
    outs: [out.txt]
    meta: {asset: made}
  use:
    cmd: cp out.txt used.txt
    deps: [out.txt]
    outs: [used.txt]
    meta: {asset: used}
"""


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc_cli.run(root, "init", "-q")
    dvc_cli.run(root, "config", "core.analytics", "false")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("word: hello\npause: 0\n")
    (root / "code.py").write_text("x = 1\n")
    return root


def test_dvc_lives_apart_from_the_project_python():
    # the project's interpreter cannot import DVC (its antlr would break Dagster's selections) …
    assert subprocess.run([sys.executable, "-c", "import dvc"], capture_output=True).returncode
    # … and DVC's own can
    proc = subprocess.run([dvc_cli.interpreter(), "-c", "import dvc, hydra"], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_stages_come_resolved_with_their_graph_and_code(repo: Path):
    make, use = dvc_cli.stages(repo)
    assert make["cmd"] == "python -c \"open('out.txt', 'w').write('hello')\" && sleep 0"
    assert make["param_values"] == {"params.yaml": {"word": "hello", "pause": 0}}
    assert (make["params"], make["upstream"], use["upstream"]) == (
        ["params.yaml:word", "params.yaml:pause"],
        [],
        ["make"],
    )
    assert make["meta"] == {"asset": "made"} and use["deps"] == ["out.txt"]
    # the code version's parts: DVC's hash of the code dep, none of the produced out.txt
    assert make["code"]["code.py"] and "out.txt" not in use["code"]
    (repo / "code.py").write_text("x = 2\n")
    assert dvc_cli.stages(repo)[0]["code"]["code.py"] != make["code"]["code.py"]


def test_status_names_the_stale_stages(repo: Path):
    assert dvc_cli.changed_stages(repo) == {"make", "use"}  # never run
    dvc_cli.run(repo, "repro")
    assert (repo / "used.txt").read_text() == "hello" and dvc_cli.status(repo) == {}
    (repo / "params.yaml").write_text("word: bye\npause: 0\n")
    assert dvc_cli.changed_stages(repo) == {"make"}  # `use` only once `make` reruns
    assert set(dvc_cli.status(repo, ("use",))) == set()


def test_a_repository_another_dvc_holds_is_busy_not_broken(repo: Path):
    (repo / "params.yaml").write_text("word: hello\npause: 20\n")
    held = subprocess.Popen(
        [dvc_cli.executable(), "repro"],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its stage's shell and sleep are stopped with it
    )
    try:
        deadline = time.monotonic() + 30
        while not (repo / "out.txt").exists():  # the stage runs: DVC holds the lock
            assert time.monotonic() < deadline and held.poll() is None
            time.sleep(0.2)
        with pytest.raises(dvc_cli.DvcBusy, match="is busy, it is being blocked by"):
            dvc_cli.status(repo)  # `make`'s outputs are locked while it runs
    finally:
        os.killpg(held.pid, signal.SIGKILL)
        held.wait()
    assert dvc_cli.changed_stages(repo) == {"make", "use"}  # killed: it recorded nothing


def test_a_failing_command_names_itself_and_dvcs_error(repo: Path):
    with pytest.raises(dvc_cli.DvcError, match=r"`dvc status nope` in .*repo.*nope") as err:
        dvc_cli.run(repo, "status", "nope")
    assert not isinstance(err.value, dvc_cli.DvcBusy)


@pytest.mark.parametrize("form", ["shebang", "long-path"])
def test_dvcs_python_is_read_from_its_launcher(tmp_path: Path, monkeypatch, form: str):
    """A launcher with no python beside it (pipx, a system install) names its interpreter: in
    the shebang, or, for paths too long for one, in pip's `/bin/sh` + `exec` form."""
    python = sys.executable
    launcher = tmp_path / "bin" / "dvc"
    launcher.parent.mkdir()
    head = (
        f"#!{python}\n"
        if form == "shebang"
        else f"#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\n"
    )
    launcher.write_text(head + "from dvc.cli import main\n")
    monkeypatch.setattr(dvc_cli, "executable", lambda: str(launcher))
    assert dvc_cli.interpreter() == python
    launcher.write_text("#!/bin/sh\nexec something\n")
    with pytest.raises(dvc_cli.DvcError, match="cannot tell which Python"):
        dvc_cli.interpreter()
