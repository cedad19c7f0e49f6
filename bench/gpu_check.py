"""One-shot GPU check of the world model: training speed and MFU, interactive FPS, KV cache, K.

Run through `bench/gpu_check.sh` (it finds a Python with torch and DeepSpeed first). For the
dynamics configs of the `crafter` and `minecraft` profiles (params.yaml, random weights: speed
does not depend on them) it measures:

- DeepSpeed training steps/s: `deepspeed.initialize` on one rank (no launcher), the profile's
  ZeRO stage and precision (`auto` = DeepSpeed bf16 on CUDA), the profile's micro-batch of
  T1-frame sequences of random latents, the real loss (`WorldModelJob.loss`: shortcut forcing
  with its no-grad bootstrap passes). Warm-up steps first, then steps for a fixed time.
- MFU: model matmul FLOPs per step over step time over the GPU's peak dense bf16 FLOP/s (989
  TFLOP/s for H100 SXM and H200; `--peak-tflops` for others). Counted per `Dynamics` forward
  (a hook): 2 FLOPs per matmul weight per token plus attention (4 · width per query per key;
  space layers: every key of the step, time layers: the causal keys), times 3 for passes with
  gradients (forward + backward), times 1 for the bootstrap targets' no-grad passes. The cell
  also gives the forward + backward share alone (the usual 6 · params · tokens).
- Interactive FPS: `dreamer4.shortcut.generate` (frame by frame, KV cache) at batch 1, K=4,
  after the profile's rollout context, under bf16 autocast on CUDA; with the tokenizer's
  frame-by-frame decode (`decode_stream`) added in a second row.
- KV cache: the same rollout by `generate_without_cache` over `generate` (wall-time ratio).
- K: the same rollout with K=k_max (64) over K=4.

Each part (train or generate, per config) runs in its own process under a time bound, so a
crash, out-of-memory or hang fills its cells with the error and the others go on. The table is
printed and, with $OUT set (or --out), written to gpu_check.md beside gpu_check.log (every
part's output).

    python bench/gpu_check.py [--smoke] [--budget 420] [--parts train:crafter,generate:minecraft]

`--smoke`: the same code on shrunken configs (width 64, one time layer, k_max 16, 2 × 4 frames,
horizon 2), CPU allowed, in seconds: checks the script, measures nothing meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

COLUMNS = ("crafter", "minecraft")  # params.yaml profiles whose dynamics configs are measured
PARTS = {"train": ("steps", "tokens", "mfu"), "generate": ("fps", "decode", "kv", "k")}
WEIGHTS = {"crafter": 2, "minecraft": 3}  # shares of the time budget per part, by config
ROWS = {
    "model": "dynamics model",
    "steps": "DeepSpeed training steps/s",
    "tokens": "training tokens/s",
    "mfu": "MFU (model matmul FLOPs / step time / peak)",
    "fps": "interactive FPS, batch 1, K=4, KV cache",
    "decode": "interactive FPS incl. tokenizer decode",
    "kv": "KV-cache speedup (generate_without_cache / generate)",
    "k": "K=k_max vs K=4 (wall time ratio)",
}
# Dense bf16 peaks by device name (first match): the issue takes 989 for H100 SXM and H200.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)
WARMUP_STEPS = 3


# -- configs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """What one column measures, from `profiles.<name>` of params.yaml."""

    dyn: Any  # DynamicsConfig
    shortcut: Any  # ShortcutConfig
    tok: Any  # TokenizerConfig
    train: Any  # TrainConfig (profile `train` merged with `train_dynamics.train`)
    length: int  # T1: frames per training sequence
    image_fraction: float
    unlabelled: float
    context: int  # rollout context (frames)
    horizon: int  # frames generated per timed rollout


def shrink(model: dict[str, Any]) -> dict[str, Any]:
    """A model section at smoke size: width 64, one time layer, GQA kept where it was used."""
    every = int(model.get("time_every", 4))
    small = {**model, "width": 64, "heads": 4, "kv_heads": 2 if model.get("kv_heads") else None}
    return {
        **small,
        "depth": every,
        **({"decoder_depth": every} if "decoder_depth" in model else {}),
    }


def load_setup(name: str, smoke: bool, params: Path = Path("params.yaml")) -> Setup:

    from dreamer4.dynamics import DynamicsConfig, action_spec
    from dreamer4.episodes.actions import CRAFTER_SPACE, VPT_SPACE
    from dreamer4.params import known_keys, load_profile
    from dreamer4.shortcut import ShortcutConfig
    from dreamer4.tokenizer import TokenizerConfig
    from dreamer4.train.config import TrainConfig

    prof = load_profile(params, name)
    own, tok_model = prof["train_dynamics"], dict(prof["train_tokenizer"]["model"])
    dyn_model = dict(own["model"])
    if smoke:  # k_max 16: the K=k_max rollout in seconds on a CPU
        dyn_model, tok_model = {**shrink(dyn_model), "k_max": 16}, shrink(tok_model)
    tok = TokenizerConfig(
        resolution=prof["ingest"]["resolution"],
        **known_keys(TokenizerConfig, tok_model, f"profiles.{name}.train_tokenizer.model"),
    )
    space = VPT_SPACE if prof["collect"].get("env") in ("vpt", "minerl") else CRAFTER_SPACE
    dyn = DynamicsConfig(
        **known_keys(DynamicsConfig, dyn_model, f"profiles.{name}.train_dynamics.model"),
        latents=tok.latents,
        bottleneck=tok.bottleneck,
        actions=action_spec(space),
    )
    train = TrainConfig.from_params(prof.get("train"), own.get("train"), metrics_port=None)
    seq, rollout = own.get("sequence", {}), own.get("rollout", {})
    setup = Setup(
        dyn=dyn,
        shortcut=ShortcutConfig(**own.get("shortcut", {})),
        tok=tok,
        train=train,
        length=int(seq.get("length", 8)),
        image_fraction=float(seq.get("image_fraction", 0.0)),
        unlabelled=float(own.get("unlabelled_fraction", 0.1)),
        context=int(rollout.get("context", 8)),
        horizon=16,
    )
    if smoke:
        setup = replace(setup, train=replace(train, micro_batch=2), length=4, context=4, horizon=2)
    return setup


# -- model FLOPs -------------------------------------------------------------------------------
class FlopCounter:
    """Matmul FLOPs of every forward of a `Dynamics` (a forward hook; see the module docstring).
    `grad`: passes with gradients, forward + backward (3 × forward); `nograd`: the others."""

    def __init__(self, model: Any) -> None:
        self.cfg, self.matmul_params = model.cfg, matmul_params(model)
        self.grad = self.nograd = 0.0
        model.register_forward_hook(self._count)

    def forward(self, b: int, t: int) -> float:
        cfg = self.cfg
        s = cfg.tokens
        time_layers = cfg.transformer().time_layers
        keys = (cfg.depth - time_layers) * s + time_layers * (t + 1) / 2  # per query, all layers
        return b * t * s * (2.0 * self.matmul_params + 4.0 * cfg.width * keys)

    def _count(self, _module: Any, args: tuple[Any, ...], _output: Any) -> None:
        import torch

        b, t = args[0].shape[:2]
        if torch.is_grad_enabled():
            self.grad += 3 * self.forward(b, t)
        else:
            self.nograd += self.forward(b, t)


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for key, peak in PEAK_TFLOPS if key in device), None)


def matmul_params(model: Any) -> int:
    """Weights that multiply activations (every `nn.Linear`; embedding lookups are no matmul)."""
    from torch import nn

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def describe(model: Any) -> str:
    cfg = model.cfg
    n = sum(p.numel() for p in model.parameters())
    kv = f", kv_heads {cfg.kv_heads}" if cfg.kv_heads else ""
    return (
        f"{n / 1e6:.1f}M params ({matmul_params(model) / 1e6:.1f}M in matmuls), width "
        f"{cfg.width}, depth {cfg.depth}, heads {cfg.heads}{kv}, {cfg.tokens} tokens/frame"
    )


# -- the parts (each in its own process) -------------------------------------------------------
class Report:
    """A part's cells, rewritten to its result file after each measurement (so a part stopped
    at its time bound still returns what it had)."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {"cells": {}, "info": {}}

    def __call__(self, **cells: str) -> None:
        self.data["cells"].update(cells)
        self.write()

    def info(self, **info: str) -> None:
        self.data["info"].update(info)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def lowp(device: str, precision: str) -> Any:
    """The forward's autocast, as the training engine runs it."""
    from contextlib import nullcontext

    import torch

    if precision in ("bf16", "bf16-autocast"):
        return torch.autocast(device, dtype=torch.bfloat16)
    return nullcontext()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def environment(report: Report, args: argparse.Namespace) -> str:
    import torch

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    report.info(
        device=device,
        torch=f"{torch.__version__} (CUDA {torch.version.cuda})" if cuda else torch.__version__,
    )
    if not cuda and not args.smoke:
        raise RuntimeError("no CUDA device visible to torch (use --smoke to run on CPU)")
    return "cuda" if cuda else "cpu"


def train_part(setup: Setup, args: argparse.Namespace, report: Report) -> None:
    device = environment(report, args)
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    import deepspeed
    import torch

    from dreamer4.stages.train_dynamics import WorldModelJob
    from dreamer4.train.config import deepspeed_config, resolve_precision
    from dreamer4.train.engine import decay_groups, skip_shm_comm_build
    from dreamer4.train.launch import single_process_env

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    report.info(deepspeed=deepspeed.__version__)
    cfg = setup.train
    precision = resolve_precision(cfg.precision, device == "cuda")
    single_process_env()
    if device != "cuda":
        skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", verbose=False)
    job = WorldModelJob(
        model_cfg=setup.dyn,
        shortcut=setup.shortcut,
        spec=None,  # the loss reads the batch it is given; no dataset here
        unlabelled=setup.unlabelled,
        rollout={},
        data=Path(),
        episodes=Path(),
        tokenizer=Path(),
        metrics=Path(),
    )
    model = job.build_model()
    counter = FlopCounter(model.dynamics)
    report(model=describe(model.dynamics))
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=decay_groups(model, cfg.weight_decay),
        config=deepspeed_config(cfg, precision),
    )
    b, t, dyn = cfg.micro_batch, setup.length, setup.dyn
    at = engine.device
    batch = {
        "latents": torch.rand(b, t, dyn.latents, dyn.bottleneck, device=at) * 2 - 1,
        "independent": torch.rand(b, device=at) < setup.image_fraction,
        **{f"action/{a}": torch.randint(0, n, (b, t), device=at) for a, _, n in dyn.actions},
    }

    def step() -> None:
        with lowp(device, precision):
            loss = job.loss(engine.module, batch)["loss"]
        engine.backward(loss)
        engine.step()

    for _ in range(WARMUP_STEPS):
        step()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    counter.grad = counter.nograd = 0.0
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < args.seconds:
        step()
        steps += 1
    sync(device)
    elapsed = time.perf_counter() - start
    memory = (
        f"; {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak" if device == "cuda" else ""
    )
    report(
        steps=f"{steps / elapsed:.2f} steps/s ({b} × {t} frames, ZeRO-{cfg.zero_stage}, "
        f"{precision}, 1 rank, {steps} steps timed)",
        tokens=f"{steps * job.tokens(batch) / elapsed:,.0f} tokens/s{memory}",
    )
    achieved = (counter.grad + counter.nograd) / elapsed / 1e12
    peak = peak_tflops(report.data["info"]["device"], args.peak_tflops)
    if peak is None:
        report(mfu=f"n/a: no peak known for this device ({achieved:.3g} TFLOP/s achieved)")
    else:
        grad_only = counter.grad / elapsed / 1e12
        report(
            mfu=f"{100 * achieved / peak:.1f} % ({achieved:.0f} of {peak:.0f} TFLOP/s); "
            f"forward + backward alone {100 * grad_only / peak:.1f} %"
        )
    torch.distributed.destroy_process_group()


def generate_part(setup: Setup, args: argparse.Namespace, report: Report) -> None:
    device = environment(report, args)
    import torch
    from world_model_speed import timed  # bench/ is the script's folder, on sys.path

    from dreamer4.dynamics import Dynamics
    from dreamer4.shortcut import generate, generate_without_cache
    from dreamer4.tokenizer import Tokenizer

    precision = "bf16" if device == "cuda" else "fp32"
    dyn, c, h = setup.dyn, setup.context, setup.horizon
    model = Dynamics(dyn).to(device).eval()
    tok = Tokenizer(setup.tok).to(device).eval()
    report(model=describe(model))
    context = torch.rand(1, c, dyn.latents, dyn.bottleneck, device=device) * 2 - 1
    actions = {a: torch.randint(0, n, (1, c + h), device=device) for a, _, n in dyn.actions}
    frames: dict[str, Any] = {}

    def seconds(fn: Any) -> float:
        def run() -> None:
            with torch.no_grad(), lowp(device, precision):
                frames["last"] = fn()
            sync(device)

        return timed(run)

    def rollout(steps: int, cached: bool = True) -> float:
        fn = generate if cached else generate_without_cache
        return seconds(lambda: fn(model, context, actions, h, steps=steps, cfg=setup.shortcut))

    where = f"context {c}, {h} frames, {precision}"
    k4 = rollout(4)
    report(fps=f"{h / k4:.1f} frames/s ({where})")
    z = frames["last"]
    decode = seconds(lambda: tok.decode_stream(z))
    res = setup.tok.resolution
    report(decode=f"{h / (k4 + decode):.1f} frames/s (decode {1e3 * decode / h:.1f} ms of {res}²)")
    recompute = rollout(4, cached=False)
    report(kv=f"{recompute / k4:.1f}× (recompute {recompute:.2f} s, cache {k4:.2f} s; {where})")
    fine = rollout(dyn.k_max)
    report(k=f"{fine / k4:.1f}× (K={dyn.k_max} {fine:.2f} s, K=4 {k4:.2f} s; {where})")


def run_part(args: argparse.Namespace) -> int:
    report = Report(Path(args.result))
    try:
        setup = load_setup(args.config, args.smoke)
        (train_part if args.part == "train" else generate_part)(setup, args, report)
    except BaseException as e:
        report.data["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")
        report.write()
        raise
    return 0


# -- the parent: runs the parts, prints the table ----------------------------------------------
def spawn(part: str, config: str, args: argparse.Namespace, bound: float, log: Any) -> dict:
    """Run one part in its own process group, killed at `bound` seconds; its result file."""
    timed = args.seconds or (1.0 if args.smoke else min(20.0, bound / 5))
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--part", part, "--config", config]
        cmd += ["--result", str(result), "--seconds", f"{timed:.1f}"]
        cmd += ["--peak-tflops", str(args.peak_tflops), *["--smoke"] * args.smoke]
        log.write(f"\n===== {part} {config} (bound {bound:.0f} s): {' '.join(cmd)}\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        try:
            code: int | str = proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = f"timed out after {bound:.0f} s"
        data = json.loads(result.read_text()) if result.is_file() else {"cells": {}, "info": {}}
    if code != 0 and not data.get("error"):
        data["error"] = code if isinstance(code, str) else f"exit status {code}"
    return data


def table(cells: dict[str, dict[str, str]]) -> str:
    """Markdown: a row per measurement (those of the parts that ran), a column per config."""
    lines = [f"| | {' | '.join(cells)} |", "|---" * (len(cells) + 1) + "|"]
    for key, label in ROWS.items():
        row = [c.get(key, "") for c in cells.values()]
        if any(row):
            lines.append(f"| {label} | {' | '.join(row)} |")
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> int:
    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    wanted = [tuple(p.split(":", 1)) for p in args.parts.split(",")]
    if bad := [":".join(w) for w in wanted if len(w) != 2 or w[0] not in PARTS]:
        raise SystemExit(f"--parts: not part:profile with part in {tuple(PARTS)}: {bad}")
    cells: dict[str, dict[str, str]] = {config: {} for _, config in wanted}
    info: dict[str, str] = {}
    times = []
    start = time.monotonic()
    with open(out / "gpu_check.log", "w") as log:
        for i, (part, config) in enumerate(wanted):
            left = args.budget - (time.monotonic() - start)
            share = WEIGHTS.get(config, 2) / sum(WEIGHTS.get(c, 2) for _, c in wanted[i:])
            if left < 5:
                cells[config][PARTS[part][0]] = "skipped: time budget spent"
                continue
            t0 = time.monotonic()
            data = spawn(part, config, args, left * share, log)
            times.append(f"{part} {config} {time.monotonic() - t0:.0f} s")
            info.update(data["info"])
            for key, text in data["cells"].items():
                cells[config].setdefault(key, text)
            missing = [k for k in PARTS[part] if k not in cells[config]]
            for j, key in enumerate(missing):  # the error once, in the part's first empty row
                cells[config][key] = f"error: {data['error'][:200]}" if j == 0 else "–"
    device = info.get("device", "?")
    kind = "smoke run, shrunken configs: checks the script, not a measurement" if args.smoke else ""
    text = "\n".join(
        [
            f"GPU check{f' ({kind})' if kind else ''}, {time.strftime('%Y-%m-%d %H:%M')}: "
            f"{device}, torch {info.get('torch', '?')}, deepspeed {info.get('deepspeed', '?')}.",
            "Columns: the dynamics config of params.yaml `profiles.<column>.train_dynamics.model` "
            "(random weights). MFU peak: "
            f"{peak_tflops(device, args.peak_tflops) or 'unknown'} TFLOP/s (bf16 dense).",
            "",
            table(cells),
            "",
            f"Part wall times: {', '.join(times)}. Log: {out / 'gpu_check.log'}",
            "",
        ]
    )
    print(text)
    (out / "gpu_check.md").write_text(text)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes, CPU allowed (checks the script)"
    )
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all parts together")
    p.add_argument(
        "--parts",
        default=",".join(f"{part}:{c}" for part in PARTS for c in COLUMNS),
        help="comma-separated part:profile (part: train | generate)",
    )
    p.add_argument(
        "--seconds", type=float, default=0.0, help="timed training per config (0: from the bound)"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="peak bf16 dense TFLOP/s (default: by GPU name)",
    )
    p.add_argument(
        "--out", default=None, help="folder for gpu_check.md and gpu_check.log (default $OUT)"
    )
    p.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.exit(run_part(args) if args.part else orchestrate(args))


if __name__ == "__main__":
    main()
