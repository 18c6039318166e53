"""BaseConv's short convolution in plain PyTorch: the reference of the kernel (``fused``).

Layout ``[B, C, L]`` (channels before length, as ``torch.nn.Conv1d``). The state is the two inputs before the
call, oldest first, which is all a width-3 causal convolution needs to continue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNEL_SIZE = 3


def short_conv(
    u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of ``u [B, C, L]`` continuing from ``state [B, C, 2]`` (the two previous
    inputs) with ``weight [C, 1, 3]`` -> ``c [B, C, L]`` and the next state."""
    window = torch.cat([state, u], dim=-1)  # [B, C, 2 + L]
    c = F.conv1d(window, weight, groups=weight.shape[0])  # valid conv: L outputs
    return c, window[..., -(KERNEL_SIZE - 1) :]
