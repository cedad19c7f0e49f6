"""Start a training command on every rank: torchrun, the deepspeed launcher, or in-process.

A training stage is one `dreamer4 <stage>` command. Run plainly (by a user or by dvc.yaml) it
re-executes itself under the launcher named in params, which sets RANK/LOCAL_RANK/WORLD_SIZE on
each worker; workers see LOCAL_RANK and train. So the same command line serves a laptop (one
process, `launcher: none`), a CPU box (`torchrun`, 2 processes over gloo on loopback) and a GPU
cluster (`deepspeed` with a hostfile).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import traceback
from typing import NoReturn

import torch

from dreamer4.errors import StageError
from dreamer4.train.config import TrainConfig


def in_worker() -> bool:
    """True inside a process started by a launcher (or prepared by `single_process_env`)."""
    return "LOCAL_RANK" in os.environ


def die_with_parent() -> None:
    """Get SIGKILLed when the parent process dies, however it dies (Linux; elsewhere a no-op).

    Applied to the launcher (child of the stage command) and to every rank (child of the
    launcher): torchrun starts ranks in sessions of their own, so without it a SIGKILL of the
    command (an OOM kill, a lost node, a test) would leave ranks training unattended.
    """
    if sys.platform != "linux":
        return

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent was already gone before prctl took effect
        os._exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """The environment torch.distributed expects, for a world of one on loopback."""
    os.environ.update(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
    )


def torchrun_args(cfg: TrainConfig, argv: list[str], job: str = "job") -> list[str]:
    """torchrun's arguments that run `dreamer4 <argv>` on every rank; `job` names the
    rendezvous of a run across nodes (the stage, whatever alias of its command each host typed)."""
    if cfg.nnodes > 1:  # every node runs this; they meet at the rendezvous, ranks assigned
        where = ["--nnodes", str(cfg.nnodes), "--rdzv_backend", "c10d"]
        where += ["--rdzv_endpoint", cfg.rdzv_endpoint, "--rdzv_id", f"dreamer4-{job}"]
    else:
        where = ["--nnodes", "1", "--master_addr", "127.0.0.1"]
        where += ["--master_port", str(free_port())]
    return [*where, "--nproc_per_node", str(cfg.nproc), "-m", "dreamer4.cli", *argv]


def launcher_command(cfg: TrainConfig, argv: list[str], job: str = "job") -> list[str]:
    """The command that runs `dreamer4 <argv>` on every rank (torchrun's is what `relaunch`
    runs in a fork of the stage command, see `ForkedTorchrun`)."""
    target = ["-m", "dreamer4.cli", *argv]
    if cfg.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *torchrun_args(cfg, argv, job)]
    if cfg.launcher == "deepspeed":
        exe = shutil.which("deepspeed")
        if exe is None:
            raise StageError("launcher deepspeed: the `deepspeed` command is not on PATH")
        where = (
            ["--hostfile", cfg.hostfile]
            if cfg.hostfile
            else ["--num_nodes", "1", "--num_gpus", str(cfg.nproc), "--master_addr", "127.0.0.1"]
        )
        if cfg.hostfile and not os.path.isfile(cfg.hostfile):
            raise StageError(
                f"{cfg.hostfile}: hostfile not found (see infra/deepspeed/hostfile.example)"
            )
        return [
            exe,
            *where,
            "--master_port",
            str(free_port()),
            "--no_local_rank",
            "--module",
            *target[1:],
        ]
    raise StageError(f"launcher {cfg.launcher!r} does not start processes")


def worker_env(cfg: TrainConfig) -> dict[str, str]:
    """Environment for the workers: CPU accelerator without CUDA, cores split between ranks."""
    env = dict(os.environ)

    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc)))
    return env


class ForkedTorchrun:
    """torchrun (`torch.distributed.run.main`) in a fork of this process, not a new interpreter.

    The stage command has imported torch by the time it launches; `python -m
    torch.distributed.run` imported it again before starting a rank, about 4 s of every
    training stage on a 2-core machine. The fork keeps what the command line gave: a process
    of its own between the command and the ranks, in a session of its own, killed with its
    parent, with the environment given, exiting with torchrun's status (1 when a rank failed,
    as an uncaught error in `python -m` does). The command has no Python thread of its own
    running when it launches, and the child runs only torchrun's agent, no tensor work, so the
    threads a fork leaves behind (native pools of the libraries imported) are never waited on.
    """

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.returncode: int | None = None
        for stream in (sys.stdout, sys.stderr):  # so that no buffered output is copied into it
            stream.flush()
        self.pid = os.fork()
        if self.pid == 0:
            self._child(args, env)

    @staticmethod
    def _child(args: list[str], env: dict[str, str]) -> NoReturn:
        code = 1
        try:
            os.setsid()
            die_with_parent()
            os.environ.clear()
            os.environ.update(env)
            from torch.distributed.run import main

            main(args)
            code = 0
        except SystemExit as e:  # what the interpreter does with it
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:  # never return into the command's own code, whatever the streams do
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    def send_signal(self, signum: int) -> None:
        """Signal the launcher unless it has been waited for (its pid may be reused then)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def wait(self) -> int:
        """The exit status, as `subprocess.Popen.wait` gives it (-N: killed by signal N)."""
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def relaunch(cfg: TrainConfig, argv: list[str], announced: bool, job: str = "job") -> int:
    """Run `argv` under the configured launcher and return its exit status.

    The launcher runs in a session of its own, so a terminal's Ctrl-C or a SIGTERM reaches it
    once, from here, as SIGTERM (it passes that to every rank, which saves a checkpoint and
    exits); a second signal kills it outright.
    """
    env = worker_env(cfg)
    if announced:
        env["DREAMER4_RESUME_ANNOUNCED"] = "1"
    if cfg.launcher == "torchrun":
        proc: ForkedTorchrun | subprocess.Popen = ForkedTorchrun(torchrun_args(cfg, argv, job), env)
    else:
        proc = subprocess.Popen(
            launcher_command(cfg, argv, job),
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        proc.send_signal(signal.SIGTERM if len(received) == 1 else signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
