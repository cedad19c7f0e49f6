"""SwiGLU feed-forward layer."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
    """Hidden size `mlp_ratio * width * 2/3`, rounded up to a multiple of 8.

    The 2/3 keeps the parameter count of a plain `mlp_ratio` MLP despite SwiGLU's third
    matrix; multiples of 8 keep matmuls aligned for tensor cores.
    """
    return 8 * math.ceil(mlp_ratio * width * 2 / 3 / 8)


class SwiGLU(nn.Module):
    """`out(silu(gate(x)) * up(x))`, without biases; gate and up share one matmul."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.out = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.out(F.silu(gate) * up)
