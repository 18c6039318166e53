"""Decode and prefill speed of int8 and int4 cpu engines (``jrtc export --quantize``) of a JRT-360M-shaped
model, next to the fp32 engine, PyTorch eager fp32 and PyTorch's own dynamic int8 quantization
(``torch.ao.quantization.quantize_dynamic``), each as a fraction of its memory-bandwidth bound, in one run.

    python benchmarks/cpu_quantized.py [--threads 1,2] [--batches 1,8] [--steps 16] [--repeats 3]
                                       [--prefill-len 512] [--quiet]

The model has JRT-360M's shapes (``benchmarks/model_cuda.py``: d_model 1024, 26 layers, GPT-2 vocabulary)
and random weights; its engines come from ``jrtc export`` and run through ``jrtc.runtime`` (its state pool,
``Engine.load(threads=N)``), PyTorch's through ``JRTModel.forward_step`` with ``torch.set_num_threads(N)``.

Decode: greedy ``[B, 1]`` steps after a 64-token prefill, every step timed; tok/s is B over the median step.
A decode step reads every weight once, so its bound is ``B * bandwidth / weight bytes read per step``
(the embedding table counts only for the B rows it gathers, unless the head reads it whole). The
bandwidth is measured in the same run, right before each timed block, with the same number of threads:
the read rate of BLAS dot products over a 1 GiB float32 buffer (one chunk per thread), median of 5; a 1 GiB
copy (bytes read plus written) is recorded beside it. Prefill: one ``[1, L]`` call from a fresh state,
median of the repeats.

The machine is shared: the load average is recorded at every block, and every rate (the engines' and the
probe's, hence the bound) twice: per wall second, and per CPU second of each thread of this process. A thread
that waits for a core counts in the first and not in the second, so the second is what the step would do
with its cores to itself (for one thread exactly; with two, the pools' spinning threads count as busy, which
makes it pessimistic). Results go to ``benchmarks/results/cpu_quantized.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's dot in the bandwidth probe: one thread each

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_cuda import random_jrt_360m  # noqa: E402

from jrtc.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from jrtc.export.build import export_engine  # noqa: E402
from jrtc.model import JRTModel  # noqa: E402
from jrtc.runtime import Engine  # noqa: E402
from jrtc.runtime.engine import MANIFEST, Manifest  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_quantized.json"
PROMPT_LEN = 64
SETTLE_S = 1.0  # thread pools spin for a while after their last op; let the previous one's go quiet
PROBE_BYTES = 2**30
WEIGHT_OPS = {"MatMulNBits", "MatMul", "Gemm", "FusedMatMul", "GatherBlockQuantized", "Gather"}

# One batch's step(ids [B, L], start) -> logits [B, V] (numpy), its state kept inside, and its reset().
Step = Callable[[np.ndarray, int], np.ndarray]
Runner = tuple[Step, Callable[[], None]]


@dataclass
class Implementation:
    name: str
    weight_bytes: Callable[[int], int]  # batch -> bytes of weights one decode step reads
    runner: Callable[[int, int], Runner]  # (threads, batch) -> its step and reset


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def bandwidth(threads: int) -> dict[str, float]:
    """Bytes/s that ``threads`` threads stream from memory: BLAS dot products over a 1 GiB buffer, one chunk
    per thread (reads), and a 1 GiB copy (reads plus writes); medians of 5, per wall second and per CPU
    second of each thread (what the probe gets with its cores to itself)."""
    source = np.ones(PROBE_BYTES // 4, np.float32)
    target = np.empty_like(source)
    chunks = np.array_split(np.arange(source.size), threads)
    spans = [(int(c[0]), int(c[-1]) + 1) for c in chunks]
    probes = {
        "read": (source.nbytes, lambda s: np.dot(source[s[0] : s[1]], source[s[0] : s[1]])),
        "copy_read_plus_write": (
            2 * source.nbytes,
            lambda s: np.copyto(target[s[0] : s[1]], source[s[0] : s[1]]),
        ),
    }
    rates: dict[str, list[float]] = {}
    with ThreadPoolExecutor(threads) as pool:  # numpy lets go of the GIL in both
        for _ in range(5):
            for name, (nbytes, work) in probes.items():
                wall, cpu, _ = _timed(lambda work=work: list(pool.map(work, spans)))
                rates.setdefault(f"{name}_GBps", []).append(nbytes / wall / 1e9)
                rates.setdefault(f"{name}_GBps_cpu_time", []).append(nbytes * threads / cpu / 1e9)
    return {name: statistics.median(values) for name, values in rates.items()}


# ---- the implementations ----------------------------------------------------------------------------------
def _onnx_bytes(path: Path) -> int:
    """Bytes of every initializer of the engine's graph (the tied table once: the head reads it whole, or the
    embedding gathers rows of the head's quantized blocks)."""
    model = onnx.load(str(path), load_external_data=False)
    return sum(
        int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in model.graph.initializer
    )


def engine_implementation(name: str, directory: Path) -> Implementation:
    total = _onnx_bytes(directory / "model.onnx")

    def runner(threads: int, batch: int) -> Runner:
        pool = Engine.load(directory, verify=False, threads=threads).backend.new_pool(batch)
        rows, no_pad = slice(0, batch), np.zeros(batch, np.int64)

        def step(ids: np.ndarray, start: int) -> np.ndarray:
            return pool.to_numpy(pool.run(rows, ids, np.full(batch, start, np.int64), no_pad))

        return step, lambda: pool.reset(rows)

    return Implementation(name, lambda batch: total, runner)


def torch_implementation(
    name: str, model: torch.nn.Module, spec: JRTModel, embedding_bytes: int
) -> Implementation:
    """``model``'s forward_step (``spec``: the fp32 model, whose state layout it shares); weight bytes from its
    state dict (quantized linears pack theirs), the embedding table counted only for its gathered rows
    when the head does not read it (``embedding_bytes``: the table's size, 0 when the head reads it)."""
    tensors: dict[int, torch.Tensor] = {}
    for value in model.state_dict().values():
        if isinstance(value, torch.Tensor):
            tensors[value.data_ptr()] = value
        elif isinstance(value, tuple):  # a dynamic quantized linear's packed (weight, bias)
            tensors |= {t.data_ptr(): t for t in value if isinstance(t, torch.Tensor)}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    row_bytes = embedding_bytes // spec.config.vocab_size_padded

    def runner(threads: int, batch: int) -> Runner:
        torch.set_num_threads(threads)
        state = spec.init_state(batch)

        @torch.inference_mode()
        def step(ids: np.ndarray, start: int) -> np.ndarray:
            nonlocal state
            logits, state = model.forward_step(torch.from_numpy(ids), state, last_only=True)
            return logits.numpy()

        def reset() -> None:
            nonlocal state
            state = spec.init_state(batch)

        return step, reset

    return Implementation(name, lambda batch: total - embedding_bytes + batch * row_bytes, runner)


def pytorch_dynamic_int8(checkpoint: Path) -> torch.nn.Module:
    """PyTorch's own dynamic int8 quantization of every nn.Linear (per-tensor int8 weights, activations
    quantized per call) of a fresh copy of the model (in place: the mixers' op namespaces cannot be
    deep-copied); the head gets its own int8 copy and the embedding table stays fp32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(
            load_checkpoint(checkpoint), {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )


# ---- measuring -----------------------------------------------------------------------------------------------
def decode(runner: Runner, threads: int, batch: int, steps: int, repeats: int, vocab: int) -> dict[str, Any]:
    step, reset = runner
    ids = np.random.default_rng(batch).integers(0, vocab, (batch, PROMPT_LEN))
    walls, cpus, tokens = [], [], []
    for _ in range(repeats):
        reset()
        logits = step(ids, 0)
        tokens = []
        for i in range(steps):
            token = logits[:, :vocab].argmax(-1)[:, None].astype(np.int64)
            tokens.append(token[:, 0])
            wall, cpu, logits = _timed(lambda token=token, i=i: step(token, PROMPT_LEN + i))
            walls.append(wall)
            cpus.append(cpu)
    return {
        "tok_s": batch / statistics.median(walls),
        "tok_s_cpu_time": batch * threads / statistics.median(cpus),  # per CPU second of each thread
        "step_ms_min_median_max": [1e3 * min(walls), 1e3 * statistics.median(walls), 1e3 * max(walls)],
        "tokens": np.stack(tokens, 1),
    }


def prefill(runner: Runner, threads: int, length: int, repeats: int, vocab: int) -> dict[str, float]:
    step, reset = runner
    ids = np.random.default_rng(0).integers(0, vocab, (1, length))
    walls, cpus = [], []
    for _ in range(repeats):
        reset()
        wall, cpu, _ = _timed(lambda: step(ids, 0))
        walls.append(wall)
        cpus.append(cpu)
    return {
        "tok_s": length / statistics.median(walls),
        "tok_s_cpu_time": length * threads / statistics.median(cpus),
    }


def profile(directory: Path, steps: int) -> dict[str, Any]:
    """Where one thread's decode step goes (B = 1), by ONNX Runtime's profiler: the weight ops (the linear
    layers, the head, the embedding) against everything else the step graph runs."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        manifest = Manifest.read(directory / MANIFEST)
        session = onnxruntime.InferenceSession(
            str(directory / manifest.engine), options, providers=["CPUExecutionProvider"]
        )
        state = [np.zeros((1, *s.shape), np.float32) for s in manifest.state]
        feed = [np.ones((1, PROMPT_LEN), np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64)]
        names = list(manifest.inputs)
        _, *state = session.run(None, dict(zip(names, [*feed, *state], strict=True)))
        for i in range(steps):
            feed = [np.ones((1, 1), np.int64), np.full(1, PROMPT_LEN + i), np.zeros(1, np.int64)]
            _, *state = session.run(None, dict(zip(names, [*feed, *state], strict=True)))
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    decode_start = runs[1]["ts"]  # the first run is the prefill
    weight_us = other_us = 0
    nodes = 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= decode_start:
            nodes += 1
            if e["args"]["op_name"] in WEIGHT_OPS:
                weight_us += e["dur"]
            else:
                other_us += e["dur"]
    return {
        "step_ms": statistics.median(r["dur"] for r in runs[1:]) / 1e3,
        "weight_ops_ms": weight_us / steps / 1e3,
        "other_ops_ms": other_us / steps / 1e3,
        "nodes_per_step": nodes // steps,
        "note": "MatMul/Gemm/Gather count as weight ops, including the PLA's few small activation MatMuls",
    }


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    model = random_jrt_360m(pad_token_id=32).eval().requires_grad_(False)  # 32: the byte-level tokenizer fits
    if args.layers is not None:  # a quick check of this script, not a measurement
        model = JRTModel(
            replace(model.config, n_layer=args.layers, layer_types=model.config.layer_types[: args.layers])
        )
        model.eval().requires_grad_(False)
    cfg = model.config
    loads = [os.getloadavg()[0]]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="jrtc-bench-") as tmp:
        checkpoint = Path(tmp) / "jrt-360m-random.pt"
        save_checkpoint(model, checkpoint)
        engines, exports = {}, {}
        for weights in ("float32", "int8", "int4"):
            log(f"exporting the {weights} engine")
            start = time.perf_counter()
            out = Path(tmp) / weights
            exported = export_engine(
                checkpoint,
                out,
                tokenizer="bytes",
                quantize=None if weights == "float32" else weights,
                max_batch=max(args.batches),
            )
            exports[weights] = {
                "seconds": time.perf_counter() - start,
                "files_bytes": sum(exported.files.values()),
                "quantization": exported.manifest.get("quantization"),
            }
            engines[weights] = out
        embedding = model.transformer.embeddings.word_embeddings.weight
        implementations = [
            *(engine_implementation(f"onnxruntime {w}", d) for w, d in engines.items()),
            torch_implementation("pytorch eager fp32", model, model, 0),
            torch_implementation(
                "pytorch dynamic int8", pytorch_dynamic_int8(checkpoint), model, embedding.numel() * 4
            ),
        ]
        for threads in args.threads:
            for batch in args.batches:
                probe = bandwidth(threads)
                load = os.getloadavg()[0]
                loads.append(load)
                log(
                    f"{threads} thread(s), B={batch}: read {probe['read_GBps']:.1f} GB/s "
                    f"({probe['read_GBps_cpu_time']:.1f} per CPU second), load {load:.1f}"
                )
                reference = None
                for impl in implementations:
                    time.sleep(SETTLE_S)
                    numbers = decode(
                        impl.runner(threads, batch), threads, batch, args.steps, args.repeats, cfg.vocab_size
                    )
                    tokens = numbers.pop("tokens")
                    reference = tokens if reference is None else reference  # the fp32 engine's, first
                    weight_bytes = impl.weight_bytes(batch)
                    bound = batch * probe["read_GBps"] * 1e9 / weight_bytes
                    bound_cpu = batch * probe["read_GBps_cpu_time"] * 1e9 / weight_bytes
                    row = {
                        "implementation": impl.name,
                        "threads": threads,
                        "batch": batch,
                        "decode": numbers,
                        "weight_bytes_per_step": weight_bytes,
                        "bound_tok_s": bound,
                        "fraction_of_bound": numbers["tok_s"] / bound,
                        "bound_tok_s_cpu_time": bound_cpu,
                        "fraction_of_bound_cpu_time": numbers["tok_s_cpu_time"] / bound_cpu,
                        "greedy_agreement_with_fp32_engine": float((tokens == reference).mean()),
                        "bandwidth": probe,
                        "load_avg_1m": os.getloadavg()[0],
                    }
                    if batch == 1:
                        time.sleep(SETTLE_S)
                        row["prefill"] = {
                            "length": args.prefill_len,
                            **prefill(
                                impl.runner(threads, 1),
                                threads,
                                args.prefill_len,
                                args.repeats,
                                cfg.vocab_size,
                            ),
                        }
                    log(
                        f"  {impl.name}: decode {numbers['tok_s']:.1f} tok/s ({row['fraction_of_bound']:.0%} of "
                        f"{bound:.1f}); per CPU second {numbers['tok_s_cpu_time']:.1f} "
                        f"({row['fraction_of_bound_cpu_time']:.0%} of {bound_cpu:.1f})"
                        + (f", prefill {row['prefill']['tok_s']:.0f} tok/s" if "prefill" in row else "")
                    )
                    rows.append(row)
        profiles = {}
        for weights, directory in engines.items():
            log(f"profiling the {weights} engine's decode step")
            profiles[weights] = profile(directory, args.steps)
    loads.append(os.getloadavg()[0])
    by = {(r["implementation"], r["threads"], r["batch"]): r for r in rows}

    def targets(clock: str) -> dict[str, float | None]:
        """The issue's B = 1, one-thread targets, by wall time ("tok_s") or per CPU second."""
        eager = by.get(("pytorch eager fp32", 1, 1))
        int4, int8 = by.get(("onnxruntime int4", 1, 1)), by.get(("onnxruntime int8", 1, 1))
        if not (eager and int4 and int8):
            return {}
        fraction = "fraction_of_bound" + ("" if clock == "tok_s" else "_cpu_time")
        return {
            "int4_fraction_of_bound": int4[fraction],
            "int4_vs_pytorch_eager_fp32": int4["decode"][clock] / eager["decode"][clock],
            "int8_vs_pytorch_eager_fp32": int8["decode"][clock] / eager["decode"][clock],
        }

    return {
        "benchmark": "cpu_quantized",
        "command": " ".join(["python benchmarks/cpu_quantized.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        },
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "model": {
            "shape": "JRT-360M (benchmarks/model_cuda.py random_jrt_360m)",
            "parameters": model.num_parameters(),
        },
        "exports": exports,
        "targets_b1_1thread": {
            "wall_time": targets("tok_s"),
            "per_cpu_second": targets("tok_s_cpu_time"),
            "wanted": {
                "int4_fraction_of_bound": 0.6,
                "int4_vs_pytorch_eager_fp32": 4.0,
                "int8_vs_pytorch_eager_fp32": 2.5,
            },
        },
        "profile_b1_1thread": profiles,
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--batches", default="1,8", help="comma-separated decode batch sizes")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed decode runs and prefill calls")
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument(
        "--layers", type=int, help="keep the first N layers only: a quick check of the script"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]

    def log(message: str) -> None:
        if not args.quiet:
            print(f"cpu_quantized: {message}", file=sys.stderr, flush=True)

    report = run(args, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
