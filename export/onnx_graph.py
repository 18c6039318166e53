"""Trace a JRT-RNN model into the ONNX step graph of docs/interfaces.md.

``step(input_ids [B, L], start_pos [B], num_pad [B], state...) -> (logits [B, V], next state...)`` is
``model.forward_step(input_ids, state, key_mask, last_only=True)`` traced by the dynamo exporter, with the
mixer cores swapped for ``torch.onnx.ops.symbolic`` nodes in domain ``jrtc`` while tracing. The exporter
inlines every local function it knows about when it sets the opset, so the nodes go in bare and their
standard-op bodies (``onnx_functions``) are attached afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch

from jrtc.errors import JrtcError
from jrtc.export import muted, onnx_functions
from jrtc.export.onnx_functions import DOMAIN, OPSET
from jrtc.export.step_graph import StepGraph, io_names
from jrtc.layers import BaseConv, PrefixLinearAttention, SlidingWindowAttention
from jrtc.model import JRTModel
from jrtc.plugins.pla.naive import EXPANDED_DIM

# What the TensorRT ONNX parser needs to pick a plugin over the local function (reference/tensorrt.md §3.2).
PLUGIN_ATTRS = {"plugin_namespace": DOMAIN, "plugin_version": "1", "aot": 1}
EXTERNAL_DATA_BYTES = 2**31 - 2**24  # protobuf's 2 GiB limit, less room for the graph itself


def _node(
    op_type: str,
    inputs: list[torch.Tensor | None],
    outputs: list[tuple[torch.dtype, tuple[int | torch.SymInt, ...]]],
    **attrs: float | int,
) -> tuple[torch.Tensor, ...]:
    """One ``jrtc`` node with the plugin attributes; ``outputs`` gives each output's dtype and shape."""
    node_outputs = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{op_type}",
        inputs,
        {**attrs, **PLUGIN_ATTRS},
        dtypes=[dtype for dtype, _ in outputs],
        shapes=[shape for _, shape in outputs],
        version=1,
    )
    return tuple(node_outputs)


class GraphOps:
    """The mixer cores as ``jrtc`` nodes, with the signatures of ``naive`` and the ``jrtc.layers`` cores.

    Only meaningful under ``torch.onnx.export``: eagerly the nodes return placeholders.
    """

    @staticmethod
    def pla_encode(
        k_enc: torch.Tensor, v_enc: torch.Tensor, key_mask: torch.Tensor | None, enc_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, heads, _ = k_enc.shape
        return _node(
            "pla_encode",
            [k_enc, v_enc, key_mask],
            [
                (torch.float32, (batch, heads, EXPANDED_DIM, v_enc.shape[3])),
                (torch.float32, (batch, heads, EXPANDED_DIM)),
            ],
            enc_length=enc_length,
        )

    @staticmethod
    def pla_causal(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv0: torch.Tensor,
        z0: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _node(
            "pla_causal",
            [q, k, v, kv0, z0, key_mask],
            [(v.dtype, tuple(v.shape)), (torch.float32, tuple(kv0.shape)), (torch.float32, tuple(z0.shape))],
        )

    @staticmethod
    def sliding_window_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_ring: torch.Tensor,
        v_ring: torch.Tensor,
        pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _node(
            "sliding_window_attention",
            [q, k, v, k_ring, v_ring, pos],
            [
                (q.dtype, tuple(q.shape)),
                (k_ring.dtype, tuple(k_ring.shape)),
                (v_ring.dtype, tuple(v_ring.shape)),
            ],
            scale=q.shape[-1] ** -0.5,
        )

    @staticmethod
    def short_conv(
        u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _node(
            "short_conv", [u, state, weight], [(u.dtype, tuple(u.shape)), (state.dtype, tuple(state.shape))]
        )


@contextlib.contextmanager
def graph_cores(model: JRTModel, ops: Any = GraphOps) -> Iterator[None]:
    """Route every mixer's core through ``ops`` (:class:`GraphOps`, or another class or object with the same
    methods) for the duration of the trace."""
    hooks = {
        PrefixLinearAttention: "ops",
        SlidingWindowAttention: "sliding_window_attention",
        BaseConv: "short_conv",
    }
    saved = []
    for block in model.transformer.layers:
        name = hooks[type(block.mixer)]
        saved.append((block.mixer, name, getattr(block.mixer, name)))
        setattr(block.mixer, name, ops if name == "ops" else getattr(ops, name))
    try:
        yield
    finally:
        for mixer, name, core in saved:
            setattr(mixer, name, core)


def trace_step_graph(model: JRTModel) -> ir.Model:
    """The step graph with its ``jrtc`` functions attached, as an in-memory ONNX IR model."""
    if model.lm_head.weight.dtype != torch.float32:
        raise JrtcError("the cpu target exports fp32 models; load the checkpoint with dtype=torch.float32")
    onnx_model = export_step(model, GraphOps)
    for function in onnx_functions.FUNCTIONS:
        ir_function = ir.serde.deserialize_function(function.to_function_proto())
        onnx_model.functions[ir_function.identifier()] = ir_function
    return onnx_model


def export_step(model: JRTModel, ops: Any) -> ir.Model:
    """``torch.onnx.export`` of the step function, with the mixer cores routed through ``ops``."""
    graph = StepGraph(model).eval()
    # Example sizes that no weight shape shares, so the exporter cannot mistake B or L for a constant.
    batch, length = 2, 3
    state = [t for name, t in model.init_state(batch).items() if name != "pos"]
    args = (
        torch.zeros(batch, length, dtype=torch.int64),
        torch.zeros(batch, dtype=torch.int64),
        torch.zeros(batch, dtype=torch.int64),
        state,
    )
    b, seq = torch.export.Dim("batch"), torch.export.Dim("length")
    dynamic_shapes = {
        "input_ids": {0: b, 1: seq},
        "start_pos": {0: b},
        "num_pad": {0: b},
        "state": [{0: b} for _ in state],
    }
    input_names, output_names = io_names(model)
    with graph_cores(model, ops), torch.no_grad(), muted("torch.onnx"):
        program = torch.onnx.export(
            graph,
            args,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=OPSET,
            verbose=False,
        )
    onnx_model = program.model
    onnx_model.opset_imports[DOMAIN] = 1
    return onnx_model


def save(onnx_model: ir.Model, path: Path, external_data_over: int = EXTERNAL_DATA_BYTES) -> list[Path]:
    """Write ``path``, with the weights in ``path.data`` when they pass ``external_data_over`` bytes.

    Returns the files written.
    """
    weight_bytes = sum(v.const_value.nbytes for v in onnx_model.graph.initializers.values() if v.const_value)
    if weight_bytes <= external_data_over:
        ir.save(onnx_model, path)
        return [path]
    data = path.with_name(path.name + ".data")
    ir.save(onnx_model, path, external_data=data.name)
    return [path, data]


def check(path: Path) -> None:
    """``onnx.checker`` with full shape inference; by path so that external data is fine too."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise JrtcError(f"the exported graph is invalid: {str(e).splitlines()[0]}") from None
