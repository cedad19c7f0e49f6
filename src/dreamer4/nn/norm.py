"""RMSNorm: the pre-norm of every block, the final norm, and QKNorm on attention heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain, computed in fp32.

    fp32 because the mean of squares loses precision in bf16 (CPU profiles train under bf16
    autocast); the result is cast back to the input dtype so the next matmul stays cheap.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        return y.to(x.dtype)
