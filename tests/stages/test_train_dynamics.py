"""Stage `train_dynamics`: actions lead into frames, unlabelled rows lose them."""

from __future__ import annotations

import torch

from dreamer4.dynamics import shift_actions


def test_actions_are_shifted_to_lead_into_each_frame() -> None:
    # step index row t: the action taken after frame t (-1 = unlabelled)
    batch = {
        "action/crafter": torch.tensor([[3, 5, -1, 7], [1, 2, 3, 4]]),
        "latents": torch.zeros(2, 4, 1, 1),
    }
    out = shift_actions(batch)
    assert set(out) == {"crafter"}
    assert out["crafter"].tolist() == [[-1, 3, 5, -1], [-1, 1, 2, 3]]
    dropped = shift_actions(batch, drop=torch.tensor([False, True]))
    assert dropped["crafter"].tolist() == [[-1, 3, 5, -1], [-1, -1, -1, -1]]
