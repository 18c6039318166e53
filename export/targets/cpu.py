"""``--target cpu``: the fp32 step graph for CPUs, as ONNX for ONNX Runtime (``--format onnx``, the default)
or as an AOTInductor package (``--format aoti``: the same package kind as ``--target cuda``, which ``cpp/``
loads from C++)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch

from jrtc.config import JRTConfig
from jrtc.errors import JrtcError
from jrtc.export import aoti, onnx_graph
from jrtc.export.onnx_functions import OPSET
from jrtc.export.step_graph import io_names
from jrtc.export.targets import Built, Placement, Progress
from jrtc.model import JRTModel

PREFILL_GROWTH = "it grows with its square"  # how prefill_bytes grows with the length, for messages
FORMATS = ("onnx", "aoti")
ENGINE = "model.onnx"


def place(fmt: str, dtype: str | None) -> Placement:
    if dtype not in (None, "float32"):
        raise JrtcError(f"the cpu target exports float32 weights, not {dtype}; drop --dtype")
    return Placement(torch.float32)


def memory() -> int | None:
    """Bytes of memory of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def prefill_bytes(cfg: JRTConfig, length: int) -> int:
    """Scratch memory of one prefill call of ``length`` tokens, the part quadratic in it.

    PLA and SWA compute [heads, L, L (+ ring)] fp32 scores (the reference's math, in both formats); ONNX
    Runtime holds about five such tensors at the peak (measured on the built-in example: 1.3 GiB at
    L = 4096, 0.37 GiB at 2048). The activations ([L, 4 d] and [L, 2 n_inner] per layer) add a part
    linear in L.
    """
    heads = max(
        cfg.pla_heads if {"pla", "la"} & set(cfg.layer_types) else 0,
        cfg.n_head if "swa" in cfg.layer_types else 0,
    )
    ring = cfg.swa_ring if "swa" in cfg.layer_types else 0
    return 5 * 4 * heads * length * (length + ring) + 4 * length * (8 * cfg.d_model + 4 * cfg.n_inner)


def build(
    model: JRTModel, staging: Path, fmt: str, max_batch: int, max_prompt_len: int, progress: Progress
) -> Built:
    inputs, outputs = io_names(model)
    if fmt == "aoti":
        aoti.build_package(model, staging / aoti.PACKAGE, max_batch, max_prompt_len, progress)
        fields = aoti.manifest_fields(model, max_batch, max_prompt_len)
        return Built(aoti.PACKAGE, [aoti.PACKAGE], "aoti", ["logits"], fields)
    progress(f"tracing the step graph ({model.config.n_layer} layers)")
    graph = onnx_graph.trace_step_graph(model)
    progress(f"writing {ENGINE}")
    written = onnx_graph.save(graph, staging / ENGINE)
    progress("checking the graph (onnx.checker, full)")
    onnx_graph.check(staging / ENGINE)
    fields = {"built_with": {"onnx": onnx.__version__, "opset": OPSET}}
    return Built(ENGINE, [p.name for p in written], "onnxruntime", outputs, fields)
