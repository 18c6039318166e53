"""``--target cuda``: an AOTInductor package for NVIDIA GPUs (compute capability 8.0 or newer), with the
Triton PLA kernels compiled into it; bf16 weights by default, PLA state fp32. Runs from Python
(``jrtc run``) and from C++ without Python."""

from __future__ import annotations

from pathlib import Path

import torch

from jrtc.config import JRTConfig
from jrtc.errors import JrtcError
from jrtc.export import aoti
from jrtc.export.targets import Built, Placement, Progress
from jrtc.model import JRTModel

PREFILL_GROWTH = "it grows with it"  # how prefill_bytes grows with the length, for messages
FORMATS = ("aoti",)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
MIN_CAPABILITY = (8, 0)  # bf16 tensor cores, which the prefill kernels' dots use


def place(fmt: str, dtype: str | None) -> Placement:
    if not torch.cuda.is_available():
        raise JrtcError(
            "--target cuda needs an NVIDIA GPU and a CUDA build of torch; this machine has none: "
            "export with --target cpu (--format aoti gives the same kind of package for the CPU)"
        )
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        raise JrtcError(
            f"--target cuda needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer; "
            f"{torch.cuda.get_device_name()} has {capability[0]}.{capability[1]}: export with --target cpu"
        )
    try:
        import triton  # noqa: F401  (the kernels are compiled with it)
    except ImportError:
        raise JrtcError("--target cuda needs Triton: pip install 'jrtc[gpu]'") from None
    if dtype is not None and dtype not in DTYPES:
        raise JrtcError(f"--dtype {dtype} is not supported; choose {' or '.join(DTYPES)}")
    return Placement(DTYPES[dtype or "bfloat16"], "cuda", use_kernels=True)


def memory() -> int:
    """Bytes of memory of the GPU the export runs on (the engine runs on one like it)."""
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


def prefill_bytes(cfg: JRTConfig, length: int) -> int:
    """Scratch memory of one prefill call of ``length`` tokens: linear in it, since the PLA and
    sliding-window kernels never form an L x L matrix ([L, 4 d] and [L, 2 n_inner] activations per layer,
    fp32 at most)."""
    return 4 * length * (8 * cfg.d_model + 4 * cfg.n_inner)


def build(
    model: JRTModel, staging: Path, fmt: str, max_batch: int, max_prompt_len: int, progress: Progress
) -> Built:
    import triton

    aoti.build_package(model, staging / aoti.PACKAGE, max_batch, max_prompt_len, progress)
    fields = aoti.manifest_fields(model, max_batch, max_prompt_len)
    fields["gpu"] = torch.cuda.get_device_name()
    fields["compute_capability"] = list(torch.cuda.get_device_capability())
    fields["built_with"] = {**fields["built_with"], "triton": triton.__version__, "cuda": torch.version.cuda}
    return Built(aoti.PACKAGE, [aoti.PACKAGE], "aoti", ["logits"], fields)
