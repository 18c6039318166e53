"""What the GPU backends (``aoti``, ``tensorrt``) share: a state pool of torch tensors on one device, tokens
sampled there (``torch_sampling``), and decode captured as CUDA graphs, one per batch-size bucket.

Graphs are captured over the first rows of the pool (views with fixed addresses) while every slot is still
free, since capture runs the step once to warm it up; the pool is zeroed afterwards. A batch of n running
sequences replays the smallest bucket that holds n: the rows past n are free slots (running sequences fill
the lowest slots), so what the graph computes there is never read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jrtc.runtime.sampling import Draw

if TYPE_CHECKING:
    import torch

    from jrtc.runtime.engine import Manifest


def buckets(max_batch: int) -> list[int]:
    """The decode batch sizes that get a graph: powers of two, and ``max_batch`` itself."""
    sizes = [1]
    while sizes[-1] < max_batch:
        sizes.append(min(2 * sizes[-1], max_batch))
    return sizes


def capture_graphs(max_batch: int, device: str, step: Callable[[int], Any]) -> dict[int, tuple[Any, Any]]:
    """``size -> (CUDA graph, what step(size) returned inside it)`` for every bucket; ``step(size)`` runs the
    decode step on the first ``size`` rows. The largest is captured first and the others reuse its memory."""
    import torch

    graphs: dict[int, tuple[Any, Any]] = {}
    memory = None
    for size in sorted(buckets(max_batch), reverse=True):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step(size)  # warm-up outside the graph: lazy initialization, first allocations
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=memory):
            result = step(size)
        memory = graph.pool()
        graphs[size] = (graph, result)
    return graphs


def smallest_bucket(graphs: dict[int, Any], batch: int) -> int:
    return min(size for size in graphs if size >= batch)


class TorchStatePool:
    """The state of ``max_batch`` sequences as torch tensors on ``device`` (slot = row), allocated once."""

    def __init__(self, manifest: Manifest, max_batch: int, device: str) -> None:
        import torch

        self._vocab_size = manifest.vocab_size
        self.max_batch = max_batch
        self.states = [
            torch.zeros((max_batch, *s.shape), dtype=getattr(torch, s.dtype), device=device)
            for s in manifest.state
        ]
        self.bytes_per_sequence = sum(s[0].nbytes for s in self.states)

    def reset(self, slots: slice) -> None:
        for state in self.states:
            state[slots].zero_()

    def move(self, source: int, target: int) -> None:
        for state in self.states:
            state[target].copy_(state[source])

    def sample(self, logits: torch.Tensor, draws: Sequence[Draw]) -> list[int]:
        from jrtc.runtime.backends import torch_sampling

        return torch_sampling.sample(logits[:, : self._vocab_size], draws)

    def to_numpy(self, logits: torch.Tensor) -> np.ndarray:
        return logits.float().cpu().numpy()
