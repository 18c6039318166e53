"""Ahead-of-time compilation of plugin launches: Triton to PTX for sm_90a (H100/H200), with no GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` compiles one :class:`~jrtc.plugins.spec.Launch`
with the constexprs a graph needs; the result is a :class:`Plugin`: the PTX and everything TensorRT's
``aot_impl`` returns besides it (kernel name, block size, shared memory) or computes from it (grid and
scalars, from the launch's expressions). Three things make Triton's PTX loadable as a TensorRT AOT kernel:

* ISA version. Triton 3.9 writes ``.version 9.4`` (its bundled ptxas is 13.x), which CUDA 13.0's ptxas,
  and so the JIT of a 580-series driver, rejects. ``ptx_version`` is pinned to :data:`PTX_VERSION` = 8.4,
  the ISA of CUDA 12.4, which every driver since 12.4 (550 series) and 13.0 loads.
* Hidden parameters. Triton 3.3+ appends two pointers (global and profile scratch) after the declared
  parameters; TensorRT passes only inputs, scalars and outputs. They are removed from the PTX only when the
  compiled metadata asks for no scratch memory and the PTX body never names them (:func:`strip_scratch`),
  otherwise the compile fails.
* Block and shared memory. The PTX carries ``.reqntid 32*num_warps``: the launch block must be exactly that.
  Triton's shared memory is dynamic (``.extern .shared``) and sized by the compiled metadata; a launch
  beyond 48 KiB must opt in per kernel (``cudaFuncAttributeMaxDynamicSharedMemorySize``), and whether
  TensorRT's AOT launcher does so is not documented. So every plugin is compiled to fit in 48 KiB
  (:data:`MAX_SHARED`), and a compile that needs more fails: the engine's encoder uses 32-token chunks for
  that reason (``chunk.ENGINE_ENCODER_CHUNK``).

Compiling needs Triton's JIT kernels, which ``TRITON_INTERPRET=1`` (the CPU tests) replaces by interpreted
ones, so :func:`compile_plugins` runs the compiler in a fresh interpreter (``python -m jrtc.plugins.aot``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PTX_VERSION = 84  # PTX ISA 8.4 (CUDA 12.4); sm_90a needs 8.0 or newer
TARGET = ("cuda", 90, 32)  # GPUTarget: sm_90a (Triton adds the "a" for capability 90), 32 threads per warp
MAX_SHARED = 48 * 1024  # dynamic shared memory a launch gets without opting in
POINTER_ALIGN = 16  # what Triton's launcher assumes of pointers; TensorRT's buffers are 256-byte aligned
PLUGIN_DIR = "plugins"  # where an engine directory keeps the PTX files
_TRITON_TYPES = {"bfloat16": "*bf16", "float32": "*fp32", "int32": "*i32"}


@dataclass(frozen=True)
class Plugin:
    """One compiled launch, as the engine directory records it (``plugins.json``) and ``aot_impl`` uses it.

    ``inputs``/``outputs``: ``[name, dtype, shape]``; ``scalars``/``derived``: ``[name, expression]``;
    ``constants``: the int constexprs (and ``SMS``) that the expressions may read.
    """

    name: str
    kernel_name: str
    ptx: str  # the file, relative to the engine directory
    inputs: list[list[str]]
    outputs: list[list[str]]
    scalars: list[list[str]]
    derived: list[list[str]]
    grid: list[str]
    attributes: list[str]
    aliases: dict[str, str]
    constants: dict[str, int]
    constexprs: dict[str, Any]
    block: int  # threads per block (the PTX's .reqntid)
    shared: int  # dynamic shared memory bytes per block
    num_warps: int
    num_stages: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plugin:
        return cls(**data)

    def env(self, dims: Mapping[str, Sequence[Any]], attributes: Mapping[str, Any], ops: Any) -> dict:
        """The launch's names for input dims ``dims`` (input name -> dims) and attribute values, with
        ``ops`` the arithmetic (``spec.INT_OPS``, or TensorRT's shape expressions)."""
        from .spec import evaluate

        env: dict[str, Any] = {}
        for name, _, shape in self.inputs:
            for expr, dim in zip(shape.split(), dims[name], strict=True):
                if expr.isidentifier() and expr not in env:
                    env[expr] = dim
        env.update(attributes)
        env.update(self.constants)
        for name, expr in self.derived:
            env[name] = evaluate(expr, env, ops)
        return env


def signature(launch: Any, constexprs: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """``ASTSource``'s signature and constants for ``launch`` in bf16: pointers typed by the spec, int32
    scalars, unused pointers as constexpr None."""
    from .spec import ACTIVATION, PLUGIN_ACTIVATION

    types = {
        a.name: _TRITON_TYPES[PLUGIN_ACTIVATION if a.dtype == ACTIVATION else a.dtype] for a in launch.inputs
    }
    types.update(
        {
            a.name: _TRITON_TYPES[PLUGIN_ACTIVATION if a.dtype == ACTIVATION else a.dtype]
            for a in launch.outputs
        }
    )
    types.update({name: "i32" for name, _ in launch.scalars})
    constants = {**dict(constexprs), **dict.fromkeys(launch.unused)}
    sig = {}
    for name in launch.kernel_arg_names():
        if name in constants:
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
        else:
            raise ValueError(f"{launch.name}: kernel parameter {name!r} is neither an input, scalar, output, "
                             "unused pointer nor constexpr of the launch")  # fmt: skip
    return sig, constants


def entry_parameters(ptx: str) -> list[tuple[str, str]]:
    """The ``.entry``'s parameters as (type, name), e.g. ``(".u64", "k_param_0")``."""
    match = re.search(r"\.entry\s+[\w$]+\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise ValueError("no .entry in the PTX")
    found = re.findall(
        r"\.param\s+(\.\w+)(?:\s+\.ptr\s+\.global\s+\.align\s+\d+)?\s+([\w$]+)", match.group(1)
    )
    return [(kind, name) for kind, name in found]


def strip_scratch(ptx: str, declared: int) -> str:
    """Remove the two hidden scratch pointers that follow the ``declared`` parameters, which TensorRT does
    not pass. Refuses unless they are exactly two ``.u64`` parameters that the PTX never names elsewhere."""
    params = entry_parameters(ptx)
    hidden = params[declared:]
    if len(hidden) != 2 or any(kind != ".u64" for kind, _ in hidden):
        raise ValueError(f"expected 2 hidden .u64 scratch parameters after {declared}, found {hidden}")
    for _, name in hidden:
        if len(re.findall(rf"\b{re.escape(name)}\b", ptx)) != 1:
            raise ValueError(f"the kernel reads its scratch parameter {name}: it cannot run as a plugin")
    match = re.search(r"(\.entry\s+[\w$]+\s*\()(.*?)(\))", ptx, re.S)
    assert match is not None
    lines = [line for line in match.group(2).split("\n") if not any(n in line for _, n in hidden)]
    body = "\n".join(lines).rstrip().rstrip(",") + "\n"
    return ptx[: match.start(2)] + body + ptx[match.end(2) :]


def compile_sm90a(
    kernel: Any, sig: Mapping[str, str], constants: Mapping[str, Any], num_warps: int, num_stages: int
) -> Any:
    """Triton's compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata``) of the JIT function
    ``kernel`` for sm_90a, with ``ASTSource``'s signature and constants; pointers get the alignment hint
    Triton's launcher would give them, and the PTX the pinned ISA version."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pointers = [i for i, (n, t) in enumerate(sig.items()) if t.startswith("*") and n not in constants]
    attrs = {(i,): [["tt.divisibility", POINTER_ALIGN]] for i in pointers}
    options = {"num_warps": num_warps, "num_stages": num_stages, "ptx_version": PTX_VERSION}
    source = ASTSource(kernel, dict(sig), constexprs=dict(constants), attrs=attrs)
    return triton.compile(source, target=GPUTarget(*TARGET), options=options)


def compile_launch(launch: Any, constexprs: Mapping[str, Any], ptx_file: str) -> tuple[Plugin, str]:
    """Compile ``launch`` with ``constexprs`` for sm_90a: the record and the PTX text. Needs a JIT kernel."""
    sig, constants = signature(launch, constexprs)
    compiled = compile_sm90a(launch.kernel, sig, constants, launch.num_warps, launch.num_stages)
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise ValueError(f"{launch.name} needs scratch memory, which a TensorRT plugin launch cannot give it")
    if meta.shared > MAX_SHARED:
        raise ValueError(f"{launch.name} needs {meta.shared} bytes of shared memory, over {MAX_SHARED}")
    ptx = strip_scratch(compiled.asm["ptx"], len(launch.parameters()))
    plugin = Plugin(
        name=launch.name,
        kernel_name=meta.name,
        ptx=ptx_file,
        inputs=[[a.name, _plugin_dtype(a.dtype), a.shape] for a in launch.inputs],
        outputs=[[a.name, _plugin_dtype(a.dtype), a.shape] for a in launch.outputs],
        scalars=[list(s) for s in launch.scalars],
        derived=[list(d) for d in launch.derived],
        grid=list(launch.grid),
        attributes=list(launch.attributes),
        aliases=dict(launch.aliases),
        constants={"SMS": _sms(), **{k: v for k, v in constexprs.items() if type(v) is int}},
        constexprs=dict(constexprs),
        block=32 * meta.num_warps,
        shared=meta.shared,
        num_warps=meta.num_warps,
        num_stages=launch.num_stages,
    )
    return plugin, ptx


def _plugin_dtype(dtype: str) -> str:
    from .spec import ACTIVATION, PLUGIN_ACTIVATION

    return PLUGIN_ACTIVATION if dtype == ACTIVATION else dtype


def _sms() -> int:
    from .spec import SM90_SMS

    return SM90_SMS


def ptxas_path() -> Path:
    """The ptxas that Triton bundles (what CI compiles the PTX with, as a driver's JIT would)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def assemble(ptx: str) -> bytes:
    """A cubin for sm_90a from ``ptx``, with Triton's bundled ptxas; raises with its message on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        done = subprocess.run(
            [str(ptxas_path()), "-arch=sm_90a", str(src), "-o", str(out)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"ptxas rejected the PTX: {done.stderr.strip()}")
        return out.read_bytes()


# -- compiling in a fresh interpreter --------------------------------------------------------------------


def launches() -> dict[str, Any]:
    """Every launch that can be a plugin, by name."""
    from .conv import fused
    from .pla import chunk, fused_recurrent
    from .swa import parallel

    every = (
        chunk.PLA_SEGMENT_STATE,
        chunk.PLA_ENCODE_SCAN,
        chunk.PLA_CAUSAL,
        chunk.PLA_CAUSAL_SCAN,
        chunk.PLA_CAUSAL_SPLIT,
        fused_recurrent.PLA_DECODE,
        parallel.SLIDING_WINDOW_ATTENTION,
        fused.SHORT_CONV,
    )
    return {launch.name: launch for launch in every}


def compile_plugins(variants: Mapping[str, Mapping[str, Any]], directory: Path) -> list[Plugin]:
    """Compile each ``name -> constexprs`` into ``directory/plugins/<name>.ptx``; the records, in order.

    Runs in a child interpreter without ``TRITON_INTERPRET`` (module docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    request = json.dumps({"directory": str(directory), "variants": variants})
    done = subprocess.run(
        [sys.executable, "-m", "jrtc.plugins.aot"], input=request, capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(f"compiling the plugin kernels failed: {lines[-1] if lines else done.returncode}")
    return [Plugin.from_json(p) for p in json.loads(done.stdout)]


def _main() -> None:
    request = json.loads(sys.stdin.read())
    directory = Path(request["directory"])
    table = launches()
    records = []
    for name, constexprs in request["variants"].items():
        plugin, ptx = compile_launch(table[name], constexprs, f"{PLUGIN_DIR}/{name}.ptx")
        (directory / plugin.ptx).parent.mkdir(exist_ok=True)
        (directory / plugin.ptx).write_text(ptx)
        records.append(asdict(plugin))
    print(json.dumps(records))


if __name__ == "__main__":
    _main()
