"""Backends: what runs the step graph. ONNX Runtime now; TensorRT and cuda register here later.

Every backend runs one call of the step graph on numpy arrays (docs/interfaces.md):
``run(input_ids [B, L], start_pos [B], num_pad [B], states) -> (logits [B, vocab_size_padded], next_states)``
with ``states`` in the order of the manifest's ``state`` list, batch first. The runtime owns the state
pool; a backend keeps nothing between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from jrtc.errors import JrtcError

if TYPE_CHECKING:
    from jrtc.runtime.engine import Manifest


class Backend(Protocol):
    def run(
        self, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output as a backend declares it; ``None`` marks a dynamic (or unknown) dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype} [{dims}]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OnnxRuntimeBackend:
    """The cpu target: ``model.onnx`` on ONNX Runtime's CPU execution provider."""

    def __init__(self, model_path: Path, manifest: Manifest) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid models
            raise JrtcError(
                f"{model_path} is corrupted: ONNX Runtime cannot load it ({_first_line(exc)})"
            ) from None
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        manifest.check_graph(
            model_path,
            [_graph_tensor(i) for i in self._session.get_inputs()],
            [_graph_tensor(o) for o in self._session.get_outputs()],
        )

    def run(
        self, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = dict(zip(self._inputs, [input_ids, start_pos, num_pad, *states], strict=True))
        logits, *next_states = self._session.run(self._outputs, feed)
        return logits, next_states


# ONNX Runtime's type strings for the dtypes an engine's inputs and outputs use.
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def _graph_tensor(arg: Any) -> GraphTensor:
    """An ONNX Runtime ``NodeArg`` as a :class:`GraphTensor` (symbolic dimensions become None)."""
    dtype = np.dtype(_ORT_DTYPES.get(arg.type, "void"))
    return GraphTensor(arg.name, tuple(d if isinstance(d, int) else None for d in arg.shape), dtype)


BACKENDS: dict[str, Callable[[Path, Manifest], Backend]] = {"onnxruntime": OnnxRuntimeBackend}


def load_backend(engine_file: Path, manifest: Manifest) -> Backend:
    """The backend the manifest names, loaded from ``engine_file``."""
    factory = BACKENDS.get(manifest.backend)
    if factory is None:
        raise JrtcError(
            f"this jrtc runtime cannot run {manifest.backend!r} engines (it runs: {', '.join(BACKENDS)}); "
            "export with --target cpu"
        )
    return factory(engine_file, manifest)
