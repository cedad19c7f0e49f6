"""Training sequences: windows inside one episode, deterministic per (seed, rank, batch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dreamer4.episodes.dataset import load_chunk, load_steps
from dreamer4.errors import StageError
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, WindowSampler, sequence_loader


def test_window_frames_and_columns_match_the_step_index(episode_dataset: Path) -> None:
    data = EpisodeSequences(episode_dataset, SequenceSpec(length=8))
    sampler = WindowSampler(data, batch=16, seed=3, rank=0)
    steps = load_steps(episode_dataset)
    for w in sampler.windows(0):
        item = data[w]
        ep = steps[steps["episode"] == data.episode_ids[w.episode]].sort_values("step")
        rows = ep.iloc[w.start : w.start + 8]
        assert len(rows) == 8 and (rows["split"] == "train").all()
        chunk = load_chunk(episode_dataset, int(rows["frame_chunk"].iloc[0]))
        assert np.array_equal(item["frames"].numpy(), chunk[rows["frame_index"].to_numpy()])
        assert np.allclose(item["reward"].numpy(), rows["reward"].to_numpy())
        labelled = rows["labelled"].to_numpy()
        actions = item["action/crafter"].numpy()
        assert (actions[~labelled] == -1).all() and (actions[labelled] >= 0).all()
        assert np.array_equal(actions[labelled], rows["action/crafter"].to_numpy()[labelled])


def test_batches_are_a_function_of_seed_rank_and_index(episode_dataset: Path) -> None:
    data = EpisodeSequences(episode_dataset, SequenceSpec(length=8))
    a, b = WindowSampler(data, 8, seed=1, rank=0), WindowSampler(data, 8, seed=1, rank=0)
    assert a.windows(7) == b.windows(7)
    assert a.windows(7) != WindowSampler(data, 8, seed=1, rank=1).windows(7)
    assert a.windows(7) != a.windows(8)


def test_alternating_lengths_and_image_fraction(episode_dataset: Path) -> None:
    spec = SequenceSpec(length=4, long_length=32, long_every=3, image_fraction=0.3)
    data = EpisodeSequences(episode_dataset, spec)
    sampler = WindowSampler(data, 32, seed=0, rank=0)
    lengths = [sampler.windows(i)[0].length for i in range(9)]
    assert lengths == [4, 4, 32] * 3
    flags = [w.independent for i in range(60) for w in sampler.windows(i)]
    assert 0.25 < np.mean(flags) < 0.35
    for i in range(9):
        for w in sampler.windows(i):
            assert 0 <= w.start and w.start + w.length <= data.lengths[w.episode]


def test_resumed_loader_continues_at_the_saved_position(episode_dataset: Path) -> None:
    spec = SequenceSpec(length=6)
    whole = iter(sequence_loader(episode_dataset, spec, 4, seed=2, rank=0, start=0, workers=0))
    batches = [next(whole) for _ in range(4)]
    resumed = next(
        iter(sequence_loader(episode_dataset, spec, 4, seed=2, rank=0, start=3, workers=1))
    )
    for key in batches[3]:
        assert np.array_equal(np.asarray(resumed[key]), np.asarray(batches[3][key])), key


def test_sequences_longer_than_every_episode_are_refused(episode_dataset: Path) -> None:
    with pytest.raises(StageError, match="no `train` episode has 500 steps"):
        EpisodeSequences(episode_dataset, SequenceSpec(length=4, long_length=500, long_every=2))


def test_relevant_windows_hold_a_task_event_and_carry_tasks(tmp_path: Path) -> None:
    from tests.conftest import make_episode_dataset

    events = {"collect_wood": (30,), "place_table": (40,)}
    dataset = make_episode_dataset(tmp_path / "episodes", length=48, events=events)
    tasks = ("place_table", "collect_wood", "collect_diamond")
    with pytest.raises(StageError, match="event/collect_diamond"):
        EpisodeSequences(dataset, SequenceSpec(length=8, tasks=tasks))
    tasks = tasks[:2]
    spec = SequenceSpec(length=8, tasks=tasks, relevant_fraction=0.5, image_fraction=0.5)
    data = EpisodeSequences(dataset, spec)
    sampler = WindowSampler(data, 8, seed=0, rank=0)
    for i in range(20):
        windows = sampler.windows(i)
        assert [w.relevant for w in windows] == [False] * 4 + [True] * 4
        for w in windows[4:]:
            item = data[w]
            assert not w.independent and item["relevant"]
            assert item["events"].shape == (8, 2) and item["events"].any()
    item = data[sampler.windows(0)[0]]
    steps = np.arange(item["task"].shape[0]) + sampler.windows(0)[0].start
    # task = the next event at or after the step: collect_wood up to 30, place_table to 40
    want = np.where(steps <= 30, 1, np.where(steps <= 40, 0, -1))
    assert np.array_equal(item["task"].numpy(), want)
