"""The cpu target's backend: ``model.onnx`` on ONNX Runtime's CPU execution provider.

The state pool is numpy arrays in host memory, which is where ONNX Runtime computes; a call feeds views of
the pool's rows and writes the next state back into them. Tokens are sampled on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jrtc.errors import JrtcError
from jrtc.runtime.backends import GraphTensor, first_line
from jrtc.runtime.sampling import Draw, sample

if TYPE_CHECKING:
    import onnxruntime

    from jrtc.runtime.engine import Manifest


class OnnxRuntimePool:
    def __init__(self, session: onnxruntime.InferenceSession, manifest: Manifest, max_batch: int) -> None:
        self._session = session
        self._inputs, self._outputs = manifest.inputs, manifest.outputs
        self._vocab_size = manifest.vocab_size
        self.max_batch = max_batch
        try:
            self.states = [np.zeros((max_batch, *s.shape), np.dtype(s.dtype)) for s in manifest.state]
        except (MemoryError, ValueError):  # numpy's two ways of saying the pool is too large
            per_slot = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in manifest.state)
            raise JrtcError(
                f"a state pool of {max_batch} sequences needs {max_batch * per_slot / 2**30:.3g} GiB, "
                "more than this machine can allocate: pass a smaller max_batch"
            ) from None
        self.bytes_per_sequence = sum(s.nbytes for s in self.states) // max_batch

    def reset(self, slots: slice) -> None:
        for state in self.states:
            state[slots] = 0

    def move(self, source: int, target: int) -> None:
        for state in self.states:
            state[target] = state[source]

    def run(
        self, slots: slice, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray
    ) -> np.ndarray:
        rows = [state[slots] for state in self.states]
        feed = dict(zip(self._inputs, [input_ids, start_pos, num_pad, *rows], strict=True))
        logits, *next_states = self._session.run(self._outputs, feed)
        for row, new in zip(rows, next_states, strict=True):
            row[...] = new
        return logits

    def sample(self, logits: np.ndarray, draws: Sequence[Draw]) -> list[int]:
        return [sample(row[: self._vocab_size], draw) for row, draw in zip(logits, draws, strict=True)]

    def to_numpy(self, logits: np.ndarray) -> np.ndarray:
        return logits


class OnnxRuntimeBackend:
    def __init__(self, session: onnxruntime.InferenceSession, manifest: Manifest) -> None:
        self._session = session
        self._manifest = manifest

    def new_pool(self, max_batch: int) -> OnnxRuntimePool:
        return OnnxRuntimePool(self._session, self._manifest, max_batch)


def load(model_path: Path, manifest: Manifest) -> OnnxRuntimeBackend:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable or invalid models
        raise JrtcError(
            f"{model_path} is corrupted: ONNX Runtime cannot load it ({first_line(exc)})"
        ) from None
    manifest.check_graph(
        model_path,
        [_graph_tensor(i) for i in session.get_inputs()],
        [_graph_tensor(o) for o in session.get_outputs()],
    )
    return OnnxRuntimeBackend(session, manifest)


# ONNX Runtime's type strings for the dtypes an engine's inputs and outputs use.
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def _graph_tensor(arg: Any) -> GraphTensor:
    """An ONNX Runtime ``NodeArg`` as a :class:`GraphTensor` (symbolic dimensions become None)."""
    dtype = np.dtype(_ORT_DTYPES.get(arg.type, "void"))
    return GraphTensor(arg.name, tuple(d if isinstance(d, int) else None for d in arg.shape), dtype)
