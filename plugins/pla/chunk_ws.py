"""Prefill kernels for prefix linear attention built around wide tensor-core tiles: same signatures and
semantics as ``naive`` (and ``chunk``), selectable, not yet the default (issue #9: it takes over once a GPU
run has timed it; see benchmarks/prefill_kernels.py, rows ``*_ws``).

What differs from ``chunk``, and why (benchmarks/results/pla_kernels-h200.md: today's kernel is bound by
a serial chain of small MMAs, layout shuffles through shared memory and register spills):

* Chunks of 64 tokens (``chunk`` uses 16), so the state is read out and updated once per 64 tokens with
  MMAs of M = 64 and K = 64, and its bf16 copy for the read-out is written to shared memory a quarter as often.
* The Taylor features are produced by the tensor cores, not by register shuffles: every kernel-order
  feature (see ``_common``) is ``x_p * x_a / 4`` for a position p and an anchor a of the 16-dim input, so
  ``X @ E_pos`` and ``X @ E_anc`` with constant 0/1 (and 1/4) selection matrices give both factors, exactly,
  already in the MMA accumulator layout; their product feeds the next MMA from registers. Query features are
  made token-major ``[C, rows]`` (the read-out's left operand), key features feature-major ``[rows, C]``
  (the update ``S += phi(K)^T V``'s left operand), so neither goes through shared memory.
* The normalizer z rides on the same MMAs: beside each numerator piece S_i a [rows, 16] accumulator
  Z_i = phi(K)^T [1 1 0 ...] is updated, and read out as phi(Q) [hi(z) lo(z) 0 ...] (z split into two
  half-precision parts, as ``chunk`` does), so no 153-wide z vector is reduced across threads per chunk.
* Intra-chunk scores are ``1 + s + s^2/2`` from the 16-dim ``s = q.k/4``, masked causally; rows past the end
  of the sequence load zeros (v = 0 adds nothing to S; the ones of the Z update skip them).
* Loads go through Triton's software pipeline (``tl.range(num_stages=...)``: cp.async into shared memory a
  few chunks ahead). Warp specialization does not apply: ``tl.range(..., warp_specialize=True)`` makes
  Triton 3.6's Hopper pass fail on this loop (``NVGPUWarpSpecialization``: PassManager::run failed, as in
  triton-lang/triton#9728 for pointer-based loops with dots) and Triton 3.9 ignores it on sm_90. No TMA
  descriptors either: a host descriptor is not a pointer argument, a device-side one needs Triton's global
  scratch, and the TensorRT AOT contract allows neither.
* One launch per op when batch*heads fill the GPU: ``pla_causal`` and ``pla_encode`` are then one kernel
  each. When they do not (B = 1), the sequence is split into segments: one launch writes the states of all
  segments but the last, and the causal kernel sums the ones before its segment itself (no scan launch).
  The encoder's split-K partials (only when batch*heads leave SMs idle) are summed by a second, small kernel.

Per launch only pointers and int32 scalars, float constants folded in (AOT-compilable for TensorRT
plugins); the state and every accumulation are fp32; layout is fla's ``[B, L, H, F]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._triton import check_runnable, dot, dot_precision, launcher, num_sms, symbolic
from . import chunk, naive
from ._common import EXPANDED_DIM, _pair_row, _rows_b

EXPANDED_DIM_C: tl.constexpr = tl.constexpr(EXPANDED_DIM)

# ---------------------------------------------------------------------------------------------------------
# The state inside the kernels, in three pieces of feature rows, all fp32 MMA accumulators:
#   piece 0, 1: the anchored pairs of _common's piece A, blocks 0..3 and 4..7, 64 rows each (row 0 of
#               piece 0 holds the constant feature 1; the other free slots are padding), carried as the
#               numerator S_i [64, BV] and the normalizer Z_i [64, 16] (z in columns 0 and 1, the rest 0);
#   piece B:    the diagonal x_p^2 / sqrt(32), then the linear x_p / 2 (32 rows), carried transposed, as
#               S_B^T [BV, 32] and Z_B^T [16, 32] (z in rows 0 and 1), so that its update has M = BV.
# Z is updated as ``phi(K)^T [1 1 0 ...]`` and read out as ``phi(Q) [hi(z) lo(z) 0 ...]``: the normalizer
# rides on the same tensor-core MMAs as the numerator, with z split into two half-precision parts.
# In memory every state is in naive's 153-row layout.
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _piece_rows(PIECE: tl.constexpr):
    """The 64 rows of piece 0 or 1: (position p, anchor a or -1 for none, memory row in naive's layout,
    whether the row exists)."""
    r = tl.arange(0, 64)
    blk = PIECE * 4 + r // 16
    pos = r % 16
    d = (pos - blk + 16) % 16
    anchor = tl.where((d >= 1) & (d <= 8), blk, blk + 8)
    free = d == 0
    const = free & (blk == 0)
    row = tl.where(free, 0, _pair_row(tl.minimum(pos, anchor), tl.maximum(pos, anchor)))
    return pos, tl.where(free, -1, anchor), row, const | (free == 0)


@triton.jit
def _load_piece(kv, z, cols, cmask, PIECE: tl.constexpr, DV: tl.constexpr):
    """One piece of a state in naive's layout (``kv``/``z`` point at the (b, h) state) -> S_i, Z_i."""
    _, _, row, ok = _piece_rows(PIECE)
    s = tl.load(kv + row[:, None] * DV + cols[None, :], mask=ok[:, None] & cmask[None, :], other=0.0)
    zi = tl.load(z + row, mask=ok, other=0.0)
    return s, tl.where(tl.arange(0, 16)[None, :] < 2, zi[:, None], 0.0)


@triton.jit
def _store_piece(kv, z, s, zm, cols, cmask, write_z, PIECE: tl.constexpr, DV: tl.constexpr):
    """Store one piece into naive's layout; z only where ``write_z`` (every value tile holds the same z)."""
    _, _, row, ok = _piece_rows(PIECE)
    tl.store(kv + row[:, None] * DV + cols[None, :], s, mask=ok[:, None] & cmask[None, :])
    if write_z:
        tl.store(z + row, tl.sum(tl.where(tl.arange(0, 16)[None, :] == 0, zm, 0.0), axis=1), mask=ok)


@triton.jit
def _load_state(kv, z, cols, cmask, DV: tl.constexpr):
    """A whole state: S_0, S_1 [64, BV], S_B^T [BV, 32], Z_0, Z_1 [64, 16], Z_B^T [16, 32]."""
    s0, z0 = _load_piece(kv, z, cols, cmask, 0, DV)
    s1, z1 = _load_piece(kv, z, cols, cmask, 1, DV)
    _, row = _rows_b()
    s_b = tl.load(kv + row[:, None] * DV + cols[None, :], mask=cmask[None, :], other=0.0)
    z_b = tl.where(tl.arange(0, 16)[:, None] < 2, tl.load(z + row)[None, :], 0.0)
    return s0, s1, tl.trans(s_b), z0, z1, z_b


@triton.jit
def _store_state(kv, z, s0, s1, s_bt, z0, z1, z_bt, cols, cmask, write_z, DV: tl.constexpr):
    _store_piece(kv, z, s0, z0, cols, cmask, write_z, 0, DV)
    _store_piece(kv, z, s1, z1, cols, cmask, write_z, 1, DV)
    _, row = _rows_b()
    tl.store(kv + row[:, None] * DV + cols[None, :], tl.trans(s_bt), mask=cmask[None, :])
    if write_z:
        tl.store(z + row, tl.sum(tl.where(tl.arange(0, 16)[:, None] == 0, z_bt, 0.0), axis=0))


@triton.jit
def _sum_states(kv, z, bh, first, last, cols, cmask, BV: tl.constexpr, DV: tl.constexpr):
    """Sum of the states first..last-1 of one b*h in a [B*H, NSEG, 153, DV] stack (naive's layout); a zero
    state when the range is empty."""
    s0 = tl.zeros([64, BV], tl.float32)
    s1 = tl.zeros([64, BV], tl.float32)
    s2 = tl.zeros([BV, 32], tl.float32)
    z0 = tl.zeros([64, 16], tl.float32)
    z1 = tl.zeros([64, 16], tl.float32)
    z2 = tl.zeros([16, 32], tl.float32)
    for seg in range(first, last):
        d0, d1, d2, e0, e1, e2 = _load_state(
            kv + (bh + seg) * EXPANDED_DIM_C * DV, z + (bh + seg) * EXPANDED_DIM_C, cols, cmask, DV
        )
        s0 += d0
        s1 += d1
        s2 += d2
        z0 += e0
        z1 += e1
        z2 += e2
    return s0, s1, s2, z0, z1, z2


# ---------------------------------------------------------------------------------------------------------
# Taylor features by selection MMAs
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _features(xt, PIECE: tl.constexpr, KEYS: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """Piece 0 or 1 of phi(X) for a [C, 16] tile: token-major [C, 64] for queries (the read-out's left
    operand), feature-major [64, C] for keys (the update's left operand), fp32.

    ``X @ E_pos`` and ``X @ E_anc`` with selection matrices E_pos[p, r] = [p == pos(r)] and
    E_anc[p, r] = [p == anchor(r)] / 4 return the two factors of every pair feature exactly (0, 1 and 1/4
    are exact in any dtype), already in the accumulator layout. Padding rows select nothing and come out 0.
    """
    pos, anchor, _, _ = _piece_rows(PIECE)
    p = tl.arange(0, 16)
    if KEYS:
        xx = tl.trans(xt)
        acc = tl.zeros([64, C], tl.float32)
        f = dot((pos[:, None] == p[None, :]).to(xt.dtype), xx, acc, PREC)
        f *= dot(tl.where(anchor[:, None] == p[None, :], 0.25, 0.0).to(xt.dtype), xx, acc, PREC)
        first = tl.arange(0, 64)[:, None] == 0
    else:
        acc = tl.zeros([C, 64], tl.float32)
        f = dot(xt, (p[:, None] == pos[None, :]).to(xt.dtype), acc, PREC)
        f *= dot(xt, tl.where(p[:, None] == anchor[None, :], 0.25, 0.0).to(xt.dtype), acc, PREC)
        first = tl.arange(0, 64)[None, :] == 0
    if PIECE == 0:
        f = tl.where(first, 1.0, f)  # the constant feature
    return f


@triton.jit
def _features_b(xt, C: tl.constexpr, PREC: tl.constexpr):
    """Piece B of phi(X) for a [C, 16] tile, token-major (queries and keys): fp32 [C, 32], the diagonal
    x_p^2 / sqrt(32), then x_p / 2, from ``X @ E_b`` with E_b[p, r] = [p == r mod 16]."""
    r = tl.arange(0, 32)
    e_b = (tl.arange(0, 16)[:, None] == r[None, :] % 16).to(xt.dtype)
    x_b = dot(xt, e_b, tl.zeros([C, 32], tl.float32), PREC)
    return x_b * tl.where(r[None, :] < 16, x_b * 0.17677669529663687, 0.5)


@triton.jit
def _z_operand(zm, index, dt: tl.constexpr, PREC: tl.constexpr):
    """Z (z in columns, or rows, 0 and 1: ``index`` is the column or row index) as the read-out's operand:
    in half precision the high part of z at index 0 and the remainder at 1 (about 16 bits together), in
    fp32 z at index 0."""
    if PREC == "":
        hi = zm.to(dt).to(tl.float32)
        out = tl.where(index == 0, hi, zm - hi).to(dt)
    else:
        out = tl.where(index == 0, zm, 0.0)
    return out


@triton.jit
def _readout(qt, s, zm, acc, dacc, PIECE: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """``acc += phi_i(Q) S_i`` and ``dacc += phi_i(Q) Z_i`` for one piece."""
    dt = qt.dtype
    f = _features(qt, PIECE, False, C, PREC).to(dt)
    return dot(f, s.to(dt), acc, PREC), dot(
        f, _z_operand(zm, tl.arange(0, 16)[None, :], dt, PREC), dacc, PREC
    )


@triton.jit
def _readout_b(qt, s_bt, z_bt, acc, dacc, C: tl.constexpr, PREC: tl.constexpr):
    """``acc += phi_B(Q) S_B`` and ``dacc += phi_B(Q) Z_B``."""
    dt = qt.dtype
    f = _features_b(qt, C, PREC).to(dt)
    zb = tl.trans(_z_operand(z_bt, tl.arange(0, 16)[:, None], dt, PREC))
    return dot(f, tl.trans(s_bt.to(dt)), acc, PREC), dot(f, zb, dacc, PREC)


@triton.jit
def _update(kt, vt, ones01, s, zm, PIECE: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """``S_i += phi_i(K)^T V`` and ``Z_i += phi_i(K)^T [1 1 0 ...]`` for one piece and chunk."""
    g = _features(kt, PIECE, True, C, PREC).to(vt.dtype)
    return dot(g, vt, s, PREC), dot(g, ones01, zm, PREC)


@triton.jit
def _update_b(kt, vt, valid, s_bt, z_bt, C: tl.constexpr, PREC: tl.constexpr):
    """``S_B^T += V^T phi_B(K)`` and ``Z_B^T += [1 1 0 ...]^T phi_B(K)`` (rows past the end add nothing:
    their keys and values are 0)."""
    g = _features_b(kt, C, PREC).to(vt.dtype)
    ones = tl.where((tl.arange(0, 16)[:, None] < 2) & valid[None, :], 1.0, 0.0).to(vt.dtype)
    return dot(tl.trans(vt), g, s_bt, PREC), dot(ones, g, z_bt, PREC)


@triton.jit
def _ones01(valid, dt: tl.constexpr):
    """[C, 16]: 1 in columns 0 and 1 of the rows of real tokens (past the end, the constant feature must not
    count)."""
    return tl.where(valid[:, None] & (tl.arange(0, 16)[None, :] < 2), 1.0, 0.0).to(dt)


@triton.jit
def _load_chunk(x_base, mask_base, offs_t, valid, width, cols, cmask, H, HAS_MASK: tl.constexpr):
    """A [C, len(cols)] tile of one (b, h) from a [B, L, H, width] tensor; rows past the end load 0, and with
    HAS_MASK rows whose key is masked too (keys are zeroed before the feature map, as in the reference)."""
    m = valid[:, None] & cmask[None, :]
    if HAS_MASK:
        m = m & (tl.load(mask_base + offs_t, mask=valid, other=0) != 0)[:, None]
    return tl.load(x_base + (offs_t * H * width)[:, None] + cols[None, :], mask=m, other=0.0)


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _ws_state_kernel(
    k,  # [B, L, H, 16]
    v,  # [B, L, H, DV]
    key_mask,  # [B, L] uint8, or any pointer when not HAS_MASK
    L,
    N,  # tokens reduced: the first N <= L of each sequence
    H,
    SEG_LEN,  # tokens per segment, a multiple of C
    kv_out,  # out: [B*H, NSEG, 153, DV] fp32 (naive's layout)
    z_out,  # out: [B*H, NSEG, 153]
    DV: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PREC: tl.constexpr,
    STAGES: tl.constexpr,
):
    """State ``sum phi(k_t) [v_t | 1]`` of each segment of the first N tokens: the whole encoder (one
    segment) or its split-K partials, and the segment states of the sequence-parallel causal pass.
    Grid (value tiles, segments, B*H)."""
    pid_v = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    cols = pid_v * BV + tl.arange(0, BV)
    cmask = cols < DV
    f = tl.arange(0, 16)
    k_base = k + (b.to(tl.int64) * L * H + h) * 16
    v_base = v + (b.to(tl.int64) * L * H + h) * DV
    m_base = key_mask + b.to(tl.int64) * L
    dt = v.dtype.element_ty
    ci = tl.arange(0, C)

    s0 = tl.zeros([64, BV], tl.float32)
    s1 = tl.zeros([64, BV], tl.float32)
    s2 = tl.zeros([BV, 32], tl.float32)
    z0 = tl.zeros([64, 16], tl.float32)
    z1 = tl.zeros([64, 16], tl.float32)
    z2 = tl.zeros([16, 32], tl.float32)
    t_start = pid_s * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, N)
    for t in tl.range(t_start, t_end, C, num_stages=STAGES):
        offs_t = t + ci
        valid = offs_t < t_end
        vt = _load_chunk(v_base, m_base, offs_t, valid, DV, cols, cmask, H, False)
        kt = _load_chunk(k_base, m_base, offs_t, valid, 16, f, f < 16, H, HAS_MASK).to(dt)
        ones01 = _ones01(valid, dt)
        s0, z0 = _update(kt, vt, ones01, s0, z0, 0, C, PREC)
        s1, z1 = _update(kt, vt, ones01, s1, z1, 1, C, PREC)
        s2, z2 = _update_b(kt, vt, valid, s2, z2, C, PREC)

    seg = pid_bh.to(tl.int64) * tl.num_programs(1) + pid_s
    _store_state(
        kv_out + seg * EXPANDED_DIM_C * DV, z_out + seg * EXPANDED_DIM_C,
        s0, s1, s2, z0, z1, z2, cols, cmask, pid_v == 0, DV,
    )  # fmt: skip


@triton.jit
def _ws_sum_states_kernel(
    st_kv,  # [B*H, NSEG, 153, DV] fp32 partial states
    st_z,  # [B*H, NSEG, 153]
    NSEG,
    kv_out,  # out: [B*H, 153, DV] their sum
    z_out,  # out: [B*H, 153]
    DV: tl.constexpr,
    BV: tl.constexpr,
):
    """The encoder's split-K reduction. Grid (value tiles, B*H)."""
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    cols = pid_v * BV + tl.arange(0, BV)
    cmask = cols < DV
    s0, s1, s2, z0, z1, z2 = _sum_states(st_kv, st_z, pid_bh * NSEG, 0, NSEG, cols, cmask, BV, DV)
    _store_state(
        kv_out + pid_bh * EXPANDED_DIM_C * DV, z_out + pid_bh * EXPANDED_DIM_C,
        s0, s1, s2, z0, z1, z2, cols, cmask, pid_v == 0, DV,
    )  # fmt: skip


@triton.jit
def _ws_causal_kernel(
    q,  # [B, L, H, 16]
    k,  # [B, L, H, 16]
    v,  # [B, L, H, DV]
    kv_init,  # [B*H, 153, DV] fp32 initial state (naive's layout)
    z_init,  # [B*H, 153]
    st_kv,  # [B*H, NSEG - 1, 153, DV] states of the segments before the last, when SPLIT
    st_z,  # [B*H, NSEG - 1, 153]
    key_mask,  # [B, L] uint8, or any pointer when not HAS_MASK
    L,
    H,
    SEG_LEN,  # tokens per segment (a multiple of C); L when not SPLIT
    o,  # out: [B, L, H, DV], dtype of v
    kv_out,  # out: [B*H, 153, DV] final state, written by the last segment
    z_out,  # out: [B*H, 153]
    DV: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
    HAS_MASK: tl.constexpr,
    SPLIT: tl.constexpr,
    PREC: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Causal chunked pass over one segment of one (b, h), for BV value columns. Grid (value tiles, segments,
    B*H). Per chunk: ``o = (tril(1 + s + s^2/2) V + phi(Q) S) / (rowsum + phi(Q) z)``, then the update."""
    pid_v = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    nseg = tl.num_programs(1)
    b = pid_bh // H
    h = pid_bh % H
    cols = pid_v * BV + tl.arange(0, BV)
    cmask = cols < DV
    f = tl.arange(0, 16)
    bh64 = pid_bh.to(tl.int64)
    row0 = b.to(tl.int64) * L * H + h
    q_base = q + row0 * 16
    k_base = k + row0 * 16
    v_base = v + row0 * DV
    o_base = o + row0 * DV
    m_base = key_mask + b.to(tl.int64) * L
    dt = v.dtype.element_ty

    # The state before this segment: (kv0, z0) plus, in the split path, every earlier segment's state.
    s0, s1, s2, z0, z1, z2 = _load_state(
        kv_init + bh64 * EXPANDED_DIM_C * DV, z_init + bh64 * EXPANDED_DIM_C, cols, cmask, DV
    )
    if SPLIT:
        d0, d1, d2, e0, e1, e2 = _sum_states(st_kv, st_z, bh64 * (nseg - 1), 0, pid_s, cols, cmask, BV, DV)
        s0 += d0
        s1 += d1
        s2 += d2
        z0 += e0
        z1 += e1
        z2 += e2

    ci = tl.arange(0, C)
    causal = ci[:, None] >= ci[None, :]
    t_start = pid_s * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, L)
    for t in tl.range(t_start, t_end, C, num_stages=STAGES):
        offs_t = t + ci
        valid = offs_t < t_end
        vt = _load_chunk(v_base, m_base, offs_t, valid, DV, cols, cmask, H, False)
        qt = _load_chunk(q_base, m_base, offs_t, valid, 16, f, f < 16, H, False).to(dt)
        kt = _load_chunk(k_base, m_base, offs_t, valid, 16, f, f < 16, H, HAS_MASK).to(dt)

        # Intra-chunk: 1 + s + s^2/2 from the 16-dim product; the causal mask also hides rows past the end.
        s = dot(qt, tl.trans(kt), tl.zeros([C, C], tl.float32), PREC)  # 4 (q.k / 4)
        a = tl.where(causal, 1.0 + s * (0.25 + s * 0.03125), 0.0)
        acc = dot(a.to(dt), vt, tl.zeros([C, BV], tl.float32), PREC)
        den = tl.sum(a, axis=1)

        # Inter-chunk: the state from before this chunk, through the query features.
        dacc = tl.zeros([C, 16], tl.float32)
        acc, dacc = _readout(qt, s0, z0, acc, dacc, 0, C, PREC)
        acc, dacc = _readout(qt, s1, z1, acc, dacc, 1, C, PREC)
        acc, dacc = _readout_b(qt, s2, z2, acc, dacc, C, PREC)
        out = acc / (den + tl.sum(dacc, axis=1) + 1e-12)[:, None]
        tl.store(
            o_base + (offs_t * H * DV)[:, None] + cols[None, :], out.to(o.dtype.element_ty),
            mask=valid[:, None] & cmask[None, :],
        )  # fmt: skip

        ones01 = _ones01(valid, dt)
        s0, z0 = _update(kt, vt, ones01, s0, z0, 0, C, PREC)
        s1, z1 = _update(kt, vt, ones01, s1, z1, 1, C, PREC)
        s2, z2 = _update_b(kt, vt, valid, s2, z2, C, PREC)

    if pid_s == nseg - 1:
        _store_state(
            kv_out + bh64 * EXPANDED_DIM_C * DV, z_out + bh64 * EXPANDED_DIM_C,
            s0, s1, s2, z0, z1, z2, cols, cmask, pid_v == 0, DV,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WsConfig(chunk.PrefillConfig):
    """Launch parameters of these kernels (fields as ``chunk.PrefillConfig``; ``num_stages`` is the depth
    of the load pipeline of the chunk loop). chunk must be a power of two >= 64 (M of the Hopper MMAs)."""

    chunk: int = 64
    num_stages: int = 3


# Not measured yet (issue #9): first guesses from the compiled resources (benchmarks/kernel_resources.py).
CAUSAL_CONFIG = WsConfig()
ENCODER_CONFIG = WsConfig()


def _block_v(dv: int, block_v: int | None) -> int:
    return block_v if block_v is not None else 64


def _encoder_segments(programs: int, count: int, chunk_len: int, device: torch.device) -> int:
    """Split-K segments of the encoder: none (one launch) once the programs fill the SMs, else up to ~2 per
    SM with at least 8 chunks each. Symbolic shapes take one segment."""
    sms = num_sms(device)
    if symbolic(programs, count) or programs >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, programs), count // (8 * chunk_len)))


def _check_config(config: WsConfig, dv: int) -> int:
    if config.chunk < 64 or config.chunk & (config.chunk - 1):
        raise ValueError(f"chunk {config.chunk}: these kernels take a power of two >= 64")
    bv = _block_v(dv, config.block_v)
    if bv < 16 or bv & (bv - 1):
        raise ValueError(f"block_v {bv}: a power of two >= 16")
    return bv


def _launch_kw(config: WsConfig) -> dict[str, int]:
    kw = config.launch()
    kw["num_stages"] = 1  # pipelining is the chunk loop's own (STAGES); no other loop has loads to pipeline
    return kw


def _segment_length(count: int, num_segments: int, chunk_len: int) -> tuple[int, int]:
    seg_len = triton.cdiv(triton.cdiv(count, num_segments), chunk_len) * chunk_len
    return seg_len, triton.cdiv(count, seg_len)


def _segment_states(
    k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, has_mask: bool, count: int, seg_len: int,
    nseg: int, config: WsConfig, bv: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """States of ``nseg`` segments of ``seg_len`` tokens: [B*H, nseg, 153, dv], z [B*H, nseg, 153]."""
    batch, length, heads, _ = k.shape
    dv = v.shape[-1]
    st_kv = torch.empty(batch * heads, nseg, EXPANDED_DIM, dv, device=k.device, dtype=torch.float32)
    st_z = torch.empty(batch * heads, nseg, EXPANDED_DIM, device=k.device, dtype=torch.float32)
    launcher(_ws_state_kernel)[(triton.cdiv(dv, bv), nseg, batch * heads)](
        k, v, mask, length, count, heads, seg_len, st_kv, st_z,
        DV=dv, BV=bv, C=config.chunk, HAS_MASK=has_mask, PREC=dot_precision(v),
        STAGES=config.num_stages, **_launch_kw(config),
    )  # fmt: skip
    return st_kv, st_z


# ---------------------------------------------------------------------------------------------------------
# Public functions (naive's signatures)
# ---------------------------------------------------------------------------------------------------------


def pla_encode(
    k_enc: torch.Tensor,
    v_enc: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    enc_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal encoder state over the first ``enc_length`` of L tokens (see ``naive.pla_encode``):
    kv [B,H,153,dv], z fp32."""
    return pla_encode_with(k_enc, v_enc, key_mask, enc_length, config=ENCODER_CONFIG)


def pla_encode_with(
    k_enc: torch.Tensor,
    v_enc: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    enc_length: int | None = None,
    *,
    config: WsConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``pla_encode`` with explicit launch parameters (tests and benchmarks)."""
    k_enc, v_enc, count, kv, z = chunk.encode_operands(k_enc, v_enc, enc_length)
    batch, length, heads, _ = k_enc.shape
    dv = v_enc.shape[-1]
    bv = _check_config(config, dv)
    if count == 0 or batch * heads == 0:
        return kv, z
    check_runnable(v_enc, _ws_state_kernel)
    mask = chunk._mask_arg(key_mask, (batch, length), v_enc)
    nv = triton.cdiv(dv, bv)
    nseg = config.num_segments
    if nseg is None:
        nseg = _encoder_segments(nv * batch * heads, count, config.chunk, v_enc.device)
    seg_len, nseg = _segment_length(count, nseg, config.chunk)
    if nseg == 1:  # one launch: the single segment's state is the result
        launcher(_ws_state_kernel)[(nv, 1, batch * heads)](
            k_enc, v_enc, mask, length, count, heads, seg_len, kv, z,
            DV=dv, BV=bv, C=config.chunk, HAS_MASK=key_mask is not None, PREC=dot_precision(v_enc),
            STAGES=config.num_stages, **_launch_kw(config),
        )  # fmt: skip
        return kv, z
    st_kv, st_z = _segment_states(k_enc, v_enc, mask, key_mask is not None, count, seg_len, nseg, config, bv)
    launcher(_ws_sum_states_kernel)[(nv, batch * heads)](st_kv, st_z, nseg, kv, z, DV=dv, BV=bv, num_warps=4)
    return kv, z


def pla_causal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv0: torch.Tensor,
    z0: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal linear attention from the state ``(kv0, z0)`` (see ``naive.pla_causal``) -> o, kv, z."""
    return pla_causal_with(q, k, v, kv0, z0, key_mask, config=CAUSAL_CONFIG)


def pla_causal_with(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv0: torch.Tensor,
    z0: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    config: WsConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pla_causal`` with explicit launch parameters (tests and benchmarks)."""
    q, k, v, kv0, z0, o = chunk.causal_operands(q, k, v, kv0, z0)
    batch, length, heads, _ = q.shape
    dv = v.shape[-1]
    bv = _check_config(config, dv)
    if length == 0 or batch * heads == 0:
        return o, kv0.clone(), z0.clone()
    check_runnable(v, _ws_causal_kernel)
    mask = chunk._mask_arg(key_mask, (batch, length), v)
    has_mask = key_mask is not None
    kv = torch.empty_like(kv0)
    z = torch.empty_like(z0)
    nv = triton.cdiv(dv, bv)
    nseg = config.num_segments
    if nseg is None:
        # chunk.py's rule: about two programs per SM when the programs leave SMs idle, segments of >= 4 chunks
        nseg = chunk._num_segments(nv * batch * heads, length, config.chunk, v.device, min_chunks=4)
    seg_len, nseg = _segment_length(length, nseg, config.chunk)
    # Split path: the states of all segments but the last, which each causal program sums up to its own.
    st_kv, st_z = kv0, z0  # never read when not split
    if nseg > 1:
        st_kv, st_z = _segment_states(k, v, mask, has_mask, length, seg_len, nseg - 1, config, bv)
    launcher(_ws_causal_kernel)[(nv, nseg, batch * heads)](
        q, k, v, kv0, z0, st_kv, st_z, mask, length, heads, seg_len, o, kv, z,
        DV=dv, BV=bv, C=config.chunk, HAS_MASK=has_mask, SPLIT=nseg > 1, PREC=dot_precision(v),
        STAGES=config.num_stages, **_launch_kw(config),
    )  # fmt: skip
    return o, kv, z


__all__ = [
    "CAUSAL_CONFIG",
    "ENCODER_CONFIG",
    "WsConfig",
    "naive",
    "pla_causal",
    "pla_causal_with",
    "pla_encode",
    "pla_encode_with",
]
