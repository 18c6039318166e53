"""Next-token sampling on numpy logits: greedy, or temperature with top-k / top-p filtering.

Draws are counter-based: the noise of a sequence's n-th token is a hash of its seed and n, so a sequence's
tokens never depend on the batch it shares, and the device samplers of GPU backends
(``runtime/backends/torch_sampling.py``) draw the same tokens from the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from jrtc.errors import JrtcError


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens and when it stops.

    ``temperature == 0`` is greedy (top-k and top-p then have no effect). ``seed`` makes sampling
    reproducible; each sequence draws from its own generator, so its tokens do not depend on which
    other sequences share its batch.
    """

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_on_eos: bool = True

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise JrtcError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise JrtcError(f"top-k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise JrtcError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise JrtcError(f"max new tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise JrtcError("stop strings must not be empty")


_MASK32 = 0xFFFFFFFF
Ints = TypeVar("Ints")  # a Python int, or a numpy or torch int64 array with values below 2**32


def _mul32(x: Ints, c: int) -> Ints:
    # (x * c) mod 2**32 from 16-bit halves of c, so no intermediate leaves int64 (torch has no uint64 math).
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def mix32(x: Ints) -> Ints:
    """A bijective 32-bit integer hash (``lowbias32``, https://nullprogram.com/blog/2018/07/31/) of
    non-negative values below 2**32; written with operators only, so ints, numpy and torch arrays share it."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def seed_key(seed: int, index: int) -> int:
    """The 32-bit noise key of a sequence's ``index``-th token: a sequence's draws depend on its seed and
    position only, never on which other sequences share its batch (or which device samples it)."""
    seed &= 2**64 - 1
    return mix32(mix32(mix32(seed >> 32) ^ (seed & _MASK32)) ^ (index & _MASK32))


def keep_threshold(scaled: np.ndarray, params: SamplingParams) -> float:
    """The smallest scaled logit that survives top-k and top-p (ties with it survive too)."""
    threshold = -np.inf
    if 0 < params.top_k < scaled.shape[-1]:
        threshold = np.partition(scaled, -params.top_k)[-params.top_k]
    if params.top_p < 1.0:
        ordered = np.sort(scaled)[::-1]
        probs = np.exp(ordered - ordered[0])
        probs[ordered < threshold] = 0.0
        probs /= probs.sum()
        # The smallest prefix whose mass reaches top_p: a token stays if the mass before it is short.
        kept = int(np.count_nonzero(np.cumsum(probs) - probs < params.top_p))
        threshold = max(threshold, ordered[kept - 1])
    return float(threshold)


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Probabilities over the vocabulary after temperature, top-k and top-p (float64, sums to 1)."""
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.where(scaled >= keep_threshold(scaled, params), np.exp(scaled - scaled.max()), 0.0)
    return probs / probs.sum()


@dataclass(frozen=True)
class Draw:
    """One token to pick: the sequence's sampling settings, its seed, and which of its tokens this is."""

    params: SamplingParams
    seed: int
    index: int


def sample(logits: np.ndarray, draw: Draw) -> int:
    """One token id from ``logits [vocab]`` (already sliced to the real vocabulary).

    Greedy is the first argmax. Otherwise the Gumbel-max trick: the argmax of the kept scaled logits plus
    Gumbel noise hashed from ``(seed, index, token id)`` is a draw from :func:`filtered_probs`; the device
    samplers of GPU backends compute the same noise.
    """
    params = draw.params
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    hashed = mix32(seed_key(draw.seed, draw.index) ^ np.arange(scaled.shape[-1], dtype=np.int64))
    gumbel = -np.log(-np.log((hashed + 0.5) / 2**32))
    return int(np.argmax(np.where(scaled >= keep_threshold(scaled, params), scaled + gumbel, -np.inf)))
