"""``--target cpu``: the fp32 step graph for CPUs, as ONNX for ONNX Runtime (``--format onnx``, the default)
or as an AOTInductor package (``--format aoti``: the same package kind as ``--target cuda``, which ``cpp/``
loads from C++)."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from jrtc.errors import JrtcError
from jrtc.export import aoti, onnx_graph
from jrtc.export.onnx_functions import OPSET
from jrtc.export.step_graph import io_names
from jrtc.export.targets import Built, Placement, Progress
from jrtc.model import JRTModel

FORMATS = ("onnx", "aoti")
ENGINE = "model.onnx"


def place(fmt: str, dtype: str | None) -> Placement:
    if dtype not in (None, "float32"):
        raise JrtcError(f"the cpu target exports float32 weights, not {dtype}; drop --dtype")
    return Placement(torch.float32)


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
