"""The cuda engine (``jrtc export --target cuda``) on a GPU: correctness, then speed against the bound.

Checks (``--check``), on engines that ``benchmarks/gpu_engine.sh`` exported:
  * the built-in example as ``--dtype float32`` against its cpu (ONNX Runtime) engine: the same greedy tokens
    over 256 decode steps, for a short (left-padded), a long and a chunked prompt; and as bf16: the logits'
    error and the greedy agreement;
  * a random JRT-360M-shaped bf16 checkpoint: the engine's logits against the PyTorch model with the kernels
    (``load_checkpoint(..., use_kernels=True)``) after a prefill and over 128 greedy steps fed the model's
    own tokens, and the greedy agreement.
Benchmark (``--bench``), the 360M-shaped engine through the runtime's state pool (CUDA-graph decode, device
sampling) next to the eager PyTorch model with the kernels, in the same run:
  * prefill tokens/s at B=1 L=4096, B=1 L=32768, B=16 L=4096; bound: the model's FLOPs at the bf16 matmul rate
    measured in this run;
  * decode tokens/s at B = 1, 16, 64, 256; bound: bf16 weights plus the state read and written once per step,
    at the device-to-device copy rate measured in this run.

Usage: python benchmarks/engine_cuda.py --engines DIR [--check] [--bench] [--out DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import Log, copy_bandwidth, cuda_time_ms, environment, repo_on_path, write_json  # noqa: E402

repo_on_path()
import jrtc  # noqa: E402
from jrtc.runtime import Engine, SamplingParams  # noqa: E402
from jrtc.runtime.sampling import Draw  # noqa: E402

TEXT = "ab:12, cd:34, ef:56, gh:78, ij:90, kl:13, mn:57, op:91, qr:35, st:79. The quick brown fox jumps. "
PREFILL_SHAPES = [(1, 4096), (1, 32768), (16, 4096)]
DECODE_BATCHES = [1, 16, 64, 256]


def _prompt(length: int) -> list[int]:
    return list((TEXT * (length // len(TEXT) + 1)).encode()[:length])


def _generate(engine: Engine, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens of one prompt and the logits each came from (through the session's own pool)."""
    session = engine.session(max_batch=1)
    pool, seen = session.pool, []
    run = pool.run

    def recording_run(*args: Any) -> Any:
        logits = run(*args)
        seen.append(pool.to_numpy(logits)[0].copy())
        return logits

    pool.run = recording_run
    tokens = [
        t.id for t in session.generate(prompt, SamplingParams(max_new_tokens=steps + 1, stop_on_eos=False))
    ]
    return tokens, np.stack(seen[-len(tokens) :])


def check_example(engines: Path, log: Log) -> dict[str, Any]:
    cpu = Engine.load(engines / "example-cpu")
    results = {}
    for dtype in ("float32", "bfloat16"):
        cuda = Engine.load(engines / f"example-cuda-{dtype}")
        m = cpu.manifest
        for case, length in {
            "short": m.enc_length // 2,
            "long": m.enc_length + 40,
            "chunked": 2 * m.max_prompt_len + 7,
        }.items():
            expected, ref_logits = _generate(cpu, _prompt(length), 256)
            tokens, logits = _generate(cuda, _prompt(length), 256)
            agree = sum(a == b for a, b in zip(tokens, expected, strict=True)) / len(tokens)
            first_diff = next(
                (i for i, (a, b) in enumerate(zip(tokens, expected, strict=True)) if a != b), None
            )
            # Logits compared until the first differing token (after it the two see different inputs).
            upto = len(tokens) if first_diff is None else first_diff + 1
            err = float(np.abs(logits[:upto] - ref_logits[:upto]).max() / np.abs(ref_logits[:upto]).max())
            results[f"{dtype}/{case}"] = {
                "prompt_tokens": length,
                "greedy_equal": tokens == expected,
                "greedy_agreement": agree,
                "first_difference": first_diff,
                "logits_rel_err": err,
            }
            log(
                f"  example {dtype} {case}: equal {tokens == expected}, agreement {agree:.3f}, logits err {err:.2e}"
            )
    return results


@torch.no_grad()
def check_big(
    engines: Path, log: Log, steps: int = 128, lengths: tuple[int, int] = (600, 3000)
) -> dict[str, Any]:
    """``lengths``: one prompt shorter than the encoder (left-padded), one past it (JRT-360M's is 1024)."""
    engine = Engine.load(engines / "jrt360m-cuda")
    # The reference in the package's own dtype and device: bf16 on the GPU, fp32 on the CPU (CI's dry run).
    device, dtype = engine.manifest.raw["device"], getattr(torch, engine.manifest.raw["dtype"])
    model = jrtc.load_checkpoint(engines / "jrt360m.pt", dtype=dtype, device=device, use_kernels=True)
    vocab = engine.manifest.vocab_size
    results = {}
    for length in lengths:
        prompt = torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(length)).tolist()
        ids, num_pad = _padded(prompt, engine)
        state = model.init_state(1)
        mask = torch.arange(len(ids), device=device)[None] >= num_pad
        ref = [model.prefill(torch.tensor([ids], device=device), state, mask)[:, -1].float()]
        tokens, logits = _generate(engine, prompt, steps)
        agree = 0
        for token, engine_logits in zip(tokens[:-1], logits[1:], strict=True):
            step = model.step(torch.tensor([token], device=device), state).float()
            ref.append(step)
            agree += int(step.argmax(-1).item() == int(engine_logits[:vocab].argmax()))
        ref_np = torch.cat(ref).cpu().numpy()
        err = float(np.abs(logits - ref_np).max() / np.abs(ref_np).max())
        first = float(np.abs(logits[0] - ref_np[0]).max() / np.abs(ref_np[0]).max())
        results[f"L={length}"] = {
            "prefill_logits_rel_err": first,
            "logits_rel_err_max": err,
            "greedy_agreement": (agree + int(ref_np[0][:vocab].argmax() == tokens[0])) / len(tokens),
        }
        log(
            f"  360M L={length}: prefill logits err {first:.2e}, max over {steps} steps {err:.2e}, agreement {results[f'L={length}']['greedy_agreement']:.3f}"
        )
    return results


def _padded(prompt: list[int], engine: Engine) -> tuple[list[int], int]:
    pad = max(engine.manifest.enc_length - len(prompt), 0)
    return [engine.manifest.pad_token_id] * pad + prompt, pad


def matmul_rate() -> float:
    """bf16 matmul FLOP/s on random 8192^3 products."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time_ms(lambda: a @ b, warmup=3, reps=10)
    return 2 * 8192**3 / (ms * 1e-3)


def model_flops(model: torch.nn.Module, batch: int, length: int) -> float:
    """Prefill FLOPs: every linear layer on every token (the head on the last one), plus the mixers' cores
    (PLA: the 153-feature state read-out and update and the 16-dim intra-chunk scores of 16-token chunks;
    SWA: 129 keys per query)."""
    cfg = model.config
    tokens = batch * length
    linear = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n)
    flops = 2 * linear * tokens + 2 * cfg.d_model * cfg.vocab_size_padded * batch
    pla = sum(t in ("pla", "la") for t in cfg.layer_types)
    swa = cfg.layer_types.count("swa")
    flops += pla * tokens * cfg.pla_heads * (4 * 153 * cfg.pla_head_dim + 2 * 16 * (16 + cfg.pla_head_dim))
    flops += swa * tokens * cfg.n_head * 4 * (cfg.swa_ring + 1) * cfg.head_dim
    return float(flops)


def _prefill_row(pool: Any, model: Any, batch: int, length: int, mm_rate: float) -> dict[str, float]:
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, length))
    zeros = np.zeros(batch, np.int64)
    engine_ms = cuda_time_ms(lambda: pool.run(slice(0, batch), ids, zeros, zeros), warmup=2, reps=5)
    t_ids = torch.from_numpy(ids).cuda()
    eager_ms = cuda_time_ms(
        lambda: model.forward_step(t_ids, model.init_state(batch), None, last_only=True), warmup=2, reps=5
    )
    bound_ms = model_flops(model, batch, length) / mm_rate * 1e3
    return {
        "engine_ms": engine_ms,
        "engine_tokens_per_s": batch * length / (engine_ms * 1e-3),
        "pytorch_kernels_ms": eager_ms,
        "pytorch_kernels_tokens_per_s": batch * length / (eager_ms * 1e-3),
        "bound_ms": bound_ms,
        "engine_fraction_of_bound": bound_ms / engine_ms,
    }


def _decode_row(pool: Any, model: Any, batch: int, step_bytes: int, copy_bw: float) -> dict[str, float]:
    """One decode step as the runtime takes it (the pool's program or CUDA graph, device sampling, the ids
    back on the host), timed over 50 steps, next to the eager model's step with the kernels."""
    pool.reset(slice(0, batch))
    positions = np.full(batch, 2048, np.int64)  # past the encoder, the sliding window full
    zeros = np.zeros(batch, np.int64)
    tokens = np.ones((batch, 1), np.int64)
    draws = [Draw(SamplingParams(), 0, i) for i in range(batch)]
    steps = 50
    for i in range(5 + steps):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        tokens[:, 0] = pool.sample(pool.run(slice(0, batch), tokens, positions, zeros), draws)
    engine_ms = (time.perf_counter() - start) * 1e3 / steps
    state = model.init_state(batch)
    state["pos"].fill_(2048)
    t_tokens = torch.ones(batch, dtype=torch.int64, device="cuda")
    eager_ms = cuda_time_ms(lambda: model.step(t_tokens, state).argmax(-1), warmup=3, reps=20)
    bound_ms = step_bytes / copy_bw * 1e3  # copy_bw counts bytes read plus written, as step_bytes does
    return {
        "engine_ms_per_step": engine_ms,
        "engine_tokens_per_s": batch / (engine_ms * 1e-3),
        "pytorch_kernels_ms_per_step": eager_ms,
        "pytorch_kernels_tokens_per_s": batch / (eager_ms * 1e-3),
        "bytes_per_step": step_bytes,
        "bound_ms": bound_ms,
        "engine_fraction_of_bound": bound_ms / engine_ms,
    }


@torch.no_grad()
def bench(engines: Path, log: Log) -> dict[str, Any]:
    engine = Engine.load(engines / "jrt360m-cuda")
    model = jrtc.load_checkpoint(
        engines / "jrt360m.pt", dtype=torch.bfloat16, device="cuda", use_kernels=True
    )
    copy_bw, mm_rate = copy_bandwidth(), matmul_rate()
    log(f"  copy {copy_bw / 1e12:.2f} TB/s (read + write), bf16 matmul {mm_rate / 1e12:.0f} TFLOP/s")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state_bytes = engine.manifest.raw["state_bytes_per_sequence"]
    out: dict[str, Any] = {
        "copy_bytes_per_s": copy_bw,
        "bf16_matmul_flop_per_s": mm_rate,
        "prefill": {},
        "decode": {},
    }
    pool = engine.backend.new_pool(max(DECODE_BATCHES))
    out["decode_cuda_graphs"] = pool.graph_error or "captured"
    log(f"  decode CUDA graphs: {out['decode_cuda_graphs']}")
    for batch, length in PREFILL_SHAPES:
        row = out["prefill"][f"B={batch} L={length}"] = _prefill_row(pool, model, batch, length, mm_rate)
        log(
            f"  prefill B={batch} L={length}: engine {row['engine_ms']:.1f} ms "
            f"({row['engine_fraction_of_bound']:.0%} of bound), PyTorch+kernels {row['pytorch_kernels_ms']:.1f} ms"
        )
    for batch in DECODE_BATCHES:
        # Weights read once, each sequence's state read and written once.
        row = out["decode"][f"B={batch}"] = _decode_row(
            pool, model, batch, weight_bytes + 2 * batch * state_bytes, copy_bw
        )
        log(
            f"  decode B={batch}: engine {row['engine_ms_per_step']:.3f} ms/step "
            f"({row['engine_fraction_of_bound']:.0%} of bound), PyTorch+kernels {row['pytorch_kernels_ms_per_step']:.3f} ms"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    log = Log(args.quiet)
    result: dict[str, Any] = {"env": environment()}
    if args.check:
        log("example: cuda engine against the cpu engine")
        result["example"] = check_example(args.engines, log)
        log("JRT-360M-shaped: cuda engine against the PyTorch model with the kernels")
        result["jrt360m"] = check_big(args.engines, log)
        write_json("engine_cuda_check", result, args.out)
    if args.bench:
        log("JRT-360M-shaped: throughput")
        result["throughput"] = bench(args.engines, log)
        write_json("engine_cuda", result, args.out)


if __name__ == "__main__":
    main()
