"""Next-token sampling on numpy logits: greedy, or temperature with top-k / top-p filtering."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from jrtc.errors import JrtcError, check_int, check_number


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


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Probabilities over the vocabulary after temperature, top-k and top-p (float64, sums to 1)."""
    # The maximum is taken out before dividing, so a tiny temperature gives 0 for the top logits and -inf for
    # the rest (greedy, its limit) rather than inf - inf = NaN.
    shifted = logits.astype(np.float64) - logits.max()
    with np.errstate(over="ignore", divide="ignore"):
        scaled = shifted / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled)
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
    if not np.isfinite(logits).all():
        raise JrtcError("the engine computed NaN or infinite logits: its weights or inputs overflow")
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    probs = filtered_probs(logits, params)
    return int(rng.choice(probs.shape[-1], p=probs))
