"""Sliding-window softmax attention with NeoX rotary embeddings (reference ``slide_attention.py``).

A query at position i attends to keys at positions i - W .. i, W = window_size // 2 (flash-attn
``window_size=(W, 0)``). The state is a ring of the last W post-rotary keys and values, slot = position % W,
so memory stays constant however long the sequence grows. The attention core lives in
``jrtc.plugins.swa``: ``naive`` (PyTorch) by default, the Triton kernel (``ops``) with ``use_kernels``.
"""

from __future__ import annotations

import torch
from torch import nn

from jrtc.plugins.swa import naive


def rotate_neox(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, base: float) -> torch.Tensor:
    """GPT-NeoX ("rotate half") rotary embedding of the first ``rotary_dim`` channels.

    x ``[B, H, L, hd]``, positions ``[B, L]`` (absolute, per sequence).
    """
    half = rotary_dim // 2
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, device=x.device, dtype=torch.float32) / rotary_dim)
    angles = positions.to(torch.float32)[:, None, :, None] * inv_freq  # [B, 1, L, half]
    cos, sin = angles.cos(), angles.sin()
    x32 = x.float()
    x1, x2, rest = x32[..., :half], x32[..., half:rotary_dim], x32[..., rotary_dim:]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
    return rotated.to(x.dtype)


class SlidingWindowAttention(nn.Module):
    def __init__(
        self, d_model: int, num_heads: int, window_size: int, rotary_fraction: float, rotary_base: float
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.ring = window_size // 2
        self.rotary_dim = int(rotary_fraction * self.head_dim)
        self.rotary_base = rotary_base
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        # Called through the instance: use_kernels and jrtc.export swap it.
        self.sliding_window_attention = naive.sliding_window_attention

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        shape = (self.num_heads, self.ring, self.head_dim)
        return {"k": (shape, "model"), "v": (shape, "model")}

    def forward(
        self,
        x: torch.Tensor,
        state: dict[str, torch.Tensor],
        pos: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # The reference does not apply the pad mask here: pads are ordinary tokens for SWA.
        batch, length, d_model = x.shape
        qkv = self.Wqkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        positions = pos[:, None] + torch.arange(length, device=x.device)  # [B, L]
        q = rotate_neox(qkv[0], positions, self.rotary_dim, self.rotary_base)
        k = rotate_neox(qkv[1], positions, self.rotary_dim, self.rotary_base)
        v = qkv[2]

        out, k_ring, v_ring = self.sliding_window_attention(q, k, v, state["k"], state["v"], pos)
        y = self.out_proj(out.transpose(1, 2).reshape(batch, length, d_model))
        return y, {"k": k_ring, "v": v_ring}
