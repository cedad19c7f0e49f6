"""A play session without the server: keys as Crafter's GUI reads them, the three modes, the
agent at the keys, and games saved into the inbox in the raw format `ingest` reads."""

from __future__ import annotations

import copy
import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dreamer4.play.session import PlayError, PlaySession, load_models
from dreamer4.play.worlds import generate_world
from dreamer4.stages.ingest import ingest
from orchestration.automation import inbox_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(play_folders):
    return load_models(
        play_folders["tokenizer"], play_folders["world_model"], play_folders["policy"]
    )


def new(models, tmp_path: Path, **kw) -> PlaySession:
    return PlaySession(models, tmp_path / "inbox", seed=kw.pop("seed", 0), **kw)


def test_keys_are_read_as_crafters_gui_reads_them(models, tmp_path):
    s = new(models, tmp_path)
    s.key("d", True)
    s.key("d", False)  # pressed and released between two ticks: still taken, once
    assert s.tick().info["action"] == "move_right"
    assert s.tick().info["action"] == "noop"  # no key down: noop
    s.key("W", True)  # held (either case): taken every tick
    assert [s.tick().info["action"] for _ in range(2)] == ["move_up", "move_up"]
    s.key("Tab", True)  # the key pressed last wins while both are held
    assert s.tick().info["action"] == "sleep"
    s.key("Tab", False)
    assert s.tick().info["action"] == "move_up"
    s.key("w", False)
    assert s.tick().info["action"] == "noop"
    recorded = [line["action"] for line in s.recording.lines]
    assert recorded == ["move_right", "noop", "move_up", "move_up", "sleep", "move_up", "noop"]
    for bad in ("q", "Enter"):
        with pytest.raises(PlayError, match="keymap"):
            s.key(bad, True)


def test_a_reset_takes_the_world_ordered_ahead_in_the_seeds_a_plain_session_plays(models, tmp_path):
    """With `order_world` each reset orders the next world and the next reset takes it ready
    (no world made then), in the order of seeds a session without orders plays; an order not
    ready is made at the reset, same seed, and closing cancels the order in waiting."""
    env, obs = generate_world(2_000_000, 64)
    made: list[int] = []
    orders: dict[int, Future] = {}

    def make(seed: int, size: int):
        made.append(seed)
        return copy.deepcopy(env), obs

    def order(seed: int, size: int) -> Future:
        orders[seed] = Future()
        return orders[seed]

    plain = new(models, tmp_path / "a", make_world=make)
    plain.reset()
    plain.reset()
    seeds, made[:] = list(made), []
    assert len(set(seeds)) == 3

    s = new(models, tmp_path / "b", make_world=make, order_world=order)
    assert made == seeds[:1] and list(orders) == seeds[1:2]
    ready = copy.deepcopy(env)
    orders[seeds[1]].set_result((ready, obs))
    s.reset()
    assert (s.world, made, list(orders)) == (seeds[1], seeds[:1], seeds[1:3])
    assert s.env is ready  # the ordered world, taken as it was made
    s.reset()  # the order for the third world is still waiting: made now, same seed
    assert (s.world, made) == (seeds[2], [seeds[0], seeds[2]])
    assert orders[seeds[2]].cancelled()
    waiting = orders[list(orders)[-1]]
    s.close()
    assert waiting.cancelled() and len(orders) == 3


def test_the_action_changes_the_next_frame_in_game_and_in_dream(models, tmp_path):
    for mode in ("game", "dream"):
        a, b = new(models, tmp_path / "a"), new(models, tmp_path / "b")  # the same world, seed
        for s in (a, b):
            s.request("mode", mode)
        assert np.array_equal(a.tick().image, b.tick().image)  # both noop: alike
        b.key("a", True)
        noop, left = a.tick().image, b.tick().image
        res = models.resolution
        if mode == "game":
            assert not np.array_equal(noop, left) and left.shape == (64, 64, 3)
        else:  # the same noise drawn in both: only the action differs (random weights: a
            # decoder that hardly reads its latents, so compare the dreamed latents)
            assert not torch.equal(a.z_dream, b.z_dream) and left.shape == (res, res, 3)


def test_the_dream_continues_from_the_real_game(models, tmp_path):
    s = new(models, tmp_path)
    s.key("d", True)
    for _ in range(6):
        s.tick()
    real = s.z_real.clone()
    s.set_mode("dream")
    assert torch.equal(s.z_dream, real)  # the dream's current frame is the real one
    # the world model's cache holds the real context, as far back as its window
    assert s.sampler.cache.length == len(s.history) == min(7, models.window + 1)
    tick = s.tick()
    assert tick.info["mode"] == "dream" and s.steps == 6  # the real game waits meanwhile
    s.set_mode("game")
    assert s.tick().info["step"] == 7


def test_side_by_side_shows_both_and_how_far_they_agree(models, tmp_path):
    s = new(models, tmp_path)
    s.request("mode", "side")
    tick = s.tick()
    res = models.resolution
    assert tick.image.shape == (res, 2 * res + 1, 3)
    assert np.isfinite(tick.info["psnr"]) and 0 <= tick.info["tile_accuracy"] <= 1
    assert tick.info["step"] == 1  # the real game moved too
    real = tick.image[:, :res]
    from dreamer4.episodes.episode import resize_frame

    assert np.array_equal(real, resize_frame(s.obs, res))


def test_the_agent_plays_and_a_person_takes_the_keys_back(models, tmp_path):
    s = new(models, tmp_path)
    s.request("agent", True)
    s.key("d", True)
    s.key("d", False)
    ticks = [s.tick() for _ in range(12)]
    assert all(t.info["by"] == "agent" for t in ticks)
    assert len({t.info["action"] for t in ticks}) > 1  # sampled from the policy, not a key
    assert all(isinstance(t.info["value"], float) for t in ticks)  # the phase-3 value head
    s.request("agent", False)
    s.key("s", True)
    tick = s.tick()
    assert tick.info["by"] == "you" and tick.info["action"] == "move_down"
    s.request("task", "place_table")
    assert s.tick().info["task"] == "place_table"
    for kind, value in (("mode", "fly"), ("task", "win"), ("jump", None)):
        with pytest.raises(PlayError):
            s.request(kind, value)


def test_a_saved_game_is_raw_data_that_ingest_reads_with_every_step(models, tmp_path):
    s = new(models, tmp_path, record_steps=1000)
    keys = ["d", "d", "a", " ", "w"]
    for k in keys:
        s.key(k, True)
        s.key(k, False)
        s.tick()
    assert s.save() is not None and s.save() is None  # nothing new recorded since
    folder = tmp_path / "inbox" / "play"
    (episode,) = [p for p in folder.iterdir()]
    assert not episode.name.startswith(".")  # written aside, renamed whole
    options = json.loads(next(episode.glob("*-options.json")).read_text())
    assert options["player"] == "human" and options["world_seed"] == s.world >= 2_000_000
    # the inbox sensor sees it: the next retraining starts from collect
    assert list(inbox_fingerprint(tmp_path / "inbox")) == [f"play/{episode.name}/{episode.name}"]
    summary = ingest(tmp_path / "inbox", tmp_path / "episodes", resolution=32)
    assert summary["episodes"] == 1 and summary["quarantined"] == 0
    steps = pd.read_parquet(tmp_path / "episodes" / "steps.parquet")
    assert len(steps) == len(keys) + 1  # every step and the last frame
    names = ["move_right", "move_right", "move_left", "do", "move_up"]
    from dreamer4.episodes.actions import CRAFTER_ACTIONS

    assert steps["action/crafter"].tolist()[:-1] == [CRAFTER_ACTIONS.index(n) for n in names]


def test_an_ended_episode_and_a_long_recording_are_saved_on_their_own(models, tmp_path):
    s = new(models, tmp_path, record_steps=4)
    for _ in range(4):
        s.tick()
    assert len(s.saved) == 1  # 4 steps: saved, recording goes on from this frame
    world = s.world
    s.env._length = s.env._step + 2  # Crafter ends the episode at its length
    s.tick()
    s.tick()
    assert len(s.saved) == 2 and s.steps == 0 and s.world != world  # a new world
    lines = [
        json.loads(line) for line in next(s.saved[-1].glob("*.jsonl")).read_text().splitlines()
    ]
    assert len(lines) == 3 and lines[-1]["done"] is True and lines[-1]["action"] is None


def test_leaving_the_dream_the_agent_forgets_it_and_the_real_context_stays(models, tmp_path):
    s = new(models, tmp_path)
    for _ in range(3):
        s.tick()
    history = len(s.history)
    s.set_mode("dream")
    for _ in range(3):
        s.tick()
    s.set_mode("side")  # the agent read dreamed frames: it starts again on the real game
    assert s.player.agent_cache.length == 0 and len(s.history) == history
    s.tick()
    assert s.player.agent_cache.length == 2  # the real frame shown, then the next one


def test_only_the_persons_play_is_recorded_and_nothing_is_lost(models, tmp_path):
    s = new(models, tmp_path)
    for _ in range(3):
        s.tick()
    s.set_agent(True)  # the person's game so far is saved; the agent's play is not data
    assert len(s.saved) == 1
    for _ in range(4):
        s.tick()
    assert s.recording.lines == []
    s.set_agent(False)
    s.tick()
    s.tick()
    s.reset()  # a new world: the game so far is saved first
    assert len(s.saved) == 2
    lines = next(s.saved[-1].glob("*.jsonl")).read_text().splitlines()
    assert len(lines) == 3  # two steps and the frame after them
    options = json.loads(next(s.saved[-1].glob("*-options.json")).read_text())
    assert options["first_step"] == 7 and options["player"] == "human"


def test_a_failed_save_is_told_and_keeps_the_game(models, tmp_path):
    blocked = tmp_path / "inbox"
    s = PlaySession(models, blocked, seed=0)
    blocked.write_text("not a folder")  # the inbox cannot be written
    s.tick()
    s.request("save")
    tick = s.tick()
    assert len(s.recording.lines) == 2 and not s.saved
    assert "could not save the game" in tick.info["errors"][0]
    assert s.tick().info["errors"] == []  # told once
    blocked.unlink()
    assert s.save() is not None and len(s.recording.lines) == 0


def test_shortcut_steps_the_world_model_was_not_trained_for_are_refused(play_folders):
    from dreamer4.errors import StageError

    folders = [play_folders[k] for k in ("tokenizer", "world_model", "policy")]
    with pytest.raises(StageError, match="power of two dividing k_max = 8"):
        load_models(*folders, steps=3)
