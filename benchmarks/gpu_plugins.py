"""Each TensorRT plugin's artifact on the GPU, without TensorRT (run by benchmarks/gpu_plugins.sh).

Per plugin of the engine (and ``pla_decode``), at JRT-360M-shaped layers (d_model 1024: 16 PLA heads of
dv 64, 16 SWA heads of hd 64, ring 64, 2048 conv channels, enc_length 1024), for the prefill shape
(B=16, L=4096) and the decode shape (B=64, L=1):

1. compile the launch to PTX exactly as ``jrtc export --target h100`` does (``jrtc.plugins.aot``);
2. launch the PTX through the CUDA driver (``cupy.RawModule``) with what ``aot_impl`` returns
   (``jrtc.plugins.tensorrt.aot_launch``: grid, block, shared memory, int32 scalars after the input pointers);
3. launch the same launch through Triton (``Launch.launch``, the torch op's path) with the same constexprs;
4. require the outputs to be bitwise equal, and the op's result within bf16 bounds of ``naive`` (on the
   first rows where naive's L x L scores would not fit).

Prints one line per check and writes JSON; exits nonzero on any failure. Not yet run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jrtc.plugins import aot
from jrtc.plugins import tensorrt as trt_plugins
from jrtc.plugins.conv import naive as conv_naive
from jrtc.plugins.pla import naive as pla_naive
from jrtc.plugins.swa import naive as swa_naive

HEADS, DV, HD, RING, CHANNELS, ENC = 16, 64, 64, 64, 2048, 1024
SHAPES = {"prefill": (16, 4096), "decode": (64, 1)}
REL = 2e-2  # bf16 activations against fp32 naive, relative to the largest reference value
results: list[dict] = []


def ptx_launch(name: str, constexprs: dict, tensors: dict, dims: dict, attributes: dict) -> None:
    """The plugin's PTX through the driver, as TensorRT's AOT launcher would run it."""
    import cupy

    launch = aot.launches()[name]
    with tempfile.TemporaryDirectory() as tmp:
        plugin, ptx = aot.compile_launch(launch, constexprs, "k.ptx")
        (Path(tmp) / "k.ptx").write_text(ptx)
        module = cupy.RawModule(path=str(Path(tmp) / "k.ptx"))
        kernel = module.get_function(plugin.kernel_name)
    kernel_name, params, scalars = trt_plugins.aot_launch(plugin, dims, attributes)
    if params["shared_mem"] > 48 * 1024:
        kernel.max_dynamic_shared_size_bytes = params["shared_mem"]
    args = [np.uint64(tensors[a.name].data_ptr()) for a in launch.inputs]
    args += [np.int32(s) for s in scalars]
    args += [np.uint64(tensors[a.name].data_ptr()) for a in launch.outputs]
    grid = (params["grid_x"], params["grid_y"], params["grid_z"])
    block = (params["block_x"], params["block_y"], params["block_z"])
    with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
        kernel(grid, block, tuple(args), shared_mem=params["shared_mem"])
    torch.cuda.synchronize()


def both(name: str, inputs: dict, attributes: dict | None = None) -> tuple[dict, dict]:
    """Run plugin ``name`` through Triton and through its PTX; their outputs."""
    launch = aot.launches()[name]
    attributes = attributes or {}
    dims = {n: list(t.shape) for n, t in inputs.items()}
    env = launch.bind(dims, attributes, SMS=aot._sms())
    constexprs = launch.constexprs(env)
    triton_out = launch.allocate(env, "cuda", torch.bfloat16)
    launch.launch(env, {**inputs, **triton_out})
    ptx_out = {
        n: torch.full_like(t, float("nan")) if t.is_floating_point() else torch.zeros_like(t)
        for n, t in triton_out.items()
    }
    ptx_launch(name, constexprs, {**inputs, **ptx_out}, dims, attributes)
    for out in triton_out:
        same = torch.equal(triton_out[out].view(torch.uint8), ptx_out[out].view(torch.uint8))
        record(f"{name} {out} {tuple(triton_out[out].shape)}: PTX == Triton bitwise", same)
    return triton_out, ptx_out


def close(what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    record(f"{what}: max error {err:.3e} <= {REL:.0e} * {scale:.3e}", err <= REL * max(scale, 1e-6), err=err)


def record(check: str, ok: bool, **extra) -> None:
    print(("ok   " if ok else "FAIL ") + check, flush=True)
    results.append({"check": check, "ok": bool(ok), **extra})


def randn(*shape, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


def pla(batch: int, length: int) -> None:
    k, v = randn(batch, length, HEADS, 16, scale=0.5), randn(batch, length, HEADS, DV)
    q = randn(batch, length, HEADS, 16, scale=0.5)
    mask = torch.ones(batch, length, dtype=torch.int32, device="cuda")
    mask[: batch // 2, : min(7, length)] = 0  # left pads in half the rows
    seg, _ = both("pla_segment_state", {"k": k, "v": v, "key_mask": mask}, {"enc_length": ENC})
    scan, _ = both("pla_encode_scan", {"st_kv": seg["st_kv"], "st_z": seg["st_z"]})
    rows = 2
    kv_ref, z_ref = pla_naive.pla_encode(k[:rows], v[:rows], mask[:rows].bool(), ENC)
    close(f"pla encode B{batch} L{length} vs naive", scan["kv_out"].view(batch, HEADS, -1, DV)[:rows], kv_ref)
    kv0 = scan["kv_out"].view(batch, HEADS, -1, DV).contiguous()
    z0 = scan["z_out"].view(batch, HEADS, -1).contiguous()
    inputs = {"q": q, "k": k, "v": v, "kv_init": kv0, "z_init": z0, "key_mask": mask}
    out, _ = both("pla_causal", inputs)
    o_ref, kv_r, _ = pla_naive.pla_causal(q[:1], k[:1], v[:1], kv0[:1], z0[:1], mask[:1].bool())
    close(f"pla causal B{batch} L{length} vs naive (o)", out["o"][:1], o_ref)
    close(f"pla causal B{batch} L{length} vs naive (kv)", out["kv_out"][:1], kv_r)
    if length == 1:
        inputs = {"q": q[:, 0], "k": k[:, 0], "v": v[:, 0], "kv": kv0, "z": z0}
        out, _ = both("pla_decode", inputs)
        o_ref, kv_r, _ = pla_naive.pla_decode(q[:, 0], k[:, 0], v[:, 0], kv0, z0)
        close(f"pla decode B{batch} vs naive (o)", out["o"], o_ref)


def swa(batch: int, length: int) -> None:
    q, k, v = (randn(batch, HEADS, length, HD) for _ in range(3))
    k_ring, v_ring = randn(batch, HEADS, RING, HD), randn(batch, HEADS, RING, HD)
    pos = torch.tensor([0, 5000, 30, 64] * (batch // 4), dtype=torch.int32, device="cuda")
    inputs = {"q": q, "k": k, "v": v, "k_ring": k_ring, "v_ring": v_ring, "pos": pos}
    out, _ = both("sliding_window_attention", inputs)
    o_ref, _, _ = swa_naive.sliding_window_attention(
        q[:2], k[:2], v[:2], k_ring[:2], v_ring[:2], pos[:2].long()
    )
    close(f"sliding window B{batch} L{length} vs naive", out["o"][:2], o_ref)


def conv(batch: int, length: int) -> None:
    u, state, weight = randn(batch, CHANNELS, length), randn(batch, CHANNELS, 2), randn(CHANNELS, 1, 3)
    out, _ = both("short_conv", {"u": u, "state": state, "weight": weight})
    c_ref, s_ref = conv_naive.short_conv(u.float(), state.float(), weight.float())
    close(f"short conv B{batch} L{length} vs naive", out["c"], c_ref)
    record(f"short conv B{batch} L{length}: next state exact", torch.equal(out["next_state"].float(), s_ref))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_plugins-h200.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    for phase, (batch, length) in SHAPES.items():
        for check in (pla, swa, conv):
            t = time.time()
            check(batch, length)
            print(f"  {check.__name__} {phase}: {time.time() - t:.1f} s", flush=True)
    args.out.write_text(json.dumps({
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "seconds": time.time() - start,
        "checks": results,
    }, indent=1) + "\n")  # fmt: skip
    failed = [r["check"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
