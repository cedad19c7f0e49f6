"""The Crafter tile classifier against Crafter's own ground truth, and the accuracy metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamer4.envs.crafter_env import make_env
from dreamer4.eval.tile_accuracy import (
    DAYLIGHT,
    LIT,
    classifier,
    inventory_accuracy,
    scored_mean,
    semantic_view,
    tile_accuracies,
    tile_accuracy,
)


def _play(seed: int, steps: int, every: int) -> list[tuple[np.ndarray, dict, float]]:
    """Frames of a random walk with lots of `do`/moves, with info and daylight; each sampled
    state is also rendered at night (Crafter draws its night noise from the world's stream)."""
    rng = np.random.default_rng(seed)
    env = make_env(seed, size=64, length=10_000)
    env.reset()
    frames = []
    for t in range(steps):
        action = int(rng.integers(0, 17)) if rng.random() < 0.5 else int(rng.integers(1, 6))
        obs, _, done, info = env.step(action)
        if done:
            break
        if t % every == 0:
            frames.append((obs, info, float(env._world.daylight)))
            light, env._world.daylight = env._world.daylight, 0.2
            frames.append((env.render(), info, 0.2))
            env._world.daylight = light
    return frames


@pytest.fixture(scope="module")
def played() -> list[tuple[np.ndarray, dict, float]]:
    return _play(0, 400, 8) + _play(1, 400, 8)


def test_view_tiles_match_crafters_semantic_map_by_day_and_night(played) -> None:
    c = classifier(64)
    day, night = [], []
    for obs, info, light in played:
        ok = (c.view(torch.tensor(obs)[None])[0].numpy() == semantic_view(info)).mean()
        (day if light > 0.5 else night).append(ok)
    assert len(day) > 20 and len(night) > 20, (len(day), len(night))
    assert np.mean(day) >= 0.99, np.mean(day)
    assert np.mean(night) >= 0.95, np.mean(night)


def test_inventory_counts_match_crafters_inventory(played) -> None:
    c = classifier(64)
    frames = torch.tensor(np.stack([obs for obs, _, _ in played]))
    read = c.inventory(frames).numpy()
    truth = np.array([[info["inventory"][k] for k in c.items] for _, info, _ in played])
    assert (read == truth).mean() >= 0.995, (read != truth).sum()
    assert (truth[:, 4:] > 0).any()  # the walk collected something: not only the vitals


def _daytime(played, n: int) -> torch.Tensor:
    """The first `n` frames of the walk lit above 0.5 (every one of them is scored)."""
    return torch.tensor(np.stack([obs for obs, _, light in played if light > 0.5][:n]))


def test_accuracy_is_one_for_the_same_frame_in_either_encoding(played) -> None:
    frames = _daytime(played, 16)
    signed = frames.float() / 127.5 - 1  # the tokenizer's [-1, 1] floats
    assert torch.equal(tile_accuracy(signed, frames), torch.ones(16))
    night = torch.tensor(np.stack([obs for obs, _, _ in played[:16]]))  # half at daylight 0.2
    assert torch.equal(tile_accuracy(night, night, dark=True), torch.ones(16))
    assert torch.equal(inventory_accuracy(frames, signed), torch.ones(16))
    # (B, T, H, W, 3) in, (B, T) out
    assert tile_accuracy(frames.view(4, 4, 64, 64, 3), frames.view(4, 4, 64, 64, 3)).shape == (4, 4)


def test_blur_lowers_tile_accuracy(played) -> None:
    frames = _daytime(played, 16)
    x = frames.permute(0, 3, 1, 2).float()
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
    blurred = blurred.permute(0, 2, 3, 1).round().to(torch.uint8)
    assert tile_accuracy(blurred, frames).mean() < 0.9


def test_accuracy_between_two_frames_is_the_agreement_of_their_semantic_maps(played) -> None:
    """Frame t against frame t+1 of the walk: the share of tiles whose true classes agree
    (the player moved or changed the world between them)."""
    day = [(obs, info) for obs, info, light in played if light > 0.5]
    a, b = (torch.tensor(np.stack([obs for obs, _ in day[i : i + 16]])) for i in (0, 1))
    want = np.array(
        [
            (semantic_view(x[1]) == semantic_view(y[1])).mean()
            for x, y in zip(day[:16], day[1:17], strict=True)
        ]
    )
    got = tile_accuracy(a, b).numpy()
    assert want.min() < 0.95  # the pairs differ somewhere
    assert np.abs(got - want).max() <= 1 / 63 + 1e-6


def test_inventory_accuracy_counts_the_slots_read_alike(played) -> None:
    """Swap the inventory band of two frames: the accuracy is the share of the slots non-empty
    in either frame whose counts happen to agree."""
    c = classifier(64)
    inv = [np.array([info["inventory"][k] for k in c.items]) for _, info, _ in played]
    i, j = next((i, j) for i in range(len(inv)) for j in range(i) if (inv[i] != inv[j]).any())
    real, other = (torch.tensor(played[k][0]) for k in (i, j))
    mixed = real.clone()
    mixed[49:] = other[49:]  # rows below the 7×7-pixel view tiles hold the inventory
    shown = (inv[i] > 0) | (inv[j] > 0)  # an item shown in either frame counts
    want = ((inv[i] == inv[j]) & shown).sum() / shown.sum()
    assert inventory_accuracy(mixed[None], real[None]).item() == pytest.approx(want)
    assert tile_accuracy(mixed[None], real[None], dark=True).item() == 1.0


def test_classification_ignores_bf16_autocast(played) -> None:
    """The stages evaluate under autocast: in bf16 the template residuals (≈10⁷ − 10⁷) would
    lose their digits and the labels with them."""
    frames = torch.tensor(np.stack([obs for obs, _, _ in played[:32]]))
    noisy = frames.float() + 8 * torch.randn(
        frames.shape, generator=torch.Generator().manual_seed(0)
    )
    noisy = noisy.clamp(0, 255) / 127.5 - 1
    c = classifier(64)
    plain = c.view(noisy), c.inventory(noisy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = c.view(noisy), c.inventory(noisy)
    assert torch.equal(plain[0], mixed[0]) and torch.equal(plain[1], mixed[1])
    assert (plain[0] == c.view(frames)).float().mean() > 0.95  # noise σ 8: few labels move


@pytest.fixture(scope="module")
def lit_twice() -> dict[float, list[tuple[np.ndarray, np.ndarray, dict]]]:
    """States of a walk, each rendered twice (two draws of Crafter's night noise) at every
    light level of the templates, awake and asleep (Crafter greys out a sleeper's view)."""
    rng = np.random.default_rng(2)
    env = make_env(2, size=64, length=10_000)
    env.reset()
    out: dict[float, list] = {day: [] for day in DAYLIGHT}
    for t in range(240):
        action = int(rng.integers(0, 17)) if rng.random() < 0.5 else int(rng.integers(1, 6))
        _, _, done, info = env.step(action)
        if done:
            break
        if t % 12 == 0:
            light, asleep = env._world.daylight, env._player.sleeping
            for day in DAYLIGHT:
                env._world.daylight = day
                for env._player.sleeping in (False, True):
                    out[day].append((env.render(), env.render(), info))
            env._world.daylight, env._player.sleeping = light, asleep
    return out


def test_daylight_is_read_from_the_frame(lit_twice) -> None:
    c = classifier(64)
    for day, states in lit_twice.items():
        frames = torch.tensor(np.stack([first for first, _, _ in states]))
        assert torch.allclose(c.read(frames)[1], torch.tensor(day)), day


def test_frames_too_dark_to_read_are_not_scored(lit_twice) -> None:
    """At daylight 0 Crafter's noise hides the tiles from the classifier (and from any reader:
    two renders of one state disagree): such frames get NaN, unless `dark`; from `LIT` up
    the real frame is read right (all but a few tiles at `LIT`) and every frame is scored."""
    c = classifier(64)
    for day, states in lit_twice.items():
        first, second = (torch.tensor(np.stack([s[k] for s in states])) for k in (0, 1))
        truth = np.stack([semantic_view(info) for _, _, info in states])
        read = (c.view(first).numpy() == truth).mean()
        scored, every = tile_accuracy(second, first), tile_accuracy(second, first, dark=True)
        if day >= LIT:  # at LIT itself some noise shows: asleep frames are read ≥ 97 %
            read_floor, alike_floor = (0.99, 0.99) if day > LIT else (0.97, 0.95)
            asleep = (c.view(first).numpy() == truth)[1::2].mean()  # every second state sleeps
            assert read >= read_floor and asleep >= read_floor, (day, read, asleep)
            assert not scored.isnan().any() and scored.mean() >= alike_floor, (day, scored)
        else:
            assert scored.isnan().all(), (day, scored)
        if day == 0.2:  # the asleep frames at 0.2 count: a decoder that loses them is measured
            assert not scored.isnan().any()
        if day == 0.0:
            assert read < 0.7 and every.mean() < 0.7, (read, every)


def test_both_definitions_come_from_one_read_and_an_unscored_mean_is_left_out(lit_twice) -> None:
    """`tile_accuracies` gives the lit-only and every-frame scores at once, equal to the two
    calls; a mean over frames none of which was scored is None (the stages then leave the
    metric out instead of writing NaN)."""
    states = lit_twice[0.3][:4] + lit_twice[0.0][:4]
    first, second = (torch.tensor(np.stack([s[k] for s in states])) for k in (0, 1))
    lit, every = tile_accuracies(second, first)
    assert torch.allclose(lit, tile_accuracy(second, first), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(every, tile_accuracy(second, first, dark=True))
    assert lit[:4].isfinite().all() and lit[4:].isnan().all()
    assert scored_mean(lit) == pytest.approx(lit[:4].mean().item())
    grid = tile_accuracies(second.reshape(2, 4, 64, 64, 3), first.reshape(2, 4, 64, 64, 3))
    assert torch.allclose(grid[0].flatten(), lit, equal_nan=True) and grid[1].shape == (2, 4)
    assert scored_mean(lit[4:]) is None
