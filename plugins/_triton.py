"""Helpers every jrtc Triton kernel module shares: dtypes, dots, where kernels may run, and their launch."""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from torch.library import wrap_triton


@triton.jit
def dot(a, b, acc, PREC: tl.constexpr):
    # PREC is "" for half-precision operands; for fp32 operands (tests, fp32 models) "tf32x3" on GPUs
    # (three tf32 products, about fp32 accuracy, on the tensor cores: an FMA "ieee" dot of these tiles spills
    # so much that ptxas takes a minute per kernel) and "ieee" in the interpreter. Triton's default would be
    # plain tf32 (10-bit mantissa).
    if PREC == "":
        return tl.dot(a, b, acc)
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


def dot_precision(v: torch.Tensor) -> str:
    """The ``PREC`` of :func:`dot` for activations like ``v``."""
    if v.dtype != torch.float32:
        return ""
    return "tf32x3" if v.device.type == "cuda" else "ieee"


def symbolic(*sizes: object) -> bool:
    """Whether any of ``sizes`` is symbolic (torch.export, AOTInductor): then a launch heuristic that reads
    it would turn into a guard on the program's shapes, so the launch code takes a fixed choice instead."""
    return any(isinstance(size, torch.SymInt) for size in sizes)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Common dtype of the activations; the kernels' dots run in it (fp32 dots in full IEEE precision)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"jrtc's Triton kernels take float32, bfloat16 or float16 activations, got {dtype}")
    return dtype


def check_runnable(t: torch.Tensor, kernel: object) -> None:
    """CPU tensors run only through the Triton interpreter, which must be on when the kernels are defined."""
    if t.device.type == "cuda":
        return
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(kernel, InterpretedFunction):
        raise RuntimeError(
            f"jrtc's Triton kernels got {t.device.type} tensors: they run on CUDA, or on the CPU only when "
            "TRITON_INTERPRET=1 is set before jrtc.plugins' kernel modules are first imported"
        )


def launcher(kernel: Any) -> Any:
    """``kernel`` ready for ``launcher(kernel)[grid](*args)``: ``wrap_triton(kernel)``, which lets torch.export
    and AOTInductor trace the launch itself (and run it under fake tensors without running it).

    The Triton interpreter's kernels (CPU tests, ``TRITON_INTERPRET=1``) cannot be traced, and would try to
    read fake tensors' memory; their launch is skipped when any argument is fake, so the op's fake
    implementation is still the shapes and dtypes of the outputs its launch code allocated.
    """
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(kernel, InterpretedFunction):
        return wrap_triton(kernel)

    class Interpreted:
        def __getitem__(self, grid: Any) -> Any:
            def launch(*args: Any, **kwargs: Any) -> None:
                if not any(isinstance(a, FakeTensor) for a in args):
                    kernel[grid](*args, **kwargs)

            return launch

    return Interpreted()


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: behave as on an H100/H200 so the same heuristics are exercised
