"""`dreamer4 play` speed: server-side frames/s of one session per mode, at batch 1.

What one tick costs the server, as `dreamer4 play` runs it (`frame_message`: the session's
tick, the PNG and the JSON), on the model configs of a profile with random weights (speed does
not depend on them; latents and bottleneck from the profile's tokenizer). Game: real Crafter
step, tokenizer encode, agent pass. Dream: K shortcut steps + one commit pass of the world model,
decoder, agent pass. Side by side: both, plus PSNR and tile accuracy. Torch threads as the
server sets them (all cores, or `--threads`).

Then the wait a page sees at a reset or an episode's end, with the server's `WorldFactory`:
a new Crafter world made then (seconds of world generation), against the one the session
ordered at its last reset (`order_world`, made at nice 19 while the page played); each reset
after 40 Game ticks, 0.1 s apart. One page in Game mode leaves the cores mostly idle, so this
is the best case: with pages busy on both cores an order can be late, and the reset then
waits as long as without orders.

    python bench/play_speed.py [--profiles tiny small] [--ticks 100] [--threads 0] [--resets 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from dreamer4.agent import Agent, AgentConfig, policy_module
from dreamer4.dynamics import Dynamics, DynamicsConfig
from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS
from dreamer4.eval.agent_player import AgentPlayer
from dreamer4.params import load_profile
from dreamer4.play.server import frame_message
from dreamer4.play.session import MODES, PlayModels, PlaySession
from dreamer4.play.worlds import WorldFactory
from dreamer4.shortcut import ShortcutConfig
from dreamer4.tokenizer import Tokenizer, TokenizerConfig


def random_models(profile: str) -> PlayModels:
    """The models of `profile`'s configs with random weights, as `load_models` returns them."""
    params = load_profile(Path("params.yaml"), profile)
    tok_cfg = TokenizerConfig(
        **params["train_tokenizer"]["model"], resolution=params["ingest"]["resolution"]
    )
    dynamics = params["train_dynamics"]
    dyn_cfg = DynamicsConfig(
        **dynamics["model"],
        latents=tok_cfg.latents,
        bottleneck=tok_cfg.bottleneck,
        actions=(("crafter", "categorical", 17),),
    )
    shortcut = ShortcutConfig(**dynamics["shortcut"])
    sequence = dynamics["sequence"]
    agent = Agent(
        dyn_cfg, AgentConfig(tasks=CRAFTER_ACHIEVEMENTS, **params["finetune_agent"]["agent"])
    )
    module = policy_module(agent).eval()
    tokenizer = Tokenizer(tok_cfg).eval()
    player = AgentPlayer(
        tokenizer,
        agent,
        context_noise=shortcut.context_noise,
        context=int(params["train_policy"]["imagination"]["context_window"]),
        value=lambda h: module.value(h, 1)[:, 0],
    )
    return PlayModels(
        tokenizer=tokenizer,
        world_model=Dynamics(dyn_cfg).eval(),
        shortcut=shortcut,
        steps=int(params["play"]["steps"]) or shortcut.inference_steps,
        window=max(int(sequence["length"]), int(sequence.get("long_length") or 0)) - 1,
        player=player,
        tasks=CRAFTER_ACHIEVEMENTS,
    )


def reset_waits(models: PlayModels, resets: int) -> dict[str, list[float]]:
    """Seconds each `reset()` took, with and without the next world ordered ahead."""
    factory = WorldFactory(2)
    waits: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as inbox:
            for label, order in (("made at the reset", None), ("ordered ahead", factory.later)):
                session = PlaySession(
                    models, Path(inbox), seed=0, make_world=factory, order_world=order
                )
                waits[label] = []
                try:
                    for _ in range(resets):
                        for _ in range(40):
                            session.tick()
                            time.sleep(0.1)
                        start = time.perf_counter()
                        session.reset()
                        waits[label].append(time.perf_counter() - start)
                finally:
                    session.close()
    finally:
        factory.close()
    return waits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profiles", nargs="+", default=["tiny", "small"])
    p.add_argument("--ticks", type=int, default=100, help="timed ticks per mode")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--resets", type=int, default=3, help="timed resets each way (0: none)")
    args = p.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    print(f"{torch.get_num_threads()} torch threads, device cpu, batch 1")
    print("| profile | params (world model, agent, tokenizer) | K | " + " | ".join(MODES) + " |")
    for profile in args.profiles:
        models = random_models(profile)
        sizes = [
            sum(p.numel() for p in m.parameters()) / 1e6
            for m in (models.world_model, models.player.agent, models.tokenizer)
        ]
        with tempfile.TemporaryDirectory() as inbox:
            session = PlaySession(models, Path(inbox), seed=0)
            session.key("d", True)
            rates = []
            for mode in MODES:
                session.request("mode", mode)
                for _ in range(5):  # warm-up (and the tile classifier, built once)
                    frame_message(session)
                start = time.perf_counter()
                for _ in range(args.ticks):
                    frame_message(session)
                rates.append(args.ticks / (time.perf_counter() - start))
        shown = ", ".join(f"{s:.2f}M" for s in sizes)
        cells = " | ".join(f"{r:.1f} frames/s" for r in rates)
        print(f"| `{profile}` | {shown} | {models.steps} | {cells} |", flush=True)
    if args.resets:
        waits = reset_waits(random_models(args.profiles[0]), args.resets)
        for label, seconds in waits.items():
            print(f"reset, next world {label}: " + ", ".join(f"{w:.2f} s" for w in seconds))


if __name__ == "__main__":
    main()
