"""PLA Triton kernels (prefill ``chunk``, decode ``fused_recurrent``, torch ops) against ``naive``.

On the CPU (CI) the kernels run in the Triton interpreter at tiny shapes, in fp32 with tight tolerances
(plus one fp16 case: the interpreter's bf16 dot is broken in Triton 3.9). With ``JRTC_PLA_TEST_DEVICE=cuda``
the same tests run on the GPU at larger shapes in bf16, the dtype the models run in
(``benchmarks/gpu_check.sh``), with one fp32 case; fp32 kernels take long to compile for sm_90.
"""

from __future__ import annotations

import os

import pytest
import torch

from jrtc.plugins.pla import chunk, fused_recurrent, naive, ops

DEVICE = os.environ.get("JRTC_PLA_TEST_DEVICE", "cpu")  # conftest.py turns the interpreter on for "cpu"
BIG = DEVICE == "cuda"
if BIG and not torch.cuda.is_available():
    pytest.skip("JRTC_PLA_TEST_DEVICE=cuda but no CUDA device", allow_module_level=True)

PrefillConfig = chunk.PrefillConfig


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


# Activation dtype of the parametrized cases and the matching tolerances (relative to the largest value).
ACT = torch.bfloat16 if BIG else torch.float32
FP32_REL = 2e-5
REL_O = 2e-2 if BIG else FP32_REL  # bf16 output rounding, bf16 features and state in the tensor-core dots
REL_STATE = 1e-2 if BIG else FP32_REL


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = ACT) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def _state(gen: torch.Generator, batch: int, heads: int, dv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A plausible state: the encoder state of some random prefix (so z and kv are consistent)."""
    length = 37
    k = _randn(gen, batch, length, heads, 16, dtype=torch.float32)
    v = _randn(gen, batch, length, heads, dv, dtype=torch.float32)
    return naive.pla_encode(k, v)


def _mask(gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
    mask = torch.rand(batch, length, generator=gen) > 0.3
    mask[0, : min(5, length)] = False  # a left-padded run, as the runtime produces
    return mask.to(DEVICE)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    """max |actual - expected| <= rel * max |expected|, every element finite."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale + 1e-30, f"{what}: max error {err:.3e} > {rel:.1e} * {scale:.3e}"


# ---------------------------------------------------------------------------------------------------------
# Causal prefill
# ---------------------------------------------------------------------------------------------------------

CAUSAL_CASES = {
    # name: (B, L, H, dv, initial state, key mask, config)
    "L not a multiple of the chunk, initial state": (2, 77, 2, 64, True, False, PrefillConfig()),
    "dv 112, two value tiles": (1, 40, 2, 112, True, False, PrefillConfig()),
    "dv 48, masked value columns": (2, 20, 1, 48, False, False, PrefillConfig()),
    "B*H = 1": (1, 70, 1, 32, True, False, PrefillConfig()),
    "masked keys": (2, 50, 2, 16, True, True, PrefillConfig()),
    "small chunk, many chunks": (1, 83, 2, 64, True, True, PrefillConfig(chunk=16)),
    "sequence parallel forced": (1, 150, 2, 64, True, True, PrefillConfig(chunk=16, num_segments=3)),
    "sequence parallel, uneven last segment": (
        2,
        100,
        1,
        112,
        True,
        False,
        PrefillConfig(chunk=16, num_segments=4),
    ),
}
if BIG:
    CAUSAL_CASES = {
        "L not a multiple of the chunk, initial state": (2, 1000, 4, 64, True, False, PrefillConfig()),
        "dv 112": (2, 777, 4, 112, True, True, PrefillConfig()),
        "dv 48": (3, 300, 2, 48, False, False, PrefillConfig()),
        "B*H = 1 (sequence parallel by default)": (1, 2100, 1, 64, True, False, PrefillConfig()),
        "masked keys": (2, 500, 3, 64, True, True, PrefillConfig()),
        "sequence parallel forced": (2, 1500, 2, 64, True, True, PrefillConfig(num_segments=5)),
        "dv 128": (1, 640, 2, 128, True, False, PrefillConfig()),
    }


@pytest.mark.parametrize("name", list(CAUSAL_CASES))
def test_causal_matches_naive(name: str) -> None:
    batch, length, heads, dv, init, masked, config = CAUSAL_CASES[name]
    gen = _gen(len(name))
    q, k = _randn(gen, batch, length, heads, 16), _randn(gen, batch, length, heads, 16)
    v = _randn(gen, batch, length, heads, dv)
    if init:
        kv0, z0 = _state(gen, batch, heads, dv)
    else:
        kv0 = torch.zeros(batch, heads, naive.EXPANDED_DIM, dv, device=DEVICE)
        z0 = torch.zeros(batch, heads, naive.EXPANDED_DIM, device=DEVICE)
    mask = _mask(gen, batch, length) if masked else None
    inputs = [x.clone() for x in (q, k, v, kv0, z0)]

    o, kv, z = chunk.pla_causal_with(q, k, v, kv0, z0, mask, config=config)
    ro, rkv, rz = naive.pla_causal(q, k, v, kv0, z0, mask)
    assert o.dtype == v.dtype and kv.dtype == torch.float32 and z.dtype == torch.float32
    assert_close(o, ro, REL_O, "o")
    assert_close(kv, rkv, REL_STATE, "kv")
    assert_close(z, rz, REL_STATE, "z")
    for before, after in zip(inputs, (q, k, v, kv0, z0), strict=True):
        assert torch.equal(before, after), "an input was modified"


@pytest.mark.skipif(not BIG, reason="the CPU cases above already run in fp32")
def test_causal_fp32_on_cuda() -> None:
    """fp32 activations on the GPU (tf32x3 dots) with a key mask: tight tolerance. One variant only: fp32
    kernels take tens of seconds each to compile for sm_90."""
    gen = _gen(99)
    batch, length, heads, dv = 2, 1000, 2, 64
    q = _randn(gen, batch, length, heads, 16, dtype=torch.float32)
    k = _randn(gen, batch, length, heads, 16, dtype=torch.float32)
    v = _randn(gen, batch, length, heads, dv, dtype=torch.float32)
    kv0, z0 = _state(gen, batch, heads, dv)
    mask = _mask(gen, batch, length)
    o, kv, z = chunk.pla_causal_with(q, k, v, kv0, z0, mask, config=PrefillConfig(num_segments=1))
    ro, rkv, rz = naive.pla_causal(q, k, v, kv0, z0, mask)
    assert_close(o, ro, 1e-4, "o")
    assert_close(kv, rkv, 1e-4, "kv")
    assert_close(z, rz, 1e-4, "z")


def test_sequence_parallel_is_chosen_for_small_batch() -> None:
    # The default heuristic must split a long sequence when B*H cannot fill the GPU ...
    assert chunk._num_segments(1, 4096, 64, torch.device(DEVICE), min_chunks=4) > 1
    # ... and leave a full GPU alone.
    assert chunk._num_segments(256, 4096, 64, torch.device(DEVICE), min_chunks=4) == 1


def test_causal_default_config_splits_and_matches() -> None:
    """B*H = 1 with a sequence long enough for the default heuristic to split it."""
    gen = _gen(11)
    length = 520 if not BIG else 5000
    q, k = _randn(gen, 1, length, 1, 16), _randn(gen, 1, length, 1, 16)
    v = _randn(gen, 1, length, 1, 64)
    kv0, z0 = _state(gen, 1, 1, 64)
    assert chunk._num_segments(1, length, 64, torch.device(DEVICE), min_chunks=4) > 1
    o, kv, z = chunk.pla_causal(q, k, v, kv0, z0)
    ro, rkv, rz = naive.pla_causal(q, k, v, kv0, z0)
    assert_close(o, ro, REL_O, "o")
    assert_close(kv, rkv, REL_STATE, "kv")
    assert_close(z, rz, REL_STATE, "z")


def test_causal_zero_length_returns_initial_state() -> None:
    gen = _gen(3)
    kv0, z0 = _state(gen, 2, 2, 32)
    q = torch.zeros(2, 0, 2, 16, device=DEVICE)
    v = torch.zeros(2, 0, 2, 32, device=DEVICE)
    o, kv, z = chunk.pla_causal(q, q, v, kv0, z0)
    assert o.shape == (2, 0, 2, 32)
    assert torch.equal(kv, kv0) and torch.equal(z, z0)
    assert kv.data_ptr() != kv0.data_ptr(), "the outputs must not alias the inputs"


# ---------------------------------------------------------------------------------------------------------
# Encoder and JRT-RNN prefill (encoder state + causal pass)
# ---------------------------------------------------------------------------------------------------------

JRT_CASES = {
    # name: (B, M, L, H, dv, key mask)
    "M = 0 (Based)": (2, 0, 45, 2, 64, False),
    "M < L": (2, 24, 70, 2, 64, True),
    "M > L": (1, 150, 40, 2, 112, True),
    "B*H = 1": (1, 66, 66, 1, 64, True),
}
if BIG:
    JRT_CASES = {
        "M = 0 (Based)": (2, 0, 900, 4, 64, False),
        "M < L": (2, 512, 1500, 4, 64, True),
        "M > L": (2, 3000, 700, 3, 112, True),
        "B*H = 1": (1, 4096, 2048, 1, 64, True),
    }


@pytest.mark.parametrize("name", list(JRT_CASES))
def test_jrt_prefill_matches_naive(name: str) -> None:
    """The model's prefill: encoder state over the first M tokens, added to the initial state, then the
    causal pass over all L tokens; the same key mask covers both (as the reference applies it)."""
    batch, enc_len, length, heads, dv, masked = JRT_CASES[name]
    gen = _gen(len(name) + 100)
    q, k = _randn(gen, batch, length, heads, 16), _randn(gen, batch, length, heads, 16)
    v = _randn(gen, batch, length, heads, dv)
    k_enc, v_enc = _randn(gen, batch, enc_len, heads, 16), _randn(gen, batch, enc_len, heads, dv)
    full_mask = _mask(gen, batch, max(enc_len, length)) if masked else None
    enc_mask = None if full_mask is None else full_mask[:, :enc_len]
    dec_mask = None if full_mask is None else full_mask[:, :length]
    kv0, z0 = _state(gen, batch, heads, dv)

    kv_e, z_e = chunk.pla_encode(k_enc, v_enc, enc_mask)
    rkv_e, rz_e = naive.pla_encode(k_enc, v_enc, enc_mask)
    assert_close(kv_e, rkv_e, REL_STATE, "encoder kv")
    assert_close(z_e, rz_e, REL_STATE, "encoder z")
    if enc_len == 0:
        assert not kv_e.any() and not z_e.any()

    o, kv, z = chunk.pla_causal(q, k, v, kv0 + kv_e, z0 + z_e, dec_mask)
    ro, rkv, rz = naive.pla_causal(q, k, v, kv0 + rkv_e, z0 + rz_e, dec_mask)
    assert_close(o, ro, REL_O, "o")
    assert_close(kv, rkv, REL_STATE, "kv")
    assert_close(z, rz, REL_STATE, "z")


@pytest.mark.parametrize("enc_length", [0, 1, 24, 70, 200])
def test_encode_reads_the_first_enc_length_tokens(enc_length: int) -> None:
    """The model hands the encoder all L tokens and its length: only the first min(enc_length, L) count,
    exactly as if the rest were not there (not the reference's pad masking, which keeps phi(0))."""
    gen = _gen(enc_length + 7)
    length = 70 if not BIG else 1500
    k, v = _randn(gen, 2, length, 2, 16), _randn(gen, 2, length, 2, 64)
    mask = _mask(gen, 2, length)
    kv, z = chunk.pla_encode(k, v, mask, enc_length)
    m = min(enc_length, length)
    rkv, rz = naive.pla_encode(k[:, :m], v[:, :m], mask[:, :m])
    wkv, wz = naive.pla_encode(k, v, mask, enc_length)
    assert_close(wkv, rkv, FP32_REL, "naive kv, weighted vs sliced")
    assert_close(wz, rz, FP32_REL, "naive z, weighted vs sliced")
    assert_close(kv, rkv, REL_STATE, "kv")
    assert_close(z, rz, REL_STATE, "z")


@pytest.mark.parametrize("num_segments", [1, 3, 7])
def test_encode_split_k(num_segments: int) -> None:
    gen = _gen(num_segments)
    length = 130 if not BIG else 3333
    k, v = _randn(gen, 2, length, 2, 16), _randn(gen, 2, length, 2, 48)
    mask = _mask(gen, 2, length)
    kv, z = chunk.pla_encode_with(k, v, mask, config=PrefillConfig(chunk=32, num_segments=num_segments))
    rkv, rz = naive.pla_encode(k, v, mask)
    assert_close(kv, rkv, REL_STATE, "kv")
    assert_close(z, rz, REL_STATE, "z")


# ---------------------------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------------------------

DECODE_CASES = [(2, 3, 64), (1, 1, 112), (3, 2, 48)] if not BIG else [(1, 16, 64), (64, 16, 64), (7, 16, 112)]


@pytest.mark.parametrize(("batch", "heads", "dv"), DECODE_CASES)
def test_decode_matches_naive(batch: int, heads: int, dv: int) -> None:
    gen = _gen(batch * 100 + dv)
    q, k, v = _randn(gen, batch, heads, 16), _randn(gen, batch, heads, 16), _randn(gen, batch, heads, dv)
    kv, z = _state(gen, batch, heads, dv)
    kv_in, z_in = kv.clone(), z.clone()
    o, kv_new, z_new = fused_recurrent.pla_decode(q, k, v, kv, z)
    ro, rkv, rz = naive.pla_decode(q, k, v, kv, z)
    assert_close(o, ro, REL_O, "o")
    assert_close(kv_new, rkv, FP32_REL, "kv")
    assert_close(z_new, rz, FP32_REL, "z")
    assert torch.equal(kv, kv_in) and torch.equal(z, z_in), "decode modified its input state"


def test_decode_block_sizes_and_in_place() -> None:
    gen = _gen(5)
    q, k, v = _randn(gen, 2, 2, 16), _randn(gen, 2, 2, 16), _randn(gen, 2, 2, 112)
    kv, z = _state(gen, 2, 2, 112)
    ro, rkv, rz = naive.pla_decode(q, k, v, kv, z)
    for block_v in (16, 32, 64):
        o, kv_new, z_new = fused_recurrent.pla_decode_with(q, k, v, kv, z, block_v=block_v)
        assert_close(o, ro, REL_O, f"o (block_v {block_v})")
        assert_close(kv_new, rkv, FP32_REL, f"kv (block_v {block_v})")
    # kv may be updated in place; z only with one value tile per head (all tiles read it, one writes it).
    kv_io, z_io = kv.clone(), z.clone()
    z_out = torch.empty_like(z)
    o, kv_new, z_new = fused_recurrent.pla_decode_with(q, k, v, kv_io, z_io, block_v=32, out=(kv_io, z_out))
    assert kv_new.data_ptr() == kv_io.data_ptr()
    assert_close(o, ro, REL_O, "o in place")
    assert_close(kv_io, rkv, FP32_REL, "kv in place")
    assert_close(z_out, rz, FP32_REL, "z")
    with pytest.raises(ValueError, match="alias"):
        fused_recurrent.pla_decode_with(q, k, v, kv.clone(), z_io, block_v=32, out=(kv.clone(), z_io))
    kv_io, z_io = kv.clone(), z.clone()
    o, _, _ = fused_recurrent.pla_decode_with(q, k, v, kv_io, z_io, block_v=128, out=(kv_io, z_io))
    assert_close(o, ro, REL_O, "o fully in place")
    assert_close(kv_io, rkv, FP32_REL, "kv fully in place")
    assert_close(z_io, rz, FP32_REL, "z fully in place")


def test_prefill_then_decode_equals_longer_prefill() -> None:
    """State handed from the prefill kernel to the decode kernel: both agree on the 153 layout."""
    gen = _gen(21)
    batch, length, heads, dv, steps = 2, 50, 2, 64, 3
    q, k = _randn(gen, batch, length + steps, heads, 16), _randn(gen, batch, length + steps, heads, 16)
    v = _randn(gen, batch, length + steps, heads, dv)
    kv0, z0 = _state(gen, batch, heads, dv)
    _, kv, z = chunk.pla_causal(q[:, :length], k[:, :length], v[:, :length], kv0, z0)
    outs = []
    for t in range(length, length + steps):
        o, kv, z = fused_recurrent.pla_decode(q[:, t], k[:, t], v[:, t], kv, z)
        outs.append(o)
    ro, rkv, rz = naive.pla_causal(q, k, v, kv0, z0)
    assert_close(torch.stack(outs, dim=1), ro[:, length:], REL_O, "decoded o")
    assert_close(kv, rkv, REL_STATE, "kv")
    assert_close(z, rz, REL_STATE, "z")


# ---------------------------------------------------------------------------------------------------------
# Half precision (fp16 on the CPU interpreter, bf16 and fp16 on CUDA)
# ---------------------------------------------------------------------------------------------------------

HALF = [torch.float16] + ([torch.bfloat16] if BIG else [])


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_prefill_and_decode(dtype: torch.dtype) -> None:
    """Half inputs: the kernels' dots run in the half type with fp32 accumulation and fp32 state; compared
    with naive on the same (rounded) inputs. The bound covers rounding of features, state and output."""
    gen = _gen(8)
    batch, length, heads, dv = (2, 70, 2, 64) if not BIG else (2, 3000, 4, 64)
    q, k = (
        _randn(gen, batch, length, heads, 16, dtype=dtype),
        _randn(gen, batch, length, heads, 16, dtype=dtype),
    )
    v = _randn(gen, batch, length, heads, dv, dtype=dtype)
    kv0, z0 = _state(gen, batch, heads, dv)
    o, kv, z = chunk.pla_causal(q, k, v, kv0, z0)
    ro, rkv, rz = naive.pla_causal(q, k, v, kv0, z0)
    assert o.dtype == dtype
    rel = 2e-2 if dtype == torch.bfloat16 else 5e-3
    assert_close(o.float(), ro.float(), rel, "o")
    assert_close(kv, rkv, rel, "kv")
    assert_close(z, rz, rel, "z")
    o1, kv1, z1 = fused_recurrent.pla_decode(q[:, 0], k[:, 0], v[:, 0], kv, z)
    r1 = naive.pla_decode(q[:, 0], k[:, 0], v[:, 0], kv, z)
    assert_close(o1.float(), r1[0].float(), rel, "decode o")
    assert_close(kv1, r1[1], FP32_REL, "decode kv")  # state math is fp32 whatever the activations


# ---------------------------------------------------------------------------------------------------------
# Torch custom ops
# ---------------------------------------------------------------------------------------------------------


def _op_inputs(length: int) -> tuple[torch.Tensor, ...]:
    gen = _gen(length)
    q, k, v = _randn(gen, 2, length, 2, 16), _randn(gen, 2, length, 2, 16), _randn(gen, 2, length, 2, 32)
    kv0, z0 = _state(gen, 2, 2, 32)
    return q, k, v, kv0, z0, _mask(gen, 2, length)


def test_ops_match_naive_and_dispatch_one_token_to_decode() -> None:
    for length in (1, 9):
        q, k, v, kv0, z0, mask = _op_inputs(length)
        for got, ref in zip(
            ops.pla_causal(q, k, v, kv0, z0, mask), naive.pla_causal(q, k, v, kv0, z0, mask), strict=True
        ):
            assert_close(got, ref, REL_O, f"pla_causal L={length}")
        for enc_length in (None, 4):
            got_ref = zip(
                ops.pla_encode(k, v, mask, enc_length), naive.pla_encode(k, v, mask, enc_length), strict=True
            )
            for got, ref in got_ref:
                assert_close(got, ref, REL_O, "pla_encode")
    q, k, v, kv0, z0, _ = _op_inputs(1)
    for got, ref in zip(
        ops.pla_decode(q[:, 0], k[:, 0], v[:, 0], kv0, z0),
        naive.pla_decode(q[:, 0], k[:, 0], v[:, 0], kv0, z0),
        strict=True,
    ):
        assert_close(got, ref, REL_O, "pla_decode")


def test_ops_opcheck() -> None:
    """Schema, fake (meta) implementations and dispatch of the registered ops (torch.library.opcheck)."""
    q, k, v, kv0, z0, mask = _op_inputs(5)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.jrtc.pla_causal.default, (q, k, v, kv0, z0, mask), test_utils=utils)
    torch.library.opcheck(torch.ops.jrtc.pla_causal.default, (q, k, v, kv0, z0, None), test_utils=utils)
    torch.library.opcheck(torch.ops.jrtc.pla_encode.default, (k, v, mask, 4), test_utils=utils)
    args = (q[:, 0], k[:, 0], v[:, 0], kv0, z0)
    torch.library.opcheck(torch.ops.jrtc.pla_decode.default, args, test_utils=utils)


def test_ops_trace_with_fake_tensors() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, kv0, z0, mask = _op_inputs(7)
    with FakeTensorMode() as mode:
        fq, fk, fv, fkv, fz, fm = (mode.from_tensor(x) for x in (q, k, v, kv0, z0, mask))
        o, kv, z = ops.pla_causal(fq, fk, fv, fkv, fz, fm)
        assert o.shape == v.shape and o.dtype == v.dtype
        assert kv.shape == kv0.shape and kv.dtype == torch.float32 and z.shape == z0.shape
        kv_e, z_e = ops.pla_encode(fk, fv, fm)
        assert kv_e.shape == kv0.shape and z_e.shape == z0.shape


def test_rejects_unsupported_shapes() -> None:
    gen = _gen(1)
    q, k = _randn(gen, 1, 4, 1, 16), _randn(gen, 1, 4, 1, 16)
    v = _randn(gen, 1, 4, 1, 40)
    kv0 = torch.zeros(1, 1, naive.EXPANDED_DIM, 40, device=DEVICE)
    z0 = torch.zeros(1, 1, naive.EXPANDED_DIM, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of 16"):
        chunk.pla_causal(q, k, v, kv0, z0)
    with pytest.raises(ValueError, match="16"):
        chunk.pla_causal(_randn(gen, 1, 4, 1, 8), k, v, kv0, z0)
