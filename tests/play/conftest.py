"""Model folders for the play tests: random weights in the layouts the training stages export
(what `dreamer4 play` loads), small enough that a session ticks in milliseconds."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from dreamer4.agent import Agent, AgentConfig, policy_module
from dreamer4.dynamics import Dynamics, DynamicsConfig
from dreamer4.episodes.actions import CRAFTER_ACHIEVEMENTS
from dreamer4.shortcut import ShortcutConfig
from dreamer4.tokenizer import Tokenizer, TokenizerConfig
from dreamer4.train.checkpoint import export

TOKENIZER = TokenizerConfig(
    resolution=32, patch=8, latents=4, bottleneck=4, width=16, depth=1, decoder_depth=1,
    heads=2, time_every=1, sequence=4,
)  # fmt: skip
DYNAMICS = DynamicsConfig(
    latents=4, bottleneck=4, pack=2, width=16, depth=2, heads=2, time_every=2, registers=1,
    k_max=8, actions=(("crafter", "categorical", 17),),
)  # fmt: skip


def export_play_models(root: Path) -> dict[str, Path]:
    """tokenizer/, world_model/ and policy/ folders under `root` (seeded: the same each time)."""
    torch.manual_seed(0)
    shortcut = asdict(ShortcutConfig())
    folders = {name: root / name for name in ("tokenizer", "world_model", "policy")}
    tok = Tokenizer(TOKENIZER)
    state = tok.state_dict()
    export(folders["tokenizer"], state, state, {"model": asdict(TOKENIZER)})
    world = Dynamics(DYNAMICS)
    state = {f"dynamics.{k}": v for k, v in world.state_dict().items()}
    model = {"model": asdict(DYNAMICS), "shortcut": shortcut, "sequence": {"length": 4}}
    export(folders["world_model"], state, state, {"model": model})
    agent = Agent(DYNAMICS, AgentConfig(tasks=CRAFTER_ACHIEVEMENTS, mtp=2, bins=41))
    module = policy_module(agent)
    state = module.state_dict()
    model = {
        "dynamics": asdict(DYNAMICS),
        "agent": asdict(agent.cfg),
        "shortcut": shortcut,
        "imagination": {"context_window": 3},
    }
    export(folders["policy"], state, state, {"model": model})
    return folders


@pytest.fixture(scope="session")
def play_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_play_models(tmp_path_factory.mktemp("play_models"))
