"""Pieces shared by the PLA prefill (``chunk``) and decode (``fused_recurrent``) Triton kernels.

The 153 Taylor features are handled in-kernel as ten blocks of 16 ("kernel order", 160 rows), because
Triton tiles must have power-of-two sizes and small blocks keep the transient feature tiles in registers.
The blocks are chosen so that every feature is ``x_p`` (natural order) times something broadcast along p,
so building them needs no gathers or shuffles of the 16-dim input:

* blocks c = 0..7, "anchored" pairs: position p holds ``x_p * x_a / 4`` with anchor ``a = c`` when
  ``d = (p - c) mod 16`` is in 1..8 and ``a = c + 8`` when d is in 9..15. So vertex c owns its partners
  c+1..c+8 and vertex c+8 owns c+9..c+15: every off-diagonal pair (120) appears exactly once.
  Position p = c (d = 0) is free: it holds the constant feature 1 in block 0 and zero padding elsewhere.
* block 8: the diagonal ``x_p^2 / sqrt(32)``.
* block 9: the linear features ``x_p / 2``.

These are exactly the 1 + 16 + 136 = 153 features of ``naive.taylor_features`` (same scales), permuted.
State in memory always uses naive's symmetric layout (``torch.triu_indices`` order); kernels convert by
gathering rows through ``_block_rows``, so no layout-conversion pass is needed. Buffers private to one op
(segment states of the sequence-parallel path) stay in kernel order (block-major, 16 rows each).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import naive

FEATURE_DIM = naive.FEATURE_DIM  # 16
EXPANDED_DIM = naive.EXPANDED_DIM  # 153
NUM_BLOCKS = 10
KERNEL_ROWS = 16 * NUM_BLOCKS  # 160
EPS = naive.EPS  # 1e-12, written as a literal inside the kernels (AOT: no float scalars)

assert FEATURE_DIM == 16 and EXPANDED_DIM == 153 and EPS == 1e-12


@triton.jit
def _pair_row(i, j):
    # Memory row of the pair feature x_i * x_j (i <= j) in naive's 153 layout:
    # 1 constant + 16 linear rows, then pairs in torch.triu_indices(16, 16) order.
    return 17 + i * 16 - (i * (i - 1)) // 2 + (j - i)


@triton.jit
def _block_anchor(BLOCK: tl.constexpr):
    """For anchored block BLOCK (0..7): position p's distance d = (p - BLOCK) mod 16 and whether its anchor
    is BLOCK (d in 1..8) rather than BLOCK + 8 (d in 9..15)."""
    p = tl.arange(0, 16)
    d = (p - BLOCK + 16) % 16
    return d, (d >= 1) & (d <= 8)


@triton.jit
def _rows_a():
    """Blocks 0..7 as one 128-row piece: (position p within its block, anchor column, distance d, block,
    memory row, row exists)."""
    r = tl.arange(0, 128)
    blk = r // 16
    pos = r % 16
    d = (pos - blk + 16) % 16
    anchor = tl.where((d >= 1) & (d <= 8), blk, blk + 8)
    row = _pair_row(tl.minimum(pos, anchor), tl.maximum(pos, anchor))
    row = tl.where(d == 0, 0, row)  # block 0's free slot is the constant (row 0); the others are padding
    return pos, anchor, d, blk, row, (d != 0) | (blk == 0)


@triton.jit
def _rows_b():
    """Blocks 8 and 9 as one 32-row piece: (input column, memory row): the diagonal, then the linear rows."""
    r = tl.arange(0, 32)
    col = r % 16
    return col, tl.where(r < 16, _pair_row(col, col), 1 + col)


@triton.jit
def _block_rows(BLOCK: tl.constexpr):
    """Memory rows (in the 153 layout) of the 16 features of block BLOCK, and which of them exist."""
    p = tl.arange(0, 16)
    if BLOCK < 8:
        d, low = _block_anchor(BLOCK)
        a = tl.where(low, BLOCK, BLOCK + 8)
        row = _pair_row(tl.minimum(a, p), tl.maximum(a, p))
        if BLOCK == 0:
            row = tl.where(d == 0, 0, row)  # the constant feature, memory row 0
            valid = p < 16
        else:
            valid = d != 0
    elif BLOCK == 8:
        row = _pair_row(p, p)
        valid = p < 16
    else:
        row = 1 + p
        valid = p < 16
    return row, valid


@triton.jit
def _features_2d(xf, BLOCK: tl.constexpr):
    """Features of block BLOCK for a [C, 16] fp32 tile of raw q or k rows -> [C, 16] fp32."""
    p = tl.arange(0, 16)[None, :]
    if BLOCK < 8:
        d, low = _block_anchor(BLOCK)
        # The two anchor columns, extracted in registers (a masked row sum of 16 elements).
        xa = tl.sum(tl.where(p == BLOCK, xf, 0.0), axis=1)
        xb = tl.sum(tl.where(p == BLOCK + 8, xf, 0.0), axis=1)
        f = xf * tl.where(low[None, :], xa[:, None], xb[:, None]) * 0.25
        f = tl.where(d[None, :] == 0, 1.0 if BLOCK == 0 else 0.0, f)
    elif BLOCK == 8:
        f = xf * xf * 0.17677669529663687  # 1 / sqrt(32)
    else:
        f = xf * 0.5
    return f


@triton.jit
def _features_1d(x, BLOCK: tl.constexpr):
    """Features of block BLOCK for one token's fp32 [16] vector (decode) -> [16] fp32."""
    p = tl.arange(0, 16)
    if BLOCK < 8:
        d, low = _block_anchor(BLOCK)
        xa = tl.sum(tl.where(p == BLOCK, x, 0.0), axis=0)
        xb = tl.sum(tl.where(p == BLOCK + 8, x, 0.0), axis=0)
        f = x * tl.where(low, xa, xb) * 0.25
        f = tl.where(d == 0, 1.0 if BLOCK == 0 else 0.0, f)
    elif BLOCK == 8:
        f = x * x * 0.17677669529663687
    else:
        f = x * 0.5
    return f


@triton.jit
def _load_block_sym(kv, z, cols, cmask, BLOCK: tl.constexpr, DV: tl.constexpr):
    """Load block BLOCK of one (b, h) state stored in naive's 153 layout: ([16, BV], [16]) fp32.

    ``kv`` and ``z`` point at the (b, h) slice; ``cols`` are this program's value columns.
    """
    row, valid = _block_rows(BLOCK)
    s = tl.load(kv + row[:, None] * DV + cols[None, :], mask=valid[:, None] & cmask[None, :], other=0.0)
    c = tl.load(z + row, mask=valid, other=0.0)
    return s, c


@triton.jit
def _store_block_sym(kv, z, s, c, cols, cmask, write_z, BLOCK: tl.constexpr, DV: tl.constexpr):
    """Store block BLOCK into naive's 153 layout; z only where ``write_z`` (one value tile writes it)."""
    row, valid = _block_rows(BLOCK)
    tl.store(kv + row[:, None] * DV + cols[None, :], s, mask=valid[:, None] & cmask[None, :])
    if write_z:
        tl.store(z + row, c, mask=valid)


@triton.jit
def _load_block_ko(kv, z, cols, cmask, BLOCK: tl.constexpr, DV: tl.constexpr):
    """Load block BLOCK of a state kept in kernel order (rows 16*BLOCK .. 16*BLOCK+15)."""
    row = BLOCK * 16 + tl.arange(0, 16)
    s = tl.load(kv + row[:, None] * DV + cols[None, :], mask=cmask[None, :], other=0.0)
    return s, tl.load(z + row)


@triton.jit
def _store_block_ko(kv, z, s, c, cols, cmask, write_z, BLOCK: tl.constexpr, DV: tl.constexpr):
    row = BLOCK * 16 + tl.arange(0, 16)
    tl.store(kv + row[:, None] * DV + cols[None, :], s, mask=cmask[None, :])
    if write_z:
        tl.store(z + row, c)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Common dtype of the activations; the kernels' dots run in it (fp32 dots in full IEEE precision)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"PLA kernels take float32, bfloat16 or float16 activations, got {dtype}")
    return dtype


def check_runnable(t: torch.Tensor, kernel: object) -> None:
    """CPU tensors run only through the Triton interpreter, which must be on when the kernels are defined."""
    if t.device.type == "cuda":
        return
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(kernel, InterpretedFunction):
        raise RuntimeError(
            f"PLA Triton kernels got {t.device.type} tensors: they run on CUDA, or on the CPU only when "
            "TRITON_INTERPRET=1 is set before jrtc.plugins.pla's kernel modules are first imported"
        )


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: behave as on an H100/H200 so the same heuristics are exercised
