"""Tests for the scripted Crafter player: it progresses, is deterministic, skill adds noise."""

from __future__ import annotations

import numpy as np
import pytest

from dreamer4.envs.crafter_env import episode_seed, make_env
from dreamer4.envs.scripted_player import ScriptedPlayer
from dreamer4.episodes.actions import CRAFTER_ACTIONS


def _play(world_seed: int, player: ScriptedPlayer, steps: int) -> tuple[list[int], dict]:
    env = make_env(world_seed, size=64)
    env.reset()
    player.reset()
    actions: list[int] = []
    info: dict = {}
    for _ in range(steps):
        action = player.act(env)
        actions.append(action)
        _, _, done, info = env.step(action)
        if done:
            break
    return actions, info


@pytest.mark.parametrize("skill", [-0.1, 1.1, float("nan")])
def test_skill_outside_unit_interval_is_rejected(skill: float) -> None:
    with pytest.raises(ValueError):
        ScriptedPlayer(skill=skill)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_full_skill_player_reaches_stone_age(index: int) -> None:
    _, info = _play(episode_seed(0, index), ScriptedPlayer(skill=1.0, seed=index), 300)
    done = {name for name, count in info["achievements"].items() if count > 0}
    assert {"collect_wood", "place_table", "make_wood_pickaxe", "collect_stone"} <= done


def test_full_skill_player_mines_a_diamond() -> None:
    actions, info = _play(episode_seed(0, 0), ScriptedPlayer(skill=1.0, seed=0), 1500)
    assert info["achievements"]["make_iron_pickaxe"] > 0
    assert info["achievements"]["collect_diamond"] > 0
    assert all(0 <= a < len(CRAFTER_ACTIONS) for a in actions)


def test_same_seed_and_skill_give_the_same_actions() -> None:
    world = episode_seed(0, 5)
    first, _ = _play(world, ScriptedPlayer(skill=0.7, seed=3), 200)
    second, _ = _play(world, ScriptedPlayer(skill=0.7, seed=3), 200)
    other, _ = _play(world, ScriptedPlayer(skill=0.7, seed=4), 200)
    assert first == second
    assert first != other


def test_zero_skill_is_uniformly_random() -> None:
    env, player = make_env(episode_seed(0, 1), size=64), ScriptedPlayer(skill=0.0, seed=0)
    env.reset()
    player.reset()
    actions = [player.act(env) for _ in range(1700)]  # skill 0 never looks at the state
    counts = np.bincount(actions, minlength=len(CRAFTER_ACTIONS))
    chi2 = float(((counts - 100.0) ** 2 / 100.0).sum())
    assert chi2 < 50.0  # 16 degrees of freedom: p ≈ 3e-5 for a uniform player


def test_full_skill_player_is_not_random() -> None:
    actions, _ = _play(episode_seed(0, 1), ScriptedPlayer(skill=1.0, seed=0), 300)
    counts = np.bincount(actions, minlength=len(CRAFTER_ACTIONS))
    assert counts[CRAFTER_ACTIONS.index("do")] > 20
    assert counts[CRAFTER_ACTIONS.index("make_iron_sword")] == 0
