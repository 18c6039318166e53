"""Backends: what runs an engine's step programs, and the state pools they own on their device.

A backend module (one per engine kind, listed in :data:`BACKENDS`) has ``load(engine_file, manifest) ->
Backend``; its library (onnxruntime, torch, ...) is imported only there, so the runtime stays light until a
backend is chosen. A session asks the backend for a :class:`StatePool` of ``max_batch`` slots, allocated once
where the backend computes (host memory for ONNX Runtime, GPU memory for cuda engines) and updated in place:
nothing of the state crosses to the host between calls, only the sampled token ids do.

A call names the slots of its rows as one contiguous range (``slice``): the session keeps its running
sequences in the lowest slots, so a batch is always a view of the pool, never a gathered copy.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from jrtc.errors import JrtcError

if TYPE_CHECKING:
    from jrtc.runtime.engine import Manifest
    from jrtc.runtime.sampling import Draw

# Logits as the backend keeps them: a numpy array, or a tensor on the backend's device.
Logits = Any


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output as a backend declares it; ``None`` marks a dynamic (or unknown) dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype} [{dims}]"


class StatePool(Protocol):
    """The recurrent state of ``max_batch`` sequences, and the step programs run over its slots."""

    max_batch: int
    bytes_per_sequence: int

    def reset(self, slots: slice) -> None:
        """Zero the state of ``slots`` (a new sequence starts there)."""

    def move(self, source: int, target: int) -> None:
        """Copy the state of slot ``source`` into slot ``target``."""

    def run(self, slots: slice, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray) -> Logits:
        """One step-graph call (docs/interfaces.md) for the rows ``slots``: ``input_ids [B, L]`` int64,
        ``start_pos [B]``, ``num_pad [B]``; their state advances in place. Returns last-position logits
        ``[B, vocab_size_padded]``, where the backend computes."""

    def sample(self, logits: Logits, draws: Sequence[Draw]) -> list[int]:
        """One token id per row of ``logits`` (sliced to the real vocabulary), drawn where they are."""

    def to_numpy(self, logits: Logits) -> np.ndarray:
        """The logits on the host, float32 (for scoring and tests; generation never needs it)."""


class Backend(Protocol):
    """A loaded engine: its programs and weights, ready to serve any number of state pools."""

    def new_pool(self, max_batch: int) -> StatePool: ...


# manifest "backend" -> the module that loads it
BACKENDS = {
    "onnxruntime": "jrtc.runtime.backends.onnxruntime",
    "aoti": "jrtc.runtime.backends.aoti",
    "tensorrt": "jrtc.runtime.backends.tensorrt",
}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries put whole reports in theirs)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_backend(engine_file: Path, manifest: Manifest) -> Backend:
    """The backend the manifest names, loaded from ``engine_file``."""
    module = BACKENDS.get(manifest.backend)
    if module is None:
        raise JrtcError(
            f"this jrtc runtime cannot run {manifest.backend!r} engines (it runs: {', '.join(BACKENDS)}); "
            "export with --target cpu"
        )
    return importlib.import_module(module).load(engine_file, manifest)
