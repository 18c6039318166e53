"""``jrtc export --target cpu --quantize int8|int4``: block-quantized weights in the ONNX step graph.

A decode step on a CPU reads every weight once, so its speed is set by the bytes of the weights. The
quantization is ONNX Runtime's own: ``MatMulNBitsQuantizer`` rounds each block of ``block_size`` weights
along the input dimension to 8 or 4 bits with one float scale and one zero point per block, and turns
each ``MatMul`` over a constant weight into a ``MatMulNBits`` node (domain ``com.microsoft``). That covers
every ``nn.Linear`` of the model: the mixers' projections, the MLP, and the head, which the exporter
writes as a ``Gemm`` (its input is 2-D) and which becomes a ``MatMul`` first. The head's weight is tied
to the token embedding; the embedding's ``Gather`` becomes a ``GatherBlockQuantized`` that reads the
head's quantized weights, so the table is stored once and the two stay tied, as in the float model.

Everything else stays float32: the PLA state and feature map, RMSNorm weights, the short convolutions'
kernels and the projections' biases, rotary tables, the sliding-window attention, the residual stream
and the logits. ``MatMulNBits`` runs at ``accuracy_level`` 4: ONNX Runtime quantizes each block of its
input to int8 on the fly and uses the CPU's integer dot products (VNNI/AMX), its fastest CPU kernels.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from jrtc.errors import JrtcError, check_int
from jrtc.export import QUANTIZE

BITS = {"int8": 8, "int4": 4}
DEFAULT_BLOCK_SIZE = 32  # benchmarks/results/cpu_quantized.json: quality and speed at 16..128
ACCURACY_LEVEL = 4  # MatMulNBits' "int8" level: inputs quantized per block, integer dot products
SYMMETRIC = False  # a zero point per block: the better fit for 4 bits, at no measurable speed cost
FLOAT_WEIGHTS = "RMSNorm weights, short-conv kernels, BaseConv projection biases"
FLOAT_REST = (
    "the state (PLA kv and z, sliding-window K/V ring, short-conv tail), the PLA feature map, attention, "
    "residual stream and logits"
)


@dataclass(frozen=True)
class Quantization:
    """What ``--quantize`` and ``--block-size`` asked for."""

    weights: str  # "int8" | "int4"
    block_size: int

    @property
    def bits(self) -> int:
        return BITS[self.weights]


def check_quantization(quantize: str | None, block_size: int | None) -> Quantization | None:
    """The options as a :class:`Quantization` (None: float weights), or a one-line error."""
    if quantize is None:
        if block_size is not None:
            raise JrtcError("--block-size applies to quantized weights: add --quantize int8 or int4")
        return None
    if quantize not in QUANTIZE:
        raise JrtcError(f"--quantize {quantize} is not supported; choose {' or '.join(QUANTIZE)}")
    if block_size is None:
        return Quantization(quantize, DEFAULT_BLOCK_SIZE)
    size = check_int("--block-size", block_size, minimum=16)
    if size & (size - 1):
        raise JrtcError(f"--block-size must be a power of two (16, 32, 64, ...), got {size}")
    return Quantization(quantize, size)


def check_fits(quantization: Quantization, d_model: int) -> None:
    """The embedding shares the head's blocks along d_model, so the blocks must tile it exactly."""
    if d_model % quantization.block_size:
        fits = [s for s in (16, 32, 64, 128, 256) if d_model % s == 0]
        raise JrtcError(
            f"--block-size {quantization.block_size} does not divide d_model {d_model}: "
            + (f"use {' or '.join(map(str, fits))}" if fits else "this model cannot be quantized")
        )


@contextlib.contextmanager
def _quantizer_logging() -> Iterator[Any]:
    """The quantizer module, imported without the ``logging.basicConfig(level=INFO)`` it runs on import,
    and with its per-node INFO lines muted."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:], root.level = handlers, level
    logger = logging.getLogger(matmul_nbits_quantizer.__name__)
    saved = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield matmul_nbits_quantizer
    finally:
        logger.setLevel(saved)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


_LAYER_INDEX = re.compile(r"\.layers\.\d+\.")


def _module_name(node: onnx.NodeProto) -> str:
    """The PyTorch module a traced node came from (``transformer.layers.*.mlp.fc1``), from the exporter's
    name scopes; layer numbers become ``*`` so that the report stays short."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
    names = re.findall(r"'([^']*)'", scopes)
    module = names[-2] if len(names) >= 2 else node.name  # the last scope is the aten op's
    return _LAYER_INDEX.sub(".layers.*.", module).removeprefix("model.")


# The rewrites below check what they assume of the traced graph; a failed check is a bug of jrtc (or an
# exporter or quantizer that changed), not the user's to fix: RuntimeError, not JrtcError.
def _head_as_matmul(model: onnx.ModelProto) -> tuple[str, str]:
    """Rewrite the head's ``Gemm(x, W, transB=1)`` as ``MatMul(x, W^T)``, which the quantizer handles;
    returns the tied weight's name and the head's output."""
    inits = _initializers(model)
    gemms = [n for n in model.graph.node if n.op_type == "Gemm" and n.input[1] in inits]
    if len(gemms) != 1 or len(gemms[0].input) != 2:
        raise RuntimeError(f"the step graph has {len(gemms)} weight Gemm nodes, expected the head alone")
    gemm = gemms[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    if attrs != {"transB": 1} and attrs != {"transA": 0, "transB": 1, "alpha": 1.0, "beta": 1.0}:
        raise RuntimeError(f"the head's Gemm has attributes {attrs}, expected transB=1 alone")
    tied = gemm.input[1]
    weight = numpy_helper.to_array(inits[tied])
    transposed = numpy_helper.from_array(np.ascontiguousarray(weight.T), f"{tied}.T")
    model.graph.initializer.append(transposed)
    matmul = helper.make_node("MatMul", [gemm.input[0], transposed.name], list(gemm.output), name=gemm.name)
    matmul.metadata_props.extend(gemm.metadata_props)
    nodes = list(model.graph.node)
    nodes[nodes.index(gemm)] = matmul
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return tied, gemm.output[0]


def _embedding_from_head(
    model: onnx.ModelProto, tied: str, head_output: str, quantization: Quantization
) -> None:
    """Point the embedding's ``Gather`` of ``tied`` at the head's quantized blocks.

    ``MatMulNBits`` stores its weight as ``[N, K / block, block * bits / 8]`` bytes (here: one row of N per
    token, blocks along d_model) with scales ``[N, K / block]``, which is ``GatherBlockQuantized``'s layout
    for ``[vocab, d_model]`` data quantized along axis 1, once the bytes are viewed as 2-D (a ``Reshape``; the
    uint8 form with zero points and 8 bits came with https://github.com/microsoft/onnxruntime/pull/25214).
    The file holds the blocks once; ONNX Runtime folds the ``Reshape`` when it loads the graph, so memory holds
    a second copy of the quantized table (not of a float one), which decode reads only B rows of.
    """
    head = next(n for n in model.graph.node if head_output in n.output)
    if head.op_type != "MatMulNBits":
        raise RuntimeError(f"the quantizer left the head as {head.op_type}, not MatMulNBits")
    packed, scales, *zero_points = head.input[1:4]
    vocab = next(helper.get_attribute_value(a) for a in head.attribute if a.name == "N")
    rows = f"{packed}.rows"
    shape = numpy_helper.from_array(np.array([vocab, -1], np.int64), f"{rows}.shape")
    model.graph.initializer.append(shape)
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] == tied:
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
            if axis != 0:
                raise RuntimeError(f"the embedding gathers along axis {axis}, expected 0")
            nodes.append(helper.make_node("Reshape", [packed, shape.name], [rows], name=f"{node.name}_rows"))
            node = helper.make_node(
                "GatherBlockQuantized",
                [rows, node.input[1], scales, *zero_points],
                list(node.output),
                name=f"{node.name}_Q{quantization.bits}",
                domain="com.microsoft",
                bits=quantization.bits,
                block_size=quantization.block_size,
                gather_axis=0,
                quantize_axis=1,
            )
        nodes.append(node)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    if any(tied in n.input for n in model.graph.node):
        raise RuntimeError(f"the tied weight {tied} is still read in float after quantization")
    kept = [t for t in model.graph.initializer if t.name != tied]
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(kept)


def _nbytes(tensor: onnx.TensorProto) -> int:
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def quantize_step_graph(graph: ir.Model, quantization: Quantization) -> tuple[ir.Model, dict[str, Any]]:
    """The step graph with block-quantized weights, and the manifest's ``quantization`` record."""
    import onnxruntime

    model = ir.serde.serialize_model(graph)
    inits = _initializers(model)
    linears = {
        n.input[1]: _module_name(n)
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits
    }
    tied, head_output = _head_as_matmul(model)
    linears[f"{tied}.T"] = linears.pop(tied)
    with _quantizer_logging() as tool:
        quantizer = tool.MatMulNBitsQuantizer(
            model,
            bits=quantization.bits,
            block_size=quantization.block_size,
            is_symmetric=SYMMETRIC,
            accuracy_level=ACCURACY_LEVEL,
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
    model = quantizer.model.model
    _embedding_from_head(model, tied, head_output, quantization)
    quantized = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    weights = {n.input[1] for n in quantized}
    names = _initializers(model)
    missed = sorted({linears[w] for w in linears if f"{w}_Q{quantization.bits}" not in weights})
    if missed:
        raise RuntimeError(f"the quantizer left {', '.join(missed)} in float")
    modules: dict[str, int] = {}
    for name in linears.values():
        modules[name] = modules.get(name, 0) + 1
    blocks = {i for n in quantized for i in n.input[1:4]}  # quantized weights, their scales and zero points
    quantized_bytes = sum(_nbytes(names[i]) for i in blocks)
    float_bytes = sum(
        _nbytes(t)
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and t.name not in blocks
    )
    record = {
        "weights": quantization.weights,
        "block_size": quantization.block_size,
        "symmetric": SYMMETRIC,
        "accuracy_level": ACCURACY_LEVEL,
        "tool": f"onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer {onnxruntime.__version__}",
        "quantized": {
            "modules": dict(sorted(modules.items())),
            "embedding": "transformer.embeddings.word_embeddings reads lm_head's quantized blocks (tied)",
            "nodes": {"MatMulNBits": len(quantized), "GatherBlockQuantized": 1},
            "bytes": quantized_bytes,
        },
        "float32": {"weights": FLOAT_WEIGHTS, "bytes": float_bytes, "also": FLOAT_REST},
    }
    return ir.serde.deserialize_model(model), record
