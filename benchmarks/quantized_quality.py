"""Quality of int8 and int4 cpu engines (``jrtc export --quantize``) against the fp32 engine of the same
checkpoint, for the built-in example and a random checkpoint in the original Hugging Face layout.

    python benchmarks/quantized_quality.py [--steps 256] [--examples 500] [--block-sizes 16,32,64] [--quiet]

Per engine, after one prompt (the example: the first row of ``jrtc/example/demo.jsonl`` read twice, the
paper's template; the random model: 40 random tokens):

* teacher-forced: the fp32 engine decodes ``--steps`` greedy tokens; the quantized engine is fed the same
  tokens, and at every step its top-1 token is compared with fp32's (agreement) and its logits too (max and
  mean absolute error, beside the spread of the fp32 logits);
* free-running: the quantized engine decodes greedily on its own; the first step whose token differs.

The example's recall accuracy, context read once and read twice, is ``jrtc eval ENGINE --task recall``'s
(the settings' fresh prompts, the paper's templates and metric) for the fp32, int8 and int4 engines.
Results go to ``benchmarks/results/quantized_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the random HF-layout checkpoint of the tests

from jrt_fixtures import hf_config, random_state_dict, write_hf_checkpoint  # noqa: E402

from jrtc.checkpoint import load_checkpoint  # noqa: E402
from jrtc.example import CHECKPOINT, EXAMPLE_DIR  # noqa: E402
from jrtc.example.recall_task import load_settings  # noqa: E402
from jrtc.export.build import export_engine  # noqa: E402
from jrtc.export.quantize import DEFAULT_BLOCK_SIZE  # noqa: E402
from jrtc.runtime import Engine  # noqa: E402
from jrtc.runtime.eval import evaluate, item_from_row  # noqa: E402
from jrtc.runtime.eval_cli import BUILT_IN_TASK, load_items  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "quantized_quality.json"
HF_MIX = ["conv", "pla", "swa", "conv"]


def greedy_logits(
    engine: Engine, prompt: list[int], steps: int, forced: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens ``[steps]`` and logits ``[steps, vocab_size]`` of one sequence decoded after ``prompt``: the
    greedy pick at each step, or the ``forced`` tokens fed instead (teacher forcing). The prompt is
    left-padded to enc_length with masked pads, as the runtime does."""
    manifest = engine.manifest
    pool = engine.backend.new_pool(1)
    pad = max(manifest.enc_length - len(prompt), 0)
    ids = np.array([[manifest.pad_token_id] * pad + list(prompt)])
    logits = pool.run(slice(0, 1), ids, np.zeros(1, np.int64), np.array([pad]))
    position, tokens, rows = ids.shape[1], [], []
    for step in range(steps):
        row = pool.to_numpy(logits)[0, : manifest.vocab_size].copy()
        token = int(row.argmax()) if forced is None else int(forced[step])
        tokens.append(token)
        rows.append(row)
        logits = pool.run(slice(0, 1), np.array([[token]]), np.array([position]), np.zeros(1, np.int64))
        position += 1
    return np.array(tokens), np.stack(rows)


def compare(reference: tuple[np.ndarray, np.ndarray], engine: Engine, prompt: list[int]) -> dict[str, Any]:
    """``engine`` against the fp32 engine's greedy ``reference`` (tokens, logits) after ``prompt``."""
    tokens, logits = reference
    steps = len(tokens)
    _, forced = greedy_logits(engine, prompt, steps, forced=tokens)
    free, _ = greedy_logits(engine, prompt, steps)
    error = np.abs(forced - logits)
    differs = np.flatnonzero(free != tokens)
    return {
        "teacher_forced_agreement": float((forced.argmax(-1) == tokens).mean()),
        "max_logit_error": float(error.max()),
        "mean_logit_error": float(error.mean()),
        "fp32_logit_std": float(logits.std()),
        "free_running_first_difference": int(differs[0]) if differs.size else None,  # None: all agree
    }


def example_prompt() -> list[int]:
    """The example's prompt: the demo's first row, read twice (the paper's template), as bytes."""
    row = json.loads((EXAMPLE_DIR / "demo.jsonl").read_text().splitlines()[0])
    return list(item_from_row(row).prompt(2).text.encode())


def recall_accuracy(engine: Engine, examples: int) -> dict[str, float]:
    """``jrtc eval ENGINE --task recall --limit examples`` through ``engine``: accuracy read once and twice."""
    items, budget = load_items(BUILT_IN_TASK, examples)
    readings = {"read_once": 1, "read_twice": 2}
    return {name: evaluate(engine, items, repeat, budget).accuracy for name, repeat in readings.items()}


def _models(workdir: Path) -> dict[str, tuple[Path, list[int], int]]:
    """name -> (checkpoint, prompt ids, d_model)."""
    hf = hf_config(HF_MIX)
    random_checkpoint = write_hf_checkpoint(workdir / "hf-random", hf, random_state_dict(hf))
    random_prompt = np.random.default_rng(0).integers(0, hf["vocab_size"], 40).tolist()
    return {
        "example": (CHECKPOINT, example_prompt(), load_checkpoint(CHECKPOINT).config.d_model),
        "hf-random": (random_checkpoint, random_prompt, hf["n_embd"]),
    }


def run(steps: int, examples: int, block_sizes: list[int], log: Callable[[str], None]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    recall: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="jrtc-quality-") as tmp:
        for name, (checkpoint, prompt, d_model) in _models(Path(tmp)).items():
            max_batch = 64 if name == "example" else 1  # the recall check batches its prompts
            engines = {}
            for weights, block in [("float32", None)] + [
                (w, b) for w in ("int8", "int4") for b in block_sizes if d_model % b == 0
            ]:
                out = Path(tmp) / f"{name}-{weights}-{block}"
                log(f"{name}: exporting {weights}" + (f", blocks of {block}" if block else ""))
                export_engine(
                    checkpoint,
                    out,
                    tokenizer="bytes",
                    max_batch=max_batch,
                    quantize=None if block is None else weights,
                    block_size=block,
                )
                engines[weights, block] = Engine.load(out)
            reference = greedy_logits(engines["float32", None], prompt, steps)
            for (weights, block), engine in engines.items():
                if block is None:
                    continue
                row = {"model": name, "weights": weights, "block_size": block, "steps": steps}
                row |= compare(reference, engine, prompt)
                log(
                    f"{name} {weights}/{block}: agreement {row['teacher_forced_agreement']:.3f}, "
                    f"max logit error {row['max_logit_error']:.3f}"
                )
                results.append(row)
            if name == "example":
                for (weights, block), engine in engines.items():
                    if block in (None, DEFAULT_BLOCK_SIZE):
                        log(f"example: recall accuracy, {examples} examples: {weights} engine")
                        recall.append({"engine": weights, **recall_accuracy(engine, examples)})
                        log(f"example: {recall[-1]}")
    return {
        "benchmark": "quantized_quality",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": {"onnxruntime": onnxruntime.__version__},
        "default_block_size": DEFAULT_BLOCK_SIZE,
        "example_checkpoint": str(CHECKPOINT.relative_to(ROOT)),
        "results": results,
        "example_recall": {
            "examples": examples,
            "command": "jrtc eval ENGINE --task recall",
            "accuracy": recall,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--examples", type=int, default=load_settings()["eval"]["examples"])
    parser.add_argument("--block-sizes", default="16,32,64")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args()

    def log(message: str) -> None:
        if not args.quiet:
            print(f"quantized_quality: {message}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    report = run(args.steps, args.examples, [int(b) for b in args.block_sizes.split(",")], log)
    report["command"] = " ".join(["python benchmarks/quantized_quality.py", *sys.argv[1:]])
    report["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
