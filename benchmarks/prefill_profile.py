#!/usr/bin/env python3
"""One launch of a PLA prefill kernel for Nsight Compute, and a summary of what ncu measured.

  python benchmarks/prefill_profile.py run --kernels ws|chunk [--T 32768]
      runs the causal pass of the JRT-RNN case (B=16, H=16, dv=64, bf16) twice: a warm-up (compiles) and the
      launch to profile (ncu --launch-skip 1 --launch-count 1 on the kernel's name);
  python benchmarks/prefill_profile.py summary FILE.csv [--json OUT]
      reads ``ncu --csv --page details`` output and says whether the kernel is memory, latency or issue bound
      (throughputs as % of peak, issue-slot use, occupancy, the top warp stall reasons).

benchmarks/gpu_check_ws.sh runs both under ncu on a GPU machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The metrics of the summary: (section name, metric name) as ncu's details page prints them.
METRICS = {
    "duration": ("GPU Speed Of Light Throughput", "Duration"),
    "memory_pct": ("GPU Speed Of Light Throughput", "Memory Throughput"),
    "dram_pct": ("GPU Speed Of Light Throughput", "DRAM Throughput"),
    "compute_pct": ("GPU Speed Of Light Throughput", "Compute (SM) Throughput"),
    "issue_slots_busy_pct": ("Compute Workload Analysis", "Issue Slots Busy"),
    "achieved_occupancy_pct": ("Occupancy", "Achieved Occupancy"),
    "registers_per_thread": ("Launch Statistics", "Registers Per Thread"),
    "warp_cycles_per_issued": ("Warp State Statistics", "Warp Cycles Per Issued Instruction"),
}


def run(kernels: str, length: int) -> None:
    import torch
    from _bench_common import repo_on_path

    repo_on_path()
    from jrtc.plugins.pla import chunk, chunk_ws, naive

    module, config = (chunk_ws, chunk_ws.CAUSAL_CONFIG) if kernels == "ws" else (chunk, chunk.CAUSAL_CONFIG)
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, dv = 16, 16, 64

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)

    q, k, v = rnd(batch, length, heads, 16), rnd(batch, length, heads, 16), rnd(batch, length, heads, dv)
    kv0 = torch.zeros(batch, heads, naive.EXPANDED_DIM, dv, device="cuda")
    z0 = torch.zeros(batch, heads, naive.EXPANDED_DIM, device="cuda")
    for _ in range(2):  # warm-up (compile), then the profiled launch
        module.pla_causal_with(q, k, v, kv0, z0, config=config)
    torch.cuda.synchronize()
    print(f"{kernels}: pla_causal B={batch} H={heads} T={length} dv={dv} config {config}")


def summary(path: Path) -> dict[str, object]:
    values: dict[tuple[str, str], str] = {}
    stalls: list[tuple[float, str]] = []
    with path.open() as f:
        for rec in csv.DictReader(line for line in f if line.startswith('"')):
            section, name, value = rec.get("Section Name", ""), rec.get("Metric Name", ""), rec.get("Metric Value", "")
            values[(section, name)] = value
            if name.startswith("Stall ") or "stall" in name.lower():
                try:
                    stalls.append((float(value.replace(",", "")), name))
                except ValueError:
                    pass
    out: dict[str, object] = {}
    for key, where in METRICS.items():
        raw = values.get(where)
        try:
            out[key] = float(raw.replace(",", "")) if raw is not None else None
        except ValueError:
            out[key] = raw
    out["top_stalls"] = [name for _, name in sorted(stalls, reverse=True)[:3]]
    mem, comp, issue = out.get("memory_pct"), out.get("compute_pct"), out.get("issue_slots_busy_pct")
    if isinstance(mem, float) and isinstance(comp, float):
        if mem >= 60 and mem >= comp:
            out["verdict"] = "memory bound"
        elif isinstance(issue, float) and issue >= 60:
            out["verdict"] = "issue bound"
        elif comp >= 60:
            out["verdict"] = "compute bound"
        else:
            out["verdict"] = "latency bound (no unit above 60% of its peak)"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--kernels", choices=["ws", "chunk"], default="ws")
    r.add_argument("--T", type=int, default=32768)
    s = sub.add_parser("summary")
    s.add_argument("csv", type=Path)
    s.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.kernels, args.T)
        return
    result = summary(args.csv)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
