"""Torch op for the short-convolution kernel: ``jrtc::short_conv``, ``naive``'s signature.

A ``torch.library.triton_op`` (see ``jrtc.plugins.pla.ops``): torch.export and AOTInductor compile its kernel
into a package, and its fake implementation comes from tracing the same launch code.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from . import fused


@triton_op("jrtc::short_conv", mutates_args={})
def _short_conv_op(u: Tensor, state: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    return fused.short_conv(u, state, weight)


def short_conv(u: Tensor, state: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """u [B,C,L], state [B,C,2], weight [C,1,3] -> c [B,C,L], next state. Same as ``naive.short_conv``."""
    return torch.ops.jrtc.short_conv(u, state, weight)


__all__ = ["short_conv"]
