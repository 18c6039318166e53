"""RMSNorm and the SwiGLU MLP of the Based/JRT blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # flash-attn's rms_norm normalizes in fp32 whatever the input dtype
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(self.weight.dtype)


class GatedMLP(nn.Module):
    """``fc2(y * silu(gate))`` with ``y, gate = fc1(x).chunk(2)``: the *second* half is the gate."""

    def __init__(self, d_model: int, n_inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, 2 * n_inner, bias=False)
        self.fc2 = nn.Linear(n_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))
