"""World-model generation speed: interactive frames/s, imagination throughput, KV cache, K.

Measured side by side in one run, on the dynamics config of a profile (random weights: speed
does not depend on them):
- interactive: frames/s generating one frame at a time at batch 1, K=4, with the KV cache;
- imagination: frames/s (all sequences) at a large batch, K=4;
- "KV cache": wall time of a horizon-H rollout with the cache vs recomputing the whole context
  for every pass (`generate_without_cache`);
- "K=4 vs K=64": wall time of the same rollout with 4 and with k_max shortcut steps.

    python bench/world_model_speed.py [--profile tiny] [--horizon 64] [--batch 64] [--kv-batch 1 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dreamer4.dynamics import Dynamics, DynamicsConfig
from dreamer4.params import load_profile
from dreamer4.shortcut import generate, generate_without_cache


def timed(fn, repeat: int = 1) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profile", default="tiny")
    p.add_argument("--latents", type=int, nargs=2, default=(16, 8), help="N_b D_b")
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--horizon", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--kv-batch", type=int, nargs="+", default=[1], help="KV cache test batches")
    args = p.parse_args()
    params = load_profile(Path("params.yaml"), args.profile)
    model_params = params["train_dynamics"]["model"]
    cfg = DynamicsConfig(**model_params, latents=args.latents[0], bottleneck=args.latents[1])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Dynamics(cfg).to(device).eval()
    n = sum(p.numel() for p in model.parameters())
    print(
        f"profile {args.profile}: dynamics {n / 1e6:.2f}M params, {cfg.tokens} tokens/frame, "
        f"device {device}, {torch.get_num_threads()} threads"
    )

    def rollout(b: int, horizon: int, steps: int, cached: bool = True) -> float:
        context = torch.randn(b, args.context, *args.latents, device=device)
        actions = {
            name: torch.randint(0, n, (b, args.context + horizon), device=device)
            for name, _, n in cfg.actions
        }
        fn = generate if cached else generate_without_cache
        return timed(lambda: fn(model, context, actions, horizon, steps=steps))

    h = 16
    interactive = h / rollout(1, h, 4)
    imagination = args.batch * h / rollout(args.batch, h, 4)
    kv = {
        b: (rollout(b, args.horizon, 4), rollout(b, args.horizon, 4, cached=False))
        for b in args.kv_batch
    }
    k_max = rollout(1, h, cfg.k_max)
    k4 = h / interactive
    print(f"interactive, batch 1, K=4:           {interactive:8.1f} frames/s")
    print(f"imagination, batch {args.batch}, K=4:         {imagination:8.1f} frames/s")
    for b, (cached, recompute) in kv.items():
        print(
            f"KV cache, batch {b}, horizon {args.horizon}: {cached:.2f} s vs recompute "
            f"{recompute:.2f} s = {recompute / cached:.1f}x"
        )
    print(f"K=4 vs K={cfg.k_max}, horizon {h}: {k4:.2f} s vs {k_max:.2f} s = {k_max / k4:.1f}x")


if __name__ == "__main__":
    main()
