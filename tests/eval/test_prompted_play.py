"""Prompted play in real Crafter: the prompt follows the tech tree as achievements come."""

from __future__ import annotations

from dreamer4.envs.crafter_env import make_env
from dreamer4.episodes.actions import CRAFTER_ACTIONS
from dreamer4.eval.prompted_play import MILESTONES, play_prompted, prompt_indices
from tests.eval.test_agent_player import _player

TASKS = ("collect_wood", "place_table", "make_wood_pickaxe")  # small_agent's vocabulary


class Recording:
    """Wraps an AgentPlayer to see the prompts it was given."""

    def __init__(self, player):
        self.player, self.tasks = player, []

    def reset(self):
        self.player.reset()

    def act(self, frames, task):
        self.tasks.append(int(task[0]))
        return self.player.act(frames, task)


class WoodEnv:
    """Real Crafter that reports collect_wood from step 5 on (a deterministic trigger)."""

    def __init__(self):
        self.env = make_env(0, length=40)

    def reset(self):
        self.steps = 0
        return self.env.reset()

    def step(self, action):
        obs, reward, done, info = self.env.step(action)
        self.steps += 1
        if self.steps >= 5:
            info["achievements"] = {**info["achievements"], "collect_wood": 1}
        return obs, reward, done, info


def test_prompts_follow_the_milestones_and_stats_are_crafters():
    assert prompt_indices(TASKS) == [0, 1, 2]
    assert prompt_indices(("place_table", "collect_wood")) == [1, 0]
    assert MILESTONES[0] == "collect_wood" and MILESTONES[-1] == "collect_diamond"
    player = Recording(_player(0.1))
    stats = play_prompted(WoodEnv(), player, prompt_indices(TASKS), TASKS, max_steps=12)
    assert stats["length"] == 12 and len(player.tasks) == 12
    # collect_wood first reached at step 5: prompted with task 0 until then, then task 1
    assert player.tasks == [0] * 5 + [1] * 7
    assert stats["first_step"]["collect_wood"] == 5
    assert stats["achievement_collect_wood"] == 1
    assert isinstance(stats["reward"], float)


def test_plain_crafter_episode_ends_by_its_length():
    env = make_env(1, length=15)
    stats = play_prompted(env, _player(0.1), [0, 1], TASKS, max_steps=100)
    assert stats["length"] == 15
    assert all(k in ("length", "reward", "first_step", "actions") or k.startswith("achievement_")
               for k in stats)  # fmt: skip
    # every step is one action, counted by its Crafter name
    assert sum(stats["actions"].values()) == 15
    assert set(stats["actions"]) <= set(CRAFTER_ACTIONS)


def test_a_copied_world_plays_like_a_fresh_reset():
    """`evaluate` generates each world once and lets every agent play a copy of it."""
    import copy

    import torch

    from dreamer4.agent import ActionSpace
    from dreamer4.envs.crafter_env import reseed
    from dreamer4.eval.agent_player import RandomPlayer

    space = ActionSpace((("crafter", "categorical", 17),))
    env = make_env(0, length=120)

    def play(world, obs=None, frames=None):
        player = RandomPlayer(space, torch.Generator().manual_seed(4))
        return play_prompted(world, player, [], (), 120, size=32, frames=frames, obs=obs)

    reseed(env, 21)
    first = env.reset()
    copied_frames, fresh_frames = [], []
    copied = play(copy.deepcopy(env), first.copy(), copied_frames)
    reseed(env, 21)
    fresh = play(env, frames=fresh_frames)
    assert copied == fresh and copied["length"] > 1
    assert all((a == b).all() for a, b in zip(copied_frames, fresh_frames, strict=True))


def test_a_batch_of_episodes_of_different_lengths_plays_as_each_alone():
    """`play_prompted_batch` with one generator per episode: the stats of each episode equal
    those of the episode played alone, though the episodes end at different steps."""
    import torch

    from dreamer4.eval.prompted_play import play_prompted_batch

    lengths, seeds = (5, 14, 9), (2, 3, 4)
    player = _player(0.1)
    player.generator = [torch.Generator().manual_seed(s) for s in seeds]
    frames: list = []
    envs = [make_env(s, length=n) for s, n in zip(seeds, lengths, strict=True)]
    batched = play_prompted_batch(envs, player, [0, 1], TASKS, 12, frames=frames)
    assert [s["length"] for s in batched] == [5, 12, 9]
    assert len(frames) == 6  # the first episode's observations, the last one included
    for stats, seed, n in zip(batched, seeds, lengths, strict=True):
        alone = _player(0.1)
        alone.generator = [torch.Generator().manual_seed(seed)]
        assert play_prompted(make_env(seed, length=n), alone, [0, 1], TASKS, 12) == stats
