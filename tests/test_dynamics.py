"""The dynamics transformer: shapes, tokens, causality in time, action conditioning, KV cache."""

from __future__ import annotations

import pytest
import torch

from dreamer4.dynamics import (
    Dynamics,
    DynamicsConfig,
    action_spec,
    pack_latents,
    step_index,
    tau_index,
    unpack_latents,
)
from dreamer4.episodes.actions import VPT_SPACE

CFG = DynamicsConfig(
    latents=4,
    bottleneck=3,
    pack=2,
    width=32,
    depth=4,
    heads=4,
    kv_heads=2,
    time_every=2,
    registers=2,
    k_max=8,
)
B, T = 2, 5


def model(cfg: DynamicsConfig = CFG, seed: int = 0) -> Dynamics:
    torch.manual_seed(seed)
    return Dynamics(cfg).eval()


def inputs(
    cfg: DynamicsConfig = CFG, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, cfg.latents, cfg.bottleneck, generator=g)
    tau = torch.randint(0, cfg.k_max, (B, T), generator=g).float() / cfg.k_max
    d = torch.full((B, T), 1.0 / cfg.k_max)
    return z, tau, d


def crafter(seed: int = 2) -> dict[str, torch.Tensor]:
    return {"crafter": torch.randint(0, 17, (B, T), generator=torch.Generator().manual_seed(seed))}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-5)


def test_shapes_tokens_packing_and_config_checks() -> None:
    m = model()
    z, tau, d = inputs()
    assert m(z, tau, d, crafter()).shape == z.shape
    assert CFG.spatial == 2 and CFG.packed == 6 and CFG.tokens == 2 + 2 + 2
    assert torch.equal(unpack_latents(pack_latents(z, 2), 2), z)
    assert pack_latents(z, 2)[0, 0, 1, :3].equal(z[0, 0, 2])  # consecutive latents side by side
    assert m.new_cache().length == 0 and len(m.new_cache().keys) == CFG.depth // CFG.time_every
    for bad in (
        {"latents": 5},
        {"k_max": 12},
        {"actions": (("b", "binary", 3),)},
        {"actions": (("a", "continuous", 2),)},
        {"actions": (("a", "categorical", 2), ("a", "binary", 2))},
    ):
        with pytest.raises(ValueError):
            DynamicsConfig(**{**CFG.__dict__, **bad})
    with pytest.raises(ValueError):
        m(z[:, :, :3], tau, d, None)


def test_tau_and_step_indices_and_clean_label() -> None:
    assert tau_index(torch.tensor([0.0, 0.5, 7 / 8, 1.0]), 8).tolist() == [0, 4, 7, 7]
    assert step_index(torch.tensor([1.0, 0.5, 1 / 8]), 8).tolist() == [0, 1, 3]
    m = model()
    z, tau, d = inputs()
    clean = m(z, torch.ones_like(tau), d, None)
    assert close(clean, m(z, torch.full_like(tau, 7 / 8), d, None))  # τ = 1 → last level
    assert not close(clean, m(z, torch.full_like(tau, 6 / 8), d, None))
    assert not close(clean, m(z, torch.ones_like(tau), d * 2, None))  # d is an input too


def test_causal_in_time() -> None:
    m = model()
    z, tau, d = inputs()
    a = crafter()
    y = m(z, tau, d, a)
    for t in range(T):
        z2, tau2 = z.clone(), tau.clone()
        z2[:, t] += torch.randn_like(z2[:, t])
        tau2[:, t] = 1 - tau2[:, t] - 1 / 8
        y2 = m(z2, tau2, d, a)
        assert close(y2[:, :t], y[:, :t])
        for s in range(t, T):
            assert not close(y2[:, s], y[:, s])


def test_unlabelled_actions_get_the_base_embedding_only() -> None:
    m = model()
    z, tau, d = inputs()
    missing = {"crafter": torch.full((B, T), -1)}
    base = m.action_base.expand(B, T, -1)
    assert torch.equal(m.action_tokens(missing, B, T), base)
    assert torch.equal(m.action_tokens(None, B, T), base)
    y = m(z, tau, d, missing)
    assert close(y, m(z, tau, d, None)) and close(y, m(z, tau, d, {}))
    partly = {"crafter": torch.tensor([[3, -1, 0, -1, 16]] * B)}
    tokens = m.action_tokens(partly, B, T)
    table = m.action_embed.weight
    assert torch.equal(tokens[:, 1], base[:, 1]) and torch.equal(tokens[:, 3], base[:, 3])
    assert close(tokens[:, 0], base[:, 0] + table[3]) and close(
        tokens[:, 4], base[:, 4] + table[16]
    )
    assert not close(m(z, tau, d, partly), y)
    with pytest.raises(ValueError):
        m(z, tau, d, {"crafter": torch.full((B, T), 17)})
    with pytest.raises(ValueError):
        m(z, tau, d, {"keyboard": torch.zeros(B, T, dtype=torch.long)})


def test_changing_the_action_at_t_changes_predictions_from_t_on_only() -> None:
    m = model()
    z, tau, d = inputs()
    a = crafter()
    y = m(z, tau, d, a)
    for t in range(T):
        a2 = {"crafter": a["crafter"].clone()}
        a2["crafter"][:, t] = (a2["crafter"][:, t] + 5) % 17
        y2 = m(z, tau, d, a2)
        assert close(y2[:, :t], y[:, :t])
        for s in range(t, T):
            assert not close(y2[:, s], y[:, s])


def test_binary_and_categorical_components_vpt_like() -> None:
    cfg = DynamicsConfig(**{**CFG.__dict__, "actions": action_spec(VPT_SPACE)})
    assert len(cfg.actions) == 21 and cfg.actions[-1] == ("camera", "categorical", 121)
    m = model(cfg)
    z, tau, d = inputs(cfg)
    g = torch.Generator().manual_seed(3)
    actions = {name: torch.randint(0, 2, (B, T), generator=g) for name, _, _ in cfg.actions[:5]}
    actions["camera"] = torch.randint(0, 121, (B, T), generator=g)
    actions["attack"][:, 1] = -1  # one button unlabelled; the other 15 buttons absent = unlabelled
    y = m(z, tau, d, actions)
    assert y.shape == z.shape
    pressed = {**actions, "attack": actions["attack"].clone()}
    pressed["attack"][:, 2] = 1 - pressed["attack"][:, 2]
    y2 = m(z, tau, d, pressed)
    assert close(y2[:, :2], y[:, :2]) and not close(y2[:, 2], y[:, 2])
    # "off" (0) is information, unlabelled (-1) is not: they give different tokens
    off = m.action_tokens({"attack": torch.zeros(B, T, dtype=torch.long)}, B, T)
    unlabelled = m.action_tokens({"attack": torch.full((B, T), -1)}, B, T)
    assert not close(off, unlabelled) and torch.equal(unlabelled, m.action_base.expand(B, T, -1))
    with pytest.raises(ValueError):
        m(z, tau, d, {"attack": torch.full((B, T), 2)})


def test_step_by_step_with_kv_cache_equals_whole_sequence() -> None:
    m = model()
    z, tau, d = inputs()
    a = crafter()
    whole = m(z, tau, d, a)
    cache = m.new_cache()
    steps = [
        m(
            z[:, t : t + 1],
            tau[:, t : t + 1],
            d[:, t : t + 1],
            {"crafter": a["crafter"][:, t : t + 1]},
            cache=cache,
        )
        for t in range(T)
    ]
    assert cache.length == T
    assert torch.allclose(torch.cat(steps, 1), whole, atol=1e-5)


def test_independent_rows_ignore_the_past() -> None:
    m = model()
    z, tau, d = inputs()
    independent = torch.tensor([True, False])
    y = m(z, tau, d, crafter(), independent=independent)
    z2 = z.clone()
    z2[:, 0] += 1.0
    y2 = m(z2, tau, d, crafter(), independent=independent)
    assert close(y2[0, 1:], y[0, 1:]) and not close(y2[1, 1:], y[1, 1:])
