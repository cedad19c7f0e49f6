"""The training engine every training stage shares: DeepSpeed ZeRO, checkpoints, EMA, metrics.

A stage supplies a `Job` — its model, its loss and the sequences it reads — and calls
`train_stage`; everything else lives here: launching ranks, resuming, the DeepSpeed engine
(ZeRO 0-3, micro-batches, gradient accumulation, clipping, AdamW, warmup + cosine), bf16,
the EMA, atomic checkpoints, Prometheus metrics, DVC plots, and stopping cleanly on NaN or a
signal.

Precision: `bf16` is DeepSpeed's bf16 mode (bf16 weights and an fp32 master copy, for GPUs);
`bf16-autocast` keeps fp32 weights and runs matmuls in bf16 under `torch.autocast` (CPUs with
bf16 units, about 2.2x faster than fp32 on these machines). Both run the forward pass under
autocast, so a job's model never has to cast its inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from dreamer4.errors import StageError
from dreamer4.files import read_config
from dreamer4.params import Settings
from dreamer4.train import checkpoint as ckpt
from dreamer4.train.config import LAUNCH_ONLY, TrainConfig, deepspeed_config, resolve_precision
from dreamer4.train.ema import Ema
from dreamer4.train.launch import die_with_parent, in_worker, relaunch, single_process_env
from dreamer4.train.metrics import SPEED, Exporter, History
from dreamer4.train.sequences import SequenceSpec, sequence_loader

# Train settings that do not change what is learned: editing them keeps resuming.
OPERATIONAL = (
    "launcher",
    "hostfile",
    "rdzv_endpoint",
    "metrics_host",
    "metrics_port",
    "pushgateway",
    "data_workers",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
)


class Job:
    """What a training stage provides; the engine does the rest. A job sets `stage` (its
    dvc.yaml stage name, also the checkpoint and metrics folder name) and `spec` (the sequences
    it reads) and implements `config`, `build_model`, `loss` and `tokens`."""

    stage: str
    spec: SequenceSpec
    evaluate_with_ema = False  # `evaluate` with the EMA weights (what the sampler uses)

    def config(self) -> dict[str, Any]:
        """Model and loss settings: saved beside the weights and part of the fingerprint."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms for one micro-batch; key `loss` is what is minimised."""
        raise NotImplementedError

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Model tokens in one micro-batch (for tokens/s)."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
        """Torch param groups (a group's `lr` is its peak; the schedule scales every group
        alike): weight decay on matrices only, unless a job's parts learn at their own rates."""
        return decay_groups(model, cfg.weight_decay)

    def evaluate(self, model: nn.Module, final: bool) -> dict[str, float]:
        """Held-out metrics {name: value}, called on every rank (ZeRO-3 needs them all) every
        `eval_every` steps and at the end, in eval mode without gradients. Names say what they
        are (`tokenizer/psnr_heldout`); they go to the DVC plot and metrics and to Prometheus.
        With `final` the job may also write its artifacts (on rank 0, see `is_rank0`)."""
        return {}


def is_rank0() -> bool:
    """Rank 0 of a distributed job, or a process that is not part of one."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def draw_generator(model: nn.Module) -> torch.Generator:
    """A CPU generator seeded by the model's `draws` counter (then incremented): what every rank
    draws from it is the same, which ZeRO-3 needs where the draws decide how many forward
    passes run (each gathers parameters collectively). The counter is a buffer, so it is
    checkpointed and a resumed job goes on drawing where it stopped. See `add_draws`."""
    gen = torch.Generator().manual_seed(int(model.draws))
    model.draws += 1
    return gen


def add_draws(model: nn.Module) -> nn.Module:
    """Register the `draws` counter of `draw_generator` on `model`."""
    model.register_buffer("draws", torch.zeros((), dtype=torch.long))
    return model


# Per-window figures: in the DVC plot (or speed.tsv) and Prometheus, not in the final metrics.
SCALARS = ("grad_norm", "lr", *SPEED)


class NonFiniteLoss(StageError):
    """The loss became NaN or inf: training stops, the last good checkpoint stays."""


@dataclass(frozen=True)
class Paths:
    data: Path  # episode dataset (or latents)
    out: Path  # consolidated weights: the stage's DVC output
    metrics: Path  # train.tsv (DVC plot) and summary.json (DVC metrics)
    checkpoints: Path  # this job's resumable checkpoints (one folder per fingerprint)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options every training stage accepts (each overrides params.yaml)."""
    p.add_argument("--data", default=None, help="training data folder")
    p.add_argument("--out", default=None, help="output folder for the consolidated weights")
    p.add_argument("--metrics", default=None, help="folder for train.tsv and summary.json")
    p.add_argument("--checkpoints", default=None, help="root folder of resumable checkpoints")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--launcher", choices=("torchrun", "deepspeed", "none"), default=None)
    # `--nproc` abbreviates two of torchrun's options, which torchrun then refuses even after
    # the script it runs: the ranks get the full name (`relaunch_argv`)
    p.add_argument("--nproc-per-node", "--nproc", dest="nproc", type=int, default=None,
                   help="processes per node")  # fmt: skip
    p.add_argument("--nnodes", type=int, default=None, help="nodes (torchrun; default 1)")
    p.add_argument(
        "--rdzv-endpoint", default=None, help="host:port every node meets at (nnodes > 1)"
    )
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None)
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (0 = any)")
    p.add_argument("--fresh", action="store_true", help="discard this job's checkpoints first")


class TrainSettings(Settings):
    """A training stage's settings: the profile's `train` section under the stage's own `train:`
    block (stage `train` alone: the engine's reference job), then command-line options."""

    @classmethod
    def load(cls, args: argparse.Namespace, stage: str | None) -> TrainSettings:
        return super().load(args, stage or "train")

    def config(self, args: argparse.Namespace) -> TrainConfig:
        own = self.own.sub("train") if self.stage != "train" else None
        return TrainConfig.from_params(
            self.section("train"),
            own,
            complete=True,
            steps=args.steps,
            launcher=args.launcher,
            nproc=args.nproc,
            nnodes=args.nnodes,
            rdzv_endpoint=args.rdzv_endpoint,
            zero_stage=args.zero_stage,
            metrics_port=args.metrics_port,
            checkpoint_every=args.checkpoint_every,
        )

    def dataset(self, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
        """The episode dataset folder and its dataset.json."""
        data = self.path("episodes", args.data)
        return data, read_config(data, "dataset.json", "dreamer4 ingest")

    def job_paths(self, args: argparse.Namespace, data: Path, stage: str, out: Any) -> Paths:
        return Paths(
            data=data,
            out=Path(args.out or out),
            metrics=Path(args.metrics or f"metrics/{stage}"),
            checkpoints=self.path("checkpoints", args.checkpoints),
        )


def fingerprint(job: Job, cfg: TrainConfig, data: Path) -> str:
    """Identity of what a job learns: model, loss, learning settings, the code (every module of
    the package: a changed model or loss must not resume, let alone re-export, an old run) and
    the data (index files by content, array chunks by size and modification time)."""
    learning = {k: v for k, v in cfg.to_dict().items() if k not in OPERATIONAL}
    h = hashlib.sha256(
        json.dumps(
            [job.stage, job.config(), learning, str(job.spec)], sort_keys=True, default=str
        ).encode()
    )
    package = Path(__file__).resolve().parents[1]
    for source in sorted(package.rglob("*.py")):
        h.update(source.read_bytes())
    data = Path(data)
    for name in ("dataset.json", "latents.json", "steps.parquet"):
        if (data / name).is_file():
            h.update((data / name).read_bytes())
    for chunk in sorted(data.glob("*/chunk-*.npy")):
        stat = chunk.stat()
        h.update(f"{chunk.relative_to(data)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def train_stage(args: argparse.Namespace, job: Job, cfg: TrainConfig, paths: Paths) -> int:
    """Entry of a training stage: resume notice, launch the ranks, or (on a rank) train."""
    folder = paths.checkpoints / job.stage / fingerprint(job, cfg, paths.data)
    paths = Paths(paths.data, paths.out, paths.metrics, folder)
    if in_worker():
        die_with_parent()
        return fit(job, cfg, paths, announce=os.environ.get("DREAMER4_RESUME_ANNOUNCED") != "1")
    if args.fresh and folder.exists():  # every node of a run across nodes does this
        shutil.rmtree(folder, ignore_errors=True)
    step = ckpt.latest_step(folder)
    if step is not None:
        print(f"resumed from step {step}", flush=True)
    if cfg.launcher == "none":
        if cfg.nproc != 1:
            raise StageError(f"launcher none runs one process, but nproc is {cfg.nproc}")
        single_process_env()
        return fit(job, cfg, paths, announce=False)
    return relaunch(cfg, relaunch_argv(args._argv), step is not None, job.stage)


def relaunch_argv(argv: list[str]) -> list[str]:
    """The stage's command line for its ranks: without `--fresh` (done here, once), options
    spelled so that the launcher passes them on."""
    out = []
    for a in argv:
        if a == "--fresh":
            continue
        if a == "--nproc" or a.startswith("--nproc="):
            a = "--nproc-per-node" + a[len("--nproc") :]
        out.append(a)
    return out


class _StopFlag:
    """Set by SIGTERM/SIGINT; the ranks agree on it at the next step and checkpoint."""

    def __init__(self) -> None:
        self.signum = 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce op when it starts a backend.

    On the CPU accelerator `deepspeed.init_distributed` JIT-builds `deepspeed_shm_comm` (g++ and
    ninja, into ~/.cache/torch_extensions): 40-70 s on a 2-core machine the first time, and again
    whenever the venv's path changes (the build files name it). Only
    `inference_all_reduce` (tensor-parallel inference) uses that op; training's all-reduces go
    through torch.distributed (gloo) either way, so the build buys nothing here, and without it a
    machine without a C++ toolchain trains too. DeepSpeed reads `ops.__compatible_ops__` before
    building and keeps edits to it (deepspeed/ops/__init__.py).
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def fit(job: Job, cfg: TrainConfig, paths: Paths, announce: bool) -> int:
    """Train on this rank until `cfg.steps`; save, export and return the exit status."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # DeepSpeed is imported here and in the Trainer, never at module top: it chooses its
    # accelerator when first imported, so DS_ACCELERATOR must be set before (and the CLI's other
    # commands do not pay for the import).
    import deepspeed
    import torch.distributed as dist

    # Keep the console to the progress bar: DeepSpeed's info logs, its "lr before the first
    # step" warning at initialize, and a deprecation warning it triggers on every step.
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated")
    if not cuda:
        skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    trainer = Trainer(job, cfg, paths, cuda)
    try:
        return trainer.run(announce)
    finally:
        trainer.close()
        if dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """One rank's training loop around a DeepSpeed engine."""

    def __init__(self, job: Job, cfg: TrainConfig, paths: Paths, cuda: bool) -> None:
        import deepspeed
        import torch.distributed as dist

        self.job, self.cfg, self.paths, self.dist = job, cfg, paths, dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
        if cuda:
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(cfg.precision, cuda)
        torch.manual_seed(cfg.seed + self.rank)
        if self.rank == 0:
            paths.checkpoints.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partials(paths.checkpoints)
        dist.barrier()
        model = job.build_model()
        self.ds_config = deepspeed_config(cfg, self.precision)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=job.param_groups(model, cfg),
            config=self.ds_config,
        )
        self.zero3 = cfg.zero_stage == 3
        self.ema = Ema(self.engine.module, cfg.ema_decay, self.zero3)
        self.step, self.position = 0, 0
        self.loader_iter = None
        self.exporter = None

    # -- checkpoints -------------------------------------------------------------------------
    def resume(self) -> None:
        folder = self.paths.checkpoints
        tag = ckpt.latest_tag(folder)
        if tag is None:
            return
        self.engine.load_checkpoint(str(folder), tag=tag)
        state = ckpt.read_state(folder / tag)
        self.step, self.position = state["step"], state["data_position"]
        # DeepSpeed keeps one copy of the buffers (rank 0's, or shard 0's): put back this
        # rank's own (running loss normalisers, counters), which can differ from rank 0's.
        buffers = folder / tag / f"buffers-rank{self.rank}.safetensors"
        if buffers.is_file():
            ckpt.load_buffers(self.engine.module, ckpt.load_file(buffers))
        rng = folder / tag / f"rng-rank{self.rank}.safetensors"
        if rng.is_file():
            ckpt.set_rng_state(ckpt.load_file(rng))
        ema_file = (
            folder / tag / (f"ema-rank{self.rank}.safetensors" if self.zero3 else "ema.safetensors")
        )
        self.ema.load_local_state(
            {k: v.to(self.ema.shadow[0].device) for k, v in ckpt.load_file(ema_file).items()},
            state["ema_updates"],
        )

    def save(self) -> None:
        """Collective: every rank writes its shards into `<tag>.partial`, rank 0 publishes it."""
        folder, tag = self.paths.checkpoints, ckpt.tag_of(self.step)
        if (folder / tag / "state.json").is_file():
            return  # this step is saved already (a resumed job that had finished)
        partial = folder / f"{tag}.partial"
        self.engine.save_checkpoint(str(folder), tag=partial.name, save_latest=False)
        ckpt.save_tensors(partial / f"rng-rank{self.rank}.safetensors", ckpt.rng_state())
        if buffers := ckpt.persistent_buffers(self.engine.module):
            ckpt.save_tensors(partial / f"buffers-rank{self.rank}.safetensors", buffers)
        if self.zero3:
            ckpt.save_tensors(partial / f"ema-rank{self.rank}.safetensors", self.ema.local_state())
        elif self.rank == 0:
            ckpt.save_tensors(partial / "ema.safetensors", self.ema.local_state())
        self.dist.barrier()
        if self.rank == 0:
            state = {
                "step": self.step,
                "data_position": self.position,
                "ema_updates": self.ema.updates,
                "world_size": self.world,
                "samples": self.step * self.samples_per_step,
            }
            ckpt.atomic_write_text(partial / "state.json", json.dumps(state, indent=2) + "\n")
            os.replace(partial, folder / tag)
            ckpt.atomic_write_text(folder / "latest", tag)
            done = sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())
            for old in done[: -max(1, self.cfg.keep_checkpoints)]:
                shutil.rmtree(old)
        self.dist.barrier()

    # -- the loop ----------------------------------------------------------------------------
    @property
    def samples_per_step(self) -> int:
        return self.cfg.micro_batch * self.cfg.grad_accum * self.world

    def run(self, announce: bool) -> int:
        self.resume()
        if announce and self.rank == 0 and self.step:
            print(f"resumed from step {self.step}", flush=True)
        cfg, job = self.cfg, self.job
        loader = sequence_loader(
            self.paths.data,
            job.spec,
            cfg.micro_batch,
            cfg.seed,
            self.rank,
            self.position,
            cfg.data_workers,
        )
        self.loader_iter = iter(loader)
        history = None
        if self.rank == 0:
            history = History(self.paths.metrics, self.step)
            self.exporter = Exporter(job.stage, cfg.metrics_host, cfg.metrics_port, cfg.pushgateway)
            if self.exporter.url:
                print(f"metrics at {self.exporter.url}", flush=True)
        self._clock = time.perf_counter() - 60 * (history.minutes() if history else 0.0)
        stop = _StopFlag()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=job.stage,
            disable=self.rank != 0,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
        )
        window = _Window()
        last: dict[str, float] = {}
        while self.step < cfg.steps:
            for micro in range(cfg.grad_accum):
                t0 = time.perf_counter()
                batch = self._to_device(next(self.loader_iter))
                window.data_wait += time.perf_counter() - t0
                ckpt.seed_micro_step(cfg.seed, self.rank, self.position)
                if micro == 0:  # a stop saves the state before this step: keep its buffers
                    before = ckpt.copy_buffers(self.engine.module)
                with self._autocast():
                    terms = job.loss(self.engine.module, batch)
                loss = terms["loss"]
                flags = torch.tensor(
                    [float(stop.signum), float(not torch.isfinite(loss.detach()))],
                    device=loss.device,
                )
                self.dist.all_reduce(flags, op=self.dist.ReduceOp.MAX)
                if flags[1] > 0:
                    raise NonFiniteLoss(self._nonfinite_message(terms))
                if flags[0] > 0 and micro == 0:
                    ckpt.load_buffers(self.engine.module, before)  # undo this loss's updates
                    self.save()
                    bar.close()
                    if self.rank == 0:
                        print(
                            f"stopped by signal at step {self.step}; checkpoint saved in "
                            f"{self.paths.checkpoints}",
                            flush=True,
                        )
                    return 128 + int(flags[0].item())
                self.engine.backward(loss)
                self.engine.step()
                self.position += 1
                window.add_terms(terms, job.tokens(batch))
            self.step += 1
            self.ema.update()
            bar.update(1)
            evals = self._evaluate() if self._eval_due() else {}
            if self.step % cfg.log_every == 0 or self.step == cfg.steps or evals:
                last = self._log(window, history, bar, evals)
                window = _Window()
            if self.step % cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        self.save()
        if not last:  # resumed after the last step: nothing trained, report the final state
            last = {**(history.rows[-1] if history and history.rows else {}), **self._evaluate()}
        self._export(last)
        return 0

    def _eval_due(self) -> bool:
        every = self.cfg.eval_every
        return self.step == self.cfg.steps or (every > 0 and self.step % every == 0)

    def _evaluate(self) -> dict[str, float]:
        """The job's held-out metrics (all ranks call it; rank 0's values are recorded)."""
        module = self.engine.module
        module.eval()
        weights = self.ema.applied() if self.job.evaluate_with_ema else nullcontext()
        try:
            with torch.no_grad(), self._autocast(), weights:
                return {
                    k: float(v)
                    for k, v in self.job.evaluate(module, final=self.step == self.cfg.steps).items()
                }
        finally:
            module.train()

    def _log(
        self, window: _Window, history: Any, bar: Any, evals: dict[str, float]
    ) -> dict[str, float]:
        """Mean loss terms over ranks and the window; rank 0 exports and records them."""
        names = sorted(window.sums)
        self._rank_log(window.sums.get("loss", 0.0) / max(1, window.count))
        values = torch.tensor(
            [window.sums[n] / max(1, window.count) for n in names]
            + [window.data_wait, window.tokens],
            dtype=torch.float64,
        )
        if self.device is not None:
            values = values.to(self.device)
        self.dist.all_reduce(values)
        values = values.cpu().tolist()
        losses = {n: v / self.world for n, v in zip(names, values, strict=False)}
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        steps = window.count / self.cfg.grad_accum
        norm = self.engine.get_global_grad_norm()
        scalars = {
            "grad_norm": float(norm) if norm is not None else None,
            "lr": float(self.engine.get_lr()[0]),
            "steps_per_second": steps / elapsed,
            "samples_per_second": steps * self.samples_per_step / elapsed,
            "tokens_per_second": values[-1] / elapsed,
            "data_wait": values[-2] / self.world / max(steps, 1e-9),
            "gpu_memory": torch.cuda.max_memory_allocated() if self.device is not None else None,
            "minutes": (time.perf_counter() - self._clock) / 60,
        }
        row = {
            "step": self.step,
            **{f"loss/{k}": v for k, v in losses.items()},
            **{k: v for k, v in scalars.items() if v is not None},
            **evals,
        }
        if self.rank == 0:
            self.exporter.update(self.step, losses, scalars, evals)
            history.append(row)
            bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.4g}")
        return row

    def _rank_log(self, loss: float) -> None:
        """Each rank's own loss (before averaging), to see ranks diverge: `ranks/rank<r>.jsonl`
        in the job's checkpoint folder (run-local diagnostics, not a versioned metric)."""
        folder = self.paths.checkpoints / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"rank{self.rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "loss": loss}) + "\n")

    def _export(self, last: dict[str, float]) -> None:
        """Consolidated fp32 weights + EMA + config into the stage output (rank 0 writes)."""
        weights = self._full_weights()
        ema = self.ema.full_state()
        if self.rank == 0:
            # buffers and frozen parameters (bf16 under DeepSpeed bf16): fp32, as model.safetensors
            buffers = {
                k: v.float() if v.is_floating_point() else v
                for k, v in weights.items()
                if k not in ema
            }
            config = {
                "stage": self.job.stage,
                "model": self.job.config(),
                # how it learned; where it ran (nodes, rendezvous) is in world_size alone
                "train": {k: v for k, v in self.cfg.to_dict().items() if k not in LAUNCH_ONLY},
                "precision": self.precision,
                "world_size": self.world,
                "steps": self.step,
                "samples": self.step * self.samples_per_step,
                "data": str(self.paths.data),
            }
            ckpt.export(self.paths.out, weights, {**ema, **buffers}, config)
            History(self.paths.metrics, self.step).summary(
                {k: v for k, v in last.items() if k not in SCALARS}
            )
        self.dist.barrier()

    def _full_weights(self) -> dict[str, torch.Tensor]:
        module = self.engine.module
        if self.precision == "bf16" and self.cfg.zero_stage == 0:
            # DeepSpeed's BF16_Optimizer, whose checkpoint zero_to_fp32 cannot read (no
            # param_shapes): the fp32 master of each trained parameter, frozen ones as they are
            from deepspeed.utils import safe_get_full_fp32_param

            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, p in module.named_parameters():
                if (master := safe_get_full_fp32_param(p)) is not None:
                    state[name] = master.detach().clone()
            return state
        if self.precision == "bf16":  # the fp32 master copy lives in the optimizer shards
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            self.dist.barrier()
            return (
                get_fp32_state_dict_from_zero_checkpoint(
                    str(self.paths.checkpoints), tag=ckpt.tag_of(self.step)
                )
                if self.rank == 0
                else {}
            )
        if self.zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                return {k: v.detach().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    # -- helpers -----------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device is None:
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _autocast(self) -> Any:
        if self.precision in ("bf16", "bf16-autocast"):
            return torch.autocast(
                "cuda" if self.device is not None else "cpu", dtype=torch.bfloat16
            )
        return nullcontext()

    def _nonfinite_message(self, terms: dict[str, torch.Tensor]) -> str:
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        last = ckpt.latest_tag(self.paths.checkpoints)
        kept = (
            f"last good checkpoint {self.paths.checkpoints / last} kept"
            if last
            else "no checkpoint had been saved yet"
        )
        return (
            f"{self.job.stage}: non-finite loss at step {self.step + 1} on some rank "
            f"(rank {self.rank}: {values}); training stopped, {kept}"
        )

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
        self.loader_iter = None
        self.engine = None


class _Window:
    """Sums over the micro-steps since the last log."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.sums: dict[str, float] = {}
        self.count = 0
        self.tokens = 0
        self.data_wait = 0.0

    def add_terms(self, terms: dict[str, torch.Tensor], tokens: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.count += 1
        self.tokens += tokens


def decay_groups(model: nn.Module, weight_decay: float, **extra: Any) -> list[dict[str, Any]]:
    """Decay matrices only: norms, biases and embedding tables keep their scale. `extra` (e.g.
    `lr`) goes into both groups."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else keep).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, **extra},
        {"params": keep, "weight_decay": 0.0, **extra},
    ]
