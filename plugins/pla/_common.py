"""Pieces shared by the PLA prefill (``chunk``) and decode (``fused_recurrent``) Triton kernels.

The 153 Taylor features are handled in-kernel in "kernel order": 160 rows in two power-of-two pieces
(Triton tiles must have power-of-two sizes), chosen so that every feature is ``x_p`` (natural order) times
something broadcast along p, which needs no gathers or shuffles of the 16-dim input:

* piece A, rows 0..127 = eight blocks of 16, "anchored" pairs: in block c = 0..7, position p holds
  ``x_p * x_a / 4`` with anchor ``a = c`` when ``d = (p - c) mod 16`` is in 1..8 and ``a = c + 8`` when d is
  in 9..15. So vertex c owns its partners c+1..c+8 and vertex c+8 owns c+9..c+15: every off-diagonal pair
  (120) appears exactly once. Position p = c (d = 0) is free: it holds the constant feature 1 in block 0
  and zero padding in blocks 1..7.
* piece B, rows 128..159: the diagonal ``x_p^2 / sqrt(32)`` (16 rows), then the linear ``x_p / 2`` (16 rows).

These are exactly the 1 + 16 + 136 = 153 features of ``naive.taylor_features`` (same scales), permuted.
State in memory always uses naive's symmetric layout (``torch.triu_indices`` order); kernels convert by
gathering rows through ``_rows_a``/``_rows_b``, so no layout-conversion pass is needed. Buffers private to
one op (segment states of the sequence-parallel path) stay in kernel order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import naive

FEATURE_DIM = naive.FEATURE_DIM  # 16
EXPANDED_DIM = naive.EXPANDED_DIM  # 153
KERNEL_ROWS = 128 + 32  # 160
EPS = naive.EPS  # 1e-12, written as a literal inside the kernels (AOT: no float scalars)

assert FEATURE_DIM == 16 and EXPANDED_DIM == 153 and EPS == 1e-12


@triton.jit
def _pair_row(i, j):
    # Memory row of the pair feature x_i * x_j (i <= j) in naive's 153 layout:
    # 1 constant + 16 linear rows, then pairs in torch.triu_indices(16, 16) order.
    return 17 + i * 16 - (i * (i - 1)) // 2 + (j - i)


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
def _load_state_sym(kv, z, cols, cmask, DV: tl.constexpr):
    """Load one (b, h) state stored in naive's 153 layout as kernel-order pieces (fp32):
    s_a [128, BV], s_b [32, BV], z_a [128], z_b [32]. ``kv``/``z`` point at the (b, h) slice."""
    _, _, _, _, ra, va = _rows_a()
    _, rb = _rows_b()
    s_a = tl.load(kv + ra[:, None] * DV + cols[None, :], mask=va[:, None] & cmask[None, :], other=0.0)
    s_b = tl.load(kv + rb[:, None] * DV + cols[None, :], mask=cmask[None, :], other=0.0)
    return s_a, s_b, tl.load(z + ra, mask=va, other=0.0), tl.load(z + rb)


@triton.jit
def _store_state_sym(kv, z, s_a, s_b, z_a, z_b, cols, cmask, write_z, DV: tl.constexpr):
    """Store kernel-order pieces into naive's 153 layout; z only where ``write_z`` (z is shared by all value
    tiles of a head, one of them writes it)."""
    _, _, _, _, ra, va = _rows_a()
    _, rb = _rows_b()
    tl.store(kv + ra[:, None] * DV + cols[None, :], s_a, mask=va[:, None] & cmask[None, :])
    tl.store(kv + rb[:, None] * DV + cols[None, :], s_b, mask=cmask[None, :])
    if write_z:
        tl.store(z + ra, z_a, mask=va)
        tl.store(z + rb, z_b)


@triton.jit
def _load_state_ko(kv, z, cols, cmask, DV: tl.constexpr):
    """Load a state kept in kernel order (rows 0..127 piece A, 128..159 piece B)."""
    ra = tl.arange(0, 128)
    rb = 128 + tl.arange(0, 32)
    s_a = tl.load(kv + ra[:, None] * DV + cols[None, :], mask=cmask[None, :], other=0.0)
    s_b = tl.load(kv + rb[:, None] * DV + cols[None, :], mask=cmask[None, :], other=0.0)
    return s_a, s_b, tl.load(z + ra), tl.load(z + rb)


@triton.jit
def _store_state_ko(kv, z, s_a, s_b, z_a, z_b, cols, cmask, write_z, DV: tl.constexpr):
    ra = tl.arange(0, 128)
    rb = 128 + tl.arange(0, 32)
    tl.store(kv + ra[:, None] * DV + cols[None, :], s_a, mask=cmask[None, :])
    tl.store(kv + rb[:, None] * DV + cols[None, :], s_b, mask=cmask[None, :])
    if write_z:
        tl.store(z + ra, z_a)
        tl.store(z + rb, z_b)
