"""Sliding-window softmax attention with NeoX rotary embeddings (reference ``slide_attention.py``).

A query at position i attends to keys at positions i - W .. i, W = window_size // 2 (flash-attn
``window_size=(W, 0)``). The state is a ring of the last W post-rotary keys and values, slot = position % W,
so memory stays constant however long the sequence grows.
"""

from __future__ import annotations

import torch
from torch import nn


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


def ring_positions(end: torch.Tensor, ring: int) -> torch.Tensor:
    """For each slot s, the latest position p < end with p % ring == s (negative: never written). ``[B, ring]``."""
    slots = torch.arange(ring, device=end.device)
    last = end[:, None] - 1
    return last - torch.remainder(last - slots, ring)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax attention of ``L`` new tokens over the ring and themselves, and the next ring.

    q, k, v ``[B, H, L, hd]`` (post-rotary), rings ``[B, H, W, hd]`` (slot = position % W), pos ``[B]``
    -> o ``[B, H, L, hd]`` (dtype of q) and the next rings.
    """
    batch, heads, length, head_dim = q.shape
    ring = k_ring.shape[2]
    positions = pos[:, None] + torch.arange(length, device=q.device)  # [B, L]
    keys = torch.cat([k_ring, k], dim=2)  # [B, H, ring + L, hd]
    values = torch.cat([v_ring, v], dim=2)
    key_pos = torch.cat([ring_positions(pos, ring), positions], dim=1)  # [B, ring + L]
    query_pos = positions[:, :, None]
    visible = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= query_pos)
    visible &= key_pos[:, None, :] >= query_pos - ring
    scores = torch.einsum("bhld,bhmd->bhlm", q.float(), keys.float()) * head_dim**-0.5
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    out = torch.einsum("bhlm,bhmd->bhld", scores.softmax(-1), values.float()).to(q.dtype)

    # Slot s now holds the latest position < pos + L that maps to it: new if it was in this call.
    latest = ring_positions(pos + length, ring)
    from_call = latest >= pos[:, None]
    index = torch.where(from_call, ring + latest - pos[:, None], torch.arange(ring, device=q.device))
    index = index[:, None, :, None].expand(batch, heads, ring, head_dim)
    return out, keys.gather(2, index), values.gather(2, index)


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
        self.window_attention = window_attention  # called through the instance: jrtc.export swaps it

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

        out, k_ring, v_ring = self.window_attention(q, k, v, state["k"], state["v"], pos)
        y = self.out_proj(out.transpose(1, 2).reshape(batch, length, d_model))
        return y, {"k": k_ring, "v": v_ring}
