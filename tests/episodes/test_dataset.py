"""The dataset writer: whole episodes per chunk, index pointers, task labels, stable splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dreamer4.episodes.dataset import DatasetWriter, load_chunk, split_of
from dreamer4.episodes.episode import Episode


def episode(name: str, n: int, value: int) -> Episode:
    events = {"collect_wood": np.zeros(n, bool), "place_table": np.zeros(n, bool)}
    events["collect_wood"][2] = True
    events["place_table"][5] = True
    return Episode(
        id=name,
        source="crafter",
        frames=np.full((n, 4, 4, 3), value, np.uint8),
        actions={"crafter": np.arange(n) % 17},
        labelled=np.arange(n) < n - 1,
        reward=np.ones(n, np.float32),
        events=events,
    )


def test_chunks_hold_whole_episodes_and_the_index_points_into_them(tmp_path: Path):
    writer = DatasetWriter(tmp_path, chunk_frames=10)
    for i, n in enumerate([8, 7, 12]):
        writer.add(episode(f"e{i}", n, value=i + 1), "train")
    steps, episodes = writer.close()
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        "chunk-00000.npy",
        "chunk-00001.npy",
    ]
    assert load_chunk(tmp_path, 0).shape[0] == 15 and load_chunk(tmp_path, 1).shape[0] == 12
    for row in steps.itertuples():
        frame = load_chunk(tmp_path, row.frame_chunk)[row.frame_index]
        assert frame[0, 0, 0] == int(row.episode[1]) + 1
    assert episodes["length"].tolist() == [8, 7, 12]
    first = steps[steps.episode == "e0"]
    assert (
        first["task"].fillna("-").tolist() == ["collect_wood"] * 3 + ["place_table"] * 3 + ["-"] * 2
    )
    assert first["action/crafter"].isna().tolist() == [False] * 7 + [True]
    assert first["event/place_table"].sum() == 1


def test_split_is_a_stable_function_of_the_id():
    ids = [f"ep-{i}" for i in range(1000)]
    splits = [split_of(i, 0.2) for i in ids]
    assert 150 < splits.count("eval") < 250
    assert splits == [split_of(i, 0.2) for i in ids]
    assert {split_of(i, 0.0) for i in ids} == {"train"}


def test_task_is_the_next_first_occurrence_unless_every_occurrence_is_asked_for(tmp_path: Path):
    """A repeated collect_wood (rows 2 and 4) before place_table (row 5): under "first" the rows
    after the first wood are already on place_table, under "every" rows 3-4 stay collect_wood."""
    ep = episode("e0", 8, value=1)
    ep.events["collect_wood"][4] = True
    want = {
        "first": ["collect_wood"] * 3 + ["place_table"] * 3 + ["-"] * 2,
        "every": ["collect_wood"] * 5 + ["place_table"] + ["-"] * 2,
    }
    for rule, labels in want.items():
        writer = DatasetWriter(tmp_path / rule, chunk_frames=10, task_events=rule)
        writer.add(ep, "train")
        steps, _ = writer.close()
        assert steps["task"].fillna("-").tolist() == labels, rule
        assert steps["event/collect_wood"].sum() == 2  # the event columns keep every occurrence
    with pytest.raises(ValueError, match="task_events = 'once'"):
        DatasetWriter(tmp_path / "bad", chunk_frames=10, task_events="once")
