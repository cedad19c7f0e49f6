"""The great-expectations suites pass on a sound dataset and name what fails on bad data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dreamer4.episodes.validation import episode_table, validate


def sound_steps() -> pd.DataFrame:
    n = 10
    return pd.DataFrame(
        {
            "episode": ["a"] * n + ["b"] * n,
            "step": list(range(n)) * 2,
            "split": ["train"] * 2 * n,
            "reward": np.zeros(2 * n, dtype=np.float32),
            "done": ([False] * (n - 1) + [True]) * 2,
            "labelled": [True] * 2 * n,
            "frame_chunk": [0] * 2 * n,
            "frame_index": list(range(2 * n)),
            "action/crafter": pd.array([1, 2, 3, 4, 5, 6, 7, 8, 9, None] * 2, dtype="Int16"),
            "action/camera": pd.array([60] * 2 * n, dtype="Int16"),
        }
    )


def run(steps: pd.DataFrame, min_length=2, max_length=100, records=(10, 10), chunk=20):
    actions = pd.Series(records, index=["a", "b"])
    return validate(steps, episode_table(steps, actions, {0: chunk}), min_length, max_length)


def test_sound_dataset_passes():
    report = run(sound_steps())
    assert report.success and report.failures == [] and report.evaluated >= 14


@pytest.mark.parametrize(
    ("corrupt", "expectation"),
    [
        (lambda s: s.assign(step=[0] * 20), "expect_compound_columns_to_be_unique"),
        (
            lambda s: s.assign(**{"action/crafter": pd.array([17] * 20, dtype="Int16")}),
            "expect_column_values_to_be_between {'column': 'action/crafter'",
        ),
        (
            lambda s: s.assign(**{"action/camera": pd.array([121] * 20, dtype="Int16")}),
            "expect_column_values_to_be_between {'column': 'action/camera'",
        ),
        (
            lambda s: s.assign(reward=np.full(20, np.inf)),
            "expect_column_values_to_be_between {'column': 'reward'",
        ),
        (lambda s: s.assign(reward=np.full(20, np.nan)), "expect_column_values_to_not_be_null"),
        (lambda s: s.assign(split=["test"] * 20), "expect_column_values_to_be_in_set"),
    ],
)
def test_bad_data_fails_and_names_the_expectation(corrupt, expectation):
    report = run(corrupt(sound_steps()))
    assert not report.success
    assert any(expectation in f for f in report.failures), report.failures


@pytest.mark.parametrize(
    "kwargs",
    [{"chunk": 18}, {"records": (10, 9)}, {"records": (10, 11)}],
    ids=["chunk-file-truncated", "fewer-label-records", "more-label-records"],
)
def test_frame_and_action_counts_must_agree(kwargs):
    report = run(sound_steps(), **kwargs)
    assert not report.success
    pair = "expect_column_pair_values_to_be_equal {'column_A': 'frames', 'column_B': 'actions'}"
    assert any(pair in f for f in report.failures), report.failures


def test_episode_lengths_out_of_bounds_fail():
    report = run(sound_steps(), min_length=11)
    assert not report.success
    assert any("'column': 'length'" in f for f in report.failures)
