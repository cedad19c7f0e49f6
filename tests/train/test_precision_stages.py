"""Every training stage under every precision on CPU: `fp32`, `bf16-autocast` (fp32 weights,
torch.autocast bf16) and DeepSpeed `bf16` (bf16 weights, fp32 master copy), so the path a GPU
takes cannot rot on the CPU machines that run the suite.

Each case runs two optimizer steps of a tiny model (width 16, depth 2) through the real stage
command, in this process, one rank (`--launcher none`). The upstream inputs of each stage (a
dataset with task events, a tokenizer, its latents, a world model, an agent) are built once per
module in fp32, so a case runs only the stage under test. DeepSpeed bf16 is also run under
ZeRO 0, 1 and 3 (the cases above use the profile's ZeRO 2).
"""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from dreamer4.cli import main
from dreamer4.train import checkpoint as ckpt
from dreamer4.train.config import resolve_precision
from tests.conftest import REPO, full_profile, make_episode_dataset, small_models

PRECISIONS = ("fp32", "bf16-autocast", "bf16")


def profile(precision: str) -> dict:
    """The repository's `tiny` profile, shrunk to a width-16 depth-2 model and 2 steps on one
    rank, with `precision`."""
    tiny = full_profile("tiny")
    tiny["train"].update(
        precision=precision,
        launcher="none",
        nproc=1,
        metrics_port=None,
        steps=2,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        deepspeed_configs=str(REPO / "infra" / "deepspeed"),
    )
    small = {"steps": 2, "micro_batch": 2, "warmup_steps": 1, "checkpoint_every": 2}
    small_models(tiny)
    tiny["train_tokenizer"]["train"].update(eval_every=0, **small)
    tiny["train_dynamics"]["train"].update(**small)
    tiny["finetune_agent"]["train"].update(**{**small, "micro_batch": 4})
    policy = tiny["train_policy"]
    policy["imagination"].update(horizon=2, context=2, context_window=3, steps=2, value_warmup=1)
    policy["train"].update(**small)
    return tiny


def stage(*argv: str) -> int:
    """`dreamer4 <argv>` in this process, as a fresh process would run it: the environment
    (`single_process_env` sets RANK, LOCAL_RANK, …), the signal handlers (the engine's stop
    flag) and DeepSpeed's process-group cache are reset after."""
    env = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return main(list(argv))
    finally:
        os.environ.clear()
        os.environ.update(env)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        # The engine ends with torch's destroy_process_group, which leaves DeepSpeed's group
        # cache (deepspeed.utils.groups) pointing at the destroyed world group: the next
        # deepspeed.initialize in this process would fail with "Group ... is not registered".
        # A stage command is one process, so only in-process reuse needs this.
        from deepspeed.utils import groups

        groups._release_process_group_references()


@dataclass(frozen=True)
class Upstream:
    root: Path
    params: Path
    episodes: Path
    tokenizer: Path
    latents: Path
    world_model: Path
    agent: Path

    def run(self, command: str, precision: str, out: Path, *extra: str) -> int:
        """A training stage under `precision`, writing into `out/` (model, metrics, ckpt)."""
        return stage(
            command,
            "--params",
            str(self.params),
            "--profile",
            precision,
            "--out",
            str(out / "model"),
            "--metrics",
            str(out / "metrics"),
            "--checkpoints",
            str(out / "checkpoints"),
            "--steps",
            "2",
            *extra,
        )


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Upstream:
    root = tmp_path_factory.mktemp("precision")
    params = root / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"profile": "fp32", "paths": {}, "profiles": {p: profile(p) for p in PRECISIONS}},
            sort_keys=False,
        )
    )
    events = {"collect_wood": (5, 20), "place_table": (12, 30)}
    episodes = make_episode_dataset(root / "episodes", episodes=4, length=40, events=events)
    up = Upstream(
        root,
        params,
        episodes,
        root / "tokenizer" / "model",
        root / "latents",
        root / "world_model" / "model",
        root / "agent" / "model",
    )
    assert up.run("train-tokenizer", "fp32", root / "tokenizer", "--data", str(episodes)) == 0
    common = ("--params", str(params), "--profile", "fp32")
    encode = ("--tokenizer", str(up.tokenizer), "--data", str(episodes), "--out", str(up.latents))
    assert stage("encode", *common, *encode) == 0
    latents = ("--data", str(up.latents))
    wm = ("--tokenizer", str(up.tokenizer), "--episodes", str(episodes))
    assert up.run("train-dynamics", "fp32", root / "world_model", *latents, *wm) == 0
    world_model = ("--world-model", str(up.world_model))
    assert up.run("finetune-agent", "fp32", root / "agent", *latents, *world_model) == 0
    return up


def check_output(out: Path, precision: str) -> None:
    """Finite final loss, the precision recorded in config.json, DeepSpeed's bf16 optimizer
    (its ZeRO shards are named bf16_zero_*) exactly when bf16 was asked for, fp32 weights."""
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    assert math.isfinite(summary["loss/loss"]), summary
    config = json.loads((out / "model" / ckpt.CONFIG).read_text())
    assert (config["precision"], config["train"]["precision"]) == (precision, precision)
    assert config["steps"] == 2
    shards = {p.name for p in (out / "checkpoints").rglob("*optim_states.pt")}
    if config["train"]["zero_stage"] > 0:
        assert shards and all(n.startswith("bf16_") == (precision == "bf16") for n in shards)
    weights, _ = ckpt.load_exported(out / "model")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_auto_precision_follows_the_machine() -> None:
    amx = "flags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n"
    avx512 = "flags\t\t: fpu sse2 avx512f avx512_bf16\n"
    plain = "flags\t\t: fpu sse2 avx2 avx512f\n"
    assert resolve_precision("auto", cuda=True, cpuinfo=plain) == "bf16"
    assert resolve_precision("auto", cuda=False, cpuinfo=avx512) == "bf16-autocast"
    assert resolve_precision("auto", cuda=False, cpuinfo=amx) == "bf16-autocast"
    assert resolve_precision("auto", cuda=False, cpuinfo=plain) == "fp32"
    assert resolve_precision("auto", cuda=False, cpuinfo="") == "fp32"
    for explicit in PRECISIONS:  # an explicit precision is kept, whatever the machine
        assert resolve_precision(explicit, cuda=False, cpuinfo=plain) == explicit
        assert resolve_precision(explicit, cuda=True, cpuinfo=avx512) == explicit
    assert resolve_precision("auto", cuda=False) in ("bf16-autocast", "fp32")  # this machine


# stage → (command, its upstream inputs as options)
STAGES = {
    "train_tokenizer": ("train-tokenizer", lambda u: ["--data", u.episodes]),
    "train_dynamics": (
        "train-dynamics",
        lambda u: ["--data", u.latents, "--tokenizer", u.tokenizer, "--episodes", u.episodes],
    ),
    "finetune_agent": (
        "finetune-agent",
        lambda u: ["--data", u.latents, "--world-model", u.world_model],
    ),
    "bc_baseline": ("finetune-agent", lambda u: ["--scratch", "--data", u.latents]),
    "train_policy": ("train-policy", lambda u: ["--data", u.latents, "--agent", u.agent]),
}


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_trains_under_precision(
    upstream: Upstream, stage: str, precision: str, tmp_path: Path
) -> None:
    command, inputs = STAGES[stage]
    code = upstream.run(command, precision, tmp_path, *map(str, inputs(upstream)))
    assert code == 0
    check_output(tmp_path, precision)


@pytest.mark.slow
def test_deepspeed_bf16_under_zero_0_1_and_3(upstream: Upstream, tmp_path: Path) -> None:
    """ZeRO 0 is DeepSpeed's BF16_Optimizer, whose checkpoint zero_to_fp32 cannot read: its
    export takes the fp32 master from the optimizer, and equals ZeRO 1's (same steps, same
    fp32 master; the bf16 weights would be off by bf16 rounding, ~1e-3)."""
    weights = {}
    for zero in (0, 1, 3):
        out = tmp_path / f"zero{zero}"
        data = ("--data", str(upstream.episodes))
        assert upstream.run("train-tokenizer", "bf16", out, *data, "--zero-stage", str(zero)) == 0
        check_output(out, "bf16")
        weights[zero], config = ckpt.load_exported(out / "model")
        assert config["train"]["zero_stage"] == zero
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[0][name], value, rtol=0, atol=1e-6, msg=name)
