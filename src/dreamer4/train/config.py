"""Training-engine settings from params.yaml, and the DeepSpeed config built from them.

Every training stage reads the profile's `train` section (the engine settings every stage shares)
merged with the `train:` block of its own stage section, so a stage overrides only what differs;
every field comes from params.yaml (the defaults below serve direct use, e.g. tests).
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
LAUNCH_ONLY = frozenset({"nnodes", "rdzv_endpoint"})  # need not be in params.yaml


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
    # torchrun across nodes (`LAUNCH_ONLY`: a host's place in a cluster is not a hyperparameter,
    # so these come from the command line, params.yaml may but need not name them): the same
    # command on every node, which meet at the c10d rendezvous `rdzv_endpoint` (host:port)
    nnodes: int = 1
    rdzv_endpoint: str = ""
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9464  # Prometheus exporter on rank 0; None = off, 0 = any free port
    pushgateway: str | None = None  # e.g. http://127.0.0.1:9091 to push at each log and the end
    deepspeed_configs: str = "infra/deepspeed"  # zero<N>.json base configs (relative to the cwd)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the DeepSpeed config

    def __post_init__(self) -> None:
        if problems := self.problems(vars(self)):
            raise ParamsError(
                "train settings: " + "; ".join(f"{k} {rule}" for k, rule in problems.items())
            )

    @staticmethod
    def problems(values: dict[str, Any]) -> dict[str, str]:
        """Field → the rule its value breaks (values from params, checked before any rank starts:
        a negative lr must not surface as a traceback from every rank)."""
        rules: dict[str, tuple[Any, str]] = {
            "zero_stage": (lambda v: v in (0, 1, 2, 3), "must be 0-3"),
            "precision": (lambda v: v in PRECISIONS, f"must be one of {PRECISIONS}"),
            "launcher": (lambda v: v in LAUNCHERS, f"must be one of {LAUNCHERS}"),
            "lr": (lambda v: v > 0, "must be > 0"),
            "min_lr_ratio": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
            "weight_decay": (lambda v: v >= 0, "must be >= 0"),
            "eps": (lambda v: v > 0, "must be > 0"),
            "grad_clip": (lambda v: v > 0, "must be > 0"),
            "ema_decay": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
            "betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be 2 in [0, 1)"),
        }
        rules["rdzv_endpoint"] = (
            lambda v: v == "" or (":" in v and v.rsplit(":", 1)[1].isdigit()),
            "must be host:port (or empty on one node)",
        )
        if values.get("nnodes", 1) != 1:
            rules["launcher"] = (lambda v: v == "torchrun", "must be torchrun across nodes")
            rules["rdzv_endpoint"] = (
                lambda v: ":" in v and v.rsplit(":", 1)[1].isdigit(),
                "must be host:port across nodes (the rendezvous every node meets at)",
            )
        for name in ("steps", "micro_batch", "grad_accum", "nproc", "nnodes", "checkpoint_every"):
            rules[name] = (lambda v: int(v) == v and v >= 1, "must be an integer >= 1")
        for name in ("warmup_steps", "eval_every", "data_workers"):
            rules[name] = (lambda v: int(v) == v and v >= 0, "must be an integer >= 0")
        for name in ("keep_checkpoints", "log_every"):
            rules[name] = (lambda v: int(v) == v and v >= 1, "must be an integer >= 1")
        out = {}
        for name, (ok, rule) in rules.items():
            if name not in values:
                continue
            try:
                good = bool(ok(values[name]))
            except (TypeError, ValueError):
                good = False
            if not good:
                out[name] = f"= {values[name]!r}: {rule}"
        return out

    @classmethod
    def from_params(cls, *sections: Any, complete: bool = False, **overrides: Any) -> TrainConfig:
        """Merge params sections left to right (a `params.Section` names its keys in errors),
        then non-None overrides (command-line options). `complete`: every field must be given
        (a stage's settings come from params.yaml alone, not from the defaults here)."""
        known = {f.name for f in dataclasses.fields(cls)}
        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        cli = {k: v for k, v in overrides.items() if v is not None}
        for sec in (*sections, cli):
            where = getattr(sec, "where", "command line")
            source = getattr(sec, "source", "params")
            for key, value in (sec or {}).items():
                if key not in known:
                    raise ParamsError(
                        f"{source}: {where}.{key}: unknown train setting (known: {sorted(known)})"
                    )
                merged[key] = value
                origin[key] = f"{source}: {where}.{key}" if sec is not cli else f"--{key}"
        if complete and (missing := sorted(known - set(merged) - LAUNCH_ONLY)):
            where = getattr(sections[0], "where", "train") if sections else "train"
            raise ParamsError(f"train settings: {where}: missing keys {missing}")
        if "betas" in merged:
            merged["betas"] = tuple(merged["betas"])
        if problems := cls.problems(merged):
            raise ParamsError("; ".join(f"{origin[k]} {rule}" for k, rule in problems.items()))
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
