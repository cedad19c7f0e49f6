"""Exponential moving average of the weights (the shortcut sampler generates with EMA weights).

The paper does not give a decay; shortcut models use 0.999 and open reproductions report EMA
weights are essential for sampling. The effective decay is warmed up as min(decay,
(1 + n) / (10 + n)) after n updates, so short runs (the `tiny` profile) still get an average of
trained weights rather than of the initialisation.

Under ZeRO-3 each rank holds only its shard of every parameter (`p.ds_tensor`); the average is
kept per shard, so it costs 1/world of the model per rank, and is gathered only to export it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn


class Ema:
    def __init__(self, module: nn.Module, decay: float, zero3: bool) -> None:
        self.decay, self.zero3, self.updates = decay, zero3, 0
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.shadow = [self._source(p).detach().float().clone() for _, p in self.named]

    def _source(self, p: nn.Parameter) -> torch.Tensor:
        return p.ds_tensor if self.zero3 else p.data

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = [self._source(p).float() for _, p in self.named]
        torch._foreach_lerp_(self.shadow, current, 1.0 - decay)

    def local_state(self) -> dict[str, torch.Tensor]:
        """This rank's averages (whole tensors, or ZeRO-3 shards), for its checkpoint file."""
        return {name: t.contiguous() for (name, _), t in zip(self.named, self.shadow, strict=True)}

    def load_local_state(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for (name, _), t in zip(self.named, self.shadow, strict=True):
            if state[name].shape != t.shape:
                raise ValueError(
                    f"EMA tensor {name}: saved {tuple(state[name].shape)}, model {tuple(t.shape)}"
                )
            t.copy_(state[name])
        self.updates = updates

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the averaged weights (or ZeRO-3 shards) into the model."""
        with torch.no_grad():
            backup = [self._source(p).clone() for _, p in self.named]
            for (_, p), avg in zip(self.named, self.shadow, strict=True):
                self._source(p).copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), old in zip(self.named, backup, strict=True):
                    self._source(p).copy_(old)

    @torch.no_grad()
    def full_state(self) -> dict[str, torch.Tensor]:
        """Whole averaged tensors on every rank (a collective under ZeRO-3: all ranks call it)."""
        if not self.zero3:
            return self.local_state()

        out = {}
        for (name, p), shard in zip(self.named, self.shadow, strict=True):
            parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, shard)
            out[name] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).clone()
        return out
