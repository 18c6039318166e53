"""The wide-tile PLA prefill kernels (plugins/pla/chunk_ws.py) against ``naive``, and their sm_90a build.

Same conventions as tests/test_pla_kernels.py: on the CPU (CI) the kernels run in the Triton interpreter at
small shapes in fp32 (plus one fp16 case), with ``JRTC_PLA_TEST_DEVICE=cuda`` on the GPU at larger shapes
in bf16. The compile test builds the causal kernel for sm_90a (no GPU needed) and checks its resources.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pla_kernels import (
    BIG,
    DEVICE,
    REL_STATE,
    _gen,
    _mask,
    _randn,
    _state,
    assert_close,
    assert_outputs_close,
    check_causal,
    check_jrt_prefill,
)

from jrtc.plugins.pla import chunk_ws, naive

WsConfig = chunk_ws.WsConfig
ROOT = Path(__file__).resolve().parent.parent

# name: (B, L, H, dv, initial state, key mask, config); chunks are 64 tokens
CAUSAL_CASES = {
    "one partial chunk, initial state": (2, 45, 2, 64, True, False, WsConfig()),
    "L not a multiple of the chunk, masked keys": (1, 150, 2, 64, True, True, WsConfig()),
    "dv 112, two value tiles": (1, 70, 1, 112, True, True, WsConfig()),
    "no initial state, dv 48": (2, 64, 1, 48, False, False, WsConfig()),
    "B*H = 1, sequence parallel by default": (1, 600, 1, 64, True, False, WsConfig()),
    "sequence parallel forced, uneven last segment": (1, 300, 2, 112, True, True, WsConfig(num_segments=3)),
    "chunk 128": (1, 200, 1, 64, True, True, WsConfig(chunk=128)),
}
if BIG:
    CAUSAL_CASES = {
        "L not a multiple of the chunk, initial state": (2, 1000, 4, 64, True, False, WsConfig()),
        "dv 112": (2, 777, 4, 112, True, True, WsConfig()),
        "dv 48": (3, 300, 2, 48, False, False, WsConfig()),
        "B*H = 1 (sequence parallel by default)": (1, 5000, 1, 64, True, False, WsConfig()),
        "masked keys": (2, 500, 3, 64, True, True, WsConfig()),
        "sequence parallel forced": (2, 1500, 2, 64, True, True, WsConfig(num_segments=5)),
        "dv 128, 8 warps": (1, 640, 2, 128, True, False, WsConfig(num_warps=8)),
    }


@pytest.mark.parametrize("name", list(CAUSAL_CASES))
def test_causal_matches_naive(name: str) -> None:
    check_causal(chunk_ws.pla_causal_with, CAUSAL_CASES[name], seed=len(name))


def test_encoder_split_is_chosen_for_small_batch() -> None:
    """(The causal pass's split is chunk._num_segments', tested in test_pla_kernels.py.)"""
    device = torch.device(DEVICE)
    assert chunk_ws._encoder_segments(1, 4096, 64, device) > 1
    assert chunk_ws._encoder_segments(256, 4096, 64, device) == 1


# name: (B, M, L, H, dv, key mask, encoder config)
JRT_CASES = {
    "M = 0 (Based)": (2, 0, 45, 2, 64, False, WsConfig()),
    "M < L, one launch each": (2, 100, 130, 2, 64, True, WsConfig()),
    "M > L, dv 112": (1, 150, 40, 2, 112, True, WsConfig()),
    "B*H = 1, split-K encoder": (1, 1100, 70, 1, 64, True, WsConfig()),
    "split-K forced": (2, 200, 64, 1, 48, True, WsConfig(num_segments=3)),
}
if BIG:
    JRT_CASES = {
        "M = 0 (Based)": (2, 0, 900, 4, 64, False, WsConfig()),
        "M < L": (2, 512, 1500, 4, 64, True, WsConfig()),
        "M > L": (2, 3000, 700, 3, 112, True, WsConfig()),
        "B*H = 1": (1, 4096, 2048, 1, 64, True, WsConfig()),
    }


@pytest.mark.parametrize("name", list(JRT_CASES))
def test_jrt_prefill_matches_naive(name: str) -> None:
    """Encoder state over the first M tokens added to an initial state, then the causal pass over L."""
    *case, enc_config = JRT_CASES[name]

    def encode(
        k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return chunk_ws.pla_encode_with(k, v, mask, config=enc_config)

    check_jrt_prefill(encode, chunk_ws.pla_causal, tuple(case), seed=len(name) + 100)


@pytest.mark.parametrize("enc_length", [0, 1, 70, 200])
def test_encode_reads_the_first_enc_length_tokens(enc_length: int) -> None:
    gen = _gen(enc_length + 7)
    length = 130 if not BIG else 1500
    k, v = _randn(gen, 2, length, 2, 16), _randn(gen, 2, length, 2, 64)
    mask = _mask(gen, 2, length)
    kv, z = chunk_ws.pla_encode(k, v, mask, enc_length)
    m = min(enc_length, length)
    rkv, rz = naive.pla_encode(k[:, :m], v[:, :m], mask[:, :m])
    assert_close(kv, rkv, REL_STATE, "kv")
    assert_close(z, rz, REL_STATE, "z")


def test_half_precision_prefill() -> None:
    """fp16 activations (the interpreter's bf16 dot is broken in Triton 3.9): half-precision MMA operands,
    fp32 state, z split into two halves for the read-out."""
    dtype = torch.float16
    gen = _gen(8)
    batch, length, heads, dv = (2, 150, 2, 64) if not BIG else (2, 3000, 4, 64)
    q = _randn(gen, batch, length, heads, 16, dtype=dtype)
    k = _randn(gen, batch, length, heads, 16, dtype=dtype)
    v = _randn(gen, batch, length, heads, dv, dtype=dtype)
    kv0, z0 = _state(gen, batch, heads, dv)
    o, kv, z = chunk_ws.pla_causal(q, k, v, kv0, z0)
    ro, rkv, rz = naive.pla_causal(q, k, v, kv0, z0)
    assert o.dtype == dtype
    assert_outputs_close((o.float(), kv, z), (ro.float(), rkv, rz), 5e-3, 5e-3)


def test_zero_length_and_bad_config() -> None:
    gen = _gen(3)
    kv0, z0 = _state(gen, 2, 2, 32)
    q = torch.zeros(2, 0, 2, 16, device=DEVICE)
    v = torch.zeros(2, 0, 2, 32, device=DEVICE)
    o, kv, z = chunk_ws.pla_causal(q, q, v, kv0, z0)
    assert o.shape == (2, 0, 2, 32) and torch.equal(kv, kv0) and torch.equal(z, z0)
    assert kv.data_ptr() != kv0.data_ptr(), "the outputs must not alias the inputs"
    q1, v1 = _randn(gen, 2, 4, 2, 16), _randn(gen, 2, 4, 2, 32)
    with pytest.raises(ValueError, match="chunk 16"):
        chunk_ws.pla_causal_with(q1, q1, v1, kv0, z0, config=WsConfig(chunk=16))
    with pytest.raises(ValueError, match="multiple of 16"):
        chunk_ws.pla_causal(q1, q1, _randn(gen, 2, 4, 2, 40), kv0[..., :8].repeat(1, 1, 1, 5), z0)


@pytest.mark.skipif(not BIG, reason="the CPU cases above already run in fp32")
def test_causal_fp32_on_cuda() -> None:
    """fp32 activations on the GPU (tf32x3 dots): tight tolerance."""
    gen = _gen(99)
    q = _randn(gen, 1, 200, 2, 16, dtype=torch.float32)
    k = _randn(gen, 1, 200, 2, 16, dtype=torch.float32)
    v = _randn(gen, 1, 200, 2, 64, dtype=torch.float32)
    kv0, z0 = _state(gen, 1, 2, 64)
    o, kv, z = chunk_ws.pla_causal_with(q, k, v, kv0, z0, config=WsConfig(num_segments=1))
    ro, rkv, rz = naive.pla_causal(q, k, v, kv0, z0)
    assert_outputs_close((o, kv, z), (ro, rkv, rz), 1e-4, 1e-4)


@pytest.mark.skipif(BIG, reason="a compile check for machines without a GPU; the GPU run executes the kernel")
def test_causal_kernel_compiles_for_sm90a() -> None:
    """The default causal kernel builds for sm_90a ahead of time (PTX + cubin, as the TensorRT plugins need),
    uses Hopper's warpgroup MMAs in its chunk loop, and fits two programs per SM; run in a subprocess,
    since this process has the Triton interpreter on. Spills are reported, not yet zero (see the issue)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"), "--only", "ws_causal_dv64_w4",
         "--json", "-"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(proc.stdout)["rows"]
    assert row["registers"] <= 255 and row["shared_bytes"] <= 227 * 1024
    assert row["programs_per_sm"] >= 2, row
    assert row["loop_hgmma"] >= 40, "the chunk loop should run on warpgroup MMAs"
    assert row["loop_instructions"] < 2000, row  # today's chunk.py kernel: ~5200 per 64 tokens
    assert row["stack_bytes"] <= 512, row
