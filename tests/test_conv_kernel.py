"""The short-convolution kernel (``plugins/conv/fused.py``) and its torch op against ``naive``.

On the CPU (CI) in the Triton interpreter; ``JRTC_PLA_TEST_DEVICE=cuda`` runs the same cases on the GPU in bf16.
"""

from __future__ import annotations

import os

import pytest
import torch

from jrtc.plugins.conv import fused, naive, ops

DEVICE = os.environ.get("JRTC_PLA_TEST_DEVICE", "cpu")
BIG = DEVICE == "cuda"
if BIG and not torch.cuda.is_available():
    pytest.skip("JRTC_PLA_TEST_DEVICE=cuda but no CUDA device", allow_module_level=True)
ACT = torch.bfloat16 if BIG else torch.float32

CASES = {
    # name: (B, C, L)
    "prefill over two length tiles, channels not a tile multiple": (2, 80, 70),
    "decode step (L = 1)": (3, 64, 1),
    "two tokens: the next state is all new": (1, 16, 2),
    "one row, one tile": (1, 128, 7),
}


def _inputs(batch, channels, length, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=ACT)

    return randn(batch, channels, length), randn(batch, channels, 2), randn(channels, 1, 3)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_kernel_matches_naive(case: str) -> None:
    u, state, weight = _inputs(*CASES[case])
    c, next_state = ops.short_conv(u, state, weight)
    ref_c, ref_state = naive.short_conv(u.float(), state.float(), weight.float())
    tol = 1e-2 if BIG else 1e-6
    assert c.dtype == u.dtype and next_state.dtype == state.dtype
    torch.testing.assert_close(c.float(), ref_c, rtol=tol, atol=tol)
    assert torch.equal(next_state.float(), ref_state)  # copied inputs: exact


def test_state_chains_across_calls() -> None:
    """A sequence convolved in pieces (prefill, then decode steps) equals it convolved at once."""
    u, state, weight = _inputs(2, 32, 9)
    whole, _ = ops.short_conv(u, state, weight)
    pieces, carry = [], state
    for start, end in [(0, 5), (5, 6), (6, 7), (7, 9)]:
        c, carry = ops.short_conv(u[..., start:end], carry, weight)
        pieces.append(c)
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, rtol=0, atol=0)


def test_next_state_may_be_the_state() -> None:
    """The plugin's next state aliases its state input: the kernel run in place gives the same results."""
    u, state, weight = _inputs(2, 80, 3)
    expected_c, expected_state = fused.short_conv(u, state, weight)
    env = fused.SHORT_CONV.bind({"u": u.shape, "weight": weight.shape})
    c, in_place = torch.empty_like(u), state.clone()
    tensors = {"u": u, "state": in_place, "weight": weight, "c": c, "next_state": in_place}
    fused.SHORT_CONV.launch(env, tensors)
    assert torch.equal(c, expected_c) and torch.equal(in_place, expected_state)


def test_bad_shapes() -> None:
    u, state, weight = _inputs(2, 16, 4)
    with pytest.raises(ValueError, match="state"):
        fused.short_conv(u, state[:, :, :1], weight)
    with pytest.raises(ValueError, match="weight"):
        fused.short_conv(u, state, weight[:8])
