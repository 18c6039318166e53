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
TensorRT plugins. Layout is fla's: activations ``[B, L, H, F]``, contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import naive
from ._common import (
    EXPANDED_DIM,
    FEATURE_DIM,
    KERNEL_ROWS,
    _features_2d,
    _load_block_ko,
    _load_block_sym,
    _store_block_ko,
    _store_block_sym,
    check_runnable,
    compute_dtype,
    num_sms,
)

# Globals read inside kernels must be constexprs.
KERNEL_ROWS_C: tl.constexpr = tl.constexpr(KERNEL_ROWS)
EXPANDED_DIM_C: tl.constexpr = tl.constexpr(EXPANDED_DIM)

# ---------------------------------------------------------------------------------------------------------
# Chunk steps, one 16-feature block of the Taylor map at a time (see _common for the block order)
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    # fp32 operands (tests, fp32 models) use full-precision dots; Triton's fp32 default would be tf32.
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _block_update(kt, kf, vt, w, s, c, BLOCK: tl.constexpr, IEEE: tl.constexpr):
    """``S_b += phi_b(K)^T V`` and ``z_b += sum phi_b(K)`` over one chunk; ``w`` zeroes rows past the end
    (they must add nothing, not phi(0) = e_0)."""
    f = _features_2d(kf, BLOCK) * w
    s = _dot(tl.trans(f.to(vt.dtype)), vt, s, IEEE)
    c += tl.sum(f, axis=0)
    return s, c


@triton.jit
def _block_step(qt, qf, kt, kf, vt, w, acc, den, s, c, BLOCK: tl.constexpr, IEEE: tl.constexpr):
    """Read block BLOCK of the state into the chunk's outputs, then add the chunk to it."""
    g = _features_2d(qf, BLOCK)
    acc = _dot(g.to(vt.dtype), s.to(vt.dtype), acc, IEEE)
    den += tl.sum(g * c[None, :], axis=1)  # the normalizer stays fp32, on the CUDA cores
    s, c = _block_update(kt, kf, vt, w, s, c, BLOCK, IEEE)
    return acc, den, s, c


@triton.jit
def _load_keys(k_base, mask_base, offs_t, valid, H, HAS_MASK: tl.constexpr):
    """Load a [C, 16] key tile; masked keys are zeroed before the feature map, as in the reference."""
    f = tl.arange(0, 16)
    kt = tl.load(k_base + (offs_t * H * 16)[:, None] + f[None, :], mask=valid[:, None], other=0.0)
    if HAS_MASK:
        km = tl.load(mask_base + offs_t, mask=valid, other=0)
        kt = tl.where(km[:, None] != 0, kt, 0.0)
    return kt


@triton.jit
def _load_block(kv_sym, z_sym, kv_ko, z_ko, cols, cmask, BLOCK: tl.constexpr, DV: tl.constexpr,
                KO: tl.constexpr):  # fmt: skip
    if KO:
        return _load_block_ko(kv_ko, z_ko, cols, cmask, BLOCK, DV)
    else:
        return _load_block_sym(kv_sym, z_sym, cols, cmask, BLOCK, DV)


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _pla_segment_state_kernel(
    k,  # [B, L, H, 16]
    v,  # [B, L, H, DV]
    key_mask,  # [B, L] uint8, or any pointer when not HAS_MASK
    L,
    H,
    SEG_LEN,  # tokens per segment, a multiple of C
    st_kv,  # out: [B*H, NSEG, 160, DV] fp32, kernel order
    st_z,  # out: [B*H, NSEG, 160] fp32
    DV: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Partial state ``sum phi(k_t) [v_t | 1]`` over one segment: the split-K step of the encoder and the
    first pass of the sequence-parallel causal path. Grid (value tiles, segments, B*H)."""
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

    s0 = tl.zeros([16, BV], tl.float32)
    s1 = tl.zeros([16, BV], tl.float32)
    s2 = tl.zeros([16, BV], tl.float32)
    s3 = tl.zeros([16, BV], tl.float32)
    s4 = tl.zeros([16, BV], tl.float32)
    s5 = tl.zeros([16, BV], tl.float32)
    s6 = tl.zeros([16, BV], tl.float32)
    s7 = tl.zeros([16, BV], tl.float32)
    s8 = tl.zeros([16, BV], tl.float32)
    s9 = tl.zeros([16, BV], tl.float32)
    c0 = tl.zeros([16], tl.float32)
    c1 = tl.zeros([16], tl.float32)
    c2 = tl.zeros([16], tl.float32)
    c3 = tl.zeros([16], tl.float32)
    c4 = tl.zeros([16], tl.float32)
    c5 = tl.zeros([16], tl.float32)
    c6 = tl.zeros([16], tl.float32)
    c7 = tl.zeros([16], tl.float32)
    c8 = tl.zeros([16], tl.float32)
    c9 = tl.zeros([16], tl.float32)

    t_start = pid_s * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, L)
    for t in range(t_start, t_end, C):
        offs_t = t + tl.arange(0, C)
        valid = offs_t < t_end
        vt = tl.load(
            v_base + (offs_t * H * DV)[:, None] + cols[None, :], mask=valid[:, None] & cmask[None, :], other=0.0
        )
        kt = _load_keys(k_base, m_base, offs_t, valid, H, HAS_MASK).to(vt.dtype)
        kf = kt.to(tl.float32)
        w = valid.to(tl.float32)[:, None]
        s0, c0 = _block_update(kt, kf, vt, w, s0, c0, 0, IEEE)
        s1, c1 = _block_update(kt, kf, vt, w, s1, c1, 1, IEEE)
        s2, c2 = _block_update(kt, kf, vt, w, s2, c2, 2, IEEE)
        s3, c3 = _block_update(kt, kf, vt, w, s3, c3, 3, IEEE)
        s4, c4 = _block_update(kt, kf, vt, w, s4, c4, 4, IEEE)
        s5, c5 = _block_update(kt, kf, vt, w, s5, c5, 5, IEEE)
        s6, c6 = _block_update(kt, kf, vt, w, s6, c6, 6, IEEE)
        s7, c7 = _block_update(kt, kf, vt, w, s7, c7, 7, IEEE)
        s8, c8 = _block_update(kt, kf, vt, w, s8, c8, 8, IEEE)
        s9, c9 = _block_update(kt, kf, vt, w, s9, c9, 9, IEEE)

    seg = pid_bh.to(tl.int64) * nseg + pid_s
    kv_o = st_kv + seg * KERNEL_ROWS_C * DV
    z_o = st_z + seg * KERNEL_ROWS_C
    wz = pid_v == 0
    _store_block_ko(kv_o, z_o, s0, c0, cols, cmask, wz, 0, DV)
    _store_block_ko(kv_o, z_o, s1, c1, cols, cmask, wz, 1, DV)
    _store_block_ko(kv_o, z_o, s2, c2, cols, cmask, wz, 2, DV)
    _store_block_ko(kv_o, z_o, s3, c3, cols, cmask, wz, 3, DV)
    _store_block_ko(kv_o, z_o, s4, c4, cols, cmask, wz, 4, DV)
    _store_block_ko(kv_o, z_o, s5, c5, cols, cmask, wz, 5, DV)
    _store_block_ko(kv_o, z_o, s6, c6, cols, cmask, wz, 6, DV)
    _store_block_ko(kv_o, z_o, s7, c7, cols, cmask, wz, 7, DV)
    _store_block_ko(kv_o, z_o, s8, c8, cols, cmask, wz, 8, DV)
    _store_block_ko(kv_o, z_o, s9, c9, cols, cmask, wz, 9, DV)


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
    """Sequential scan over the (few) segment states of one (value tile, b*h), one 16-row block at a time.
    Grid (value tiles, B*H)."""
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    cols = pid_v * BV + tl.arange(0, BV)
    cmask = cols < DV
    wz = pid_v == 0
    for blk in tl.static_range(10):
        if HAS_INIT:
            s, c = _load_block_sym(
                kv_init + pid_bh * EXPANDED_DIM_C * DV, z_init + pid_bh * EXPANDED_DIM_C, cols, cmask, blk, DV
            )
        else:
            s = tl.zeros([16, BV], tl.float32)
            c = tl.zeros([16], tl.float32)
        for seg in range(0, NSEG):
            off = pid_bh * NSEG + seg
            if WRITE_PREFIX:
                _store_block_ko(
                    prefix_kv + off * KERNEL_ROWS_C * DV, prefix_z + off * KERNEL_ROWS_C, s, c, cols, cmask, wz,
                    blk, DV,
                )  # fmt: skip
            ds, dc = _load_block_ko(st_kv + off * KERNEL_ROWS_C * DV, st_z + off * KERNEL_ROWS_C, cols, cmask, blk, DV)
            s += ds
            c += dc
        _store_block_sym(
            kv_out + pid_bh * EXPANDED_DIM_C * DV, z_out + pid_bh * EXPANDED_DIM_C, s, c, cols, cmask, wz, blk, DV
        )


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
    IEEE: tl.constexpr,
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

    # Initial state: the op's (kv0, z0) in naive's layout, or this segment's prefix from the scan.
    kv_s = kv_init + bh64 * EXPANDED_DIM_C * DV
    z_s = z_init + bh64 * EXPANDED_DIM_C
    kv_k = prefix_kv + (bh64 * nseg + pid_s) * KERNEL_ROWS_C * DV
    z_k = prefix_z + (bh64 * nseg + pid_s) * KERNEL_ROWS_C
    s0, c0 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 0, DV, SPLIT)
    s1, c1 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 1, DV, SPLIT)
    s2, c2 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 2, DV, SPLIT)
    s3, c3 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 3, DV, SPLIT)
    s4, c4 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 4, DV, SPLIT)
    s5, c5 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 5, DV, SPLIT)
    s6, c6 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 6, DV, SPLIT)
    s7, c7 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 7, DV, SPLIT)
    s8, c8 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 8, DV, SPLIT)
    s9, c9 = _load_block(kv_s, z_s, kv_k, z_k, cols, cmask, 9, DV, SPLIT)

    f = tl.arange(0, 16)
    ci = tl.arange(0, C)
    causal = ci[:, None] >= ci[None, :]
    t_start = pid_s * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, L)
    for t in range(t_start, t_end, C):
        offs_t = t + ci
        valid = offs_t < t_end
        vt = tl.load(
            v_base + (offs_t * H * DV)[:, None] + cols[None, :], mask=valid[:, None] & cmask[None, :], other=0.0
        )
        dt = vt.dtype
        qt = tl.load(q_base + (offs_t * H * 16)[:, None] + f[None, :], mask=valid[:, None], other=0.0).to(dt)
        kt = _load_keys(k_base, m_base, offs_t, valid, H, HAS_MASK).to(dt)
        qf = qt.to(tl.float32)
        kf = kt.to(tl.float32)
        w = valid.to(tl.float32)[:, None]

        # Intra-chunk: scores 1 + s + s^2/2 straight from the 16-dim q.k; columns past the end masked.
        s = _dot(qt, tl.trans(kt), tl.zeros([C, C], tl.float32), IEEE) * 0.25
        a = tl.where(causal & valid[None, :], 1.0 + s + 0.5 * s * s, 0.0)
        den = tl.sum(a, axis=1)
        acc = _dot(a.to(dt), vt, tl.zeros([C, BV], tl.float32), IEEE)

        # Inter-chunk: read the state from before this chunk through the expanded features, then add
        # the chunk to it, block by block.
        acc, den, s0, c0 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s0, c0, 0, IEEE)
        acc, den, s1, c1 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s1, c1, 1, IEEE)
        acc, den, s2, c2 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s2, c2, 2, IEEE)
        acc, den, s3, c3 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s3, c3, 3, IEEE)
        acc, den, s4, c4 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s4, c4, 4, IEEE)
        acc, den, s5, c5 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s5, c5, 5, IEEE)
        acc, den, s6, c6 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s6, c6, 6, IEEE)
        acc, den, s7, c7 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s7, c7, 7, IEEE)
        acc, den, s8, c8 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s8, c8, 8, IEEE)
        acc, den, s9, c9 = _block_step(qt, qf, kt, kf, vt, w, acc, den, s9, c9, 9, IEEE)

        out = acc / (den[:, None] + 1e-12)
        tl.store(
            o_base + (offs_t * H * DV)[:, None] + cols[None, :],
            out.to(o.dtype.element_ty),
            mask=valid[:, None] & cmask[None, :],
        )

    if not SPLIT:
        kv_o = kv_out + bh64 * EXPANDED_DIM_C * DV
        z_o = z_out + bh64 * EXPANDED_DIM_C
        wz = pid_v == 0
        _store_block_sym(kv_o, z_o, s0, c0, cols, cmask, wz, 0, DV)
        _store_block_sym(kv_o, z_o, s1, c1, cols, cmask, wz, 1, DV)
        _store_block_sym(kv_o, z_o, s2, c2, cols, cmask, wz, 2, DV)
        _store_block_sym(kv_o, z_o, s3, c3, cols, cmask, wz, 3, DV)
        _store_block_sym(kv_o, z_o, s4, c4, cols, cmask, wz, 4, DV)
        _store_block_sym(kv_o, z_o, s5, c5, cols, cmask, wz, 5, DV)
        _store_block_sym(kv_o, z_o, s6, c6, cols, cmask, wz, 6, DV)
        _store_block_sym(kv_o, z_o, s7, c7, cols, cmask, wz, 7, DV)
        _store_block_sym(kv_o, z_o, s8, c8, cols, cmask, wz, 8, DV)
        _store_block_sym(kv_o, z_o, s9, c9, cols, cmask, wz, 9, DV)


# ---------------------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefillConfig:
    """Launch parameters of the prefill kernels.

    chunk: tokens per chunk C (intra-chunk tile is C x C). block_v: value columns per program (power of
    two, >= 16). num_segments: sequence segments per (b, h); 1 = no sequence parallelism, None = pick by
    occupancy. num_warps / num_stages: Triton's (num_warps 8 has crashed on sm90 in older Tritons).
    """

    chunk: int = 64
    block_v: int | None = None
    num_segments: int | None = None
    num_warps: int = 4
    num_stages: int = 2


def _block_v(dv: int, block_v: int | None) -> int:
    if block_v is not None:
        return block_v
    return max(16, min(64, triton.next_power_of_2(dv)))


def _num_segments(programs: int, length: int, chunk: int, device: torch.device, min_chunks: int) -> int:
    """Split the sequence only when the (value tile, b*h) programs cannot fill the GPU about twice over."""
    target = 2 * num_sms(device)
    if programs >= target:
        return 1
    want = triton.cdiv(target, programs)
    most = max(1, length // (min_chunks * chunk))  # keep each segment a few chunks long
    return max(1, min(want, most))


def _check_inputs(name: str, x: torch.Tensor, dims: int, last: int | None = None) -> None:
    if x.dim() != dims or (last is not None and x.shape[-1] != last):
        raise ValueError(f"{name}: expected {dims} dims" + (f" ending in {last}" if last else "") + f", got {tuple(x.shape)}")


def _check_dv(dv: int) -> None:
    if dv % 16 != 0 or not 16 <= dv <= 128:
        raise ValueError(f"value dim {dv} is not supported: it must be a multiple of 16 up to 128")


def _mask_arg(key_mask: torch.Tensor | None, shape: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
    if key_mask is None:
        return ref  # never read (HAS_MASK=False): any pointer will do
    if tuple(key_mask.shape) != shape:
        raise ValueError(f"key_mask: expected {shape}, got {tuple(key_mask.shape)}")
    return key_mask.to(device=ref.device, dtype=torch.bool).contiguous().view(torch.uint8)


def segment_states(
    k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, num_segments: int, config: PrefillConfig
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Partial states over ``num_segments`` equal segments (kernel order): ``[B*H, NSEG, 160, dv]``, z."""
    batch, length, heads, _ = k.shape
    dv = v.shape[-1]
    bv = _block_v(dv, config.block_v)
    seg_len = triton.cdiv(triton.cdiv(length, num_segments), config.chunk) * config.chunk
    nseg = triton.cdiv(length, seg_len)
    st_kv = torch.empty(batch * heads, nseg, KERNEL_ROWS, dv, device=k.device, dtype=torch.float32)
    st_z = torch.empty(batch * heads, nseg, KERNEL_ROWS, device=k.device, dtype=torch.float32)
    grid = (triton.cdiv(dv, bv), nseg, batch * heads)
    _pla_segment_state_kernel[grid](
        k, v, _mask_arg(key_mask, (batch, length), k), length, heads, seg_len, st_kv, st_z,
        DV=dv, BV=bv, C=config.chunk, HAS_MASK=key_mask is not None, IEEE=v.dtype == torch.float32,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return st_kv, st_z, seg_len


# ---------------------------------------------------------------------------------------------------------
# Public functions (naive's signatures)
# ---------------------------------------------------------------------------------------------------------


def pla_encode(
    k_enc: torch.Tensor, v_enc: torch.Tensor, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal encoder state over M prefix tokens (see ``naive.pla_encode``): kv [B,H,153,dv], z fp32."""
    return pla_encode_with(k_enc, v_enc, key_mask, config=PrefillConfig())


def pla_encode_with(
    k_enc: torch.Tensor, v_enc: torch.Tensor, key_mask: torch.Tensor | None = None, *, config: PrefillConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``pla_encode`` with explicit launch parameters (tests and benchmarks)."""
    _check_inputs("k_enc", k_enc, 4, FEATURE_DIM)
    _check_inputs("v_enc", v_enc, 4)
    batch, length, heads, _ = k_enc.shape
    dv = v_enc.shape[-1]
    _check_dv(dv)
    kv = torch.zeros(batch, heads, EXPANDED_DIM, dv, device=v_enc.device, dtype=torch.float32)
    z = torch.zeros(batch, heads, EXPANDED_DIM, device=v_enc.device, dtype=torch.float32)
    if length == 0 or batch * heads == 0:
        return kv, z
    check_runnable(v_enc, _pla_segment_state_kernel)
    dtype = compute_dtype(k_enc, v_enc)
    k_enc = k_enc.to(dtype).contiguous()
    v_enc = v_enc.to(dtype).contiguous()
    bv = _block_v(dv, config.block_v)
    nseg = config.num_segments
    if nseg is None:
        # The reduction has no sequential dependency: split it until the GPU has ~4 programs per SM.
        programs = triton.cdiv(dv, bv) * batch * heads
        nseg = max(1, min(triton.cdiv(4 * num_sms(v_enc.device), programs), length // (8 * config.chunk)))
    st_kv, st_z, _ = segment_states(k_enc, v_enc, key_mask, nseg, config)
    grid = (triton.cdiv(dv, bv), batch * heads)
    _pla_state_scan_kernel[grid](
        st_kv, st_z, kv, z, st_kv.shape[1], st_kv, st_z, kv, z,
        DV=dv, BV=bv, HAS_INIT=False, WRITE_PREFIX=False, num_warps=4,
    )  # fmt: skip
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
    return pla_causal_with(q, k, v, kv0, z0, key_mask, config=PrefillConfig())


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
    """``pla_causal`` with explicit launch parameters (tests and benchmarks)."""
    _check_inputs("q", q, 4, FEATURE_DIM)
    _check_inputs("k", k, 4, FEATURE_DIM)
    _check_inputs("v", v, 4)
    batch, length, heads, _ = q.shape
    dv = v.shape[-1]
    _check_dv(dv)
    if tuple(k.shape) != tuple(q.shape) or tuple(v.shape[:3]) != (batch, length, heads):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree")
    if tuple(kv0.shape) != (batch, heads, EXPANDED_DIM, dv) or tuple(z0.shape) != (batch, heads, EXPANDED_DIM):
        raise ValueError(f"kv0 {tuple(kv0.shape)} / z0 {tuple(z0.shape)} do not match q and v")
    kv0 = kv0.to(device=v.device, dtype=torch.float32).contiguous()
    z0 = z0.to(device=v.device, dtype=torch.float32).contiguous()
    o = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    if length == 0 or batch * heads == 0:
        return o, kv0.clone(), z0.clone()
    check_runnable(v, _pla_chunk_fwd_kernel)
    dtype = compute_dtype(q, k, v)
    q, k, v = (x.to(dtype).contiguous() for x in (q, k, v))
    mask = _mask_arg(key_mask, (batch, length), v)
    kv = torch.empty_like(kv0)
    z = torch.empty_like(z0)
    bv = _block_v(dv, config.block_v)
    nv = triton.cdiv(dv, bv)
    nseg = config.num_segments
    if nseg is None:
        nseg = _num_segments(nv * batch * heads, length, config.chunk, v.device, min_chunks=4)
    ieee = dtype == torch.float32
    launch = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if nseg <= 1:
        _pla_chunk_fwd_kernel[(nv, 1, batch * heads)](
            q, k, v, kv0, z0, kv0, z0, mask, length, heads, length, o, kv, z,
            DV=dv, BV=bv, C=config.chunk, HAS_MASK=key_mask is not None, SPLIT=False, IEEE=ieee, **launch,
        )  # fmt: skip
        return o, kv, z
    # Sequence parallel: segment states, exclusive scan from (kv0, z0), then each segment's outputs.
    st_kv, st_z, seg_len = segment_states(k, v, key_mask, nseg, config)
    prefix_kv = torch.empty_like(st_kv)
    prefix_z = torch.empty_like(st_z)
    nseg = st_kv.shape[1]
    _pla_state_scan_kernel[(nv, batch * heads)](
        st_kv, st_z, kv0, z0, nseg, prefix_kv, prefix_z, kv, z,
        DV=dv, BV=bv, HAS_INIT=True, WRITE_PREFIX=True, num_warps=4,
    )  # fmt: skip
    _pla_chunk_fwd_kernel[(nv, nseg, batch * heads)](
        q, k, v, kv0, z0, prefix_kv, prefix_z, mask, length, heads, seg_len, o, kv, z,
        DV=dv, BV=bv, C=config.chunk, HAS_MASK=key_mask is not None, SPLIT=True, IEEE=ieee, **launch,
    )  # fmt: skip
    return o, kv, z


__all__ = ["PrefillConfig", "naive", "pla_causal", "pla_causal_with", "pla_encode", "pla_encode_with"]
