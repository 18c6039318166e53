"""Sliding-window softmax attention over a ring of past keys, in plain PyTorch: the reference of the kernel.

Layout ``[B, H, L, hd]`` (heads before length, unlike PLA's ``[B, L, H, F]``), q and k post-rotary. A query at
position i attends to keys at positions i - W .. i, W = window_size // 2 (flash-attn ``window_size=(W, 0)``).
The state is a ring of the last W keys and values, slot = position % W, so memory stays constant however
long the sequence grows.
"""

from __future__ import annotations

import torch


def ring_positions(end: torch.Tensor, ring: int) -> torch.Tensor:
    """For each slot s, the latest position p < end with p % ring == s (negative: never written). ``[B, ring]``."""
    slots = torch.arange(ring, device=end.device)
    last = end[:, None] - 1
    return last - torch.remainder(last - slots, ring)


def next_ring(ring: torch.Tensor, new: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The ring after a call: slot s holds the latest position < pos + L that maps to it, from this call's
    ``new [B, H, L, hd]`` (positions pos .. pos + L - 1) where it came in this call, else as it was."""
    batch, heads, window, dim = ring.shape
    latest = ring_positions(pos + new.shape[2], window)  # [B, W]
    from_call = latest >= pos[:, None]
    index = (latest - pos[:, None]).clamp(min=0)[:, None, :, None].expand(batch, heads, window, dim)
    return torch.where(from_call[:, None, :, None], new.gather(2, index), ring)


def sliding_window_attention(
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
    length, head_dim = q.shape[2], q.shape[3]
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
    return out, next_ring(k_ring, k, pos), next_ring(v_ring, v, pos)
