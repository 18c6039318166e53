"""Triton kernel for BaseConv's short convolution: ``naive.short_conv``'s signature, one launch.

One program per (block of BC channels, batch row) walks the sequence in tiles of BL positions: each output is
``w0 x[t-2] + w1 x[t-1] + w2 x[t]`` over the window ``state ++ u`` (fp32 accumulation), then the program
writes the next state, the window's last two inputs. A program reads everything of its rows before it writes
the state, and programs share no rows, so ``next_state`` may be ``state`` itself (the TensorRT plugin updates
it in place). Per launch: pointers and one int32 scalar (L), ordered inputs, scalar, outputs.
Layout ``[B, C, L]``, contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import check_runnable, compute_dtype
from ..spec import ACTIVATION, Arg, Launch
from .naive import KERNEL_SIZE


@triton.jit
def _window_at(u, state, rows, t, cmask, L):
    """Inputs at positions ``t`` (-2 .. L-1; negative = the state) of channel ``rows``: [BC, len(t)] fp32."""
    in_u = cmask[:, None] & ((t >= 0) & (t < L))[None, :]
    in_state = cmask[:, None] & ((t < 0) & (t >= -2))[None, :]
    from_u = tl.load(u + rows[:, None] * L + t[None, :], mask=in_u, other=0.0)
    from_state = tl.load(state + rows[:, None] * 2 + (t + 2)[None, :], mask=in_state, other=0.0)
    return tl.where((t >= 0)[None, :], from_u, from_state).to(tl.float32)


@triton.jit
def _short_conv_kernel(
    u,  # [B, CH, L]
    state,  # [B, CH, 2]: the two inputs before this call, oldest first
    weight,  # [CH, 1, 3]
    L,
    c,  # out: [B, CH, L], dtype of u
    next_state,  # out: [B, CH, 2] (may be state)
    CH: tl.constexpr,
    BC: tl.constexpr,
    BL: tl.constexpr,
):
    """Grid (channel blocks, B)."""
    channels = tl.program_id(0) * BC + tl.arange(0, BC)
    cmask = channels < CH
    rows = tl.program_id(1).to(tl.int64) * CH + channels
    w0 = tl.load(weight + channels * 3, mask=cmask, other=0.0).to(tl.float32)[:, None]
    w1 = tl.load(weight + channels * 3 + 1, mask=cmask, other=0.0).to(tl.float32)[:, None]
    w2 = tl.load(weight + channels * 3 + 2, mask=cmask, other=0.0).to(tl.float32)[:, None]
    for t0 in range(0, L, BL):
        t = t0 + tl.arange(0, BL)
        out = w0 * _window_at(u, state, rows, t - 2, cmask, L)
        out += w1 * _window_at(u, state, rows, t - 1, cmask, L)
        out += w2 * _window_at(u, state, rows, t, cmask, L)
        omask = cmask[:, None] & (t < L)[None, :]
        tl.store(c + rows[:, None] * L + t[None, :], out.to(c.dtype.element_ty), mask=omask)
    tail = _window_at(u, state, rows, L - 2 + tl.arange(0, 2), cmask, L)
    tl.store(
        next_state + rows[:, None] * 2 + tl.arange(0, 2)[None, :],
        tail.to(next_state.dtype.element_ty),
        mask=cmask[:, None],
    )


BLOCK_C = 64
BLOCK_L = 64

SHORT_CONV = Launch(
    "short_conv",
    _short_conv_kernel,
    inputs=(
        Arg("u", ACTIVATION, "B CH L"),
        Arg("state", ACTIVATION, "B CH 2"),
        Arg("weight", ACTIVATION, "CH 1 3"),
    ),
    scalars=(("L", "L"),),
    outputs=(Arg("c", ACTIVATION, "B CH L"), Arg("next_state", ACTIVATION, "B CH 2")),
    grid=("cdiv(CH, BC)", "B", "1"),
    constexprs=lambda d: {"CH": d["CH"], "BC": BLOCK_C, "BL": BLOCK_L},
    aliases={"next_state": "state"},
)


def short_conv(
    u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``naive.short_conv`` in one kernel launch: u [B, C, L], state [B, C, 2], weight [C, 1, 3]
    -> c [B, C, L] (dtype of u), the next state. The inputs are not modified."""
    if u.dim() != 3 or tuple(state.shape) != (u.shape[0], u.shape[1], KERNEL_SIZE - 1):
        raise ValueError(f"u {tuple(u.shape)} must be [B, C, L] and state {tuple(state.shape)} [B, C, 2]")
    if tuple(weight.shape) != (u.shape[1], 1, KERNEL_SIZE):
        raise ValueError(f"weight {tuple(weight.shape)} must be [C, 1, {KERNEL_SIZE}] for u {tuple(u.shape)}")
    dtype = compute_dtype(u, state, weight)
    c = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    next_state = torch.empty(state.shape, device=u.device, dtype=state.dtype)
    if u.numel() == 0:
        return c, state.clone()
    check_runnable(u, _short_conv_kernel)
    u, state, weight = (x.to(dtype).contiguous() for x in (u, state, weight))
    env = SHORT_CONV.bind({"u": u.shape, "weight": weight.shape})
    tensors = {"u": u, "state": state, "weight": weight, "c": c, "next_state": next_state}
    SHORT_CONV.launch(env, tensors)
    return c, next_state


__all__ = ["SHORT_CONV", "short_conv"]
