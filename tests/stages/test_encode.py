"""Stage `encode`: latents of every frame, aligned with the step index, validated by GX."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dreamer4.episodes.dataset import load_chunk
from dreamer4.errors import StageError
from dreamer4.stages.encode import encode, validate_latents
from dreamer4.tokenizer import Tokenizer, TokenizerConfig
from dreamer4.train.checkpoint import export

CFG = TokenizerConfig(
    resolution=16,
    patch=4,
    latents=4,
    bottleneck=3,
    width=16,
    depth=2,
    decoder_depth=2,
    heads=2,
    time_every=2,
    sequence=3,
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Tokenizer(CFG)
    out = tmp_path_factory.mktemp("tokenizer")
    weights = model.state_dict()
    export(out, weights, weights, {"model": asdict(CFG), "steps": 0})
    return out


def test_latents_match_streaming_encoder_and_step_index(
    tmp_path: Path, tokenizer_dir: Path, episode_dataset: Path
) -> None:
    out = tmp_path / "latents"
    summary = encode(tokenizer_dir, episode_dataset, out, batch=4)
    steps = pd.read_parquet(out / "steps.parquet")
    assert summary["steps"] == len(steps) and summary["validation"]["success"]
    model = Tokenizer(CFG)
    model.load_state_dict(_weights(tokenizer_dir))
    model.eval()
    for _, ep in list(steps.groupby("episode"))[:2]:
        ep = ep.sort_values("step")
        chunk, index = int(ep["frame_chunk"].iloc[0]), ep["frame_index"].to_numpy()
        frames = torch.from_numpy(np.array(load_chunk(episode_dataset, chunk)[index]))
        expected = model.encode_stream(frames[None])[0].numpy()
        got = np.load(out / "latents" / f"chunk-{chunk:05d}.npy")[index].astype(np.float32)
        assert got.shape == (len(ep), 4, 3)
        assert np.allclose(got, expected, atol=2e-3)  # float16 storage

    # Training sequences read the latents with the step index's addressing.
    from dreamer4.train.sequences import EpisodeSequences, SequenceSpec, WindowSampler

    data = EpisodeSequences(out, SequenceSpec(length=5, arrays=("latents",), fields=()))
    for w in WindowSampler(data, 4, seed=0, rank=0).windows(0):
        ep = steps[steps["episode"] == data.episode_ids[w.episode]].sort_values("step")
        rows = ep.iloc[w.start : w.start + 5]
        chunk = np.load(out / "latents" / f"chunk-{int(rows['frame_chunk'].iloc[0]):05d}.npy")
        assert np.array_equal(data[w]["latents"].numpy(), chunk[rows["frame_index"].to_numpy()])


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_suite_fails_on_out_of_range_or_nan_latents(
    tmp_path: Path, tokenizer_dir: Path, episode_dataset: Path
) -> None:
    out = tmp_path / "latents"
    encode(tokenizer_dir, episode_dataset, out, batch=8)
    assert validate_latents(out, 4, 3).success
    path = out / "latents" / "chunk-00000.npy"
    arr = np.load(path)
    arr[5, 0, 0] = 1.5
    arr[7, 1, 2] = np.nan
    np.save(path, arr)
    report = validate_latents(out, 4, 3)
    assert not report.success
    assert any("finite" in f for f in report.failures) and any("max" in f for f in report.failures)
    assert not validate_latents(out, 4, 5).success  # shapes are checked too


def test_resolution_mismatch_is_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    from tests.conftest import make_episode_dataset

    data = make_episode_dataset(tmp_path / "episodes32", episodes=2, length=10, resolution=32)
    with pytest.raises(StageError, match="frames are 32px.*trained on 16px"):
        encode(tokenizer_dir, data, tmp_path / "latents", batch=2)
    assert not (tmp_path / "latents").exists()
