"""Torch op for the sliding-window attention kernel: ``jrtc::sliding_window_attention``, ``naive``'s signature.

A ``torch.library.triton_op`` (see ``jrtc.plugins.pla.ops``): torch.export and AOTInductor compile its kernel
into the package. A single new token (decode) takes the reference path: W + 1 keys per query are too few for
a tiled kernel to pay, and Inductor fuses the reference's ops.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from . import naive, parallel


@triton_op("jrtc::sliding_window_attention", mutates_args={})
def _sliding_window_attention_op(
    q: Tensor, k: Tensor, v: Tensor, k_ring: Tensor, v_ring: Tensor, pos: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    if q.shape[2] == 1:
        return naive.sliding_window_attention(q, k, v, k_ring, v_ring, pos)
    return parallel.sliding_window_attention(q, k, v, k_ring, v_ring, pos)


def sliding_window_attention(
    q: Tensor, k: Tensor, v: Tensor, k_ring: Tensor, v_ring: Tensor, pos: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v [B,H,L,hd] post-rotary, rings [B,H,W,hd], pos [B] -> o [B,H,L,hd], next rings.
    Same as ``naive.sliding_window_attention``."""
    return torch.ops.jrtc.sliding_window_attention(q, k, v, k_ring, v_ring, pos)


__all__ = ["sliding_window_attention"]
