"""The ``tensorrt`` backend: ``engine.plan`` (``--target h100|h200``) on TensorRT's runtime.

TensorRT runs the step graph; torch holds the device memory (the state pool, allocated once), the stream,
the CUDA graphs and the sampler (``torch_sampling``), so only the sampled token ids reach the host. One
execution context per optimization profile: ``decode`` (L = 1) and ``prefill`` (L >= 2); each call sets its
input shapes and tensor addresses and enqueues with ``execute_async_v3`` on torch's current stream.

State. The graph reads ``state.*`` and writes ``next.*``. Where the engine makes an output share its input's
memory (the short-conv state: an aliased plugin output, ``manifest["aliased_state"]``; TensorRT 10.15+
reports it through ``get_aliased_input_tensor``), both are bound to the pool's rows and it updates in place;
every other ``next.*`` is written into a second buffer and copied back into the pool's rows on the same
stream. TensorRT wants 256-byte aligned addresses, so rows whose offset in the pool is not aligned (a call
whose first slot is not 0, and a tensor whose row size is not a multiple of 256) go through an aligned
staging copy.

Decode runs as CUDA graphs, one per batch-size bucket (powers of two up to ``max_batch``), captured when
the pool is made, as the ``aoti`` backend does; rows past the batch are free slots, whose results are never
read.

Written to TensorRT 10.9+'s documented Python runtime API; never run against a real TensorRT (none can be
installed on the project's machines). The pool's bookkeeping runs on the CPU in the tests with a stand-in
for :class:`TrtExecutor` that computes the step with the PyTorch model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from jrtc.errors import JrtcError
from jrtc.runtime.backends import first_line
from jrtc.runtime.backends.torch_pool import TorchStatePool, capture_graphs, smallest_bucket

if TYPE_CHECKING:
    import torch

    from jrtc.runtime.engine import Manifest

ALIGN = 256  # IExecutionContext.set_tensor_address: device addresses must be 256-byte aligned
PROFILES = ("decode", "prefill")  # the engine's optimization profiles, in order (export/targets/tensorrt.py)


class Executor(Protocol):
    """Runs the step graph once on the given tensors (graph name -> device tensor of the call's shape)."""

    def run(self, profile: str, tensors: Mapping[str, torch.Tensor]) -> None: ...


class TrtExecutor:
    """The engine's execution contexts, one per profile."""

    def __init__(self, engine: Any, input_names: Sequence[str]) -> None:
        self.engine = engine
        self.input_names = list(input_names)
        self.contexts = {}
        for index, profile in enumerate(PROFILES):
            context = engine.create_execution_context()
            if context is None:
                raise JrtcError("TensorRT could not create an execution context (out of GPU memory?)")
            import torch

            context.set_optimization_profile_async(index, torch.cuda.current_stream().cuda_stream)
            self.contexts[profile] = context

    def run(self, profile: str, tensors: Mapping[str, torch.Tensor]) -> None:
        import torch

        context = self.contexts[profile]
        for name, tensor in tensors.items():
            if name in self.input_names:
                context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise JrtcError("TensorRT failed to run the engine (its log has the reason)")


def aligned_zeros(shape: Sequence[int], dtype: torch.dtype, device: str) -> torch.Tensor:
    """Zeros whose first element is ``ALIGN``-byte aligned, whatever the allocator's own alignment."""
    import torch

    count = int(np.prod(shape))
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.zeros(count * size + ALIGN, dtype=torch.uint8, device=device)
    skip = -raw.data_ptr() % ALIGN
    return raw[skip : skip + count * size].view(dtype).view(tuple(shape))


class TensorRTPool(TorchStatePool):
    def __init__(self, backend: TensorRTBackend, max_batch: int) -> None:
        import torch

        manifest = backend.manifest
        device = backend.device
        super().__init__(manifest, max_batch, device)
        self._backend = backend
        self.names = [s.name for s in manifest.state]
        # next.* of the outputs that are not updated in place: written here, copied back into the pool
        self.next = {
            name: aligned_zeros(state.shape, state.dtype, device)
            for name, state in zip(self.names, self.states, strict=True)
            if name not in backend.in_place
        }
        self.logits = aligned_zeros((max_batch, manifest.vocab_size_padded), torch.float32, device)
        self._graphs: dict[int, tuple[Any, Any]] = {}
        if backend.cuda_graphs:
            self._decode_inputs = {
                "ids": torch.zeros(max_batch, 1, dtype=torch.int64, device=device),
                "pos": torch.ones(max_batch, dtype=torch.int64, device=device),  # past the encoder
                "pads": torch.zeros(max_batch, dtype=torch.int64, device=device),
            }
            self._graphs = capture_graphs(
                max_batch,
                device,
                lambda size: self._call(slice(0, size), *(t[:size] for t in self._decode_inputs.values())),
            )
            self.reset(slice(0, max_batch))  # the warm-up ran on these rows

    def _call(
        self, slots: slice, ids: torch.Tensor, positions: torch.Tensor, pads: torch.Tensor
    ) -> torch.Tensor:
        """Bind, run and copy back one call: ``ids [n, L]`` etc. are device tensors."""
        n = ids.shape[0]
        tensors = {"input_ids": ids, "start_pos": positions, "num_pad": pads, "logits": self.logits[:n]}
        staged = []
        for name, state in zip(self.names, self.states, strict=True):
            rows = state[slots]
            bound = rows
            if rows.data_ptr() % ALIGN:
                bound = aligned_zeros(rows.shape, rows.dtype, str(rows.device))
                bound.copy_(rows)
                staged.append((rows, bound))
            tensors[f"state.{name}"] = bound
            if name in self.next:
                out = self.next[name][:n]
                tensors[f"next.{name}"] = out
                staged.append((rows, out))
            else:
                tensors[f"next.{name}"] = bound  # updated in place (an aliased plugin output)
        self._backend.executor.run("decode" if ids.shape[1] == 1 else "prefill", tensors)
        for rows, result in staged:
            if result.data_ptr() != rows.data_ptr():
                rows.copy_(result)
        return self.logits[:n]

    def run(
        self, slots: slice, input_ids: np.ndarray, start_pos: np.ndarray, num_pad: np.ndarray
    ) -> torch.Tensor:
        import torch

        device = self._backend.device
        n = input_ids.shape[0]
        ids, positions = (torch.from_numpy(a).to(device) for a in (input_ids, start_pos))
        if input_ids.shape[1] == 1 and self._graphs and slots.start == 0:
            self._decode_inputs["ids"][:n].copy_(ids)
            self._decode_inputs["pos"][:n].copy_(positions)
            graph, _ = self._graphs[smallest_bucket(self._graphs, n)]
            graph.replay()
            return self.logits[:n]
        return self._call(slots, ids, positions, torch.from_numpy(num_pad).to(device))


class TensorRTBackend:
    def __init__(self, manifest: Manifest, executor: Executor, device: str, in_place: set[str]) -> None:
        self.manifest = manifest
        self.executor = executor
        self.device = device
        self.in_place = in_place  # state names whose next.* is the state.* buffer
        self.cuda_graphs = device == "cuda"

    def new_pool(self, max_batch: int) -> TensorRTPool:
        return TensorRTPool(self, max_batch)


# -- loading ---------------------------------------------------------------------------------------------


def check_engine_io(
    engine_file: Path, manifest: Manifest, declared: Sequence[tuple[str, bool, str, tuple]]
) -> None:
    """The engine's I/O tensors ``(name, is_input, dtype, shape with -1 for dynamic)``, in engine order, must
    be the manifest's: names (inputs in call order), dtypes and static dims."""
    expected = [
        ("input_ids", True, "int64", (-1, -1)),
        ("start_pos", True, "int64", (-1,)),
        ("num_pad", True, "int64", (-1,)),
        *((f"state.{s.name}", True, s.dtype, (-1, *s.shape)) for s in manifest.state),
        ("logits", False, "float32", (-1, manifest.vocab_size_padded)),
        *((f"next.{s.name}", False, s.dtype, (-1, *s.shape)) for s in manifest.state),
    ]
    where = f"{engine_file} does not match its manifest"
    have = {name: (is_input, dtype, tuple(shape)) for name, is_input, dtype, shape in declared}
    if sorted(have) != sorted(e[0] for e in expected):
        raise JrtcError(f"{where}: engine tensors {sorted(have)}, expected {sorted(e[0] for e in expected)}")
    for name, is_input, dtype, shape in expected:
        got_input, got_dtype, got_shape = have[name]
        dims_ok = len(got_shape) == len(shape) and all(
            g == e or e == -1 for g, e in zip(got_shape, shape, strict=True)
        )
        if got_input != is_input or got_dtype != dtype or not dims_ok:
            raise JrtcError(
                f"{where}: {name} is {got_dtype} {list(got_shape)}, expected {dtype} {list(shape)}"
            )


def check_built_here(
    engine_file: Path, raw: Mapping[str, Any], tensorrt_version: str, gpu: str, capability: list
) -> None:
    """A plan runs only with the TensorRT release and on the GPU model it was built with."""
    built = f"{raw.get('gpu', '?')} (compute capability {'.'.join(map(str, raw.get('compute_capability', [])))}) with TensorRT {raw.get('tensorrt', '?')}"
    rebuild = f"rebuild it here with `jrtc build {engine_file.parent}`"
    if raw.get("tensorrt") != tensorrt_version:
        raise JrtcError(f"{engine_file} was built on {built}; this is TensorRT {tensorrt_version}: {rebuild}")
    if list(raw.get("compute_capability", [])) != list(capability) or raw.get("gpu") != gpu:
        raise JrtcError(
            f"{engine_file} was built on {built}; this GPU is {gpu} (compute capability "
            f"{'.'.join(map(str, capability))}): {rebuild}"
        )


def load(engine_file: Path, manifest: Manifest) -> TensorRTBackend:
    raw = manifest.raw
    if not raw.get("built"):
        raise JrtcError(
            f"{engine_file.parent} has no TensorRT engine yet (exported with --no-build): run "
            f"`jrtc build {engine_file.parent}` on a machine with TensorRT and the GPU"
        )
    try:
        import tensorrt as trt
        import torch
    except ImportError as exc:
        raise JrtcError(
            f"{engine_file} is a TensorRT engine, which needs {exc.name} to run: pip install 'jrtc[tensorrt]' "
            "(or export with --target cuda or cpu)"
        ) from None
    if not torch.cuda.is_available():
        raise JrtcError(f"{engine_file} is a TensorRT engine and torch sees no CUDA GPU here")
    check_built_here(
        engine_file,
        raw,
        trt.__version__,
        torch.cuda.get_device_name(),
        list(torch.cuda.get_device_capability()),
    )
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    try:
        engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
    except Exception as exc:
        raise JrtcError(f"{engine_file} is corrupted: TensorRT cannot load it ({first_line(exc)})") from None
    if engine is None:
        raise JrtcError(f"{engine_file} is corrupted: TensorRT cannot load it")
    dtypes = {
        trt.float32: "float32",
        trt.bfloat16: "bfloat16",
        trt.float16: "float16",
        trt.int64: "int64",
        trt.int32: "int32",
    }
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    declared = [
        (n, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT, dtypes.get(engine.get_tensor_dtype(n), "?"), tuple(engine.get_tensor_shape(n)))
        for n in names
    ]  # fmt: skip
    check_engine_io(engine_file, manifest, declared)
    in_place = set(raw.get("aliased_state", [])) if raw.get("aliased_plugin_io") else set()
    if hasattr(engine, "get_aliased_input_tensor"):  # TensorRT 10.15+: the engine says which outputs alias
        in_place = {
            s.name
            for s in manifest.state
            if engine.get_aliased_input_tensor(f"next.{s.name}") == f"state.{s.name}"
        }
    return TensorRTBackend(manifest, TrtExecutor(engine, manifest.inputs), "cuda", in_place)
