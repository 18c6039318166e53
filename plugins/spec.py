"""One description per kernel launch (a :class:`Launch`), from which everything about it is derived.

A launch is one Triton kernel with fixed compile-time parameters: its tensor inputs and outputs (dtypes and
shape expressions), its int32 scalars, its grid, its plugin attributes, which outputs update an input in
place, and the constexprs it is compiled with. From this one description come

* the torch op's launch (:meth:`Launch.launch`: output allocation, scalars, grid, the kernel call);
* the ``jrtc``-domain ONNX node of the TensorRT step graph (``jrtc.export.plugin_graph``);
* the ahead-of-time artifact, PTX for sm_90a (``jrtc.plugins.aot``);
* the ``tensorrt.plugin`` registration and its ``aot_impl`` (``jrtc.plugins.tensorrt``).

One TensorRT plugin is one kernel, so an op that needs several launches is several :class:`Launch` es (and
several graph nodes). The kernel's parameters must be ordered inputs, scalars, outputs (TensorRT's AOT
calling convention: tensor inputs, extra int32 arguments, tensor outputs), then constexprs; pointers that a
launch never reads are listed in ``unused`` and passed as ``None``, which compiles them away.

Shapes, scalars and grids are small expressions (``"B*H"``, ``"cdiv(DV, BV)"``, ``"min(L, enc_length)"``)
over dimension names bound from the inputs' shapes, the plugin attributes and the constexprs. They are
evaluated by one interpreter (:func:`evaluate`) over any number type with ``+ - * //`` and the three
functions ``cdiv``, ``min``, ``max``: Python ints and torch SymInts for the torch op (so torch.export gets
expressions, not guards), and TensorRT's symbolic ``ShapeExpr`` s for the plugin (``jrtc.plugins.tensorrt``),
which is why nothing else is allowed in them.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ACTIVATION = "activation"  # the op's compute dtype: fp32, bf16 or fp16 in the torch op; bf16 in a plugin
DTYPES = (ACTIVATION, "float32", "int32")
PLUGIN_ACTIVATION = "bfloat16"
SM90_SMS = 132  # H100 SXM / H200: the SM count that occupancy heuristics assume in an engine


class Ops:
    """The arithmetic an expression may use, over one number type."""

    def binary(self, op: str, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def call(self, name: str, a: Any, b: Any) -> Any:
        raise NotImplementedError


_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv}


class IntOps(Ops):
    """Python ints and torch SymInts (``torch.sym_min``/``sym_max`` keep symbolic sizes symbolic)."""

    def binary(self, op: str, a: Any, b: Any) -> Any:
        return _BINARY[op](a, b)

    def call(self, name: str, a: Any, b: Any) -> Any:
        if name == "cdiv":
            return (a + b - 1) // b
        if isinstance(a, int) and isinstance(b, int):
            return min(a, b) if name == "min" else max(a, b)
        import torch

        return torch.sym_min(a, b) if name == "min" else torch.sym_max(a, b)


INT_OPS = IntOps()

_AST_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//"}
FUNCTIONS = ("cdiv", "min", "max")


@functools.cache
def _parse(expr: str) -> ast.expr:
    tree = ast.parse(expr, mode="eval").body

    def check(node: ast.expr) -> None:
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_BINARY:
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
            if len(node.args) != 2 or node.keywords:
                raise ValueError(f"{expr!r}: {node.func.id} takes two arguments")
            for arg in node.args:
                check(arg)
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            pass
        elif not isinstance(node, ast.Name):
            raise ValueError(f"{expr!r}: only names, ints, + - * // and cdiv/min/max are allowed")

    check(tree)
    return tree


def names_in(expr: str) -> set[str]:
    """The dimension names an expression reads."""
    tree = _parse(expr)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in FUNCTIONS}


def evaluate(expr: str | int, env: Mapping[str, Any], ops: Ops = INT_OPS) -> Any:
    """The value of ``expr`` with the names of ``env``, computed by ``ops``."""
    if isinstance(expr, int):
        return expr

    def value(node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise KeyError(f"{expr!r} reads {node.id!r}, which is not bound (have {sorted(env)})")
            return env[node.id]
        if isinstance(node, ast.BinOp):
            return ops.binary(_AST_BINARY[type(node.op)], value(node.left), value(node.right))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return ops.call(node.func.id, value(node.args[0]), value(node.args[1]))

    return value(_parse(expr))


@dataclass(frozen=True)
class Arg:
    """A tensor input or output: its kernel parameter name, dtype, and shape (one expression per dim,
    space-separated: ``"B L H 16"``). Input dims that are bare names bind those names."""

    name: str
    dtype: str
    shape: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype {self.dtype!r} is not one of {DTYPES}")
        for dim in self.dims:
            names_in(dim)

    @property
    def dims(self) -> list[str]:
        return self.shape.split()


@dataclass(frozen=True)
class Launch:
    """One kernel launch: everything the torch op, the ONNX node, the AOT artifact and the TensorRT plugin
    need to know about it (module docstring)."""

    name: str  # the plugin's and the graph node's name
    kernel: Any  # the @triton.jit function (an InterpretedFunction under TRITON_INTERPRET=1)
    inputs: tuple[Arg, ...]
    outputs: tuple[Arg, ...]
    grid: tuple[str, str, str]
    constexprs: Callable[[Mapping[str, Any]], dict[str, Any]]  # the engine's compile-time values, from dims
    scalars: tuple[tuple[str, str], ...] = ()  # (kernel parameter, expression), int32
    derived: tuple[tuple[str, str], ...] = ()  # (name, expression), in order; a caller may preset any
    attributes: tuple[str, ...] = ()  # int plugin attributes (ONNX node attributes), bound by name
    unused: tuple[str, ...] = ()  # pointer parameters this launch never reads: passed as None
    aliases: Mapping[str, str] = field(default_factory=dict)  # output -> input it may update in place
    num_warps: int = 4
    num_stages: int = 3  # Triton's default

    # -- names ----------------------------------------------------------------------------------------

    def parameters(self) -> list[str]:
        """The kernel's runtime parameters, in the calling convention's order: inputs, scalars, outputs."""
        return [a.name for a in self.inputs] + [s for s, _ in self.scalars] + [a.name for a in self.outputs]

    def kernel_arg_names(self) -> list[str]:
        return list(self.kernel.arg_names)

    # -- binding --------------------------------------------------------------------------------------

    def bind(
        self,
        shapes: Mapping[str, Sequence[Any]],
        attributes: Mapping[str, Any] | None = None,
        ops: Ops = INT_OPS,
        constexprs: Mapping[str, Any] | None = None,
        **preset: Any,
    ) -> dict[str, Any]:
        """The names every expression may read: input dims (``shapes``: input name -> its dims, each an int,
        a SymInt or a symbolic dim), attributes, constexprs (the engine's, overridden by ``constexprs``), then
        the derived names, of which ``preset`` may give any (e.g. ``SMS`` or a segment count)."""
        env: dict[str, Any] = {}
        for arg in self.inputs:
            dims = shapes.get(arg.name)
            if dims is None:
                continue
            if len(dims) != len(arg.dims):
                raise ValueError(f"{self.name}: {arg.name} has {len(dims)} dims, expected [{arg.shape}]")
            for expr, dim in zip(arg.dims, dims, strict=True):
                if expr.isidentifier() and expr not in env:
                    env[expr] = dim
        env.update(attributes or {})
        env.update({**self.constexprs(env), **(constexprs or {})})
        env.setdefault("SMS", SM90_SMS)
        env.update(preset)
        for name, expr in self.derived:
            if name not in env:
                env[name] = evaluate(expr, env, ops)
        return env

    def output_shapes(self, env: Mapping[str, Any], ops: Ops = INT_OPS) -> dict[str, list[Any]]:
        return {a.name: [evaluate(d, env, ops) for d in a.dims] for a in self.outputs}

    def scalar_values(self, env: Mapping[str, Any], ops: Ops = INT_OPS) -> list[Any]:
        return [evaluate(expr, env, ops) for _, expr in self.scalars]

    def grid_values(self, env: Mapping[str, Any], ops: Ops = INT_OPS) -> tuple[Any, Any, Any]:
        gx, gy, gz = (evaluate(g, env, ops) for g in self.grid)
        return gx, gy, gz

    # -- the torch op's launch ------------------------------------------------------------------------

    def allocate(self, env: Mapping[str, Any], device: Any, activation: Any) -> dict[str, Any]:
        """Empty output tensors of the shapes and dtypes this launch writes."""
        import torch

        dtypes = {ACTIVATION: activation, "float32": torch.float32, "int32": torch.int32}
        return {
            a.name: torch.empty(shape, device=device, dtype=dtypes[a.dtype])
            for a, shape in zip(self.outputs, self.output_shapes(env).values(), strict=True)
        }

    def launch(self, env: Mapping[str, Any], tensors: Mapping[str, Any], **options: Any) -> None:
        """Launch the kernel (through ``launcher``, so torch.export and AOTInductor see it) with the tensors
        by parameter name and the scalars, grid and constexprs of ``env`` (from :meth:`bind`)."""
        from ._triton import launcher

        args: dict[str, Any] = {name: tensors[name] for name in [a.name for a in self.inputs + self.outputs]}
        args.update(zip([s for s, _ in self.scalars], self.scalar_values(env), strict=True))
        args.update(dict.fromkeys(self.unused))
        args.update({name: env[name] for name in self.constexprs(env)})
        ordered = [args[name] for name in self.kernel_arg_names()]
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages, **options}
        launcher(self.kernel)[self.grid_values(env)](*ordered, **options)


__all__ = ["ACTIVATION", "Arg", "INT_OPS", "IntOps", "Launch", "Ops", "PLUGIN_ACTIVATION", "evaluate"]
