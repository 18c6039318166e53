"""The sampler: greedy, and temperature / top-k / top-p draws that are seeded and respect their filter."""

from __future__ import annotations

import numpy as np
import pytest

from jrtc.errors import JrtcError
from jrtc.runtime.sampling import Draw, SamplingParams, filtered_probs, mix32, sample, seed_key

LOGITS = np.array([1.0, 3.0, 0.5, 2.5, -1.0, 2.9, 0.0, 1.5], np.float32)
ORDER = [1, 5, 3, 7, 0, 2, 6, 4]  # ids by decreasing logit


def _draws(params: SamplingParams, n: int = 400) -> list[int]:
    return [sample(LOGITS, Draw(params, params.seed, i)) for i in range(n)]


def test_greedy_is_the_default() -> None:
    assert SamplingParams().temperature == 0.0
    assert sample(LOGITS, Draw(SamplingParams(top_k=3, top_p=0.1), seed=5, index=0)) == 1


def test_seeded_sampling_is_deterministic() -> None:
    params = SamplingParams(temperature=1.0, top_k=5, top_p=0.9, seed=7)
    assert _draws(params) == _draws(params)
    assert _draws(params) != _draws(SamplingParams(temperature=1.0, top_k=5, top_p=0.9, seed=8))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_keeps_the_k_likeliest(k: int) -> None:
    draws = set(_draws(SamplingParams(temperature=2.0, top_k=k, seed=0)))
    assert draws == set(ORDER[:k])


def test_top_p_keeps_the_smallest_nucleus() -> None:
    params = SamplingParams(temperature=1.0, top_p=0.6, seed=0)
    probs = np.exp(LOGITS - LOGITS.max()) / np.exp(LOGITS - LOGITS.max()).sum()
    mass = np.cumsum(probs[ORDER])
    nucleus = ORDER[: int(np.searchsorted(mass, 0.6)) + 1]
    assert mass[len(nucleus) - 2] < 0.6 <= mass[len(nucleus) - 1]
    assert set(_draws(params)) == set(nucleus)
    kept = filtered_probs(LOGITS, params)
    assert set(np.flatnonzero(kept)) == set(nucleus) and kept.sum() == pytest.approx(1.0)


def test_tiny_top_p_is_greedy_and_temperature_flattens() -> None:
    assert set(_draws(SamplingParams(temperature=1.0, top_p=1e-6, seed=0))) == {1}
    hot = filtered_probs(LOGITS, SamplingParams(temperature=100.0))
    cold = filtered_probs(LOGITS, SamplingParams(temperature=0.02))
    assert hot.max() < 0.2 and cold.max() > 0.8


def test_draw_frequencies_follow_the_distribution() -> None:
    params = SamplingParams(temperature=1.0, seed=3)
    counts = np.bincount(_draws(params, 4000), minlength=len(LOGITS)) / 4000
    np.testing.assert_allclose(counts, filtered_probs(LOGITS, params), atol=0.03)


def _mix32_exact(x: int) -> int:
    """lowbias32 with Python's exact integers, written from the published constants."""
    x ^= x >> 16
    x = (x * 0x21F0AAAD) % 2**32
    x ^= x >> 15
    x = (x * 0x735A2D97) % 2**32
    return x ^ (x >> 15)


def test_hash_is_exact_in_int64_arrays() -> None:
    values = np.array([0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1], np.int64)
    values = np.concatenate([values, np.random.default_rng(0).integers(0, 2**32, 1000)])
    assert mix32(values).tolist() == [_mix32_exact(int(v)) for v in values]
    assert mix32(12345) == _mix32_exact(12345)
    assert len({mix32(i) for i in range(5000)}) == 5000  # a bijection: no collisions


def test_draws_depend_on_seed_and_index_only() -> None:
    params = SamplingParams(temperature=1.0, seed=3)
    assert sample(LOGITS, Draw(params, 3, 17)) == sample(LOGITS.copy(), Draw(params, 3, 17))
    keys = {seed_key(seed, index) for seed in (0, 1, 2**40, -1) for index in range(50)}
    assert len(keys) == 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1.0},
        {"top_k": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"max_new_tokens": 0},
        {"stop": ("",)},
    ],
)
def test_invalid_params(kwargs: dict) -> None:
    with pytest.raises(JrtcError):
        SamplingParams(**kwargs)
