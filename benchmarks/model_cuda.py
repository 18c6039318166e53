"""The whole model with ``use_kernels=True`` on a GPU, against the same model on the PyTorch path.

A 360M-shaped JRT-RNN with random weights in bf16: prefill logits and greedy decode tokens must agree, and the
prefill time of the whole model is reported with and without the kernels (median of CUDA-event timings).

Usage: python benchmarks/model_cuda.py [--quiet] [--out DIR] [--batch 4] [--length 4096] [--steps 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import DEVICE, Log, cuda_time_ms, environment, repo_on_path, write_json  # noqa: E402

repo_on_path()
import jrtc  # noqa: E402
from jrtc.config import JRTConfig  # noqa: E402
from jrtc.model import JRTModel  # noqa: E402

PLA, SWA = (1, 6, 11, 16, 21), (2, 7, 12, 17, 22)


def jrt_360m(pad_token_id: int = 220) -> JRTConfig:
    """JRT-360M's shapes (GPT-2 vocabulary); ``pad_token_id=32`` lets engines ship the byte-level tokenizer."""
    types = tuple("pla" if i in PLA else "swa" if i in SWA else "conv" for i in range(26))
    return JRTConfig(
        vocab_size=50257,
        d_model=1024,
        n_layer=26,
        n_head=16,
        n_inner=2048,
        layer_types=types,
        pad_token_id=pad_token_id,
    )


def random_jrt_360m(pad_token_id: int = 220) -> JRTModel:
    """Random weights large enough that every layer matters."""
    torch.manual_seed(0)
    model = JRTModel(jrt_360m(pad_token_id))
    for name, p in model.named_parameters():
        torch.nn.init.normal_(p, std=0.02 if "embeddings" in name else p.shape[-1] ** -0.5)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    log = Log(args.quiet)
    model = random_jrt_360m()
    with tempfile.TemporaryDirectory() as tmp:
        jrtc.save_checkpoint(model, Path(tmp) / "m.pt")
        # bf16 as deployed; fp32 for the CPU smoke run (the Triton interpreter's bf16 dots are wrong)
        load = {"dtype": torch.bfloat16 if DEVICE == "cuda" else torch.float32, "device": DEVICE}
        reference = jrtc.load_checkpoint(Path(tmp) / "m.pt", **load)
        kernels = jrtc.load_checkpoint(Path(tmp) / "m.pt", use_kernels=True, **load)
    ids = torch.randint(0, 50257, (args.batch, args.length), device=DEVICE)
    log(f"prefill B={args.batch} L={args.length}, then {args.steps} greedy steps")
    states = [m.init_state(args.batch) for m in (reference, kernels)]
    with torch.no_grad():
        logits = [m.prefill(ids, s)[:, -1] for m, s in zip((reference, kernels), states, strict=True)]
        prefill_err = ((logits[1] - logits[0]).abs().max() / logits[0].abs().max()).item()
        tokens = logits[0].argmax(-1)
        agree, step_err = 0, 0.0
        for _ in range(args.steps):
            step_logits = [m.step(tokens, s) for m, s in zip((reference, kernels), states, strict=True)]
            step_err = max(
                step_err, ((step_logits[1] - step_logits[0]).abs().max() / step_logits[0].abs().max()).item()
            )
            agree += int((step_logits[1].argmax(-1) == step_logits[0].argmax(-1)).sum())
            tokens = step_logits[0].argmax(-1)  # both continue from the reference's choice
        timings = {}
        for name, m in (("pytorch", reference), ("kernels", kernels)):
            timings[name] = cuda_time_ms(lambda m=m: m(ids), warmup=2, reps=5)
            log(f"  whole-model prefill, {name}: {timings[name]:.1f} ms")
    result = {
        "env": environment(),
        "shape": {
            "model": "JRT-360M-shaped, random weights, bf16",
            "batch": args.batch,
            "length": args.length,
        },
        "prefill_last_logits_rel_err": prefill_err,
        "decode_steps": args.steps,
        "decode_logits_rel_err_max": step_err,
        "decode_greedy_agreement": agree / (args.steps * args.batch),
        "prefill_ms": timings,
        "prefill_speedup": timings["pytorch"] / timings["kernels"],
    }
    log(
        f"  rel err prefill {prefill_err:.2e}, decode {step_err:.2e}, greedy agreement {result['decode_greedy_agreement']:.3f}"
    )
    path = write_json("model_cuda", result, args.out)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
