"""Triton kernel for sliding-window attention over the ring and the new tokens: ``naive``'s signature.

One program per (block of BLOCK_M queries, b*h) runs a flash-attention loop (online softmax in fp32) over the
keys it can see: ring slots whose positions are within the window of some query of the block (only blocks
that start within W of the call's first token have any), then the new keys from W before the block to its
last query. Work is O(L * W), never an L x L score matrix. The next ring is a gather (``naive.next_ring``).

Per launch: pointers and one int32 scalar (L), ordered inputs, scalar, outputs, every float constant folded
into the code (the softmax scale is a constexpr), so the source compiles ahead of time for TensorRT plugins.
Layout ``[B, H, L, hd]``, contiguous; hd up to 128 (padded to a power of two in registers).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._triton import check_runnable, compute_dtype, dot, dot_precision
from ..spec import ACTIVATION, Arg, Launch
from . import naive

NEG_LARGE: tl.constexpr = tl.constexpr(
    -1.0e30
)  # the running max starts finite, so a block with nothing visible gives exp2(-inf) = 0


@triton.jit
def _attend(q, kb, vb, visible, m_i, l_i, acc, SCALE_LOG2E: tl.constexpr, PREC: tl.constexpr):
    """One online-softmax step of a [BM, BD] query block over a [BN, BD] key/value block."""
    s = dot(q, tl.trans(kb), tl.zeros([q.shape[0], kb.shape[0]], tl.float32), PREC) * SCALE_LOG2E
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = dot(p.to(vb.dtype), vb, acc * alpha[:, None], PREC)
    return m_new, l_i, acc


@triton.jit
def _swa_fwd_kernel(
    q,  # [B, H, L, HD] post-rotary
    k,  # [B, H, L, HD]
    v,  # [B, H, L, HD]
    k_ring,  # [B, H, W, HD], slot = position % W
    v_ring,  # [B, H, W, HD]
    pos,  # [B] int32: position of each row's first new token
    L,
    o,  # out: [B, H, L, HD], dtype of q
    H: tl.constexpr,
    W: tl.constexpr,
    HD: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    SCALE_LOG2E: tl.constexpr,
    PREC: tl.constexpr,
):
    """Grid (query blocks, B*H)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    start = tl.load(pos + b)
    d = tl.arange(0, BD)
    dmask = d < HD
    rows = pid_m * BM + tl.arange(0, BM)  # query indices within the call
    base = pid_bh * L * HD
    q_blk = tl.load(
        q + base + rows[:, None] * HD + d[None, :], mask=(rows < L)[:, None] & dmask[None, :], other=0.0
    )
    m_i = tl.full([BM], NEG_LARGE, tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)

    # Ring slots: positions before the call, seen by queries within W of its start.
    if pid_m * BM < W:
        ring_base = pid_bh * W * HD
        for s0 in range(0, W, BN):
            slots = s0 + tl.arange(0, BN)
            last = start - 1
            slot_pos = last - (((last - slots) % W) + W) % W  # naive.ring_positions
            visible = (slot_pos >= 0)[None, :] & (slot_pos[None, :] >= (start + rows)[:, None] - W)
            visible &= (slots < W)[None, :]
            kv_off = ring_base + slots[:, None] * HD + d[None, :]
            kv_mask = (slots < W)[:, None] & dmask[None, :]
            kb = tl.load(k_ring + kv_off, mask=kv_mask, other=0.0).to(q_blk.dtype)
            vb = tl.load(v_ring + kv_off, mask=kv_mask, other=0.0).to(q_blk.dtype)
            m_i, l_i, acc = _attend(q_blk, kb, vb, visible, m_i, l_i, acc, SCALE_LOG2E, PREC)

    # New keys from W before the block's first query to its last one.
    lo = tl.maximum(pid_m * BM - W, 0) // BN * BN
    hi = tl.minimum((pid_m + 1) * BM, L)
    for j0 in range(lo, hi, BN):
        cols = j0 + tl.arange(0, BN)
        visible = (
            (cols[None, :] <= rows[:, None]) & (cols[None, :] >= rows[:, None] - W) & (cols < L)[None, :]
        )
        kv_off = base + cols[:, None] * HD + d[None, :]
        kv_mask = (cols < L)[:, None] & dmask[None, :]
        kb = tl.load(k + kv_off, mask=kv_mask, other=0.0)
        vb = tl.load(v + kv_off, mask=kv_mask, other=0.0)
        m_i, l_i, acc = _attend(q_blk, kb, vb, visible, m_i, l_i, acc, SCALE_LOG2E, PREC)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # every real query sees itself; padding rows are 0
    tl.store(
        o + base + rows[:, None] * HD + d[None, :],
        out.to(o.dtype.element_ty),
        mask=(rows < L)[:, None] & dmask[None, :],
    )


# Launch configuration: flash-attention's usual tiles, halved along the keys for head dims over 64 and in two
# pipeline stages, so that a launch needs at most 48 KiB of shared memory (40 KiB at hd 64 in bf16; what a
# TensorRT plugin can count on, see jrtc.plugins.aot). The CPU tests pass small tiles so that they cover
# several blocks, ring blocks included. Not yet tuned on a GPU.
BLOCK_M = 64
BLOCK_N = 64


def _block_n(block_d: int) -> int:
    return BLOCK_N if block_d <= 64 else BLOCK_N // 2


SLIDING_WINDOW_ATTENTION = Launch(
    "sliding_window_attention",
    _swa_fwd_kernel,
    inputs=(
        Arg("q", ACTIVATION, "B H L HD"),
        Arg("k", ACTIVATION, "B H L HD"),
        Arg("v", ACTIVATION, "B H L HD"),
        Arg("k_ring", ACTIVATION, "B H W HD"),
        Arg("v_ring", ACTIVATION, "B H W HD"),
        Arg("pos", "int32", "B"),
    ),
    scalars=(("L", "L"),),
    outputs=(Arg("o", ACTIVATION, "B H L HD"),),
    grid=("cdiv(L, BM)", "B*H", "1"),
    constexprs=lambda d: {
        "H": d["H"],
        "W": d["W"],
        "HD": d["HD"],
        "BD": max(16, triton.next_power_of_2(d["HD"])),
        "BM": BLOCK_M,
        "BN": BLOCK_N,
        "SCALE_LOG2E": d["HD"] ** -0.5 * math.log2(math.e),
        "PREC": "",
    },  # fmt: skip
)


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    pos: torch.Tensor,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``naive.sliding_window_attention`` with the attention in one kernel launch."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must all be [B, H, L, hd]"
        )
    batch, heads, length, head_dim = q.shape
    window = k_ring.shape[2]
    if tuple(k_ring.shape) != (batch, heads, window, head_dim) or v_ring.shape != k_ring.shape:
        raise ValueError(
            f"rings {tuple(k_ring.shape)}, {tuple(v_ring.shape)} do not match q {tuple(q.shape)}"
        )
    if not 16 <= head_dim <= 128:
        raise ValueError(f"head dim {head_dim} is not supported: it must be between 16 and 128")
    o = torch.empty_like(q)
    if length == 0 or batch * heads == 0:
        return o, k_ring.clone(), v_ring.clone()
    check_runnable(q, _swa_fwd_kernel)
    dtype = compute_dtype(q, k, v)
    q, k, v = (x.to(dtype).contiguous() for x in (q, k, v))
    tuning = {"PREC": dot_precision(q)}
    tuning.update({"BM": block_m} if block_m else {})
    tuning.update({"BN": block_n} if block_n else {})
    env = SLIDING_WINDOW_ATTENTION.bind({"q": q.shape, "k_ring": k_ring.shape}, constexprs=tuning)
    tensors = {"q": q, "k": k, "v": v, "k_ring": k_ring.contiguous(), "v_ring": v_ring.contiguous(), "o": o}
    SLIDING_WINDOW_ATTENTION.launch(env, {**tensors, "pos": pos.to(torch.int32).contiguous()})
    return o, naive.next_ring(k_ring, k, pos), naive.next_ring(v_ring, v, pos)


__all__ = ["BLOCK_M", "BLOCK_N", "SLIDING_WINDOW_ATTENTION", "sliding_window_attention"]
