"""The torchrun that `relaunch` forks (`ForkedTorchrun`): the exit status, output and process
tree that `python -m torch.distributed.run` gave, without a second interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the ranks read /proc")

# Run in a process of its own: a fork of pytest's would copy whatever pytest has going.
LAUNCH = """
import sys
from dreamer4.train.launch import ForkedTorchrun, free_port
args = ["--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "--nproc_per_node", "2", sys.argv[1]]
status = ForkedTorchrun(args, {**__import__("os").environ, "RANK_EXIT": sys.argv[2]}).wait()
print("pid", __import__("os").getpid())
print("status", status)
"""

RANK = """
import json, os, sys
launcher = os.getppid()
with open(f"/proc/{launcher}/cmdline", "rb") as f:
    cmdline = f.read().split(b"\\0")[:-1]
report = json.dumps({"rank": os.environ["RANK"], "launcher": launcher, "launcher_parent":
    int(open(f"/proc/{launcher}/stat").read().rsplit(")", 1)[1].split()[1]),
    "launcher_session": os.getsid(launcher), "launcher_cmdline": [c.decode() for c in cmdline]})
os.write(1, (report + "\\n").encode())  # one write: the two ranks share the pipe
sys.exit(int(os.environ["RANK_EXIT"]) if os.environ["RANK"] == "1" else 0)
"""


def launch(tmp_path: Path, rank_exit: int) -> tuple[subprocess.CompletedProcess, list[dict]]:
    script, rank = tmp_path / "launch.py", tmp_path / "rank.py"
    script.write_text(textwrap.dedent(LAUNCH))
    rank.write_text(textwrap.dedent(RANK))
    done = subprocess.run(
        [sys.executable, str(script), str(rank), str(rank_exit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done, reports


def test_forked_torchrun_gives_the_status_output_and_process_tree_of_the_command(tmp_path: Path):
    done, reports = launch(tmp_path, rank_exit=0)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "status 0", done.stderr[-3000:]
    assert sorted(r["rank"] for r in reports) == ["0", "1"]
    launcher = {r["launcher"] for r in reports}
    assert len(launcher) == 1
    (report, *_) = reports
    # a process of its own between the command and the ranks, in a session of its own, and a
    # fork of the command (its command line), not `python -m torch.distributed.run`
    pid = int(done.stdout.splitlines()[-2].split()[1])
    assert report["launcher_parent"] == pid and report["launcher"] != pid
    assert report["launcher_session"] == report["launcher"]
    assert report["launcher_cmdline"][-3:-2] == [str(tmp_path / "launch.py")]
    assert "torch.distributed.run" not in report["launcher_cmdline"]


def test_forked_torchrun_exits_1_when_a_rank_fails_as_torchrun_does(tmp_path: Path):
    done, reports = launch(tmp_path, rank_exit=3)
    assert done.stdout.splitlines()[-1] == "status 1", done.stderr[-3000:]
    assert "ChildFailedError" in done.stderr and "exitcode  : 3" in done.stderr
    assert len(reports) == 2
