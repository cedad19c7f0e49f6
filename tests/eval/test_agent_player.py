"""An agent playing real Crafter from pixels, step by step with its KV caches."""

from __future__ import annotations

import numpy as np
import torch

from dreamer4.dynamics import shift_actions
from dreamer4.envs.crafter_env import make_env
from dreamer4.eval.agent_player import AgentPlayer
from dreamer4.tokenizer import Tokenizer, TokenizerConfig
from tests.test_agent import small_agent


def _player(context_noise: float) -> AgentPlayer:
    torch.manual_seed(0)
    tok = Tokenizer(
        TokenizerConfig(resolution=64, patch=16, latents=4, bottleneck=4, width=32, depth=2,
                        decoder_depth=1, heads=2, time_every=2, sequence=8)
    )  # fmt: skip
    return AgentPlayer(
        tok, small_agent(), context_noise=context_noise, generator=torch.Generator().manual_seed(0)
    )


def test_agent_plays_real_crafter_and_matches_the_whole_sequence():
    player = _player(context_noise=0.0)  # clean context: no noise draw, so comparable
    env = make_env(3)
    obs = env.reset()
    frames, actions, features = [], [], []
    task = torch.tensor([2])
    for _ in range(6):
        frames.append(obs)
        action = player.act(torch.from_numpy(obs)[None], task)
        assert 0 <= int(action["crafter"]) < 17
        actions.append(int(action["crafter"]))
        features.append(player.features)
        obs, _, done, _ = env.step(actions[-1])
        assert not done
    # the same frames and actions through the tokenizer and the agent at once
    video = torch.from_numpy(np.stack(frames))[None]
    with torch.no_grad():
        z = player.tokenizer.encode_patches(player.tokenizer.patchify(video))
        t = z.shape[1]
        taken = {"action/crafter": torch.tensor([actions])}
        labels = torch.ones(1, t), torch.full((1, t), 1 / player.agent.dynamics.cfg.k_max)
        _, h = player.agent(z, *labels, shift_actions(taken), task[:, None].expand(1, t))
    torch.testing.assert_close(torch.stack(features, 1), h, rtol=1e-4, atol=1e-4)
    player.reset()
    assert player.previous is None and player.agent_cache.length == 0


def test_caches_stay_within_their_contexts():
    player = _player(context_noise=0.1)
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    for _ in range(20):
        player.act(frames, torch.tensor([0, -1]))
    assert player.agent_cache.length == player.context + 1
    assert player.tokenizer_cache.length == player.tokenizer.cfg.sequence - 1


def test_a_batch_with_one_generator_per_row_plays_as_each_row_alone():
    """Rows of a batch draw noise and actions from their own generators, and `keep` drops a
    finished row from the caches: each remaining row acts as it would alone."""
    from dreamer4.envs.crafter_env import make_env

    def actions(seeds: list[int], drop_at: int | None = None) -> list[list[int]]:
        player = _player(context_noise=0.1)
        player.generator = [torch.Generator().manual_seed(100 + s) for s in seeds]
        envs = [make_env(s) for s in seeds]
        obs = [e.reset() for e in envs]
        rows, taken = list(range(len(seeds))), [[] for _ in seeds]
        for t in range(12):
            frames = torch.from_numpy(np.stack([obs[i] for i in rows]))
            chosen = player.act(frames, torch.tensor([2] * len(rows)))["crafter"]
            for row, i in enumerate(rows):
                taken[i].append(int(chosen[row]))
                obs[i] = envs[i].step(taken[i][-1])[0]
            if t == drop_at:  # row 1's episode ends here
                player.keep([0, 2])
                rows = [0, 2]
        return taken

    batched = actions([4, 5, 6], drop_at=5)
    assert batched[0] == actions([4])[0] and batched[2] == actions([6])[0]
    assert batched[1] == actions([5])[0][:6]
    assert batched[0] != batched[2]  # the rows really differ
