"""Backends: what runs the step graph. ONNX Runtime now; TensorRT and cuda register here later.

Every backend runs one call of the step graph on numpy arrays (docs/interfaces.md):
``run(input_ids [B, L], start_pos [B], num_pad [B], states) -> (logits [B, vocab_size_padded], next_states)``
with ``states`` in the order of the manifest's ``state`` list, batch first. The runtime owns the state
pool; a backend keeps nothing between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from jrtc.errors import JrtcError

if TYPE_CHECKING:
    from jrtc.runtime.engine import Manifest


class Backend(Protocol):
    def run(
        self, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...


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
        self._inputs = ["input_ids", "start_pos", "num_pad"] + [f"state.{s.name}" for s in manifest.state]
        self._outputs = ["logits"] + [f"next.{s.name}" for s in manifest.state]
        have_in = [i.name for i in self._session.get_inputs()]
        have_out = [o.name for o in self._session.get_outputs()]
        if sorted(have_in) != sorted(self._inputs) or sorted(have_out) != sorted(self._outputs):
            raise JrtcError(
                f"{model_path} does not match its jrtc.json: graph inputs {have_in}, outputs {have_out}; "
                f"expected inputs {self._inputs}, outputs {self._outputs}"
            )

    def run(
        self, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = dict(zip(self._inputs, [input_ids, start_pos, num_pad, *states], strict=True))
        logits, *next_states = self._session.run(self._outputs, feed)
        return logits, next_states


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
