"""``--target h100`` / ``--target h200``: a TensorRT engine whose PLA, sliding-window and short-conv layers are
AOT plugins compiled from jrtc's Triton kernels (``jrtc.plugins``).

Two formats: ``plan`` (the default) writes everything and builds ``engine.plan`` here, which needs TensorRT
and the GPU; ``onnx`` (``--no-build``) writes what needs no TensorRT: the bf16 plugin step graph
(``model.onnx``), the PTX of every plugin (``plugins/*.ptx``) and the manifest, which ``jrtc build DIR``
finishes on a machine with TensorRT. The model is traced on the CPU in bf16; the PLA state stays fp32.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import torch

from jrtc.config import JRTConfig
from jrtc.errors import JrtcError
from jrtc.export import onnx_graph, plugin_graph
from jrtc.export.onnx_functions import OPSET
from jrtc.export.step_graph import io_names
from jrtc.export.targets import Built, Placement, Progress
from jrtc.model import JRTModel

PREFILL_GROWTH = "it grows with it"  # how prefill_bytes grows with the length, for messages
FORMATS = ("plan", "onnx")
GRAPH = "model.onnx"
PLAN = "engine.plan"
NO_TENSORRT = (
    "TensorRT is not installed: --target h100|h200 builds its engine with the tensorrt Python package "
    "(10.9 or newer; pip install 'jrtc[tensorrt]', whose libraries come from NVIDIA's package index) on a "
    "machine with the GPU; here, --no-build writes the plugin graph and PTX for `jrtc build` there, and "
    "--target cuda builds an engine that runs on this kind of GPU today"
)


def place(fmt: str, dtype: str | None) -> Placement:
    if dtype not in (None, "bfloat16"):
        raise JrtcError(f"the TensorRT targets export bfloat16 weights, not {dtype}; drop --dtype")
    if fmt == "plan" and importlib.util.find_spec("tensorrt") is None:
        raise JrtcError(NO_TENSORRT)
    return Placement(torch.bfloat16)


def memory() -> int | None:
    """Unknown here: the engine's activations are TensorRT's to size, and the build says when they do not fit."""
    return None


def prefill_bytes(cfg: JRTConfig, length: int) -> int:
    """Scratch memory of one prefill call of ``length`` tokens: linear in it (the plugins never form an
    L x L matrix), [L, 4 d] and [L, 2 n_inner] activations per layer."""
    return 4 * length * (8 * cfg.d_model + 4 * cfg.n_inner)


def profiles(max_batch: int, max_prompt_len: int) -> dict[str, dict[str, list[int]]]:
    """The engine's optimization profiles, in order: batch and length ranges (min, opt, max)."""
    return {
        "decode": {"batch": [1, max_batch, max_batch], "length": [1, 1, 1]},
        "prefill": {"batch": [1, 1, max_batch], "length": [2, max_prompt_len, max_prompt_len]},
    }


def build(
    model: JRTModel, staging: Path, fmt: str, max_batch: int, max_prompt_len: int, progress: Progress
) -> Built:
    from jrtc.plugins.aot import PTX_VERSION, compile_plugins

    progress(f"tracing the bf16 plugin step graph ({model.config.n_layer} layers)")
    graph, variants = plugin_graph.trace_plugin_graph(model)
    progress(f"writing {GRAPH}")
    written = [p.name for p in onnx_graph.save(graph, staging / GRAPH)]
    progress("checking the graph (onnx.checker, full)")
    onnx_graph.check(staging / GRAPH)
    progress(f"compiling {len(variants)} plugin kernels to PTX for sm_90a")
    plugins = compile_plugins(variants, staging)
    _, outputs = io_names(model)
    fields = {
        "format": fmt,
        "graph": GRAPH,
        "dtype": "bfloat16",
        "plugins": [vars(p) for p in plugins],
        "aliased_state": plugin_graph.aliased_state(graph),
        "profiles": profiles(max_batch, max_prompt_len),
        "built_with": {
            "onnx": onnx.__version__,
            "opset": OPSET,
            "triton": _triton_version(),
            "ptx_version": f"{PTX_VERSION // 10}.{PTX_VERSION % 10}",
        },
    }
    files = [*written, *(p.ptx for p in plugins)]
    if fmt == "onnx":
        return Built(GRAPH, files, "tensorrt", outputs, {**fields, "built": False})
    from jrtc.export import trt_engine

    progress("building the TensorRT engine")
    state = [{"name": n, "shape": list(shape)} for n, (shape, _) in model.state_spec().items() if n != "pos"]
    engine_fields = trt_engine.build_engine(staging, {**fields, "state": state}, progress)
    built_with = {**fields["built_with"], **engine_fields.pop("built_with")}
    return Built(
        PLAN, [*files, PLAN], "tensorrt", outputs, {**fields, **engine_fields, "built_with": built_with}
    )


def _triton_version() -> str:
    import triton

    return triton.__version__
