"""Exact resume of the real training stages: `dreamer4 train-tokenizer` and `dreamer4
train-dynamics`, 2 ranks through torchrun as `dvc repro` runs them, SIGKILLed mid-stage (the
command, the launcher, every rank and data reader: no chance to save), then rerun with the same
command line. The rerun must resume from the last checkpoint and end with the same
`model.safetensors` and `model_ema.safetensors`, byte for byte, and the same EMA update count, as
a run that was never interrupted (issue 15 item 5: running-RMS loss normalisers of rank 1
came back as rank 0's, and a module built on first use shifted the global RNG).

A shrunk `tiny` profile (width 16, depth 2, 9 steps, a checkpoint every 3): the stage runs
dominate, about 15 s each on 2 cores. The checkpoint helpers behind it are tested first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from dreamer4.train import checkpoint as ckpt
from tests.conftest import REPO, full_profile, small_models, stage_lines

STEPS, EVERY = 9, 3


def test_each_rank_checkpoints_its_own_persistent_buffers(tmp_path: Path) -> None:
    from dreamer4.nn.norm import RunningRMS

    module = torch.nn.Module()
    module.norm = RunningRMS(0.9)
    module.register_buffer("draws", torch.zeros((), dtype=torch.long))
    module.register_buffer("mask", torch.ones(3), persistent=False)  # rebuilt, not state
    assert set(ckpt.persistent_buffers(module)) == {"norm.mean_square", "norm.count", "draws"}
    module.norm(torch.tensor(2.0))
    module.draws += 5
    before = ckpt.copy_buffers(module)
    ckpt.save_tensors(tmp_path / "b.safetensors", ckpt.persistent_buffers(module))
    module.norm(torch.tensor(7.0))  # a forward pass after the save (or one a stop discards)
    module.draws += 1
    ckpt.load_buffers(module, ckpt.load_file(tmp_path / "b.safetensors"))
    for name, value in ckpt.persistent_buffers(module).items():
        assert value.equal(before[name]) and value.dtype == before[name].dtype, name
    with pytest.raises(ValueError, match="draws"):
        ckpt.load_buffers(module, {k: v for k, v in before.items() if k != "draws"})


def test_micro_step_draws_ignore_what_drew_from_the_global_rng_before() -> None:
    import random

    import numpy as np

    def draws(rank: int, index: int, consumed: int) -> tuple:
        torch.rand(consumed)  # e.g. a module built on first use: its initialisation draws
        np.random.rand(consumed)
        ckpt.seed_micro_step(0, rank, index)
        return torch.rand(4).tolist(), np.random.rand(2).tolist(), random.random()

    assert draws(1, 5, 0) == draws(1, 5, 1000)
    assert draws(1, 5, 0) != draws(0, 5, 0) and draws(1, 5, 0) != draws(1, 6, 0)


def params_file(root: Path) -> Path:
    """The repository's `tiny` profile with small models, 2 torchrun ranks, a short run."""
    tiny = full_profile("tiny")
    tiny["train"].update(metrics_port=None, deepspeed_configs=str(REPO / "infra" / "deepspeed"))
    assert (tiny["train"]["launcher"], tiny["train"]["nproc"]) == ("torchrun", 2)
    short = {"steps": STEPS, "micro_batch": 2, "warmup_steps": 2, "checkpoint_every": EVERY}
    small_models(tiny)
    # evaluations between checkpoints too
    tiny["train_tokenizer"]["train"].update(eval_every=2, **short)
    tiny["train_dynamics"]["train"].update(**short)
    path = root / "params.yaml"
    path.write_text(
        yaml.safe_dump({"profile": "t", "paths": {}, "profiles": {"t": tiny}}, sort_keys=False)
    )
    return path


def command(stage: str, params: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dreamer4.cli", stage, "--params", str(params),
        "--out", str(run / "model"), "--metrics", str(run / "metrics"),
        "--checkpoints", str(run / "checkpoints"), *extra,
    ]  # fmt: skip


def run_stage(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def job_folder(run: Path, stage: str) -> Path | None:
    root = run / "checkpoints" / stage
    folders = [f for f in root.iterdir() if f.is_dir()] if root.is_dir() else []
    assert len(folders) <= 1, folders
    return folders[0] if folders else None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc: ranks and data readers leave its group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the stage command's process group and every process below it, and wait."""
    tree = [proc.pid, *descendants(proc.pid)]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in tree):
        assert time.monotonic() < deadline, "processes of the killed job survived SIGKILL"
        time.sleep(0.05)


def killed_then_resumed(cmd: list[str], run: Path, stage: str) -> None:
    """Start the stage, SIGKILL it as soon as it has a checkpoint, rerun it to the end."""
    with open(run.parent / f"{run.name}-killed.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=run.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 240
            while (folder := job_folder(run, stage)) is None or ckpt.latest_step(folder) is None:
                assert proc.poll() is None, f"job ended early: {log.name}"
                assert time.monotonic() < deadline, "timed out waiting for a checkpoint"
                time.sleep(0.05)
        finally:
            kill_tree(proc)
    killed_at = ckpt.latest_step(folder)
    assert killed_at is not None and killed_at % EVERY == 0 and killed_at < STEPS
    assert not (run / "model" / ckpt.WEIGHTS).exists(), "the job finished before it was killed"

    resumed = run_stage(cmd, run.parent)
    assert stage_lines(resumed.stdout)[0] == f"resumed from step {killed_at}", resumed.stdout


def assert_identical(run: Path, reference: Path, stage: str) -> None:
    for name in (ckpt.WEIGHTS, ckpt.EMA_WEIGHTS):
        got, want = (run / "model" / name).read_bytes(), (reference / "model" / name).read_bytes()
        if got != want:  # name the tensors that differ
            from safetensors.torch import load

            a, b = load(got), load(want)
            differ = sorted(k for k in b if k not in a or not a[k].equal(b[k]))
            pytest.fail(f"{stage} {name}: {len(differ)} tensors differ after resume: {differ[:8]}")
    updates = [
        ckpt.read_state(job_folder(r, stage) / ckpt.tag_of(STEPS))["ema_updates"]
        for r in (run, reference)
    ]
    assert updates == [STEPS, STEPS]


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return params_file(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module")
def tokenizer(params: Path, episode_dataset: Path) -> Path:
    """An uninterrupted `train-tokenizer` run (its model also feeds `train-dynamics`)."""
    run = params.parent / "tokenizer"
    run_stage(
        command("train-tokenizer", params, run, "--data", str(episode_dataset)), params.parent
    )
    return run


@pytest.mark.slow
def test_train_tokenizer_resumes_bit_identical_after_sigkill(
    params: Path, tokenizer: Path, episode_dataset: Path
) -> None:
    run = params.parent / "tokenizer-killed"
    cmd = command("train-tokenizer", params, run, "--data", str(episode_dataset))
    killed_then_resumed(cmd, run, "train_tokenizer")
    assert_identical(run, tokenizer, "train_tokenizer")
    # wall-clock minutes (speed.tsv, beside the DVC plot) add up across the resume
    minutes = pd.read_csv(run / "metrics" / "speed.tsv", sep="\t")["minutes"]
    assert minutes.notna().all() and (minutes > 0).all() and minutes.is_monotonic_increasing
    assert "minutes" not in pd.read_csv(run / "metrics" / "train.tsv", sep="\t")


@pytest.mark.slow
def test_train_dynamics_resumes_bit_identical_after_sigkill(
    params: Path, tokenizer: Path, episode_dataset: Path
) -> None:
    root = params.parent
    latents = root / "latents"
    run_stage(
        [sys.executable, "-m", "dreamer4.cli", "encode", "--params", str(params),
         "--tokenizer", str(tokenizer / "model"), "--data", str(episode_dataset),
         "--out", str(latents)],
        root,
    )  # fmt: skip
    upstream = ("--data", str(latents), "--tokenizer", str(tokenizer / "model"))
    upstream += ("--episodes", str(episode_dataset))
    reference = root / "dynamics"
    run_stage(command("train-dynamics", params, reference, *upstream), root)
    run = root / "dynamics-killed"
    killed_then_resumed(command("train-dynamics", params, run, *upstream), run, "train_dynamics")
    assert_identical(run, reference, "train_dynamics")
