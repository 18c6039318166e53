#!/usr/bin/env python3
"""PLA prefill kernels against SDPA (flash, cuDNN) and fla's Based kernels (issue #4, section 3; issue #9).

Shapes: B=16, H=16, feature dim 16, dv=64, bf16. Rows:
  jrt_rnn     JRT-RNN prefill: encoder state over M=16384 tokens (split-K) + causal pass over T=32768
  jrt_prompt  JRT-Prompt on a Based model: causal pass over 2T = 65536 tokens
  based       Based causal linear attention over T = 32768
  ...and the same at B=1 (sequence-parallel path) and at dv=112 (JRT-1.3B).
Each case is timed with today's kernels (plugins/pla/chunk.py, impl "jrtc triton") and with the wide-tile
ones (plugins/pla/chunk_ws.py, impl "jrtc triton ws", rows named ``<case>_ws``), in the same run.
Baselines in the same run: SDPA causal at T with head dim 64 (flash = FA2, cuDNN), fla-core's
``fused_chunk_based`` / ``parallel_based`` when importable. Times are medians of CUDA-event timings after
warm-up; each PLA time is also given as a fraction of the HBM bound of reference/kernels-perf.md section 5
(bf16 q, k, v read and o written once, k_enc and v_enc read once) at the device-to-device copy bandwidth
measured in the same run. Every PLA row is checked against an fp32 chunked reference on the first
sequence of the batch (naive's math, chunked so it fits at 32k-65k tokens).

Usage: python benchmarks/prefill_kernels.py [--quiet] [--out DIR] [--quick] [--sweep | --sweep-ws]
Writes benchmarks/results/prefill_kernels-<gpu>.json (or DIR/...).
"""

from __future__ import annotations

import argparse
import sys
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
from jrtc.plugins.pla import chunk, chunk_ws, naive  # noqa: E402

F = naive.FEATURE_DIM
D = naive.EXPANDED_DIM

# name, B, H, T (causal tokens), M (encoder tokens), dv
CASES = [
    ("jrt_rnn", 16, 16, 32768, 16384, 64),
    ("jrt_prompt", 16, 16, 65536, 0, 64),
    ("based", 16, 16, 32768, 0, 64),
    ("jrt_rnn_b1", 1, 16, 32768, 16384, 64),
    ("based_b1", 1, 16, 32768, 0, 64),
    ("jrt_rnn_dv112", 16, 16, 32768, 16384, 112),
    ("based_dv112", 16, 16, 32768, 0, 112),
]


def hbm_bytes(batch: int, heads: int, length: int, enc_len: int, dv: int) -> int:
    """Minimum HBM traffic: bf16 q, k, v in and o out per causal token; k_enc, v_enc in per encoder token."""
    return batch * heads * (2 * length * (2 * F + 2 * dv) + 2 * enc_len * (F + dv))


@torch.no_grad()
def chunked_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv0: torch.Tensor, z0: torch.Tensor, block: int = 512
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """naive.pla_causal in fp32, computed chunk by chunk (naive itself is O(L^2) in memory)."""
    kv, z = kv0.float().clone(), z0.float().clone()
    outs = []
    for t in range(0, q.shape[1], block):
        qc, kc, vc = q[:, t : t + block], k[:, t : t + block], v[:, t : t + block]
        o, kv, z = naive.pla_causal(qc, kc, vc.float(), kv, z)
        outs.append(o)
    return torch.cat(outs, dim=1), kv, z


@torch.no_grad()
def encode_reference(k_enc: torch.Tensor, v_enc: torch.Tensor, block: int = 4096) -> tuple[torch.Tensor, ...]:
    kv = z = None
    for t in range(0, k_enc.shape[1], block):
        dkv, dz = naive.pla_encode(k_enc[:, t : t + block], v_enc[:, t : t + block].float())
        kv, z = (dkv, dz) if kv is None else (kv + dkv, z + dz)
    return kv, z


DTYPE = torch.bfloat16


def make_inputs(batch: int, heads: int, length: int, enc_len: int, dv: int, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE, dtype=DTYPE, generator=gen)

    x = {
        "q": rnd(batch, length, heads, F),
        "k": rnd(batch, length, heads, F),
        "v": rnd(batch, length, heads, dv),
    }
    if enc_len:
        x["k_enc"], x["v_enc"] = rnd(batch, enc_len, heads, F), rnd(batch, enc_len, heads, dv)
    return x


def zero_state(x: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    batch, _, heads, _ = x["q"].shape
    return (
        torch.zeros(batch, heads, D, x["v"].shape[-1], device=DEVICE),
        torch.zeros(batch, heads, D, device=DEVICE),
    )


def pla_prefill(
    x: dict[str, Any], config: chunk.PrefillConfig, enc_config: chunk.PrefillConfig, kernels: Any = chunk
):
    """The model's prefill for one layer: encoder state (if any), then the causal pass from it.
    ``kernels`` is the module (chunk or chunk_ws) and the configs are its own."""
    q, k, v = x["q"], x["k"], x["v"]
    batch, _, heads, _ = q.shape
    dv = v.shape[-1]
    if "k_enc" in x:
        kv0, z0 = kernels.pla_encode_with(x["k_enc"], x["v_enc"], config=enc_config)
    else:
        kv0 = torch.zeros(batch, heads, D, dv, device=DEVICE)
        z0 = torch.zeros(batch, heads, D, device=DEVICE)
    return kernels.pla_causal_with(q, k, v, kv0, z0, config=config)


def check(x: dict[str, Any], out: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Errors of the first sequence against the fp32 reference."""
    o, kv, z = out
    sl = {name: t[:1] for name, t in x.items()}
    dv = sl["v"].shape[-1]
    if "k_enc" in sl:
        kv0, z0 = encode_reference(sl["k_enc"], sl["v_enc"])
    else:
        kv0 = torch.zeros(1, sl["q"].shape[2], D, dv, device=DEVICE)
        z0 = torch.zeros(1, sl["q"].shape[2], D, device=DEVICE)
    ro, rkv, rz = chunked_reference(sl["q"], sl["k"], sl["v"], kv0, z0)
    o_err = (o[:1].float() - ro).abs()
    return {
        "max_abs_err_o": o_err.max().item(),
        "o_ref_max_abs": ro.abs().max().item(),
        "rel_err_o": (o_err.max() / ro.abs().max()).item(),
        "rel_err_kv": ((kv[:1] - rkv).abs().max() / rkv.abs().max()).item(),
        "rel_err_z": ((z[:1] - rz).abs().max() / rz.abs().max()).item(),
        "checked_on": "batch[0:1], all heads, fp32 chunked reference",
    }


# (chunk, block_v, num_warps, num_stages, maxnreg, num_segments) tried at B=16, H=16, dv=64
CAUSAL_SWEEP = [
    (16, 64, 4, 2, None, 1),
    (32, 64, 4, 2, None, 1),
    (64, 64, 4, 2, None, 1),
    (16, 64, 4, 1, None, 1),
    (16, 64, 4, 3, None, 1),
    (16, 64, 2, 2, None, 1),
    (16, 32, 4, 2, None, 1),
    (16, 32, 2, 2, None, 1),
    (16, 64, 8, 2, None, 1),
    (16, 64, 4, 2, 168, 1),
    (16, 64, 4, 2, None, 2),
]


# (chunk, block_v, num_warps, num_stages) of the wide-tile kernels tried at B=16, H=16, dv=64
WS_SWEEP = [(64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 8, 3), (64, 32, 4, 3)]


def _timed(log: Log, what: str, fn: Any) -> float | None:
    try:
        ms = cuda_time_ms(fn)
    except Exception as exc:  # noqa: BLE001 - a config that fails to compile or launch is reported, not fatal
        log(f"  {what}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
        return None
    log(f"  {what}: {ms:.3f} ms")
    return ms


def sweep(log: Log, scale: int) -> dict[str, Any]:
    """Time launch configurations; returns the best causal and encoder configs with all timings."""
    t = max(8192 // scale, 64)
    x = make_inputs(16, 16, t, 0, 64)
    kv0, z0 = zero_state(x)
    rows: list[dict[str, Any]] = []
    best = None
    for c, bv, nw, ns, mr, nseg in CAUSAL_SWEEP:
        cfg = chunk.PrefillConfig(
            chunk=c, block_v=bv, num_warps=nw, num_stages=ns, maxnreg=mr, num_segments=nseg
        )
        ms = _timed(
            log,
            f"causal B=16 T={t} chunk={c} block_v={bv} warps={nw} stages={ns} maxnreg={mr} segments={nseg}",
            lambda cfg=cfg: chunk.pla_causal_with(x["q"], x["k"], x["v"], kv0, z0, config=cfg),
        )
        rows.append({"kernel": "causal", "B": 16, "T": t, "config": cfg.__dict__, "ms": ms})
        if ms is not None and (best is None or ms < best[0]):
            best = (ms, cfg)
    causal_best = best[1] if best else chunk.CAUSAL_CONFIG

    # Sequence parallelism at B=1 with the best causal config; None = the library's heuristic.
    xb = make_inputs(1, 16, max(32768 // scale, 256), 0, 64)
    kb, zb = zero_state(xb)
    for nseg in (None, 12, 16, 24, 32):
        cfg = chunk.PrefillConfig(**{**causal_best.__dict__, "num_segments": nseg})
        ms = _timed(
            log,
            f"causal B=1 T={xb['q'].shape[1]} segments={nseg}",
            lambda cfg=cfg: chunk.pla_causal_with(xb["q"], xb["k"], xb["v"], kb, zb, config=cfg),
        )
        rows.append({"kernel": "causal_b1", "config": cfg.__dict__, "ms": ms})

    # Encoder (split-K reduction) configs; num_segments None = the library's heuristic.
    xe = make_inputs(16, 16, 16, max(16384 // scale, 64), 64)
    best_enc = None
    for c, nw, mr in ((64, 4, 168), (64, 4, None), (32, 4, 168), (16, 4, None), (64, 2, None)):
        cfg = chunk.PrefillConfig(chunk=c, block_v=64, num_warps=nw, maxnreg=mr)
        ms = _timed(
            log,
            f"encoder M={xe['k_enc'].shape[1]} chunk={c} warps={nw} maxnreg={mr}",
            lambda cfg=cfg: chunk.pla_encode_with(xe["k_enc"], xe["v_enc"], config=cfg),
        )
        rows.append({"kernel": "encoder", "config": cfg.__dict__, "ms": ms})
        if ms is not None and (best_enc is None or ms < best_enc[0]):
            best_enc = (ms, cfg)

    return {
        "rows": rows,
        "causal": causal_best.__dict__,
        "encoder": (best_enc[1] if best_enc else chunk.ENCODER_CONFIG).__dict__,
    }


def sweep_ws(log: Log, scale: int) -> dict[str, Any]:
    """Time launch configurations of the wide-tile kernels (plugins/pla/chunk_ws.py); returns the best."""
    t = max(8192 // scale, 64)
    x = make_inputs(16, 16, t, 0, 64)
    kv0, z0 = zero_state(x)
    xe = make_inputs(16, 16, 16, max(16384 // scale, 64), 64)
    rows: list[dict[str, Any]] = []
    best_ws = None
    for c, bv, nw, ns in WS_SWEEP:
        cfg = chunk_ws.WsConfig(chunk=c, block_v=bv, num_warps=nw, num_stages=ns, num_segments=1)
        ms = _timed(
            log,
            f"ws causal B=16 T={t} chunk={c} block_v={bv} warps={nw} stages={ns}",
            lambda cfg=cfg: chunk_ws.pla_causal_with(x["q"], x["k"], x["v"], kv0, z0, config=cfg),
        )
        rows.append({"kernel": "ws_causal", "B": 16, "T": t, "config": cfg.__dict__, "ms": ms})
        if ms is not None and (best_ws is None or ms < best_ws[0]):
            best_ws = (ms, cfg)
    ws_best = best_ws[1] if best_ws else chunk_ws.CAUSAL_CONFIG
    cfg = chunk_ws.WsConfig(**{**ws_best.__dict__, "num_segments": None})
    ms = _timed(
        log,
        f"ws encoder M={xe['k_enc'].shape[1]} {cfg}",
        lambda: chunk_ws.pla_encode_with(xe["k_enc"], xe["v_enc"], config=cfg),
    )
    rows.append({"kernel": "ws_encoder", "config": cfg.__dict__, "ms": ms})
    return {"rows": rows, "ws_causal": ws_best.__dict__}


def sdpa_rows(log: Log, batch: int, heads: int, length: int, reps: int) -> dict[str, float]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device=DEVICE).manual_seed(1)
    q, k, v = (
        torch.randn(batch, heads, length, 64, device=DEVICE, dtype=DTYPE, generator=gen) for _ in range(3)
    )
    out = {}
    for name, backend in (
        ("sdpa_flash", SDPBackend.FLASH_ATTENTION),
        ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
    ):
        try:
            with sdpa_kernel([backend]):
                ms = cuda_time_ms(
                    lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                    warmup=2,
                    reps=reps,
                )
            out[name] = ms
            log(f"  {name} B={batch} T={length} hd64 causal: {ms:.3f} ms")
        except Exception as exc:  # noqa: BLE001
            log(f"  {name}: unavailable ({type(exc).__name__}: {str(exc)[:160]})")
    return out


def fla_rows(log: Log, x: dict[str, Any], reps: int, parallel: bool) -> dict[str, Any]:
    try:
        from fla.ops.based import fused_chunk_based, parallel_based  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001
        log(f"  fla unavailable: {type(exc).__name__}: {exc}")
        return {}
    out: dict[str, Any] = {}
    fns = {"fla_fused_chunk_based": fused_chunk_based}
    if parallel:
        fns["fla_parallel_based"] = parallel_based
    for name, fn in fns.items():
        try:
            ms = cuda_time_ms(lambda fn=fn: fn(x["q"], x["k"], x["v"]), warmup=2, reps=reps)
            out[name] = ms
            log(f"  {name} T={x['q'].shape[1]}: {ms:.3f} ms")
            out[name + "_output"] = fn(x["q"][:1], x["k"][:1], x["v"][:1])
        except Exception as exc:  # noqa: BLE001
            log(f"  {name}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
    return out


def _ws_row(
    log: Log, x: dict[str, Any], name: str, config: Any, enc_config: Any, enc_len: int, bound: float, reps: int
) -> dict[str, Any]:
    """The same case with the wide-tile kernels (plugins/pla/chunk_ws.py); a failure is recorded, not fatal."""
    row: dict[str, Any] = {"name": f"{name}_ws", "impl": "jrtc triton ws", "config": config.__dict__,
                           "encoder_config": enc_config.__dict__ if enc_len else None}  # fmt: skip
    try:
        ms = cuda_time_ms(lambda: pla_prefill(x, config, enc_config, chunk_ws), reps=reps)
    except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile or launch is reported, not fatal
        log(f"  jrtc ws: FAILED {type(exc).__name__}: {str(exc)[:300]}")
        ms = None
    row["ms"] = ms
    if ms is None:
        return row
    out = pla_prefill(x, config, enc_config, chunk_ws)
    errors = check(x, out)
    row.update({"pct_of_hbm_bound": 100 * bound / ms, **errors})
    log(f"  jrtc ws: {ms:.3f} ms = {row['pct_of_hbm_bound']:.1f}% of HBM bound; max |err| o "
        f"{errors['max_abs_err_o']:.2e} (rel {errors['rel_err_o']:.1e}), kv rel {errors['rel_err_kv']:.1e}")  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument("--out", default=None, help="directory for the JSON (default benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="1/8 of the sequence lengths (same as --scale 8)")
    ap.add_argument("--scale", type=int, default=1, help="divide all sequence lengths by this")
    ap.add_argument(
        "--sweep", action="store_true", help="time launch configurations first; the rows use the best"
    )
    ap.add_argument(
        "--sweep-ws", action="store_true", help="time launch configurations of the wide-tile kernels only"
    )
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cases", default="all", help="comma-separated case names (default all)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = ap.parse_args()
    global DTYPE
    DTYPE = getattr(torch, args.dtype)
    log = Log(args.quiet)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays fp32
    env = environment()
    log(f"{env['gpu']}: torch {env['torch']}, triton {env['triton']}, fla {env['fla']}")
    bw = copy_bandwidth()
    log(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)")
    scale = 8 if args.quick else args.scale

    # Without --sweep the rows use the library's defaults (what the model gets). With --sweep, launch
    # configurations are timed first and the rows use the best (each row records its config), which is
    # how the library defaults were chosen.
    config, enc_config = chunk.CAUSAL_CONFIG, chunk.ENCODER_CONFIG
    ws_config, ws_enc_config = chunk_ws.CAUSAL_CONFIG, chunk_ws.ENCODER_CONFIG
    sweep_info = None
    if args.sweep:
        log("sweep:")
        sweep_info = sweep(log, scale)
        config = chunk.PrefillConfig(**sweep_info["causal"])
        enc_config = chunk.PrefillConfig(**sweep_info["encoder"])
        log(f"rows use causal {config} (B=1: segments by the heuristic), encoder {enc_config}")
    if args.sweep or args.sweep_ws:
        log("sweep of the wide-tile kernels:")
        ws_sweep = sweep_ws(log, scale)
        sweep_info = {**(sweep_info or {}), "ws": ws_sweep}
        ws_config = chunk_ws.WsConfig(**{**ws_sweep["ws_causal"], "num_segments": None})
        ws_enc_config = ws_config
        log(f"ws rows use {ws_config}")
    payload: dict[str, Any] = {
        "benchmark": "prefill_kernels",
        "env": env,
        "copy_bandwidth_TBps": bw / 1e12,
        "units": "ms, median of CUDA-event timings after warm-up",
        "length_divisor": scale,
        "dtype": args.dtype,
        "rows": [],
        "baselines": [],
        "sweep": sweep_info,
    }
    path = write_json("prefill_kernels", payload, args.out)

    baselines: dict[str, dict[str, float]] = {}
    rows = []
    selected = None if args.cases == "all" else set(args.cases.split(","))
    for name, batch, heads, length, enc_len, dv in CASES:
        if selected and name not in selected:
            continue
        length //= scale
        enc_len //= scale
        log(f"{name}: B={batch} H={heads} T={length} M={enc_len} dv={dv}")
        x = make_inputs(batch, heads, length, enc_len, dv)
        cfg = config if batch > 1 else chunk.PrefillConfig(**{**config.__dict__, "num_segments": None})
        ms = cuda_time_ms(lambda x=x, cfg=cfg: pla_prefill(x, cfg, enc_config), reps=args.reps)
        out = pla_prefill(x, cfg, enc_config)
        errors = check(x, out)
        nbytes = hbm_bytes(batch, heads, length, enc_len, dv)
        bound = nbytes / bw * 1e3
        row: dict[str, Any] = {
            "name": name,
            "impl": "jrtc triton",
            "B": batch,
            "H": heads,
            "T": length,
            "M": enc_len,
            "dv": dv,
            "ms": ms,
            "hbm_bytes": nbytes,
            "hbm_bound_ms": bound,
            "pct_of_hbm_bound": 100 * bound / ms,
            "config": cfg.__dict__,
            "encoder_config": enc_config.__dict__ if enc_len else None,
            **errors,
        }
        log(f"  jrtc: {ms:.3f} ms = {row['pct_of_hbm_bound']:.1f}% of HBM bound ({bound:.3f} ms); "
            f"max |err| o {errors['max_abs_err_o']:.2e} (rel {errors['rel_err_o']:.1e}), kv rel {errors['rel_err_kv']:.1e}")  # fmt: skip
        ws_cfg = ws_config if batch > 1 else chunk_ws.WsConfig(**{**ws_config.__dict__, "num_segments": None})
        ws_row = _ws_row(log, x, name, ws_cfg, ws_enc_config, enc_len, bound, args.reps)
        ws_row.update({k: row[k] for k in ("B", "H", "T", "M", "dv", "hbm_bytes", "hbm_bound_ms")})

        # Baselines at the token count of the comparison (the paper compares JRT-Prompt with FA2 on T).
        t_attn = length if name != "jrt_prompt" else length // 2
        key = f"B{batch}_T{t_attn}"
        if dv == 64 and key not in baselines:
            baselines[key] = sdpa_rows(log, batch, heads, t_attn, reps=min(args.reps, 5))
        fla_key = f"B{batch}_T{length}_dv{dv}"
        if fla_key not in baselines:
            fla = fla_rows(log, x, reps=min(args.reps, 5), parallel=length <= 32768 // scale)
            outputs = {n: fla.pop(n) for n in list(fla) if n.endswith("_output")}
            baselines[fla_key] = fla
            if enc_len == 0:
                for n, fo in outputs.items():  # sanity: fla's Based output next to ours (same math, eps 1e-6)
                    row[f"max_abs_diff_vs_{n[:-7]}"] = (fo.float() - out[0][:1].float()).abs().max().item()
        fa2 = baselines.get(key, {}).get("sdpa_flash")
        fla_ms = baselines[fla_key].get("fla_fused_chunk_based")
        for r in (row, ws_row):
            if r.get("ms"):
                r["x_fa2"] = fa2 / r["ms"] if fa2 else None
                r["x_fla_fused_chunk"] = fla_ms / r["ms"] if fla_ms else None
                r["x_jrtc_chunk"] = ms / r["ms"]
        rows += [row, ws_row]
        payload["rows"] = rows
        del x, out
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

        payload["baselines"] = [
            {"impl": impl, "shape": key, "ms": t}
            for key, vals in baselines.items()
            for impl, t in vals.items()
        ]
        path = write_json("prefill_kernels", payload, args.out)  # after every case: partial runs keep rows

    log(f"wrote {path}")
    baseline_rows = payload["baselines"]
    if not args.quiet:
        print(f"\n{'case':16s} {'ms':>8s} {'%HBM':>6s} {'xFA2':>6s} {'xfla':>6s} {'rel err o':>9s}")
        for r in rows:
            if not r.get("ms"):
                print(f"{r['name']:16s} FAILED")
                continue
            xf = f"{r['x_fa2']:.1f}" if r["x_fa2"] else "-"
            xl = f"{r['x_fla_fused_chunk']:.1f}" if r["x_fla_fused_chunk"] else "-"
            print(
                f"{r['name']:16s} {r['ms']:8.3f} {r['pct_of_hbm_bound']:6.1f} {xf:>6s} {xl:>6s} {r['rel_err_o']:9.1e}"
            )
        for r in baseline_rows:
            print(f"  {r['impl']:24s} {r['shape']:14s} {r['ms']:8.3f} ms")


if __name__ == "__main__":
    main()
