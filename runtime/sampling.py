"""Next-token sampling on numpy logits: greedy, or temperature with top-k / top-p filtering.

Draws are counter-based: the noise of a sequence's n-th token is a hash of its seed and n, so a sequence's
tokens never depend on the batch it shares, and the device samplers of GPU backends
(``runtime/backends/torch_sampling.py``) draw the same tokens from the same logits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from jrtc.errors import JrtcError, check_int, check_number


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens and when it stops.

    ``temperature == 0`` is greedy (top-k and top-p then have no effect). ``seed`` makes sampling
    reproducible; a sequence's draws depend on its seed and the position of each token only, so its tokens
    do not depend on which other sequences share its batch.
    """

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_on_eos: bool = True

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, 0.0)
        check_int("top-k", self.top_k, minimum=0)
        check_number("top-p", self.top_p, 0.0, open_minimum=True)
        if self.top_p > 1.0:
            raise JrtcError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.seed is not None:
            check_int("seed", self.seed, minimum=0)  # numpy's generators take no negative seeds
        check_int("max new tokens", self.max_new_tokens, minimum=1)
        if not isinstance(self.stop_on_eos, bool):
            raise JrtcError(f"stop_on_eos must be True or False, got {self.stop_on_eos!r}")
        # One string is one stop string (as in the OpenAI API), not a set of one-character ones.
        if isinstance(self.stop, str):
            stop: tuple[str, ...] = (self.stop,)
        elif isinstance(self.stop, Iterable):
            stop = tuple(self.stop)
        else:
            raise JrtcError(f"stop must be a string or a sequence of strings, got {self.stop!r}")
        for text in stop:
            check_text("stop strings", text)
        object.__setattr__(self, "stop", stop)


def check_text(name: str, text: object) -> str:
    """``text`` as a non-empty string that is valid Unicode (a command line can pass undecodable bytes)."""
    if not isinstance(text, str):
        raise JrtcError(f"{name} must be text, got {text!r}")
    if not text:
        raise JrtcError(f"{name} must not be empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JrtcError(f"{name} must be valid UTF-8 text, got {text!r}") from None
    return text


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
    scaled = scale(logits, params)
    probs = np.where(scaled >= keep_threshold(scaled, params), np.exp(scaled - scaled.max()), 0.0)
    return probs / probs.sum()


def scale(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """``logits / temperature`` in float64 with the maximum taken out first, so that a tiny temperature gives
    0 for the top logits and -inf for the rest (greedy, its limit) rather than inf - inf = NaN."""
    shifted = logits.astype(np.float64) - logits.max()
    with np.errstate(over="ignore", divide="ignore"):
        return shifted / params.temperature


@dataclass(frozen=True)
class Draw:
    """One token to pick: the sequence's sampling settings, its seed, and which of its tokens this is."""

    params: SamplingParams
    seed: int
    index: int


NONFINITE_LOGITS = "the engine computed NaN or infinite logits: its weights or inputs overflow"


def sample(logits: np.ndarray, draw: Draw) -> int:
    """One token id from ``logits [vocab]`` (already sliced to the real vocabulary).

    Greedy is the first argmax. Otherwise the Gumbel-max trick: the argmax of the kept scaled logits plus
    Gumbel noise hashed from ``(seed, index, token id)`` is a draw from :func:`filtered_probs`; the device
    samplers of GPU backends compute the same noise.
    """
    if not np.isfinite(logits).all():
        raise JrtcError(NONFINITE_LOGITS)
    params = draw.params
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = scale(logits, params)
    hashed = mix32(seed_key(draw.seed, draw.index) ^ np.arange(scaled.shape[-1], dtype=np.int64))
    gumbel = -np.log(-np.log((hashed + 0.5) / 2**32))
    return int(np.argmax(np.where(scaled >= keep_threshold(scaled, params), scaled + gumbel, -np.inf)))
