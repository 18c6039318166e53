"""The sliding-window attention kernel (``plugins/swa/parallel.py``) and its torch op against ``naive``.

On the CPU (CI) in the Triton interpreter at small shapes with small tiles, so several query and ring blocks
are exercised; ``JRTC_PLA_TEST_DEVICE=cuda`` runs the same cases on the GPU at larger shapes in bf16.
"""

from __future__ import annotations

import os

import pytest
import torch

from jrtc.plugins.swa import naive, ops, parallel

DEVICE = os.environ.get("JRTC_PLA_TEST_DEVICE", "cpu")
BIG = DEVICE == "cuda"
if BIG and not torch.cuda.is_available():
    pytest.skip("JRTC_PLA_TEST_DEVICE=cuda but no CUDA device", allow_module_level=True)
ACT = torch.bfloat16 if BIG else torch.float32
REL = 2e-2 if BIG else 2e-5
TILES = {} if BIG else {"block_m": 16, "block_n": 16}

CASES = {
    # name: (B, H, L, hd, W, start positions per row)
    "fresh sequence, L > W": (2, 2, 53, 16, 8, [0, 0]),
    "fresh sequence, L < W": (1, 2, 5, 16, 32, [0]),
    "ring partly written (pos < W)": (2, 1, 40, 48, 24, [3, 10]),
    "ring wrapped (pos > W), rows apart": (2, 2, 37, 16, 16, [100, 45]),
    "one token past a wrapped ring": (2, 2, 2, 32, 16, [70, 17]),
    "hd 112 (padded to 128)": (1, 2, 20, 112, 8, [9]),
}
if BIG:
    CASES = {
        "fresh, 360M shape": (2, 16, 4096, 64, 128, [0, 0]),
        "continued, 1B head dim": (2, 16, 1000, 112, 128, [1024, 300]),
        "short continuation": (4, 16, 7, 64, 128, [5000, 20, 127, 128]),
    }


def _inputs(batch, heads, length, hd, window, starts, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=ACT)

    q, k, v = (
        randn(batch, heads, length, hd),
        randn(batch, heads, length, hd),
        randn(batch, heads, length, hd),
    )
    k_ring, v_ring = randn(batch, heads, window, hd), randn(batch, heads, window, hd)
    return q, k, v, k_ring, v_ring, torch.tensor(starts, device=DEVICE)


def assert_close(actual, expected, what):
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= REL * scale, f"{what}: max error {err:.3e} > {REL:.0e} * {scale:.3e}"


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_naive(name: str) -> None:
    args = _inputs(*CASES[name])
    o, k_ring, v_ring = parallel.sliding_window_attention(*args, **TILES)
    ro, rk, rv = naive.sliding_window_attention(*args)
    assert o.dtype == ro.dtype and o.shape == ro.shape
    assert_close(o, ro, "o")
    assert torch.equal(k_ring, rk) and torch.equal(v_ring, rv)


def test_next_ring_matches_the_concatenated_reference() -> None:
    """naive.next_ring (a gather from the new keys) against a plain loop over positions."""
    batch, heads, window, hd = 2, 1, 5, 4
    ring = torch.randn(batch, heads, window, hd)
    for length, starts in [(3, [0, 7]), (12, [2, 5]), (1, [4, 0])]:
        new = torch.randn(batch, heads, length, hd)
        got = naive.next_ring(ring, new, torch.tensor(starts))
        for row, start in enumerate(starts):
            expected = ring[row].clone()
            for t in range(length):
                expected[:, (start + t) % window] = new[row, :, t]
            assert torch.equal(got[row], expected)


def test_op_matches_naive_and_traces() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    for length in (1, 9):
        args = _inputs(2, 2, length, 16, 8, [3, 20], seed=length)
        for got, ref in zip(
            ops.sliding_window_attention(*args), naive.sliding_window_attention(*args), strict=True
        ):
            assert_close(got, ref, f"op L={length}")
    args = _inputs(2, 2, 9, 16, 8, [3, 20])
    torch.library.opcheck(
        torch.ops.jrtc.sliding_window_attention.default, args, test_utils=("test_schema", "test_faketensor")
    )
    with FakeTensorMode() as mode:
        o, k_ring, v_ring = ops.sliding_window_attention(*(mode.from_tensor(x) for x in args))
        assert o.shape == args[0].shape and k_ring.shape == args[3].shape


def test_rejects_unsupported_shapes() -> None:
    q, k, v, k_ring, v_ring, pos = _inputs(1, 1, 4, 16, 8, [0])
    with pytest.raises(ValueError, match="head dim"):
        parallel.sliding_window_attention(
            q[..., :8], k[..., :8], v[..., :8], k_ring[..., :8], v_ring[..., :8], pos
        )
    with pytest.raises(ValueError, match="rings"):
        parallel.sliding_window_attention(q, k, v, k_ring[:, :, :4, :8], v_ring, pos)
