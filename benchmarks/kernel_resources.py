#!/usr/bin/env python3
"""Compiled resources of the PLA prefill kernels for sm_90a (H100/H200), on any machine, no GPU needed.

Compiles today's kernels (plugins/pla/chunk.py) and the wide-tile ones (plugins/pla/chunk_ws.py) the way
the model launches them (bf16 activations) and prints, per variant: registers per thread, spill stack,
shared memory, programs per SM those allow, wgmma / mma.sync instructions and layout conversions left.
This is the only performance evidence without a GPU; the timings come from benchmarks/prefill_kernels.py.

Usage: python benchmarks/kernel_resources.py [--only NAME[,NAME]] [--json PATH|-] [--quiet]
Writes benchmarks/results/kernel_resources-sm90-triton<version>.json by default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("kernel_resources.py compiles real kernels: unset TRITON_INTERPRET")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import Log, repo_on_path  # noqa: E402

repo_on_path()
from jrtc.plugins._sm90 import compile_sm90  # noqa: E402
from jrtc.plugins.pla import chunk, chunk_ws  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Per SM on Hopper: 65536 registers, 228 KiB shared memory (227 KiB per program), 64 warps.
SM_REGISTERS, SM_SHARED, SM_WARPS = 65536, 228 * 1024, 64

BF16 = "*bf16"
CAUSAL_POINTERS = {
    "q": BF16, "k": BF16, "v": BF16, "kv_init": "*fp32", "z_init": "*fp32", "prefix_kv": "*fp32",
    "prefix_z": "*fp32", "st_kv": "*fp32", "st_z": "*fp32", "key_mask": "*u8", "o": BF16,
    "kv_out": "*fp32", "z_out": "*fp32",
}  # fmt: skip
STATE_POINTERS = {"k": BF16, "v": BF16, "key_mask": "*u8", "st_kv": "*fp32", "st_z": "*fp32",
                  "kv_out": "*fp32", "z_out": "*fp32"}  # fmt: skip


def _pointers(kernel: Any, table: dict[str, str]) -> dict[str, str]:
    return {a: t for a, t in table.items() if a in kernel.arg_names}


def variants() -> dict[str, tuple[Any, dict[str, str], dict[str, Any], int, int]]:
    """name -> (kernel, pointer types, constexprs, num_warps, num_stages), as the default launches use them."""
    old, ws = chunk.CAUSAL_CONFIG, chunk_ws.CAUSAL_CONFIG
    enc_old, enc_ws = chunk.ENCODER_CONFIG, chunk_ws.ENCODER_CONFIG
    out: dict[str, tuple[Any, dict[str, str], dict[str, Any], int, int]] = {}
    for dv in (64, 112):
        bv = 64
        out[f"chunk_causal_dv{dv}"] = (
            chunk._pla_chunk_fwd_kernel,
            _pointers(chunk._pla_chunk_fwd_kernel, CAUSAL_POINTERS),
            {"DV": dv, "BV": bv, "C": old.chunk, "HAS_MASK": True, "SPLIT": False, "PREC": ""},
            old.num_warps,
            old.num_stages,
        )
        for warps in (4, 8):
            out[f"ws_causal_dv{dv}_w{warps}"] = (
                chunk_ws._ws_causal_kernel,
                _pointers(chunk_ws._ws_causal_kernel, CAUSAL_POINTERS),
                {"DV": dv, "BV": bv, "C": ws.chunk, "HAS_MASK": True, "SPLIT": False, "PREC": "",
                 "STAGES": ws.num_stages},
                warps,
                1,
            )  # fmt: skip
    out["chunk_encoder_dv64"] = (
        chunk._pla_segment_state_kernel,
        _pointers(chunk._pla_segment_state_kernel, STATE_POINTERS),
        {"DV": 64, "BV": 64, "C": enc_old.chunk, "HAS_MASK": True, "PREC": ""},
        enc_old.num_warps,
        enc_old.num_stages,
    )
    out["ws_encoder_dv64"] = (
        chunk_ws._ws_state_kernel,
        _pointers(chunk_ws._ws_state_kernel, STATE_POINTERS),
        {"DV": 64, "BV": 64, "C": enc_ws.chunk, "HAS_MASK": True, "PREC": "",
         "STAGES": enc_ws.num_stages},
        enc_ws.num_warps,
        1,
    )  # fmt: skip
    return out


def programs_per_sm(registers: int, shared: int, warps: int) -> int:
    """Resident programs per SM allowed by registers (allocated per warp in units of 256), shared memory and
    warps."""
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_regs = SM_REGISTERS // (regs_per_warp * warps)
    by_shared = SM_SHARED // max(shared + 1024, 1)  # + 1 KiB the driver reserves per program
    return min(by_regs, by_shared, SM_WARPS // warps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated variant names (default all)")
    ap.add_argument("--json", default=None, help="output path, or - for stdout (default benchmarks/results)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    log = Log(args.quiet or args.json == "-")
    import triton

    table = variants()
    names = [n for n in args.only.split(",") if n] or list(table)
    rows = []
    for name in names:
        kernel, pointers, constexprs, warps, stages = table[name]
        start = time.perf_counter()
        build, _ = compile_sm90(kernel, pointers, constexprs, num_warps=warps, num_stages=stages, name=name)
        row = {**build.as_dict(), "compile_s": round(time.perf_counter() - start, 1),
               "programs_per_sm": programs_per_sm(build.registers, build.shared_bytes, warps),
               "constexprs": constexprs}  # fmt: skip
        rows.append(row)
        log(f"{name:22s} warps {warps}  regs {build.registers:3d}  stack {build.stack_bytes:5d} B  "
            f"shared {build.shared_bytes:6d} B  programs/SM {row['programs_per_sm']}  converts "
            f"{build.layout_conversions:3d} | loop: {build.loop_instructions:5d} instr, spill {build.loop_spill_ops:3d}, "
            f"shared {build.loop_shared_ops:3d}, HGMMA {build.loop_hgmma:3d}, HMMA {build.loop_hmma:3d}  "
            f"({row['compile_s']} s)")  # fmt: skip
    payload = {"benchmark": "kernel_resources", "target": "cuda sm_90a", "triton": triton.__version__,
               "rows": rows}  # fmt: skip
    text = json.dumps(payload, indent=1) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
        return
    version = ".".join(triton.__version__.split(".")[:2])
    path = Path(args.json) if args.json else RESULTS / f"kernel_resources-sm90-triton{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
