"""The training engine for real: 2-rank DeepSpeed ZeRO jobs on CPU over loopback, killed,
signalled and resumed, with their Prometheus endpoint scraped while they run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dreamer4.train import checkpoint as ckpt
from dreamer4.train.reference import ReferenceConfig, ReferenceModel
from tests.conftest import full_profile, stage_lines

pytestmark = pytest.mark.slow  # every test here runs a real multi-rank training job

ENGINE = {
    "launcher": "torchrun",
    "nproc": 2,
    "zero_stage": 2,
    "micro_batch": 4,
    "lr": 1e-3,
    "warmup_steps": 2,
    "log_every": 5,
    "checkpoint_every": 10,
    "data_workers": 1,
    "metrics_port": None,
}


def job_args(root: Path, data: Path, steps: int, **engine: object) -> list[str]:
    params = root / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "profile": "t",
                "paths": {},
                "profiles": {"t": {"train": {**full_profile()["train"], **ENGINE, **engine}}},
            }
        )
    )
    return [
        "--params",
        str(params),
        "--data",
        str(data),
        "--out",
        str(root / "out"),
        "--metrics",
        str(root / "metrics"),
        "--checkpoints",
        str(root / "ckpt"),
        "--steps",
        str(steps),
        "--width",
        "32",
    ]


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "dreamer4.cli", "train-reference", *args]


def run(
    args: list[str], timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(command(args), capture_output=True, text=True, timeout=timeout, env=env)


def job_folder(root: Path) -> Path:
    (folder,) = (root / "ckpt" / "train_reference").iterdir()
    return folder


def rank_losses(root: Path, rank: int) -> list[float]:
    lines = (job_folder(root) / "ranks" / f"rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def wait_for(
    predicate, timeout: float, proc: subprocess.Popen, output: list[str] | None = None
) -> None:
    """Poll `predicate` until it holds; `output`: the job's lines read so far by a thread (else
    its stdout is read here when it ends early)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            seen = "".join(output) if output is not None else proc.stdout.read()
            raise AssertionError(f"job ended early ({proc.returncode}): {seen}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the job")
        time.sleep(0.2)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_zero2_two_ranks_loss_goes_down_and_checkpoint_loads(
    tmp_path: Path, episode_dataset: Path
) -> None:
    # An empty extension cache: DeepSpeed's shared-memory op (inference only) is not compiled
    # into it; a build there cost 40-70 s per fresh venv and needed a C++ toolchain.
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)}
    done = run(job_args(tmp_path, episode_dataset, steps=30), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(extensions.iterdir()), sorted(extensions.rglob("*"))
    assert "shm_comm" not in done.stdout + done.stderr
    for rank in (0, 1):
        losses = rank_losses(tmp_path, rank)
        assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], (rank, losses)
    assert rank_losses(tmp_path, 0) != rank_losses(tmp_path, 1)  # each rank saw its own data

    # The exported weights load into the model without pickle and equal DeepSpeed's own
    # consolidation of the ZeRO-2 shards of the final checkpoint.
    weights, config = ckpt.load_exported(tmp_path / "out", ema=False)
    assert config["world_size"] == 2 and config["steps"] == 30
    model = ReferenceModel(ReferenceConfig(width=32), config["model"]["resolution"])
    model.load_state_dict(weights)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = job_folder(tmp_path)
    assert ckpt.latest_tag(folder) == "step-00000030"
    ds_weights = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="step-00000030")
    for name, tensor in weights.items():
        assert torch.equal(tensor, ds_weights[name].float()), name
    ema, _ = ckpt.load_exported(tmp_path / "out", ema=True)
    assert set(ema) == set(weights) and not torch.equal(ema["head.weight"], weights["head.weight"])
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["step"] == 30 and summary["loss/loss"] < rank_losses(tmp_path, 0)[0]


def test_zero3_saves_and_resumes_to_the_same_weights(tmp_path: Path, episode_dataset: Path) -> None:
    straight = tmp_path
    args = job_args(straight, episode_dataset, steps=20, zero_stage=3)
    assert (r := run(args)).returncode == 0, r.stderr[-3000:]
    # Rewind the job to its step-10 checkpoint, as if it had died after saving it.
    folder = job_folder(straight)
    first = {k: v.clone() for k, v in load_file(straight / "out" / ckpt.WEIGHTS).items()}
    ckpt.atomic_write_text(folder / "latest", "step-00000010")
    resumed = run(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stage_lines(resumed.stdout)[0] == "resumed from step 10"
    again = load_file(straight / "out" / ckpt.WEIGHTS)
    for name, tensor in first.items():
        assert torch.allclose(tensor, again[name], atol=1e-6), name


def test_resume_after_sigkill_continues_from_last_checkpoint(
    tmp_path: Path, episode_dataset: Path
) -> None:
    args = job_args(tmp_path, episode_dataset, steps=400, checkpoint_every=20)
    proc = start(args)
    root = tmp_path / "ckpt" / "train_reference"

    def saved_twice() -> bool:
        return root.is_dir() and any(
            (ckpt.latest_step(f) or 0) >= 40 for f in root.iterdir() if f.is_dir()
        )

    try:
        wait_for(saved_twice, timeout=240, proc=proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank, no chance to save
        proc.wait()
    folder = job_folder(tmp_path)
    killed_at = ckpt.latest_step(folder)
    assert killed_at >= 40 and killed_at % 20 == 0

    resumed = run(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stage_lines(resumed.stdout)[0] == f"resumed from step {killed_at}"
    assert not list(folder.glob("*.partial"))  # a torn save was cleared, never loaded
    tags = sorted(p.name for p in folder.glob("step-*"))
    assert tags == ["step-00000380", "step-00000400"]  # keep_checkpoints = 2
    for tag in tags:  # every kept checkpoint is complete
        files = {p.name for p in (folder / tag).iterdir()}
        assert {
            "state.json",
            "rng-rank0.safetensors",
            "rng-rank1.safetensors",
            "ema.safetensors",
            "mp_rank_00_model_states.pt",
        } <= files
    import pandas as pd

    curve = pd.read_csv(tmp_path / "metrics" / "train.tsv", sep="\t")
    assert curve["step"].tolist() == list(range(5, 401, 5))  # rewound, then continued
    assert json.loads((tmp_path / "out" / ckpt.CONFIG).read_text())["steps"] == 400


def test_metrics_scraped_during_run_and_sigterm_saves_a_checkpoint(
    tmp_path: Path, episode_dataset: Path
) -> None:
    # port 0: the exporter binds any free port and the job prints the URL it serves
    proc = start(
        job_args(tmp_path, episode_dataset, steps=100000, metrics_port=0, checkpoint_every=100000)
    )
    lines: list[str] = []

    def read() -> None:  # line by line: the poll below sees each line as it arrives
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: dict[str, str] = {}

    def scraped_loss() -> bool:
        url = next((line.split()[-1] for line in lines if line.startswith("metrics at ")), None)
        if url is None:
            return False
        seen["url"] = url
        try:
            body = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            return False
        seen["body"] = body
        return 'dreamer4_train_loss{stage="train_reference",term="loss"}' in body

    try:
        wait_for(scraped_loss, timeout=240, proc=proc, output=lines)
        body, url = seen["body"], seen["url"]
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
        for series in (
            'term="masked"',
            "dreamer4_train_grad_norm",
            "dreamer4_train_learning_rate",
            "dreamer4_train_samples_per_second",
            "dreamer4_train_tokens_per_second",
            "dreamer4_train_data_wait_seconds",
        ):
            assert series in body, series
        step = next(
            float(line.split()[-1])
            for line in body.splitlines()
            if line.startswith("dreamer4_train_step{")
        )
        assert step >= 5
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=180)
        reader.join(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    out = "".join(lines)
    assert proc.returncode != 0
    assert "stopped by signal at step" in out
    stopped = int(out.split("stopped by signal at step ")[1].split(";")[0])
    assert ckpt.latest_step(job_folder(tmp_path)) == stopped >= step
    with pytest.raises(OSError):  # the exporter went away with the job
        urllib.request.urlopen(url, timeout=10)


NAN_JOB = """
import sys
from dreamer4.train.reference import ReferenceJob

class Exploding(ReferenceJob):
    calls = 0
    def loss(self, model, batch):
        terms = super().loss(model, batch)
        Exploding.calls += 1
        if Exploding.calls > 12:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

import dreamer4.train.reference as ref
ref.ReferenceJob = Exploding
from dreamer4.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, episode_dataset: Path
) -> None:
    script = tmp_path / "exploding.py"
    script.write_text(textwrap.dedent(NAN_JOB))
    args = job_args(
        tmp_path, episode_dataset, steps=40, launcher="none", nproc=1, checkpoint_every=10
    )
    done = subprocess.run(
        [sys.executable, str(script), "train-reference", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "non-finite loss at step 13" in done.stderr
    folder = job_folder(tmp_path)
    assert "last good checkpoint" in done.stderr and str(folder / "step-00000010") in done.stderr
    assert ckpt.latest_step(folder) == 10
    assert not (tmp_path / "out" / ckpt.WEIGHTS).exists()


def test_zero1_job_through_the_deepspeed_launcher(tmp_path: Path, episode_dataset: Path) -> None:
    done = run(job_args(tmp_path, episode_dataset, steps=10, launcher="deepspeed", zero_stage=1))
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "out" / ckpt.CONFIG).read_text())
    assert (config["world_size"], config["train"]["zero_stage"], config["steps"]) == (2, 1, 10)
    assert len(rank_losses(tmp_path, 1)) == 2


CRASH_JOB = """
import sys
from dreamer4.train.reference import ReferenceJob

class Crashing(ReferenceJob):
    calls = 0
    def loss(self, model, batch):
        Crashing.calls += 1
        if Crashing.calls > 3:
            raise RuntimeError("boom in the model")
        return super().loss(model, batch)

import dreamer4.train.reference as ref
ref.ReferenceJob = Crashing
from dreamer4.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_crashing_rank_ends_the_job_without_hanging(
    tmp_path: Path, episode_dataset: Path
) -> None:
    script = tmp_path / "crashing.py"
    script.write_text(textwrap.dedent(CRASH_JOB))
    args = job_args(tmp_path, episode_dataset, steps=40, data_workers=2)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",  # rendezvous on localhost, a port the agent binds (0) and shares
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(
        [*torchrun, str(script), "train-reference", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0 and "boom in the model" in done.stderr
