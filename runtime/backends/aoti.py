"""The ``aoti`` backend: AOTInductor packages (``--target cuda``, ``--target cpu --format aoti``), run by torch.

This module imports torch, so the runtime loads it only for these engines. The state pool is torch tensors
on the package's device, allocated once; the package's two programs (prefill for L >= 2, decode for L = 1)
write the next state into the rows they are given, so a call hands them views of the pool and nothing is
copied back. Tokens are sampled on the same device (``torch_sampling``).

On CUDA, decode runs as CUDA graphs, one per batch-size bucket (powers of two up to ``max_batch``), captured
when the pool is made: while every slot is still free, since capture runs the program once to warm it up.
A batch of n running sequences replays the bucket that holds n; the rows past n are free slots (running
sequences fill the lowest slots), so what the graph computes there is never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jrtc.errors import JrtcError, check_int
from jrtc.runtime.backends import first_line
from jrtc.runtime.sampling import Draw

if TYPE_CHECKING:
    import torch

    from jrtc.runtime.engine import Manifest

PROGRAMS = ("prefill", "decode")


def _buckets(max_batch: int) -> list[int]:
    sizes = [1]
    while sizes[-1] < max_batch:
        sizes.append(min(2 * sizes[-1], max_batch))
    return sizes


class DecodeGraphs:
    """The decode program captured as CUDA graphs over the first rows of a pool, one per batch bucket."""

    def __init__(self, decode: Any, states: list[torch.Tensor], max_batch: int) -> None:
        import torch

        device = states[0].device
        self.input_ids = torch.zeros(max_batch, 1, dtype=torch.int64, device=device)
        self.start_pos = torch.ones(max_batch, dtype=torch.int64, device=device)  # past the encoder
        self.num_pad = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = None
        for size in sorted(
            _buckets(max_batch), reverse=True
        ):  # the largest first: the others reuse its memory
            args = (
                self.input_ids[:size],
                self.start_pos[:size],
                self.num_pad[:size],
                [s[:size] for s in states],
            )
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                decode(*args)  # warm-up outside the graph (allocations, lazy initialization)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = decode(*args)
            pool = graph.pool()
            self.graphs[size] = (graph, logits)

    def run(self, input_ids: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        size = min(s for s in self.graphs if s >= batch)
        self.input_ids[:batch].copy_(input_ids)
        self.start_pos[:batch].copy_(start_pos)
        graph, logits = self.graphs[size]
        graph.replay()
        return logits[:batch]


class AotiPool:
    def __init__(self, backend: AotiBackend, max_batch: int) -> None:
        import torch

        manifest = backend.manifest
        self._backend = backend
        self._vocab_size = manifest.vocab_size
        self.max_batch = max_batch
        self.states = [
            torch.zeros((max_batch, *s.shape), dtype=getattr(torch, s.dtype), device=backend.device)
            for s in manifest.state
        ]
        self.bytes_per_sequence = sum(s.nbytes for s in self.states) // max_batch
        self._graphs = DecodeGraphs(backend.decode, self.states, max_batch) if backend.cuda_graphs else None
        if self._graphs is not None:
            self.reset(slice(0, max_batch))  # the warm-up ran on these rows

    def reset(self, slots: slice) -> None:
        for state in self.states:
            state[slots].zero_()

    def move(self, source: int, target: int) -> None:
        for state in self.states:
            state[target].copy_(state[source])

    def run(
        self, slots: slice, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray
    ) -> torch.Tensor:
        import torch

        device = self._backend.device
        ids = torch.from_numpy(input_ids).to(device)
        positions = torch.from_numpy(start_pos).to(device)
        if input_ids.shape[1] == 1 and self._graphs is not None and slots.start == 0:
            return self._graphs.run(ids, positions)
        program = self._backend.decode if input_ids.shape[1] == 1 else self._backend.prefill
        pads = torch.from_numpy(num_pad).to(device)
        return program(ids, positions, pads, [state[slots] for state in self.states])

    def sample(self, logits: torch.Tensor, draws: Sequence[Draw]) -> list[int]:
        from jrtc.runtime.backends import torch_sampling

        return torch_sampling.sample(logits[:, : self._vocab_size], draws)

    def to_numpy(self, logits: torch.Tensor) -> np.ndarray:
        return logits.float().cpu().numpy()


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


def load(engine_file: Path, manifest: Manifest, threads: int | None = None) -> AotiBackend:
    """``threads``: torch's intra-op threads, which the package's CPU kernels use (default: torch's own,
    the physical cores)."""
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
    if threads is not None:
        torch.set_num_threads(check_int("threads", threads, minimum=1))
    try:
        prefill, decode = (load_package(str(engine_file), name) for name in PROGRAMS)
    except Exception as exc:  # the loader raises RuntimeError with C++ reports for broken archives
        raise JrtcError(
            f"{engine_file} is corrupted: AOTInductor cannot load it ({first_line(exc)})"
        ) from None
    return AotiBackend(manifest, device, prefill, decode, cuda_graphs=device == "cuda")
