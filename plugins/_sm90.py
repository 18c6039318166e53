"""Compile a Triton kernel ahead of time for Hopper (sm_90a) without a GPU, and read its resources.

This is what the TensorRT AOT plugins need (PTX for sm_90a), and the only performance evidence a machine
without a GPU can give: registers per thread, spill stack, shared memory, and which MMA instructions the
loop uses (``wgmma`` is Hopper's warpgroup MMA; ``mma.sync`` the older per-warp one). The compile itself is
the plugins' (``jrtc.plugins.aot.compile_sm90a``: alignment hints, the pinned PTX ISA).

Must run where the Triton interpreter is off (``TRITON_INTERPRET`` unset when the kernel module is
imported): ``python -m jrtc.plugins._sm90`` does that in a subprocess for the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Sm90Build:
    """Resources of one compiled kernel variant."""

    name: str
    num_warps: int
    registers: int  # per thread
    stack_bytes: int  # spill stack per thread (0 = no spills)
    shared_bytes: int  # shared memory per program (Triton's dynamic allocation)
    wgmma: int  # wgmma.mma_async instructions in the PTX
    mma_sync: int  # mma.sync instructions in the PTX
    layout_conversions: int  # ttg.convert_layout ops left in the TTGIR
    loop_instructions: int  # SASS instructions in the longest loop (the chunk loop), per warp per iteration
    loop_spill_ops: int  # local-memory loads and stores (LDL/STL) in it
    loop_shared_ops: int  # shared-memory loads and stores (LDS/STS/LDSM/STSM) in it
    loop_hgmma: int  # warpgroup MMAs (HGMMA) in it
    loop_hmma: int  # per-warp MMAs (HMMA) in it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def loop_stats(sass: str) -> dict[str, int]:
    """Instruction counts of the longest loop in a kernel's SASS (the span of its longest backward branch)."""
    code = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in _SASS_LINE.finditer(sass)]
    start = end = 0
    for addr, op, rest in code:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr and addr - int(target.group(1), 16) > end - start:
            start, end = int(target.group(1), 16), addr
    ops = [op for addr, op, _ in code if start <= addr <= end]

    def count(*prefixes: str) -> int:
        return sum(1 for op in ops if op.split(".")[0] in prefixes)

    return {
        "loop_instructions": len(ops),
        "loop_spill_ops": count("LDL", "STL"),
        "loop_shared_ops": count("LDS", "STS", "LDSM", "STSM"),
        "loop_hgmma": count("HGMMA"),
        "loop_hmma": count("HMMA"),
    }


def compile_sm90(
    kernel: Any,
    pointers: dict[str, str],
    constexprs: dict[str, Any],
    *,
    num_warps: int,
    num_stages: int = 1,
    name: str | None = None,
) -> tuple[Sm90Build, Any]:
    """Compile ``kernel`` (a ``triton.jit`` function) for sm_90a.

    pointers: argument name -> Triton pointer type (``"*bf16"``); constexprs: name -> value; every other
    argument is an int32 scalar (the AOT contract). Returns the resources and Triton's compiled kernel
    (``.asm["ptx"]``, ``.asm["cubin"]``).
    """
    from .aot import compile_sm90a

    signature = {a: pointers.get(a, "constexpr" if a in constexprs else "i32") for a in kernel.arg_names}
    compiled = compile_sm90a(kernel, signature, constexprs, num_warps, num_stages)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [_cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(f.name)
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    if regs is None or stack is None:
        raise RuntimeError(f"cuobjdump gave no resource usage for {kernel.__name__}:\n{usage}")
    ptx = compiled.asm["ptx"]
    build = Sm90Build(
        name=name or kernel.__name__,
        num_warps=num_warps,
        registers=int(regs.group(1)),
        stack_bytes=int(stack.group(1)),
        shared_bytes=int(compiled.metadata.shared),
        wgmma=ptx.count("wgmma.mma_async"),
        mma_sync=ptx.count("mma.sync"),
        layout_conversions=compiled.asm["ttgir"].count("ttg.convert_layout"),
        **loop_stats(sass),
    )
    return build, compiled
