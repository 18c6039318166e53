"""Triton prefill kernels for prefix linear attention: same signatures and semantics as ``naive``.

* ``pla_encode``: the non-causal encoder state ``phi(K_enc)^T [V_enc | 1]`` as a split-K reduction: the
  M tokens are cut into segments, one program per (value tile, segment, batch*head) reduces its segment into
  a partial state, and a small kernel sums the partials into naive's 153-row layout.
* ``pla_causal``: chunked causal linear attention from an initial state. One program per (value tile,
  segment, batch*head) walks its chunks of C tokens in order, holding the state in fp32 registers:
  ``o_c = phi(Q_c) S + tril(1 + s + s^2/2) V_c`` with ``s = Q_c K_c^T / 4`` over the 16-dim keys, then
  ``S += phi(K_c)^T V_c``. The Taylor map is built in-kernel and never written to memory; the 153-dim
  expansion is used only for the state terms. When batch*heads cannot fill the GPU the sequence is split
  into segments (sequence parallelism): segment states, an exclusive prefix scan over them, then every
  segment's outputs from its prefix state.

All kernels take, per launch, only pointers, a grid and int32 scalars, ordered inputs, scalars, outputs,
with every float constant folded into the code, so the same sources can be compiled ahead of time for
TensorRT plugins. Layout is fla's: activations ``[B, L, H, F]``, contiguous; offsets within one sequence
are int32, so L * H * dv must stay below 2^31.

Precision: the state and all accumulations are fp32. The tensor-core dots take their operands in the
activation dtype (bf16 for the models: features, the state at each read-out, the intra-chunk scores);
the normalizer's z is split into a high and a low half-precision part so it keeps ~16 bits. fp32
activations use tf32x3 dots on GPUs (about fp32 accuracy). fp16 activations work, but the state read-out
overflows fp16 once a state entry passes 65504 (e.g. more than 65504 tokens): use bf16 or fp32 for long
prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from .._triton import check_runnable, compute_dtype, dot, dot_precision, num_sms, symbolic
from ..spec import ACTIVATION, Arg, Launch
from . import naive
from ._common import (
    EXPANDED_DIM,
    FEATURE_DIM,
    KERNEL_ROWS,
    _load_state_ko,
    _load_state_sym,
    _store_state_ko,
    _store_state_sym,
)

# Globals read inside kernels must be constexprs.
KERNEL_ROWS_C: tl.constexpr = tl.constexpr(KERNEL_ROWS)
EXPANDED_DIM_C: tl.constexpr = tl.constexpr(EXPANDED_DIM)

# ---------------------------------------------------------------------------------------------------------
# In-kernel Taylor feature map and the per-chunk state steps (kernel order: see _common)
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _features_a(x, C: tl.constexpr):
    """Piece A (anchored pairs, constant) of a [C, 16] tile -> [C, 128] in the tile's dtype.

    Computed as [C, 8 blocks, 16 positions]: x_p times one of the two anchor columns of the block, both
    taken from x by a reshape and split (register moves, no gathers or reductions). In half precision the
    product is rounded once, exactly as an fp32 product cast to half would be (the 1/4 is exact), and the
    half-width intermediates keep the register footprint down.
    """
    blk = tl.arange(0, 8)[:, None]
    pos = tl.arange(0, 16)[None, :]
    d = (pos - blk + 16) % 16
    low = (d >= 1) & (d <= 8)
    x_lo, x_hi = tl.split(tl.permute(tl.reshape(x, [C, 2, 8]), [0, 2, 1]))  # x[:, 0:8], x[:, 8:16]
    anchor = tl.where(low[None, :, :], x_lo[:, :, None], x_hi[:, :, None])
    f = (x[:, None, :] * 0.25).to(x.dtype) * anchor
    f = tl.where(d[None, :, :] == 0, tl.where(blk[None, :, :] == 0, 1.0, 0.0).to(x.dtype), f)
    return tl.reshape(f, [C, 128])


@triton.jit
def _features_b(x, C: tl.constexpr):
    """Piece B of a [C, 16] fp32 tile -> [C, 32] fp32: the diagonal x_p^2 / sqrt(32), then x_p / 2."""
    j = tl.arange(0, 2)[None, :, None]
    x3 = x[:, None, :]
    return tl.reshape(tl.where(j == 0, x3 * x3 * 0.17677669529663687, x3 * 0.5), [C, 32])


# Inside the chunk loops the state is carried transposed, S^T [BV, rows], so that its update
# V^T phi(K) is a dot with M = BV (a warpgroup MMA for BV = 64) whose big operand phi(K) [C, rows] goes to
# shared memory untransposed. z^T is carried in rows 0 and 1 of a [16, rows] matrix (both accumulate z) so
# that its update and its read-out are tensor-core dots too, with no cross-warp reductions per chunk: the
# read-out splits z into a half-precision high part (row 0) and the remainder (row 1), one dot for both.


@triton.jit
def _ones_rows01(C: tl.constexpr, dt: tl.constexpr):
    """[16, C] matrix with ones in rows 0 and 1: ``_ones_rows01 @ phi(K)`` adds column sums to z^T rows 0, 1."""
    r = tl.arange(0, 16)[:, None]
    return tl.where((r < 2) & (tl.arange(0, C)[None, :] >= 0), 1.0, 0.0).to(dt)


@triton.jit
def _zrows(z):
    return tl.where(tl.arange(0, 16)[:, None] < 2, z[None, :], 0.0)


@triton.jit
def _zvec(zr):
    return tl.sum(tl.where(tl.arange(0, 16)[:, None] == 0, zr, 0.0), axis=0)


@triton.jit
def _zsplit(zr, dt: tl.constexpr):
    """z^T rows for the read-out dot: row 0 the high part in ``dt``, row 1 the remainder (0 in fp32)."""
    r = tl.arange(0, 16)[:, None]
    hi = zr.to(dt).to(tl.float32)
    return tl.where(r == 0, hi, tl.where(r == 1, zr - hi, 0.0)).to(dt)


@triton.jit
def _chunk_update(kt, vt, w, ones01, s_a, s_b, z_a, z_b, C: tl.constexpr, PREC: tl.constexpr):
    """``S^T += V^T phi(K)`` and ``z^T += 1^T phi(K)`` for one chunk, pieces A and B; ``w`` zeroes rows past
    the end (they must add nothing, not phi(0) = e_0)."""
    dt = vt.dtype
    f_a = _features_a(kt, C) * w.to(dt)
    f_b = (_features_b(kt.to(tl.float32), C) * w).to(dt)
    vtt = tl.trans(vt)
    s_a = dot(vtt, f_a, s_a, PREC)
    s_b = dot(vtt, f_b, s_b, PREC)
    z_a = dot(ones01, f_a, z_a, PREC)
    z_b = dot(ones01, f_b, z_b, PREC)
    return s_a, s_b, z_a, z_b


@triton.jit
def _chunk_readout(qt, acc, den, s_a, s_b, z_a, z_b, C: tl.constexpr, PREC: tl.constexpr):
    """Add ``phi(Q) S`` to ``acc`` and ``phi(Q) z`` to ``den`` for one chunk (state from before the chunk)."""
    dt = qt.dtype
    g_a = _features_a(qt, C)
    g_b = _features_b(qt.to(tl.float32), C).to(dt)
    acc = dot(g_a, tl.trans(s_a.to(dt)), acc, PREC)
    acc = dot(g_b, tl.trans(s_b.to(dt)), acc, PREC)
    dacc = dot(g_a, tl.trans(_zsplit(z_a, dt)), tl.zeros([C, 16], tl.float32), PREC)
    dacc = dot(g_b, tl.trans(_zsplit(z_b, dt)), dacc, PREC)
    return acc, den + tl.sum(dacc, axis=1)


@triton.jit
def _load_keys(k_base, mask_base, offs_t, valid, H, HAS_MASK: tl.constexpr):
    """Load a [C, 16] key tile; masked keys are zeroed before the feature map, as in the reference."""
    f = tl.arange(0, 16)
    kt = tl.load(k_base + (offs_t * H * 16)[:, None] + f[None, :], mask=valid[:, None], other=0.0)
    if HAS_MASK:
        km = tl.load(mask_base + offs_t, mask=valid, other=0)
        kt = tl.where(km[:, None] != 0, kt, 0.0)
    return kt


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _pla_segment_state_kernel(
    k,  # [B, L, H, 16]
    v,  # [B, L, H, DV]
    key_mask,  # [B, L] uint8, or any pointer when not HAS_MASK
    L,
    N,  # tokens reduced: the first N <= L of each sequence
    H,
    SEG_LEN,  # tokens per segment, a multiple of C
    st_kv,  # out: [B*H, NSEG, 160, DV] fp32, kernel order
    st_z,  # out: [B*H, NSEG, 160] fp32
    DV: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PREC: tl.constexpr,
):
    """Partial state ``sum phi(k_t) [v_t | 1]`` over one segment of the first N tokens: the split-K step of
    the encoder and the first pass of the sequence-parallel causal path. Grid (value tiles, segments, B*H)."""
    pid_v = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    nseg = tl.num_programs(1)
    b = pid_bh // H
    h = pid_bh % H
    cols = pid_v * BV + tl.arange(0, BV)
    cmask = cols < DV
    k_base = k + (b.to(tl.int64) * L * H + h) * 16
    v_base = v + (b.to(tl.int64) * L * H + h) * DV
    m_base = key_mask + b.to(tl.int64) * L
    dt = v.dtype.element_ty
    ci = tl.arange(0, C)
    ones01 = _ones_rows01(C, dt)

    s_a = tl.zeros([BV, 128], tl.float32)
    s_b = tl.zeros([BV, 32], tl.float32)
    z_a = tl.zeros([16, 128], tl.float32)
    z_b = tl.zeros([16, 32], tl.float32)
    t_start = pid_s * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, N)
    for t in range(t_start, t_end, C):
        offs_t = t + ci
        valid = offs_t < t_end
        vmask = valid[:, None] & cmask[None, :]
        vt = tl.load(v_base + (offs_t * H * DV)[:, None] + cols[None, :], mask=vmask, other=0.0)
        kt = _load_keys(k_base, m_base, offs_t, valid, H, HAS_MASK).to(dt)
        w = valid.to(tl.float32)[:, None]
        s_a, s_b, z_a, z_b = _chunk_update(kt, vt, w, ones01, s_a, s_b, z_a, z_b, C, PREC)

    seg = pid_bh.to(tl.int64) * nseg + pid_s
    _store_state_ko(
        st_kv + seg * KERNEL_ROWS_C * DV, st_z + seg * KERNEL_ROWS_C,
        tl.trans(s_a), tl.trans(s_b), _zvec(z_a), _zvec(z_b), cols, cmask, pid_v == 0, DV,
    )  # fmt: skip


@triton.jit
def _pla_state_scan_kernel(
    st_kv,  # [B*H, NSEG, 160, DV] fp32 partial states, kernel order
    st_z,  # [B*H, NSEG, 160]
    kv_init,  # [B*H, 153, DV] initial state (naive layout), or any pointer when not HAS_INIT
    z_init,  # [B*H, 153]
    NSEG,
    prefix_kv,  # out: [B*H, NSEG, 160, DV] exclusive prefix states (kernel order), when WRITE_PREFIX
    prefix_z,  # out: [B*H, NSEG, 160]
    kv_out,  # out: [B*H, 153, DV] initial state + all segments (naive layout)
    z_out,  # out: [B*H, 153]
    DV: tl.constexpr,
    BV: tl.constexpr,
    HAS_INIT: tl.constexpr,
    WRITE_PREFIX: tl.constexpr,
):
    """Sequential scan over the (few) segment states of one (value tile, b*h). Grid (value tiles, B*H)."""
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    cols = pid_v * BV + tl.arange(0, BV)
    cmask = cols < DV
    wz = pid_v == 0
    if HAS_INIT:
        s_a, s_b, z_a, z_b = _load_state_sym(
            kv_init + pid_bh * EXPANDED_DIM_C * DV, z_init + pid_bh * EXPANDED_DIM_C, cols, cmask, DV
        )
    else:
        s_a = tl.zeros([128, BV], tl.float32)
        s_b = tl.zeros([32, BV], tl.float32)
        z_a = tl.zeros([128], tl.float32)
        z_b = tl.zeros([32], tl.float32)
    for seg in range(0, NSEG):
        off = pid_bh * NSEG + seg
        if WRITE_PREFIX:
            _store_state_ko(
                prefix_kv + off * KERNEL_ROWS_C * DV, prefix_z + off * KERNEL_ROWS_C,
                s_a, s_b, z_a, z_b, cols, cmask, wz, DV,
            )  # fmt: skip
        d_a, d_b, dz_a, dz_b = _load_state_ko(
            st_kv + off * KERNEL_ROWS_C * DV, st_z + off * KERNEL_ROWS_C, cols, cmask, DV
        )
        s_a += d_a
        s_b += d_b
        z_a += dz_a
        z_b += dz_b
    _store_state_sym(
        kv_out + pid_bh * EXPANDED_DIM_C * DV, z_out + pid_bh * EXPANDED_DIM_C,
        s_a, s_b, z_a, z_b, cols, cmask, wz, DV,
    )  # fmt: skip


@triton.jit
def _pla_chunk_fwd_kernel(
    q,  # [B, L, H, 16]
    k,  # [B, L, H, 16]
    v,  # [B, L, H, DV]
    kv_init,  # [B*H, 153, DV] fp32 initial state (naive layout), read when not SPLIT
    z_init,  # [B*H, 153]
    prefix_kv,  # [B*H, NSEG, 160, DV] per-segment initial states (kernel order), read when SPLIT
    prefix_z,  # [B*H, NSEG, 160]
    key_mask,  # [B, L] uint8, or any pointer when not HAS_MASK
    L,
    H,
    SEG_LEN,
    o,  # out: [B, L, H, DV], dtype of v
    kv_out,  # out: [B*H, 153, DV] final state, written when not SPLIT (the scan writes it otherwise)
    z_out,  # out: [B*H, 153]
    DV: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
    HAS_MASK: tl.constexpr,
    SPLIT: tl.constexpr,
    PREC: tl.constexpr,
):
    """Causal chunked pass over one segment of one (b, h), for BV value columns.
    Grid (value tiles, segments, B*H)."""
    pid_v = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    nseg = tl.num_programs(1)
    b = pid_bh // H
    h = pid_bh % H
    cols = pid_v * BV + tl.arange(0, BV)
    cmask = cols < DV
    bh64 = pid_bh.to(tl.int64)
    q_base = q + (b.to(tl.int64) * L * H + h) * 16
    k_base = k + (b.to(tl.int64) * L * H + h) * 16
    v_base = v + (b.to(tl.int64) * L * H + h) * DV
    o_base = o + (b.to(tl.int64) * L * H + h) * DV
    m_base = key_mask + b.to(tl.int64) * L
    dt = v.dtype.element_ty

    # Initial state: the op's (kv0, z0) in naive's layout, or this segment's prefix from the scan.
    if SPLIT:
        seg = bh64 * nseg + pid_s
        s_a, s_b, z_a, z_b = _load_state_ko(
            prefix_kv + seg * KERNEL_ROWS_C * DV, prefix_z + seg * KERNEL_ROWS_C, cols, cmask, DV
        )
    else:
        s_a, s_b, z_a, z_b = _load_state_sym(
            kv_init + bh64 * EXPANDED_DIM_C * DV, z_init + bh64 * EXPANDED_DIM_C, cols, cmask, DV
        )
    s_a = tl.trans(s_a)
    s_b = tl.trans(s_b)
    z_a = _zrows(z_a)
    z_b = _zrows(z_b)

    f = tl.arange(0, 16)
    ci = tl.arange(0, C)
    ones01 = _ones_rows01(C, dt)
    t_start = pid_s * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, L)
    for t in range(t_start, t_end, C):
        offs_t = t + ci
        valid = offs_t < t_end
        vmask = valid[:, None] & cmask[None, :]
        vt = tl.load(v_base + (offs_t * H * DV)[:, None] + cols[None, :], mask=vmask, other=0.0)
        qt = tl.load(q_base + (offs_t * H * 16)[:, None] + f[None, :], mask=valid[:, None], other=0.0).to(dt)
        kt = _load_keys(k_base, m_base, offs_t, valid, H, HAS_MASK).to(dt)

        # Intra-chunk: scores 1 + s + s^2/2 straight from the 16-dim q.k; columns past the end masked.
        s = dot(qt, tl.trans(kt), tl.zeros([C, C], tl.float32), PREC) * 0.25
        a = tl.where((ci[:, None] >= ci[None, :]) & valid[None, :], 1.0 + s + 0.5 * s * s, 0.0)
        den = tl.sum(a, axis=1)
        acc = dot(a.to(dt), vt, tl.zeros([C, BV], tl.float32), PREC)

        # Inter-chunk: the state from before this chunk through the expanded features; then add the chunk.
        acc, den = _chunk_readout(qt, acc, den, s_a, s_b, z_a, z_b, C, PREC)
        out = acc / (den[:, None] + 1e-12)
        tl.store(o_base + (offs_t * H * DV)[:, None] + cols[None, :], out.to(o.dtype.element_ty), mask=vmask)
        w = valid.to(tl.float32)[:, None]
        s_a, s_b, z_a, z_b = _chunk_update(kt, vt, w, ones01, s_a, s_b, z_a, z_b, C, PREC)

    if not SPLIT:
        _store_state_sym(
            kv_out + bh64 * EXPANDED_DIM_C * DV, z_out + bh64 * EXPANDED_DIM_C,
            tl.trans(s_a), tl.trans(s_b), _zvec(z_a), _zvec(z_b), cols, cmask, pid_v == 0, DV,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Launches (plugins/spec.py). The constexprs are the engine's: bf16 activations, key mask given, and the
# tiles of CAUSAL_CONFIG / ENGINE_ENCODER_CHUNK; the torch ops override them per call.
# ---------------------------------------------------------------------------------------------------------

D, R = EXPANDED_DIM, KERNEL_ROWS  # state rows in naive's layout (153) and in kernel order (160)
ENGINE_ENCODER_CHUNK = 32  # the encoder's chunk in engines: chunk 64 needs 59 KiB of shared memory, over 48


def _block_v(dv: int, block_v: int | None = None) -> int:
    if block_v is not None:
        return block_v
    return max(16, min(64, triton.next_power_of_2(dv)))


# Partial states of segments of the first N tokens: the encoder's split-K step (N = min(L, enc_length)) and
# the first pass of the sequence-parallel causal path (N = L). SEGMENTS: ~4 programs per SM, at least 8
# chunks per segment (the encoder has no sequential dependency); the causal path presets it.
PLA_SEGMENT_STATE = Launch(
    "pla_segment_state",
    _pla_segment_state_kernel,
    inputs=(
        Arg("k", ACTIVATION, "B L H 16"),
        Arg("v", ACTIVATION, "B L H DV"),
        Arg("key_mask", "int32", "B L"),
    ),
    scalars=(("L", "L"), ("N", "N"), ("H", "H"), ("SEG_LEN", "SEG_LEN")),
    outputs=(
        Arg("st_kv", "float32", f"B*H NSEG {R} DV"),
        Arg("st_z", "float32", f"B*H NSEG {R}"),
    ),
    attributes=("enc_length",),
    derived=(
        ("N", "min(L, enc_length)"),
        ("NV", "cdiv(DV, BV)"),
        ("SEGMENTS", "max(1, min(cdiv(SMS*4, NV*B*H), N // (C*8)))"),
        ("SEG_LEN", "cdiv(cdiv(N, SEGMENTS), C) * C"),
        ("NSEG", "cdiv(N, SEG_LEN)"),
    ),
    grid=("NV", "NSEG", "B*H"),
    constexprs=lambda d: {
        "DV": d["DV"],
        "BV": _block_v(d["DV"]),
        "C": ENGINE_ENCODER_CHUNK,
        "HAS_MASK": True,
        "PREC": "",
    },  # fmt: skip
    num_stages=2,
)

_SCAN_INPUTS = (Arg("st_kv", "float32", f"BH NSEG {R} DV"), Arg("st_z", "float32", f"BH NSEG {R}"))
_SCAN_OUTPUTS = (Arg("kv_out", "float32", f"BH {D} DV"), Arg("z_out", "float32", f"BH {D}"))

# The encoder's state: the sum of its segment states (naive's layout, [B*H, 153, dv]).
PLA_ENCODE_SCAN = Launch(
    "pla_encode_scan",
    _pla_state_scan_kernel,
    inputs=_SCAN_INPUTS,
    scalars=(("NSEG", "NSEG"),),
    outputs=_SCAN_OUTPUTS,
    grid=("cdiv(DV, BV)", "BH", "1"),
    constexprs=lambda d: {"DV": d["DV"], "BV": _block_v(d["DV"]), "HAS_INIT": False, "WRITE_PREFIX": False},
    unused=("kv_init", "z_init", "prefix_kv", "prefix_z"),
)

# Sequence-parallel causal path, pass 2: exclusive prefix states of the segments from (kv0, z0), and the
# final state.
PLA_CAUSAL_SCAN = Launch(
    "pla_causal_scan",
    _pla_state_scan_kernel,
    inputs=(*_SCAN_INPUTS, Arg("kv_init", "float32", f"BH {D} DV"), Arg("z_init", "float32", f"BH {D}")),
    scalars=(("NSEG", "NSEG"),),
    outputs=(
        Arg("prefix_kv", "float32", f"BH NSEG {R} DV"),
        Arg("prefix_z", "float32", f"BH NSEG {R}"),
        *_SCAN_OUTPUTS,
    ),
    grid=("cdiv(DV, BV)", "BH", "1"),
    constexprs=lambda d: {"DV": d["DV"], "BV": _block_v(d["DV"]), "HAS_INIT": True, "WRITE_PREFIX": True},
)

_CHUNK_INPUTS = (
    Arg("q", ACTIVATION, "B L H 16"),
    Arg("k", ACTIVATION, "B L H 16"),
    Arg("v", ACTIVATION, "B L H DV"),
)
_CHUNK_SCALARS = (("L", "L"), ("H", "H"), ("SEG_LEN", "SEG_LEN"))


def _chunk_constexprs(split: bool) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda d: {
        "DV": d["DV"], "BV": _block_v(d["DV"]), "C": CAUSAL_CONFIG.chunk, "HAS_MASK": True, "SPLIT": split,
        "PREC": "",
    }  # fmt: skip


# Causal chunked pass over whole sequences from (kv0, z0): one launch, the engines' causal prefill.
PLA_CAUSAL = Launch(
    "pla_causal",
    _pla_chunk_fwd_kernel,
    inputs=(
        *_CHUNK_INPUTS,
        Arg("kv_init", "float32", f"B H {D} DV"),
        Arg("z_init", "float32", f"B H {D}"),
        Arg("key_mask", "int32", "B L"),
    ),
    scalars=_CHUNK_SCALARS,
    outputs=(
        Arg("o", ACTIVATION, "B L H DV"),
        Arg("kv_out", "float32", f"B H {D} DV"),
        Arg("z_out", "float32", f"B H {D}"),
    ),
    derived=(("SEG_LEN", "L"),),
    grid=("cdiv(DV, BV)", "1", "B*H"),
    constexprs=_chunk_constexprs(split=False),
    unused=("prefix_kv", "prefix_z"),
    num_stages=2,
)

# Sequence-parallel causal path, pass 3: every segment's outputs from its prefix state.
PLA_CAUSAL_SPLIT = Launch(
    "pla_causal_split",
    _pla_chunk_fwd_kernel,
    inputs=(
        *_CHUNK_INPUTS,
        Arg("prefix_kv", "float32", f"BH NSEG {R} DV"),
        Arg("prefix_z", "float32", f"BH NSEG {R}"),
        Arg("key_mask", "int32", "B L"),
    ),
    scalars=_CHUNK_SCALARS,
    outputs=(Arg("o", ACTIVATION, "B L H DV"),),
    grid=("cdiv(DV, BV)", "NSEG", "B*H"),
    constexprs=_chunk_constexprs(split=True),
    unused=("kv_init", "z_init", "kv_out", "z_out"),
    num_stages=2,
)


# ---------------------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefillConfig:
    """Launch parameters of the prefill kernels.

    chunk: tokens per chunk C (intra-chunk tile is C x C). block_v: value columns per program (power of
    two, >= 16; None = min(64, dv rounded up)). num_segments: sequence segments per (b, h); 1 = no sequence
    parallelism, None = pick by occupancy. num_warps / num_stages: Triton's. maxnreg: register cap per
    thread (None = the compiler's choice), which trades spills for more resident programs per SM.
    Defaults: the best measured on an H200 (benchmarks/results/prefill_kernels-h200.json, "sweep").
    """

    chunk: int = 16
    block_v: int | None = None
    num_segments: int | None = None
    num_warps: int = 4
    num_stages: int = 2
    maxnreg: int | None = None

    def launch(self) -> dict[str, int]:
        """Keyword arguments for the Triton launch."""
        kw = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.maxnreg is not None:
            kw["maxnreg"] = self.maxnreg
        return kw


# Defaults: the best of the launch sweeps of benchmarks/prefill_kernels.py on an H200
# (benchmarks/results/prefill_kernels-sweep-h200.json). Causal at B=16 H=16 T=8192: chunk 16 1.82 ms,
# 64 1.99 ms, 32 2.05 ms; 8 warps or a register cap (more resident programs, more spills) were slower.
# A later sweep (prefill_kernels-sweep2-h200.json) measured 3 pipeline stages at 1.60 ms against 1.83 ms
# for 2 (a candidate for the next GPU check), and the encoder without its register cap (maxnreg 168)
# within noise of it: the cap is dropped, since Inductor cannot pass maxnreg to a kernel it embeds.
CAUSAL_CONFIG = PrefillConfig(chunk=16)
ENCODER_CONFIG = PrefillConfig(chunk=64)


def _num_segments(programs: int, length: int, chunk: int, device: torch.device, min_chunks: int) -> int:
    """Sequence segments per (b, h) for the causal pass.

    Splitting costs an extra pass over k and v (the segment states), so it pays only when the
    (value tile, b*h) programs leave SMs idle: below one program per SM, split until there are about two
    per SM (what stays resident at the kernel's register use), keeping each segment at least
    ``min_chunks`` chunks long. On an H200, B=1 H=16 T=32k: 16 segments 0.70 ms, 17 segments 1.02 ms.

    With symbolic shapes (torch.export, AOTInductor) the choice of code path would become a guard on them,
    so compiled programs take the unsplit path.
    """
    sms = num_sms(device)
    if symbolic(programs, length) or programs >= sms:
        return 1
    want = (2 * sms) // programs  # rounded down: a few programs past two per SM would make a second wave
    most = max(1, length // (min_chunks * chunk))
    return max(1, min(want, most))


def _check_inputs(name: str, x: torch.Tensor, dims: int, last: int | None = None) -> None:
    if x.dim() != dims or (last is not None and x.shape[-1] != last):
        raise ValueError(
            f"{name}: expected {dims} dims"
            + (f" ending in {last}" if last else "")
            + f", got {tuple(x.shape)}"
        )


def _check_dv(dv: int) -> None:
    if dv % 16 != 0 or not 16 <= dv <= 128:
        raise ValueError(f"value dim {dv} is not supported: it must be a multiple of 16 up to 128")


def _mask_arg(key_mask: torch.Tensor | None, shape: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
    if key_mask is None:
        return ref  # never read (HAS_MASK=False): any pointer will do
    if tuple(key_mask.shape) != shape:
        raise ValueError(f"key_mask: expected {shape}, got {tuple(key_mask.shape)}")
    return key_mask.to(device=ref.device, dtype=torch.int32).contiguous()  # as the plugins take it


def _tuning(config: PrefillConfig, dv: int, has_mask: bool, v: torch.Tensor) -> dict[str, Any]:
    """The torch op's constexprs over the engine's: this call's tiles, mask and dot precision."""
    return {
        "BV": _block_v(dv, config.block_v),
        "C": config.chunk,
        "HAS_MASK": has_mask,
        "PREC": dot_precision(v),
    }


def encode_operands(
    k_enc: torch.Tensor, v_enc: torch.Tensor, enc_length: int | None
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """``pla_encode``'s operands checked and made ready for a kernel: k_enc and v_enc contiguous in their
    common dtype, the count of tokens to reduce, and the zero (kv, z) the kernels accumulate into."""
    _check_inputs("k_enc", k_enc, 4, FEATURE_DIM)
    _check_inputs("v_enc", v_enc, 4)
    batch, length, heads, _ = k_enc.shape
    dv = v_enc.shape[-1]
    _check_dv(dv)
    count = length if enc_length is None else torch.sym_min(length, enc_length)
    kv = torch.zeros(batch, heads, EXPANDED_DIM, dv, device=v_enc.device, dtype=torch.float32)
    z = torch.zeros(batch, heads, EXPANDED_DIM, device=v_enc.device, dtype=torch.float32)
    dtype = compute_dtype(k_enc, v_enc)
    return k_enc.to(dtype).contiguous(), v_enc.to(dtype).contiguous(), count, kv, z


def causal_operands(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv0: torch.Tensor, z0: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """``pla_causal``'s operands checked and made ready for a kernel: q, k, v contiguous in their common
    dtype, the initial state fp32 and contiguous on v's device, and the output o (uninitialized)."""
    _check_inputs("q", q, 4, FEATURE_DIM)
    _check_inputs("k", k, 4, FEATURE_DIM)
    _check_inputs("v", v, 4)
    batch, length, heads, _ = q.shape
    dv = v.shape[-1]
    _check_dv(dv)
    if tuple(k.shape) != tuple(q.shape) or tuple(v.shape[:3]) != (batch, length, heads):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree")
    if tuple(kv0.shape) != (batch, heads, EXPANDED_DIM, dv) or tuple(z0.shape) != (
        batch,
        heads,
        EXPANDED_DIM,
    ):
        raise ValueError(f"kv0 {tuple(kv0.shape)} / z0 {tuple(z0.shape)} do not match q and v")
    kv0 = kv0.to(device=v.device, dtype=torch.float32).contiguous()
    z0 = z0.to(device=v.device, dtype=torch.float32).contiguous()
    o = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    dtype = compute_dtype(q, k, v)
    q, k, v = (x.to(dtype).contiguous() for x in (q, k, v))
    return q, k, v, kv0, z0, o


def segment_states(
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    num_segments: int,
    config: PrefillConfig,
    count: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Partial states of the first ``count`` tokens (all when None) over ``num_segments`` equal segments
    (kernel order): ``[B*H, NSEG, 160, dv]``, z, and the segment length."""
    batch, length, heads, _ = k.shape
    env = PLA_SEGMENT_STATE.bind(
        {"k": k.shape, "v": v.shape},
        {"enc_length": length if count is None else count},
        constexprs=_tuning(config, v.shape[-1], key_mask is not None, v),
        SMS=num_sms(k.device),
        SEGMENTS=num_segments,
    )
    out = PLA_SEGMENT_STATE.allocate(env, k.device, v.dtype)
    tensors = {"k": k, "v": v, "key_mask": _mask_arg(key_mask, (batch, length), k), **out}
    PLA_SEGMENT_STATE.launch(env, tensors, **config.launch())
    return out["st_kv"], out["st_z"], env["SEG_LEN"]


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
    config: PrefillConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``pla_encode`` with explicit launch parameters (tests and benchmarks): the launches
    ``PLA_SEGMENT_STATE`` (the segments' partial states) and ``PLA_ENCODE_SCAN`` (their sum)."""
    k_enc, v_enc, count, kv, z = encode_operands(k_enc, v_enc, enc_length)
    batch, length, heads, _ = k_enc.shape
    dv = v_enc.shape[-1]
    if count == 0 or batch * heads == 0:
        return kv, z
    check_runnable(v_enc, _pla_segment_state_kernel)
    dtype = k_enc.dtype
    segments = {} if config.num_segments is None else {"SEGMENTS": config.num_segments}
    tuning = _tuning(config, dv, key_mask is not None, v_enc)
    env = PLA_SEGMENT_STATE.bind(
        {"k": k_enc.shape, "v": v_enc.shape},
        {"enc_length": count},
        constexprs=tuning,
        SMS=num_sms(v_enc.device),
        **segments,
    )
    partial = PLA_SEGMENT_STATE.allocate(env, v_enc.device, dtype)
    mask = _mask_arg(key_mask, (batch, length), k_enc)
    PLA_SEGMENT_STATE.launch(env, {"k": k_enc, "v": v_enc, "key_mask": mask, **partial}, **config.launch())
    scan = PLA_ENCODE_SCAN.bind(
        {name: t.shape for name, t in partial.items()}, constexprs={"BV": tuning["BV"]}
    )
    out = {"kv_out": kv.view(batch * heads, EXPANDED_DIM, dv), "z_out": z.view(batch * heads, EXPANDED_DIM)}
    PLA_ENCODE_SCAN.launch(scan, {**partial, **out}, num_warps=4)
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
    config: PrefillConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pla_causal`` with explicit launch parameters (tests and benchmarks): one ``PLA_CAUSAL`` launch, or
    the sequence-parallel ``PLA_SEGMENT_STATE``, ``PLA_CAUSAL_SCAN``, ``PLA_CAUSAL_SPLIT``."""
    q, k, v, kv0, z0, o = causal_operands(q, k, v, kv0, z0)
    batch, length, heads, _ = q.shape
    dv = v.shape[-1]
    if length == 0 or batch * heads == 0:
        return o, kv0.clone(), z0.clone()
    check_runnable(v, _pla_chunk_fwd_kernel)
    mask = _mask_arg(key_mask, (batch, length), v)
    kv = torch.empty_like(kv0)
    z = torch.empty_like(z0)
    tuning = _tuning(config, dv, key_mask is not None, v)
    nv = triton.cdiv(dv, tuning["BV"])
    nseg = config.num_segments
    if nseg is None:
        nseg = _num_segments(nv * batch * heads, length, config.chunk, v.device, min_chunks=4)
    launch = config.launch()
    tensors = {"q": q, "k": k, "v": v, "key_mask": mask, "o": o}
    if nseg <= 1:
        env = PLA_CAUSAL.bind({"q": q.shape, "v": v.shape}, constexprs=tuning)
        PLA_CAUSAL.launch(env, {**tensors, "kv_init": kv0, "z_init": z0, "kv_out": kv, "z_out": z}, **launch)
        return o, kv, z
    # Sequence parallel: segment states, exclusive scan from (kv0, z0), then each segment's outputs.
    st_kv, st_z, seg_len = segment_states(k, v, key_mask, nseg, config)
    flat = {  # the (b, h) states as the scan kernel indexes them
        "kv_init": kv0.view(batch * heads, EXPANDED_DIM, dv), "z_init": z0.view(batch * heads, EXPANDED_DIM),
        "kv_out": kv.view(batch * heads, EXPANDED_DIM, dv), "z_out": z.view(batch * heads, EXPANDED_DIM),
    }  # fmt: skip
    scan = PLA_CAUSAL_SCAN.bind({"st_kv": st_kv.shape}, constexprs={"BV": tuning["BV"]})
    prefix = {"prefix_kv": torch.empty_like(st_kv), "prefix_z": torch.empty_like(st_z)}
    PLA_CAUSAL_SCAN.launch(scan, {"st_kv": st_kv, "st_z": st_z, **flat, **prefix}, num_warps=4)
    env = PLA_CAUSAL_SPLIT.bind(
        {"q": q.shape, "v": v.shape, "prefix_kv": st_kv.shape}, constexprs=tuning, SEG_LEN=seg_len
    )
    PLA_CAUSAL_SPLIT.launch(env, {**tensors, **prefix}, **launch)
    return o, kv, z


__all__ = [
    "CAUSAL_CONFIG",
    "PLA_CAUSAL",
    "PLA_CAUSAL_SCAN",
    "PLA_CAUSAL_SPLIT",
    "PLA_ENCODE_SCAN",
    "PLA_SEGMENT_STATE",
    "ENCODER_CONFIG",
    "PrefillConfig",
    "naive",
    "pla_causal",
    "pla_causal_with",
    "pla_encode",
    "pla_encode_with",
]
