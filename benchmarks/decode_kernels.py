#!/usr/bin/env python3
"""PLA decode kernel: one recurrent step at B in {1, 16, 64, 256}, H=16, dv 64 and 112 (issue #4, section 3).

The step reads and writes the fp32 state (kv [B,H,153,dv], z [B,H,153]) once: its HBM bound is those
bytes (plus the tiny q, k, v, o) at the device-to-device copy bandwidth measured in the same run. Each
row gives the fused Triton kernel and the plain PyTorch step (``naive.pla_decode``), both timed two ways:
``graph`` = per-step time of 20 steps captured in one CUDA graph (how a serving loop runs them, launch
gaps removed), ``eager`` = per-call time of a Python call (launch overhead included). Medians of CUDA-event
timings after warm-up. The kernel is checked against ``naive.pla_decode`` in fp32 on the same inputs.

Usage: python benchmarks/decode_kernels.py [--quiet] [--out DIR] [--sweep]
Writes benchmarks/results/decode_kernels-<gpu>.json (or DIR/...).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (  # noqa: E402
    DEVICE,
    Log,
    copy_bandwidth,
    cuda_time_ms,
    environment,
    repo_on_path,
    write_json,
)

repo_on_path()
from jrtc.plugins.pla import fused_recurrent, naive  # noqa: E402

D = naive.EXPANDED_DIM
HEADS = 16
DEFAULT_WARPS = inspect.signature(fused_recurrent.pla_decode_with).parameters["num_warps"].default
STEPS = 20  # steps per captured graph


def state_bytes(batch: int, dv: int) -> int:
    """HBM bytes of one step: fp32 state read + written, bf16 q, k, v read and o written."""
    return batch * HEADS * (2 * 4 * (D * dv + D) + 2 * (16 + 16 + 2 * dv))


def inputs(batch: int, dv: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def rnd(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE, dtype=dtype, generator=gen)

    return {
        "q": rnd(batch, HEADS, 16),
        "k": rnd(batch, HEADS, 16),
        "v": rnd(batch, HEADS, dv),
        "kv": rnd(batch, HEADS, D, dv, dtype=torch.float32),
        "z": rnd(batch, HEADS, D, dtype=torch.float32).abs() * 100 + 1,
    }


def graph_time_ms(step: Callable[[int], object], reps: int) -> float:
    """Per-step median time of STEPS steps replayed from one CUDA graph."""
    if DEVICE != "cuda":  # smoke test of the script: one step, wall clock
        return cuda_time_ms(lambda: step(0), warmup=0, reps=1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):  # warm-up (compiles, allocates) outside the capture
            step(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(STEPS):
            step(i)
    return cuda_time_ms(graph.replay, warmup=3, reps=reps) / STEPS


def kernel_step(x: dict[str, torch.Tensor], **launch: Any) -> Callable[[int], object]:
    # Ping-pong between two state buffers so every step reads and writes the full state (no allocation).
    bufs = [(x["kv"], x["z"]), (x["kv"].clone(), x["z"].clone())]

    def step(i: int) -> object:
        (kv, z), out = bufs[i % 2], bufs[(i + 1) % 2]
        return fused_recurrent.pla_decode_with(x["q"], x["k"], x["v"], kv, z, out=out, **launch)

    return step


def naive_step(x: dict[str, torch.Tensor]) -> Callable[[int], object]:
    # naive copies its feature tables to a device on first use; do it now, outside the CUDA-graph capture.
    naive.taylor_features(torch.zeros(1, 16, device=DEVICE))

    def step(i: int) -> object:
        return naive.pla_decode(x["q"], x["k"], x["v"], x["kv"], x["z"])

    return step


def sweep(log: Log, reps: int) -> dict[str, Any]:
    rows, best = [], {}
    for dv in (64, 112):
        x = inputs(64, dv)
        for bv, nw in itertools.product((16, 32, 64), (2, 4, 8)):
            ms = graph_time_ms(kernel_step(x, block_v=bv, num_warps=nw), reps)
            log(f"  B=64 dv={dv} block_v={bv} warps={nw}: {ms * 1e3:.2f} us")
            rows.append({"dv": dv, "block_v": bv, "num_warps": nw, "us": ms * 1e3})
            if dv not in best or ms < best[dv][0]:
                best[dv] = (ms, bv, nw)
    return {"rows": rows, "best": {dv: {"block_v": b[1], "num_warps": b[2]} for dv, b in best.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--sweep", action="store_true", help="time block sizes / warps at B=64 first, use the best"
    )
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batches", default="1,16,64,256")
    args = ap.parse_args()
    log = Log(args.quiet)
    env = environment()
    log(f"{env['gpu']}: torch {env['torch']}, triton {env['triton']}")
    bw = copy_bandwidth()
    log(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)")

    sweep_info = None
    # Without --sweep: the library's defaults (block_v by its heuristic, its default num_warps).
    launch: dict[int, dict[str, Any]] = {dv: {} for dv in (64, 112)}
    if args.sweep:
        log("sweep:")
        sweep_info = sweep(log, args.reps)
        launch = {dv: {**cfg} for dv, cfg in sweep_info["best"].items()}
        log(f"using {launch}")

    rows = []
    for dv, batch in itertools.product((64, 112), [int(b) for b in args.batches.split(",")]):
        x = inputs(batch, dv)
        cfg = launch[dv]
        if batch < 16:  # a small batch needs small tiles to spread over the SMs: let the heuristic choose
            cfg = {k: v for k, v in cfg.items() if k != "block_v"}
        o, kv, z = fused_recurrent.pla_decode_with(x["q"], x["k"], x["v"], x["kv"], x["z"], **cfg)
        ro, rkv, rz = naive.pla_decode(x["q"].float(), x["k"].float(), x["v"].float(), x["kv"], x["z"])
        nbytes = state_bytes(batch, dv)
        bound_us = nbytes / bw * 1e6
        k_graph = graph_time_ms(kernel_step(x, **cfg), args.reps) * 1e3
        k_step, n_step = kernel_step(x, **cfg), naive_step(x)
        k_eager = cuda_time_ms(lambda s=k_step: s(0), reps=args.reps) * 1e3
        n_graph = graph_time_ms(n_step, args.reps) * 1e3
        n_eager = cuda_time_ms(lambda s=n_step: s(0), reps=args.reps) * 1e3
        effective = {
            "block_v": cfg.get("block_v") or fused_recurrent._block_v(dv, batch * HEADS, x["v"].device),
            "num_warps": cfg.get("num_warps", DEFAULT_WARPS),
        }
        row = {
            "B": batch,
            "H": HEADS,
            "dv": dv,
            "launch": effective,
            "state_bytes_rw": nbytes,
            "hbm_bound_us": bound_us,
            "kernel_graph_us": k_graph,
            "kernel_eager_us": k_eager,
            "pct_of_hbm_bound": 100 * bound_us / k_graph,
            "pct_of_hbm_bound_eager": 100 * bound_us / k_eager,
            "torch_graph_us": n_graph,
            "torch_eager_us": n_eager,
            "speedup_vs_torch_graph": n_graph / k_graph,
            "max_abs_err_o": (o.float() - ro.float()).abs().max().item(),
            "rel_err_o": ((o.float() - ro.float()).abs().max() / ro.float().abs().max()).item(),
            "rel_err_kv": ((kv - rkv).abs().max() / rkv.abs().max()).item(),
            "rel_err_z": ((z - rz).abs().max() / rz.abs().max()).item(),
        }
        log(f"B={batch:3d} dv={dv:3d}: kernel {k_graph:7.2f} us (graph) {k_eager:7.2f} us (eager) = "
            f"{row['pct_of_hbm_bound']:5.1f}% of bound {bound_us:6.2f} us; torch {n_graph:7.2f} / {n_eager:7.2f} us; "
            f"rel err o {row['rel_err_o']:.1e} kv {row['rel_err_kv']:.1e}")  # fmt: skip
        rows.append(row)
        del x
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

    payload = {
        "benchmark": "decode_kernels",
        "env": env,
        "copy_bandwidth_TBps": bw / 1e12,
        "units": "microseconds per step, median of CUDA-event timings",
        "rows": rows,
        "sweep": sweep_info,
    }
    path = write_json("decode_kernels", payload, args.out)
    log(f"wrote {path}")
    if not args.quiet:
        print(
            f"\n{'B':>4s} {'dv':>4s} {'kernel us':>10s} {'%HBM':>6s} {'torch us':>9s} {'x torch':>8s} {'rel err o':>9s}"
        )
        for r in rows:
            print(f"{r['B']:4d} {r['dv']:4d} {r['kernel_graph_us']:10.2f} {r['pct_of_hbm_bound']:6.1f} "
                  f"{r['torch_graph_us']:9.2f} {r['speedup_vs_torch_graph']:8.1f} {r['rel_err_o']:9.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
