"""The plugins' TensorRT registration: one ``tensorrt.plugin`` (QDP) per compiled launch, AOT only.

Each :class:`~jrtc.plugins.aot.Plugin` record (an engine directory's ``jrtc.json`` lists them) becomes
``@trtp.register("jrtc::<name>")`` (the output descriptors, from the record's shape expressions over the
inputs' ``shape_expr``) and ``@trtp.aot_impl("jrtc::<name>")`` (the PTX, and ``KernelLaunchParams`` and int32
``SymInt32`` extra arguments from the grid and scalar expressions), so the engine runs without Python.
``tensorrt.plugin`` checks both functions by their parameter names and annotations; the functions here are
generic, and their signatures (:func:`register_parameters`, :func:`aot_impl_parameters`) are set from the
record. Everything but the few ``trtp`` calls in :func:`register` is plain data and arithmetic, tested
without TensorRT (``tests/test_tensorrt_target.py``): :func:`output_descriptors` and :func:`aot_launch` with
Python ints give what TensorRT computes symbolically.

Written to TensorRT 10.9+'s documented ``tensorrt.plugin`` API (the 11.1 sources were read); never run
against a real TensorRT (none can be installed on the project's machines).
"""

from __future__ import annotations

import inspect
import operator
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .aot import Plugin
from .spec import INT_OPS, Ops, evaluate

NAMESPACE = "jrtc"
PLUGIN_VERSION = "1"  # a QDP's version is always "1"
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv}


def plugin_id(plugin: Plugin) -> str:
    return f"{NAMESPACE}::{plugin.name}"


class TrtOps(Ops):
    """Expression arithmetic on ``tensorrt.plugin.ShapeExpr``, which has no reflected operators (``3 * e``
    fails) and whose ``cdiv``/``min``/``max`` refuse two ints."""

    def __init__(self, trtp: Any) -> None:
        self.trtp = trtp

    def binary(self, op: str, a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            return INT_OPS.binary(op, a, b)
        if isinstance(a, int):
            a, b = (b, a) if op in ("+", "*") else (self.trtp.ShapeExpr(a), b)
        return _BINARY[op](a, b)

    def call(self, name: str, a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            return INT_OPS.call(name, a, b)
        return getattr(self.trtp, name)(a, b)


# -- the registration as data ----------------------------------------------------------------------------


def register_parameters(plugin: Plugin) -> list[tuple[str, str]]:
    """The ``@trtp.register`` function's parameters: (name, "TensorDesc" | "int"), tensors first."""
    return [(name, "TensorDesc") for name, _, _ in plugin.inputs] + [(a, "int") for a in plugin.attributes]


def aot_impl_parameters(plugin: Plugin) -> list[str]:
    """The ``@trtp.aot_impl`` function's parameter names, as ``tensorrt.plugin`` requires them: inputs,
    every attribute in registration order (AOT binds them positionally), ``outputs``, ``tactic``."""
    return [name for name, _, _ in plugin.inputs] + list(plugin.attributes) + ["outputs", "tactic"]


def output_descriptors(
    plugin: Plugin, dims: Mapping[str, Sequence[Any]], attributes: Mapping[str, Any], ops: Ops = INT_OPS
) -> list[tuple[str, str, Any]]:
    """Per output: (name, dtype, shape) where shape is a list of dims, or the input name it aliases."""
    env = plugin.env(dims, attributes, ops)
    return [
        (
            name,
            dtype,
            plugin.aliases[name]
            if name in plugin.aliases
            else [evaluate(d, env, ops) for d in shape.split()],
        )
        for name, dtype, shape in plugin.outputs
    ]


def aot_launch(
    plugin: Plugin, dims: Mapping[str, Sequence[Any]], attributes: Mapping[str, Any], ops: Ops = INT_OPS
) -> tuple[str, dict[str, Any], list[Any]]:
    """What ``aot_impl`` returns besides the PTX: the kernel name, ``KernelLaunchParams``' fields and the
    int32 extra arguments (the scalars, in the kernel's order: after the inputs, before the outputs)."""
    env = plugin.env(dims, attributes, ops)
    grid = [evaluate(g, env, ops) for g in plugin.grid]
    params = {
        "grid_x": grid[0], "grid_y": grid[1], "grid_z": grid[2],
        "block_x": plugin.block, "block_y": 1, "block_z": 1, "shared_mem": plugin.shared,
    }  # fmt: skip
    return plugin.kernel_name, params, [evaluate(expr, env, ops) for _, expr in plugin.scalars]


# -- the registration ------------------------------------------------------------------------------------


def register(plugin: Plugin, directory: Path) -> None:
    """Register ``plugin`` (its PTX in ``directory``) with ``tensorrt.plugin``; call before parsing the ONNX
    graph (the parser finds plugins in the registry by name, version and ``plugin_namespace``)."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    ops = TrtOps(trtp)
    ptx = (directory / plugin.ptx).read_text()
    dtypes = {"bfloat16": trt.bfloat16, "float32": trt.float32, "int32": trt.int32}
    names = [name for name, _, _ in plugin.inputs]
    n_in = len(names)

    def dims_of(descs: Sequence[Any]) -> dict[str, Any]:
        return {name: list(desc.shape_expr) for name, desc in zip(names, descs, strict=True)}

    def describe(*args: Any) -> Any:
        inputs, attributes = args[:n_in], dict(zip(plugin.attributes, args[n_in:], strict=True))
        outputs = []
        for _, dtype, shape in output_descriptors(plugin, dims_of(inputs), attributes, ops):
            if isinstance(shape, str):
                outputs.append(inputs[names.index(shape)].aliased())
            else:
                outputs.append(trtp.from_shape_expr(tuple(shape), dtypes[dtype]))
        return tuple(outputs) if len(outputs) > 1 else outputs[0]

    def aot_impl(*args: Any) -> Any:
        inputs, attributes = args[:n_in], dict(zip(plugin.attributes, args[n_in:-2], strict=True))
        kernel_name, params, scalars = aot_launch(plugin, dims_of(inputs), attributes, ops)
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in scalars])
        return kernel_name, ptx, trtp.KernelLaunchParams(**params), extra

    kinds = {"TensorDesc": trtp.TensorDesc, "int": int}
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    out_type = (
        trtp.TensorDesc if len(plugin.outputs) == 1 else tuple[(trtp.TensorDesc,) * len(plugin.outputs)]
    )
    describe.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, keyword, annotation=kinds[k]) for n, k in register_parameters(plugin)],
        return_annotation=out_type,
    )
    annotations = {**{n: trtp.TensorDesc for n in names}, **dict.fromkeys(plugin.attributes, int)}
    annotations.update(outputs=tuple[trtp.TensorDesc], tactic=int)
    aot_impl.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, keyword, annotation=annotations[n]) for n in aot_impl_parameters(plugin)],
        return_annotation=tuple[
            typing.Union[str, bytes], typing.Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs  # noqa: UP007
        ],
    )
    trtp.register(plugin_id(plugin))(describe)
    trtp.aot_impl(plugin_id(plugin))(aot_impl)
