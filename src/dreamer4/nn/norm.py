"""RMSNorm (the pre-norm of every block, the final norm, QKNorm on attention heads) and
RunningRMS (every loss term of the paper divided by a running estimate of its RMS)."""

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


class RunningRMS(nn.Module):
    """Divides a loss term by a running estimate of its RMS (no gradient through the estimate)."""

    def __init__(self, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("mean_square", torch.zeros(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, term: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                value = term.detach().float() ** 2
                if self.count == 0:
                    self.mean_square.copy_(value)
                else:
                    self.mean_square.lerp_(value, 1 - self.decay)
                self.count += 1
        return term / self.mean_square.clamp(min=1e-12).sqrt()
