"""Agent stages refuse bad input with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreamer4.cli import main
from dreamer4.errors import StageError
from dreamer4.stages.finetune_agent import task_vocabulary
from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, WindowSampler
from tests.conftest import REPO, make_episode_dataset


def test_a_dataset_without_events_has_no_tasks(episode_dataset: Path):
    with pytest.raises(StageError, match=r"steps\.parquet: no `event/<name>` columns"):
        task_vocabulary(episode_dataset)


def test_relevant_windows_need_an_event_in_the_split(tmp_path: Path):
    never = make_episode_dataset(tmp_path / "never", episodes=3, events={"collect_wood": ()})
    assert task_vocabulary(never) == ("collect_wood",)
    spec = SequenceSpec(length=8, tasks=("collect_wood",), relevant_fraction=0.5)
    with pytest.raises(StageError, match="has a task event"):
        WindowSampler(EpisodeSequences(never, spec), 4, 0, 0)
    data = make_episode_dataset(tmp_path / "episodes", episodes=3, events={"collect_wood": (5,)})
    sampler = WindowSampler(EpisodeSequences(data, spec), 4, 0, 0)
    assert [w.relevant for w in sampler.windows(0)] == [False, False, True, True]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["finetune-agent", "--world-model", "nowhere/wm", "--data", "{data}"], "nowhere/wm"),
        (["train-policy", "--agent", "nowhere/agent", "--data", "{data}"], "nowhere/agent"),
        (["imagine", "--policy", "nowhere/policy", "--data", "{data}"], "nowhere/policy"),
    ],
)
def test_missing_upstream_outputs_are_named(argv, message, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: every path from the command line
    data = make_episode_dataset(tmp_path / "episodes", events={"collect_wood": (5,)})
    (data / "latents.json").write_text('{"shape": [4, 4]}')
    repo_params = ["--params", str(REPO / "params.yaml")]  # paths from the command line
    code = main([*(a.replace("{data}", str(data)) for a in argv), *repo_params])
    assert code == 2
    assert message in capsys.readouterr().err
