"""Training-engine settings from params.yaml, and the DeepSpeed config built from them.

Every training stage reads `profiles.<profile>.train` (engine defaults shared by the profile)
merged with the `train:` block of its own stage section, so a stage overrides only what differs.
The ZeRO-stage specifics live in `infra/deepspeed/zero<N>.json`; this module fills in what
comes from params (batch, optimizer, schedule, clipping, precision).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamer4.params import ParamsError

PRECISIONS = ("auto", "fp32", "bf16", "bf16-autocast")
LAUNCHERS = ("torchrun", "deepspeed", "none")


@dataclass(frozen=True)
class TrainConfig:
    """One training job's engine settings (optimizer steps, not micro-steps, count `steps`)."""

    steps: int = 100
    micro_batch: int = 8  # sequences per rank per micro-step
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to lr × this at the last step
    weight_decay: float = 0.01  # matrices only; norms, biases and embeddings are not decayed
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    zero_stage: int = 2
    # auto: bf16 weights on CUDA (DeepSpeed bf16, fp32 master copy); on a CPU with bf16 units
    # bf16 autocast over fp32 weights; else fp32.
    precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0  # steps between the job's held-out evaluations (0 = only at the end)
    data_workers: int = 1  # DataLoader worker processes per rank
    launcher: str = "torchrun"  # torchrun | deepspeed | none (in-process, one rank)
    nproc: int = 1  # processes per node
    hostfile: str | None = None  # deepspeed launcher only: multi-node
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9464  # Prometheus exporter on rank 0; None = off, 0 = any free port
    pushgateway: str | None = None  # e.g. http://127.0.0.1:9091 to push at each log and the end
    deepspeed_configs: str = "infra/deepspeed"  # zero<N>.json base configs (relative to the cwd)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the DeepSpeed config

    def __post_init__(self) -> None:
        problems = []
        if self.zero_stage not in (0, 1, 2, 3):
            problems.append(f"zero_stage must be 0-3, not {self.zero_stage}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.launcher not in LAUNCHERS:
            problems.append(f"launcher must be one of {LAUNCHERS}, not {self.launcher!r}")
        for name in ("steps", "micro_batch", "grad_accum", "nproc", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise ParamsError("train settings: " + "; ".join(problems))

    @classmethod
    def from_params(cls, *sections: dict[str, Any] | None, **overrides: Any) -> TrainConfig:
        """Merge params sections left to right, then non-None overrides (command-line options)."""
        known = {f.name for f in dataclasses.fields(cls)}
        merged: dict[str, Any] = {}
        for sec in (*sections, {k: v for k, v in overrides.items() if v is not None}):
            for key, value in (sec or {}).items():
                if key not in known:
                    raise ParamsError(
                        f"train settings: unknown key {key!r} (known: {sorted(known)})"
                    )
                merged[key] = value
        if "betas" in merged:
            merged["betas"] = tuple(merged["betas"])
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_precision(precision: str, cuda: bool, cpuinfo: str | None = None) -> str:
    """`auto`: bf16 on CUDA, bf16-autocast on a CPU with bf16 units (avx512_bf16/amx), else fp32.
    `cpuinfo`: the text of /proc/cpuinfo (read from there when None)."""
    if precision != "auto":
        return precision
    if cuda:
        return "bf16"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "fp32"
    return "bf16-autocast" if ("avx512_bf16" in cpuinfo or "amx_bf16" in cpuinfo) else "fp32"


def deepspeed_config(cfg: TrainConfig, precision: str) -> dict[str, Any]:
    """The DeepSpeed config: infra/deepspeed/zero<N>.json plus the settings from params."""
    base_file = Path(cfg.deepspeed_configs) / f"zero{cfg.zero_stage}.json"
    if not base_file.is_file():
        raise ParamsError(
            f"{base_file}: DeepSpeed base config for zero_stage {cfg.zero_stage} missing "
            "(run from the repository root, or set train.deepspeed_configs)"
        )
    ds = json.loads(base_file.read_text())
    ds.update(
        {
            "train_micro_batch_size_per_gpu": cfg.micro_batch,
            "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": cfg.grad_clip,
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": cfg.lr,
                    "betas": list(cfg.betas),
                    "eps": cfg.eps,
                    "weight_decay": cfg.weight_decay,
                    "torch_adam": True,  # torch's AdamW: no C++ extension to compile
                },
            },
            "scheduler": {
                "type": "WarmupCosineLR",
                "params": {
                    "total_num_steps": cfg.steps,
                    "warmup_num_steps": max(1, cfg.warmup_steps),
                    "warmup_type": "linear",
                    "warmup_min_ratio": 0.0,
                    "cos_min_ratio": cfg.min_lr_ratio,
                },
            },
            "bf16": {"enabled": precision == "bf16"},
        }
    )
    ds.update(cfg.extra)
    return ds
