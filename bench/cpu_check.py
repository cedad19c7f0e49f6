"""Will `make run PROFILE=small` fit its 150 minutes on this machine? A three-minute check.

Hosts of one CPU type differ in speed: the reference run (c1a2584) took 131.5 minutes, another
2-core AMD EPYC of the same type ran the same tokenizer steps at 0.63× its speed. Until the
third session of 2026-12-07 this check timed the tokenizer's training step alone (one process,
then two at once, random frames) and scaled a reference host's stage rate by it. That predicted
229 minutes on a host whose real `train_tokenizer` then ran at about the reference run's speed: the
step alone does not see what two ranks, DeepSpeed, gloo, the data loader and the host's other
tenants cost there. So this runs the real thing: the profile's own `collect` (a few short
episodes), `ingest` and `train-tokenizer` commands, two ranks through torchrun as `dvc repro`
starts them, for the first `--steps` steps, in a temporary folder; then compares the minutes
from step 25 to the last step (the stage's `speed.tsv`) with the reference run's over the same
steps (its committed `speed.tsv`), and scales the whole profile's 131.5 minutes by that ratio
(every stage is assumed to slow down as the tokenizer does). The host's CPU steal time over the
measurement is printed too: a host shared with busy neighbours changes speed during a two-hour
run (the reference run's own 25-step windows ranged from 1.6 to 3.0 steps/s), which no three-minute
check can foresee. Read the prediction to ±15 %.

    python bench/cpu_check.py [--steps 300] [--profile small]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# The c1a2584 run's tokenizer (docs/results/small.md): its speed.tsv and the whole profile's time,
# one uninterrupted run on one host (the committed run after it started from a probe's checkpoint).
REFERENCE = ROOT / "docs/results/small-run-c1a2584/train_tokenizer/speed.tsv"
REFERENCE_MINUTES = 131.5
BUDGET_MINUTES = 150.0
FIRST = 25  # the first logged step: what comes before it is start-up, not speed


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), empty elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat: user … steal), zeros elsewhere."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return [0] * 8
    return [int(v) for v in stat.read_text().splitlines()[0].split()[1:9]]


def minutes_between(speed_tsv: Path, first: int, last: int) -> float:
    """Wall-clock minutes from step `first` to step `last` of a job's speed.tsv."""
    minutes = pd.read_csv(speed_tsv, sep="\t").set_index("step")["minutes"]
    for step in (first, last):
        if step not in minutes.index:
            raise SystemExit(f"{speed_tsv}: no row for step {step} (log_every divides it?)")
    return float(minutes[last] - minutes[first])


def dreamer4(*args: str) -> None:
    """One pipeline command, from the repository root (its params.yaml), output shown."""
    subprocess.run([sys.executable, "-m", "dreamer4.cli", *args], cwd=ROOT, check=True)


def measure(profile: str, steps: int, folder: Path) -> tuple[Path, float]:
    """Train the profile's tokenizer for `steps` steps on a few fresh episodes; its speed.tsv
    and the share of the CPU time the host stole meanwhile."""
    raw, data, inbox = folder / "raw", folder / "episodes", folder / "inbox"
    inbox.mkdir()
    dreamer4("collect", "--profile", profile, "--out", str(raw), "--inbox", str(inbox),
             "--episodes", "4", "--max-steps", "200", "--workers", "2")  # fmt: skip
    dreamer4("ingest", "--profile", profile, "--raw", str(raw), "--out", str(data))
    before = cpu_times()
    dreamer4("train-tokenizer", "--profile", profile, "--data", str(data),
             "--out", str(folder / "tokenizer"), "--metrics", str(folder / "metrics"),
             "--checkpoints", str(folder / "checkpoints"), "--steps", str(steps),
             "--metrics-port", "0")  # fmt: skip
    delta = [a - b for a, b in zip(cpu_times(), before, strict=True)]
    steal = delta[7] / max(1, sum(delta))
    return folder / "metrics" / "speed.tsv", steal


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="tokenizer steps (a multiple of 25)")
    p.add_argument("--profile", default="small")
    args = p.parse_args()
    flags = cpu_flags()
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    print(f"{platform.processor() or platform.machine()}, {vector}", flush=True)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cpu_check-") as tmp:
        speed, steal = measure(args.profile, args.steps, Path(tmp))
        here = minutes_between(speed, FIRST, args.steps)
    there = minutes_between(REFERENCE, FIRST, args.steps)
    rate = (args.steps - FIRST) / (60 * here)
    print(
        f"train_tokenizer steps {FIRST}→{args.steps}: {rate:.2f} steps/s here, "
        f"{(args.steps - FIRST) / (60 * there):.2f} in the reference run ({here / there:.2f}× its "
        f"time); CPU steal {100 * steal:.1f} %; the check took "
        f"{(time.perf_counter() - begin) / 60:.1f} min"
    )
    if args.profile != "small":
        return
    minutes = REFERENCE_MINUTES * here / there
    verdict = "fits" if minutes <= BUDGET_MINUTES else "does NOT fit"
    print(
        f"predicted: `make run PROFILE=small` in about {minutes:.0f} min: {verdict} the "
        f"{BUDGET_MINUTES:.0f}-minute budget"
    )


if __name__ == "__main__":
    main()
