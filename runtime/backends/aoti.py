"""The ``aoti`` backend: AOTInductor packages (``--target cuda``, ``--target cpu --format aoti``), run by torch.

This module imports torch, so the runtime loads it only for these engines. The state pool is torch tensors
on the package's device, allocated once; the package's two programs (prefill for L >= 2, decode for L = 1)
write the next state into the rows they are given, so a call hands them views of the pool and nothing is
copied back. Tokens are sampled on the same device (``torch_sampling``).

On CUDA, decode runs as CUDA graphs, one per batch-size bucket (``torch_pool``: powers of two up to
``max_batch``), captured when the pool is made.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jrtc.errors import JrtcError
from jrtc.runtime.backends import first_line
from jrtc.runtime.backends.torch_pool import TorchStatePool, capture_graphs, smallest_bucket

if TYPE_CHECKING:
    import torch

    from jrtc.runtime.engine import Manifest

PROGRAMS = ("prefill", "decode")


class AotiPool(TorchStatePool):
    def __init__(self, backend: AotiBackend, max_batch: int) -> None:
        import torch

        super().__init__(backend.manifest, max_batch, backend.device)
        self._backend = backend
        self._graphs: dict[int, tuple[Any, torch.Tensor]] = {}
        self.graph_error: str | None = (
            None  # why decode runs without CUDA graphs on a CUDA device, if it does
        )
        if backend.cuda_graphs:
            device = backend.device
            # The graphs' inputs: fixed buffers, of which a replay reads the first n rows.
            self._ids = torch.zeros(max_batch, 1, dtype=torch.int64, device=device)
            self._positions = torch.ones(max_batch, dtype=torch.int64, device=device)  # past the encoder
            self._pads = torch.zeros(max_batch, dtype=torch.int64, device=device)
            try:
                self._graphs = capture_graphs(max_batch, device, self._decode_rows)
            except RuntimeError as exc:  # capture refused (a library call that cannot be captured, say)
                self.graph_error = first_line(exc)
                warnings.warn(
                    f"decode runs without CUDA graphs: {self.graph_error}", RuntimeWarning, stacklevel=2
                )
            self.reset(slice(0, max_batch))  # the warm-up ran on these rows

    def _decode_rows(self, size: int) -> torch.Tensor:
        """The decode program over the first ``size`` rows of the pool and of the graphs' input buffers."""
        rows = [state[:size] for state in self.states]
        return self._backend.decode(self._ids[:size], self._positions[:size], self._pads[:size], rows)

    def run(
        self, slots: slice, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray
    ) -> torch.Tensor:
        import torch

        device = self._backend.device
        ids = torch.from_numpy(input_ids).to(device)
        positions = torch.from_numpy(start_pos).to(device)
        batch = input_ids.shape[0]
        if input_ids.shape[1] == 1 and self._graphs and slots.start == 0:
            self._ids[:batch].copy_(ids)
            self._positions[:batch].copy_(positions)
            graph, logits = self._graphs[smallest_bucket(self._graphs, batch)]
            graph.replay()
            return logits[:batch]
        program = self._backend.decode if input_ids.shape[1] == 1 else self._backend.prefill
        pads = torch.from_numpy(num_pad).to(device)
        return program(ids, positions, pads, [state[slots] for state in self.states])


class AotiBackend:
    def __init__(self, manifest: Manifest, device: str, prefill: Any, decode: Any, cuda_graphs: bool) -> None:
        self.manifest = manifest
        self.device = device
        self.prefill, self.decode = prefill, decode
        self.cuda_graphs = cuda_graphs

    def new_pool(self, max_batch: int) -> AotiPool:
        return AotiPool(self, max_batch)


def _check_device(engine_file: Path, raw: dict[str, Any]) -> str:
    """The package's device, if this machine has it; one line saying what is missing otherwise."""
    import torch

    device = str(raw.get("device", "cpu"))
    if device != "cuda":
        return device
    built_on = f"{raw.get('gpu', 'a GPU')}, compute capability {'.'.join(map(str, raw.get('compute_capability', [])))}"
    if not torch.cuda.is_available():
        raise JrtcError(
            f"{engine_file} is a CUDA engine (built on {built_on}) and this machine has no CUDA GPU; "
            "export the checkpoint with --target cpu here"
        )
    have = list(torch.cuda.get_device_capability())
    if have != list(raw.get("compute_capability", [])):
        raise JrtcError(
            f"{engine_file} was built on {built_on}; this GPU ({torch.cuda.get_device_name()}) has compute "
            f"capability {have[0]}.{have[1]}: export the checkpoint again on this machine"
        )
    return device


def load(engine_file: Path, manifest: Manifest) -> AotiBackend:
    try:
        import torch
        from torch._inductor.package import load_package
    except ImportError:
        raise JrtcError(
            f"{engine_file} is an AOTInductor package, which needs torch: pip install torch "
            "(or export with --target cpu for ONNX Runtime)"
        ) from None
    raw = manifest.raw
    built = str(raw.get("built_with", {}).get("torch", "?"))
    if built.split("+")[0].split(".")[:2] != torch.__version__.split("+")[0].split(".")[:2]:
        raise JrtcError(
            f"{engine_file} was built with torch {built} and this is torch {torch.__version__}: AOTInductor "
            "packages run with the torch release that built them; export the checkpoint again here"
        )
    device = _check_device(engine_file, raw)
    try:
        prefill, decode = (load_package(str(engine_file), name) for name in PROGRAMS)
    except Exception as exc:  # the loader raises RuntimeError with C++ reports for broken archives
        raise JrtcError(
            f"{engine_file} is corrupted: AOTInductor cannot load it ({first_line(exc)})"
        ) from None
    # JRTC_CUDA_GRAPHS=0 turns the decode graphs off (to compare, or to debug a capture).
    graphs = device == "cuda" and os.environ.get("JRTC_CUDA_GRAPHS", "1") != "0"
    return AotiBackend(manifest, device, prefill, decode, cuda_graphs=graphs)
