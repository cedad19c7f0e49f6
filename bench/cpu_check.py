"""Will `make run PROFILE=small` fit its 150 minutes on this machine? A one-minute CPU check.

Machines of one CPU type differ in speed: on 2026-12-07 a 2-core AMD EPYC (Zen 3, AVX2) ran
the small profile's `train_tokenizer` at 1.61 steps/s where another host of the same type had
run it at 2.54 (steps 2,300 to 3,250, bit-identical results, nothing else running on either),
so the profile that took 131 minutes there would take about 200 here. Learn that before
starting a run, not two hours into it.

What it measures: the small profile's tokenizer training step (its `TokenizerJob.loss`: MAE
masking, MSE + LPIPS, AdamW) on a fixed random batch of the stage's per-rank size, in fp32,
one torch thread per process, as each of the stage's two ranks runs it: first one process
alone, then two at once (the two ranks; a pair of vCPUs that share a physical core shows here
as a large drop). Prints steps/s of each, and the predicted wall time of the whole profile,
scaled from a reference host by the two-process rate (every stage is assumed to slow down as
the tokenizer does; the tokenizer and the dynamics are 62 % of the profile's time). Two tries
a minute apart on one host differed by 12 %: read the prediction to ±15 %, enough to tell a
130- from a 200-minute host.

    python bench/cpu_check.py [--seconds 20] [--profile small]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import time
from pathlib import Path

import torch

from dreamer4.params import load_profile
from dreamer4.stages.train_tokenizer import TokenizerJob
from dreamer4.tokenizer import TokenizerConfig

# The reference: this check's two-process rate on the host of 2026-12-07, and what the full
# profile measured on hosts of that CPU type (steps 2,300 to 3,250 of `speed.tsv`): the final
# run's host ran the tokenizer stage at 2.54 steps/s and the whole profile in 131.5 min; the
# 2026-12-07 host ran the stage at 1.61 steps/s (that run was stopped at step 3,250 of 5,000).
# BENCHMARKS.md has both.
REFERENCE_PAIR_RATE = 2.15  # steps/s per process, two at once, there (2.29 and 2.02 in two tries)
REFERENCE_STAGE_RATE = 1.61  # the real stage's steps/s on that host
FINAL_RUN_STAGE_RATE, FINAL_RUN_MINUTES = 2.54, 131.5
BUDGET_MINUTES = 150.0


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), empty elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _rate(profile: str, seconds: float, start: mp.Barrier, out: mp.Queue) -> None:
    """Worker: steps/s of the profile's tokenizer training step, one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    params = load_profile(profile=profile)
    stage = params["train_tokenizer"]
    train = {**params["train"], **stage["train"]}
    cfg = TokenizerConfig(**{**stage["model"], "resolution": params["ingest"]["resolution"]})
    job = TokenizerJob(cfg, Path("."), Path("."), 0, 0.0)
    model = job.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = cfg.resolution
    batch = {
        "frames": torch.randint(0, 256, (train["micro_batch"], cfg.sequence, size, size, 3)),
        "independent": torch.zeros(train["micro_batch"], dtype=torch.bool),
    }

    def step() -> None:
        loss = job.loss(model, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: LPIPS weights, allocator
        step()
    start.wait()
    steps, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        step()
        steps += 1
    out.put(steps / (time.perf_counter() - begin))


def rates(profile: str, seconds: float, processes: int) -> list[float]:
    """steps/s of each of `processes` workers running at once."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=_rate, args=(profile, seconds, start, out)) for _ in range(processes)
    ]
    for w in workers:
        w.start()
    result = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    p.add_argument("--profile", default="small")
    args = p.parse_args()
    flags = cpu_flags()
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    print(f"{platform.processor() or platform.machine()}, {mp.cpu_count()} CPUs, {vector}")
    alone = rates(args.profile, args.seconds, 1)[0]
    pair = rates(args.profile, args.seconds, 2)
    mean = sum(pair) / len(pair)
    print(f"tokenizer step, one process alone:  {alone:.3f} steps/s")
    print(f"tokenizer step, two processes at once: {', '.join(f'{r:.3f}' for r in pair)} steps/s")
    print(f"two at once / alone: {mean / alone:.2f} (near 1: two real cores)")
    if args.profile != "small" or REFERENCE_PAIR_RATE <= 0:
        return
    stage = REFERENCE_STAGE_RATE * mean / REFERENCE_PAIR_RATE
    minutes = FINAL_RUN_MINUTES * FINAL_RUN_STAGE_RATE / stage
    verdict = "fits" if minutes <= BUDGET_MINUTES else "does NOT fit"
    print(
        f"predicted: the tokenizer stage at {stage:.2f} steps/s, `make run PROFILE=small` in "
        f"about {minutes:.0f} min: {verdict} the {BUDGET_MINUTES:.0f}-minute budget"
    )


if __name__ == "__main__":
    main()
