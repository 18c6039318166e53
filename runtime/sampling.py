"""Next-token sampling on numpy logits: greedy, or temperature with top-k / top-p filtering."""

from __future__ import annotations

from dataclasses import dataclass

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


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Probabilities over the vocabulary after temperature, top-k and top-p (float64, sums to 1)."""
    scaled = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is short.
        keep = cumulative - probs[order] < params.top_p
        dropped = order[~keep]
        probs[dropped] = 0.0
        probs /= probs.sum()
    return probs


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from ``logits [vocab]`` (already sliced to the real vocabulary)."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    probs = filtered_probs(logits, params)
    return int(rng.choice(probs.shape[-1], p=probs))
