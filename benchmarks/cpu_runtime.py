"""Prefill and decode throughput of the cpu engine (its model.onnx on ONNX Runtime) against the PyTorch model
in eager mode, same weights, same process, same number of threads, at B=1 and B=8.

    python benchmarks/cpu_runtime.py [--models example,360m] [--threads N] [--quiet]

Models: the built-in example (``jrtc/example/recall.pt``) and a random checkpoint shaped like JRT-360M
(d_model 1024, 26 layers, PLA at 1,6,11,16,21, SWA at 2,7,12,17,22, GPT-2 vocabulary). Each is exported
with ``jrtc export`` into a temporary directory. Prefill is one call of ``[B, L]`` from a fresh state;
decode is greedy ``[B, 1]`` steps from the prefilled state, and both implementations must pick the same
tokens. Results go to ``benchmarks/results/cpu_runtime.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from jrtc.checkpoint import load_checkpoint, save_checkpoint
from jrtc.config import GPT2_SPACE_ID, JRTConfig
from jrtc.example import CHECKPOINT as EXAMPLE_CHECKPOINT
from jrtc.export.build import export_engine
from jrtc.model import JRTModel
from jrtc.runtime import Engine

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_runtime.json"
BATCHES = (1, 8)
SETTLE_S = 1.0


def jrt_360m_config() -> JRTConfig:
    types = ["conv"] * 26
    for i in (1, 6, 11, 16, 21):
        types[i] = "pla"
    for i in (2, 7, 12, 17, 22):
        types[i] = "swa"
    return JRTConfig(
        vocab_size=50257, d_model=1024, n_layer=26, n_head=16, n_inner=2048, layer_types=tuple(types)
    )


def _example(workdir: Path) -> tuple[Path, str]:
    if not EXAMPLE_CHECKPOINT.is_file():
        sys.exit(f"cpu_runtime: {EXAMPLE_CHECKPOINT} is missing; train it with python -m jrtc.example.train")
    return EXAMPLE_CHECKPOINT, "bytes"


def _jrt_360m(workdir: Path) -> tuple[Path, str]:
    torch.manual_seed(0)
    path = workdir / "jrt-360m-random.pt"
    save_checkpoint(JRTModel(jrt_360m_config()).eval(), path)
    # A two-token stand-in for GPT-2's tokenizer (not shipped here): only the space id must match.
    tokenizer = {
        "version": "1.0",
        "model": {"type": "WordLevel", "vocab": {" ": GPT2_SPACE_ID, "!": 0}, "unk_token": "!"},
    }
    (workdir / "tokenizer.json").write_text(json.dumps(tokenizer))
    return path, str(workdir / "tokenizer.json")


# name -> (checkpoint maker, prompt length of the prefill call, decode steps). The example's prefill is
# its real first call (enc_length tokens); the 360M's is a short prompt, unpadded, to keep the run short.
MODELS: dict[str, tuple[Callable[[Path], tuple[Path, str]], int | None, int]] = {
    "example": (_example, None, 128),  # None: enc_length
    "360m": (_jrt_360m, 64, 16),
}


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls after one warm-up call, and the last result."""
    # Both runtimes' thread pools spin for a while after their last op; let the other one's go quiet.
    time.sleep(SETTLE_S)
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# A step of either implementation: (ids [B, L], start position, state) -> (logits [B, V], next state).
Step = Callable[[np.ndarray, int, Any], tuple[np.ndarray, Any]]


def onnx_step(engine: Engine) -> tuple[Step, Callable[[int], Any]]:
    """The engine's graph as ``jrtc.runtime`` runs it (CPU provider, all graph optimizations), but with
    ONNX Runtime's intra-op threads pinned to PyTorch's count: the runtime's backend has no thread knob,
    and on a shared machine an unequal count decides the comparison more than either implementation."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(
        str(engine.directory / engine.manifest.engine), options, providers=["CPUExecutionProvider"]
    )
    inputs = [i.name for i in session.get_inputs()]

    def step(ids: np.ndarray, start: int, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        batch = ids.shape[0]
        feed = [ids, np.full(batch, start, np.int64), np.zeros(batch, np.int64), *state]
        logits, *next_state = session.run(None, dict(zip(inputs, feed, strict=True)))
        return logits, next_state

    def fresh(batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, *s.shape), s.dtype) for s in engine.manifest.state]

    return step, fresh


def torch_step(model: JRTModel) -> tuple[Step, Callable[[int], Any]]:
    @torch.inference_mode()
    def step(ids: np.ndarray, start: int, state: dict[str, torch.Tensor]) -> tuple[np.ndarray, dict]:
        logits, state = model.forward_step(torch.from_numpy(ids), state, last_only=True)
        return logits.numpy(), state  # the state carries its own positions

    return step, model.init_state


def bench(
    step: Step, fresh: Callable[[int], Any], ids: np.ndarray, steps: int, repeats: int
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Tokens/s of one prefill call from a fresh state and of greedy decode from the prefilled state."""
    batch, length = ids.shape
    prefill_s, (logits, state) = _timed(lambda: step(ids, 0, fresh(batch)), repeats)

    def decode() -> list[np.ndarray]:
        step_logits, step_state, tokens = logits, state, []
        for i in range(steps):
            token = step_logits.argmax(-1)[:, None].astype(np.int64)
            tokens.append(token[:, 0])
            step_logits, step_state = step(token, length + i, step_state)
        return tokens

    decode_s, tokens = _timed(decode, max(1, repeats // 2))
    return {"prefill_tok_s": batch * length / prefill_s, "decode_tok_s": batch * steps / decode_s}, tokens


def run(names: list[str], repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="jrtc-bench-") as tmp:
        for name in names:
            make, prompt_len, steps = MODELS[name]
            workdir = Path(tmp) / name
            workdir.mkdir()
            checkpoint, tokenizer = make(workdir)
            log(f"{name}: exporting {checkpoint}")
            start = time.perf_counter()
            export_engine(checkpoint, workdir / "engine", tokenizer=tokenizer)
            export_s = time.perf_counter() - start
            engine = Engine.load(workdir / "engine")
            model = load_checkpoint(checkpoint)
            cfg = model.config
            length = prompt_len or cfg.enc_length
            for batch in BATCHES:
                ids = np.random.default_rng(batch).integers(0, cfg.vocab_size, (batch, length))
                log(f"{name}: B={batch}, prefill L={length}, {steps} decode steps: ONNX Runtime")
                onnx_numbers, onnx_tokens = bench(*onnx_step(engine), ids, steps, repeats)
                log(f"{name}: B={batch}: PyTorch eager")
                torch_numbers, torch_tokens = bench(*torch_step(model), ids, steps, repeats)
                same = all(np.array_equal(a, b) for a, b in zip(onnx_tokens, torch_tokens, strict=True))
                row = {
                    "model": name,
                    "batch": batch,
                    "prefill_len": length,
                    "decode_steps": steps,
                    "onnxruntime": onnx_numbers,
                    "torch_eager": torch_numbers,
                    "decode_speedup": onnx_numbers["decode_tok_s"] / torch_numbers["decode_tok_s"],
                    "prefill_speedup": onnx_numbers["prefill_tok_s"] / torch_numbers["prefill_tok_s"],
                    "same_greedy_tokens": same,
                    "export_s": export_s,
                }
                log(
                    f"{name}: B={batch}: decode {onnx_numbers['decode_tok_s']:.1f} vs "
                    f"{torch_numbers['decode_tok_s']:.1f} tok/s ({row['decode_speedup']:.2f}x), prefill "
                    f"{onnx_numbers['prefill_tok_s']:.0f} vs {torch_numbers['prefill_tok_s']:.0f} tok/s"
                )
                results.append(row)
    return {
        "benchmark": "cpu_runtime",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),  # of each runtime
            "load_avg_1m_at_end": os.getloadavg()[0],  # other work on the machine skews both columns
        },
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed prefills (decode runs: half as many)")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads of both runtimes [default: PyTorch's choice, all cores]"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}")

    def log(message: str) -> None:
        if not args.quiet:
            print(f"cpu_runtime: {message}", file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(names, args.repeats, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
