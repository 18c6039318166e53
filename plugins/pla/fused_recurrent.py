"""Triton decode kernel for prefix linear attention: one recurrent step, same signature as ``naive.pla_decode``.

One fused kernel per layer and step: Taylor features of q and k, the state update
``kv += phi(k) v^T, z += phi(k)``, the read-out ``phi(q) kv`` and the normalizer ``phi(q) z``. The state is
fp32 and is read once and written once, which is all the work there is (about 0.5 FLOP per byte): the
kernel is purely memory bound. The grid is (value tiles, batch*heads), so even batch 1 has several
programs per head; each program streams a [160, BV] slab of the state through registers in two tiles
(128 + 32 rows of the kernel order, see ``_common``), gathering rows of naive's 153 layout directly.

The kernel is functional (``kv``/``z`` in, ``kv_new``/``z_new`` out). Every element of ``kv`` is read and
then written by the same program, so ``kv_new`` may be ``kv`` (in-place update of the big part of the
state); ``z`` is read by all value tiles of a head and written by one, so ``z_new`` must be another buffer
when a head has several value tiles. Per launch it takes pointers and a grid only (AOT-friendly: no scalars
at all, the eps is a literal).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import check_runnable, compute_dtype, num_sms, symbolic
from ..spec import ACTIVATION, Arg, Launch
from ._common import (
    EXPANDED_DIM,
    FEATURE_DIM,
    _rows_a,
    _rows_b,
)

EXPANDED_DIM_C: tl.constexpr = tl.constexpr(EXPANDED_DIM)


@triton.jit
def _token_features(x):
    """Features of one token (x points at its 16 values) in kernel order: ([128], [32]) fp32."""
    pos, anchor, d, blk, _, _ = _rows_a()
    fa = tl.load(x + pos).to(tl.float32) * tl.load(x + anchor).to(tl.float32) * 0.25
    fa = tl.where(d == 0, tl.where(blk == 0, 1.0, 0.0), fa)  # the constant feature, then padding
    col, _ = _rows_b()
    xb = tl.load(x + col).to(tl.float32)
    fb = tl.where(tl.arange(0, 32) < 16, xb * xb * 0.17677669529663687, xb * 0.5)
    return fa, fb


@triton.jit
def _pla_decode_kernel(
    q,  # [B*H, 16]
    k,  # [B*H, 16]
    v,  # [B*H, DV]
    kv,  # [B*H, 153, DV] fp32
    z,  # [B*H, 153] fp32
    o,  # out: [B*H, DV], dtype of v
    kv_new,  # out: [B*H, 153, DV] fp32 (may alias kv)
    z_new,  # out: [B*H, 153] fp32 (may alias z)
    DV: tl.constexpr,
    BV: tl.constexpr,
):
    """Grid (value tiles, B*H)."""
    pid_v = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    cols = pid_v * BV + tl.arange(0, BV)
    cmask = cols < DV
    _, _, _, _, ra, va = _rows_a()
    _, rb = _rows_b()
    kv_base = bh * EXPANDED_DIM_C * DV
    z_base = bh * EXPANDED_DIM_C

    # Issue the state loads first: they are the whole cost, the features below overlap with them.
    ma = va[:, None] & cmask[None, :]
    mb = cmask[None, :]
    s_a = tl.load(kv + kv_base + ra[:, None] * DV + cols[None, :], mask=ma, other=0.0)
    s_b = tl.load(kv + kv_base + rb[:, None] * DV + cols[None, :], mask=mb, other=0.0)
    z_a = tl.load(z + z_base + ra, mask=va, other=0.0)
    z_b = tl.load(z + z_base + rb)
    vt = tl.load(v + bh * DV + cols, mask=cmask, other=0.0).to(tl.float32)
    qa, qb = _token_features(q + bh * 16)
    ka, kb = _token_features(k + bh * 16)

    # Update before read-out: the token attends to itself (reference recurrent_forward).
    s_a += ka[:, None] * vt[None, :]
    s_b += kb[:, None] * vt[None, :]
    z_a += ka
    z_b += kb
    tl.store(kv_new + kv_base + ra[:, None] * DV + cols[None, :], s_a, mask=ma)
    tl.store(kv_new + kv_base + rb[:, None] * DV + cols[None, :], s_b, mask=mb)
    if pid_v == 0:  # z is shared by all value tiles: one of them writes it
        tl.store(z_new + z_base + ra, z_a, mask=va)
        tl.store(z_new + z_base + rb, z_b)

    num = tl.sum(qa[:, None] * s_a, axis=0) + tl.sum(qb[:, None] * s_b, axis=0)
    den = tl.sum(qa * z_a, axis=0) + tl.sum(qb * z_b, axis=0)
    tl.store(o + bh * DV + cols, (num / (den + 1e-12)).to(o.dtype.element_ty), mask=cmask)


BLOCK_V = 64  # value columns per program for large batches (and in engines)

PLA_DECODE = Launch(
    "pla_decode",
    _pla_decode_kernel,
    inputs=(
        Arg("q", ACTIVATION, "B H 16"),
        Arg("k", ACTIVATION, "B H 16"),
        Arg("v", ACTIVATION, "B H DV"),
        Arg("kv", "float32", f"B H {EXPANDED_DIM} DV"),
        Arg("z", "float32", f"B H {EXPANDED_DIM}"),
    ),
    outputs=(
        Arg("o", ACTIVATION, "B H DV"),
        Arg("kv_new", "float32", f"B H {EXPANDED_DIM} DV"),
        Arg("z_new", "float32", f"B H {EXPANDED_DIM}"),
    ),
    grid=("cdiv(DV, BV)", "B*H", "1"),
    constexprs=lambda d: {"DV": d["DV"], "BV": BLOCK_V},
    aliases={"kv_new": "kv"},  # every element of kv is read, then written, by one program
    num_warps=2,
)


def _block_v(dv: int, programs_per_tile: int, device: torch.device) -> int:
    """Value columns per program: 64 (256-byte rows), halved down to 16 while that leaves the GPU with fewer
    than ~4 programs per SM (a small batch). On an H200 at B=64 the block size and warps changed the time
    by under 10% (benchmarks/results/decode_kernels-h200.json, "sweep"). With a symbolic batch (torch.export,
    AOTInductor) the loop would become guards on it: compiled programs take the large-batch choice."""
    bv = BLOCK_V
    if symbolic(programs_per_tile):
        return bv
    while bv > 16 and triton.cdiv(dv, bv) * programs_per_tile < 4 * num_sms(device):
        bv //= 2
    return bv


def pla_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One recurrent step (see ``naive.pla_decode``): q, k [B,H,16], v [B,H,dv], kv [B,H,153,dv], z [B,H,153]
    -> o [B,H,dv] (dtype of v), new kv, new z (fp32). The inputs are not modified."""
    return pla_decode_with(q, k, v, kv, z)


def pla_decode_with(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv: torch.Tensor,
    z: torch.Tensor,
    *,
    block_v: int | None = None,
    num_warps: int = 2,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pla_decode`` with explicit launch parameters and optional output buffers ``out=(kv_new, z_new)``.

    ``kv_new`` may be ``kv`` itself (in-place update); ``z_new`` may be ``z`` only when ``block_v >= dv``
    (one value tile per head), since every value tile reads ``z`` before one of them writes it."""
    if q.dim() != 3 or q.shape[-1] != FEATURE_DIM or tuple(k.shape) != tuple(q.shape) or v.dim() != 3:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} must be [B, H, 16] and v [B, H, dv]")
    batch, heads, _ = q.shape
    dv = v.shape[-1]
    if dv % 16 != 0 or not 16 <= dv <= 128:
        raise ValueError(f"value dim {dv} is not supported: it must be a multiple of 16 up to 128")
    if tuple(kv.shape) != (batch, heads, EXPANDED_DIM, dv) or tuple(z.shape) != (batch, heads, EXPANDED_DIM):
        raise ValueError(f"kv {tuple(kv.shape)} / z {tuple(z.shape)} do not match q and v")
    if kv.dtype != torch.float32 or z.dtype != torch.float32:
        raise TypeError("the PLA state (kv, z) is fp32")
    dtype = compute_dtype(q, k, v)
    q, k, v = (x.to(dtype).contiguous() for x in (q, k, v))
    kv = kv.contiguous()
    z = z.contiguous()
    o = torch.empty(batch, heads, dv, device=v.device, dtype=v.dtype)
    kv_new, z_new = out if out is not None else (torch.empty_like(kv), torch.empty_like(z))
    if batch * heads == 0:
        return o, kv_new, z_new
    check_runnable(v, _pla_decode_kernel)
    bv = block_v or _block_v(dv, batch * heads, v.device)
    if out is not None and z_new.data_ptr() == z.data_ptr() and triton.cdiv(dv, bv) > 1:
        raise ValueError("z_new may alias z only with a single value tile per head (block_v >= dv)")
    env = PLA_DECODE.bind({"q": q.shape, "v": v.shape}, constexprs={"BV": bv})
    tensors = {"q": q, "k": k, "v": v, "kv": kv, "z": z, "o": o, "kv_new": kv_new, "z_new": z_new}
    PLA_DECODE.launch(env, tensors, num_warps=num_warps)
    return o, kv_new, z_new


__all__ = ["PLA_DECODE", "pla_decode", "pla_decode_with"]
