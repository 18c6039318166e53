"""``jrtc export --target h100 --no-build`` and everything around the TensorRT calls that can be checked without
TensorRT: the bf16 plugin graph (ONNX checker, TensorRT's parser operator list, plugin nodes against their
specs), the PTX of every plugin (parameters, ISA, block, shared memory, ptxas for sm_90a), the registration as
data, the one-line errors, and the tensorrt backend's state-pool bookkeeping (with the PyTorch model standing
in for the engine's execution). No TensorRT is imported, faked or run here (README, "TensorRT").
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import onnx
import pytest
import torch
from test_export import assert_one_line_error, jrtc_cli, make_model
from trt_parser_ops import NEWER_THAN_10_1, OPSET_RANGE, SUPPORTED

from jrtc.checkpoint import save_checkpoint
from jrtc.errors import JrtcError
from jrtc.export import build, plugin_graph
from jrtc.export.onnx_graph import PLUGIN_ATTRS
from jrtc.plugins import aot, spec
from jrtc.plugins import tensorrt as trt_plugins
from jrtc.plugins.aot import Plugin
from jrtc.plugins.swa import naive as swa_naive
from jrtc.runtime.backends import tensorrt as trt_backend
from jrtc.runtime.engine import MANIFEST, Engine, Manifest

LAYERS = ("conv", "pla", "swa", "pla")
ONNX_TYPES = {onnx.TensorProto.BFLOAT16: "BF16", onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16",
              onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL",
              onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.DOUBLE: "DOUBLE"}  # fmt: skip
SPEC_TYPES = {
    "bfloat16": onnx.TensorProto.BFLOAT16,
    "float32": onnx.TensorProto.FLOAT,
    "int32": onnx.TensorProto.INT32,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """One --no-build export of a model with every layer kind (traced, checked, its PTX compiled)."""
    root = tmp_path_factory.mktemp("h100")
    model = make_model(LAYERS)
    save_checkpoint(model, root / "m.pt")
    done = build.export_engine(root / "m.pt", root / "engine", target="h100", tokenizer="bytes", fmt="onnx")
    return model, done.directory


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def plugins_of(directory: Path) -> list[Plugin]:
    return [Plugin.from_json(p) for p in manifest_of(directory)["plugins"]]


def graph_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor of the graph."""
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def test_directory_and_manifest(exported) -> None:
    _, directory = exported
    m = manifest_of(directory)
    assert (m["target"], m["backend"], m["engine"], m["format"], m["built"]) == (
        "h100", "tensorrt", "model.onnx", "onnx", False
    )  # fmt: skip
    assert [p["name"] for p in m["plugins"]] == sorted(
        [launch.name for launch in plugin_graph.ENGINE_PLUGINS], key=[p["name"] for p in m["plugins"]].index
    )
    assert {p.name for p in plugins_of(directory)} == {launch.name for launch in plugin_graph.ENGINE_PLUGINS}
    for plugin in plugins_of(directory):
        assert plugin.ptx in m["checksums"] and (directory / plugin.ptx).is_file()
    assert m["aliased_state"] == ["layers.0.conv"]  # the conv state goes straight from state.* to next.*
    assert list(m["profiles"]) == list(trt_backend.PROFILES)
    assert m["built_with"]["ptx_version"] == "8.4"


def test_graph_passes_the_checker_in_bf16(exported) -> None:
    model, directory = exported
    onnx.checker.check_model(str(directory / "model.onnx"), full_check=True)
    graph = onnx.load(str(directory / "model.onnx"))
    assert not graph.functions  # plugin nodes only: nothing for the parser to inline instead
    floats = {
        t for t in graph_types(graph).values() if t in (onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    }
    assert not floats
    weights = {t.data_type for t in graph.graph.initializer if t.data_type != onnx.TensorProto.INT64}
    assert onnx.TensorProto.BFLOAT16 in weights and onnx.TensorProto.FLOAT16 not in weights
    io = {v.name: v.type.tensor_type.elem_type for v in [*graph.graph.input, *graph.graph.output]}
    assert io["logits"] == onnx.TensorProto.FLOAT
    for name, (_, dtype) in model.to(torch.bfloat16).state_spec().items():
        if name != "pos":
            want = onnx.TensorProto.FLOAT if dtype == torch.float32 else onnx.TensorProto.BFLOAT16
            assert io[f"state.{name}"] == io[f"next.{name}"] == want, name


def test_every_other_op_is_one_the_parser_supports(exported) -> None:
    _, directory = exported
    graph = onnx.load(str(directory / "model.onnx"))
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    assert OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]
    types = graph_types(graph)
    for node in graph.graph.node:
        if node.domain == "jrtc":
            continue
        assert node.domain in ("", "ai.onnx") and node.op_type in SUPPORTED, node.op_type
        for name in node.input:
            if name:  # every input's type is known and supported
                kind = ONNX_TYPES[types[name]]
                assert kind in SUPPORTED[node.op_type], f"{node.op_type} on {kind} ({name})"
                assert (node.op_type, kind) not in NEWER_THAN_10_1, (
                    f"{node.op_type} on {kind}: TensorRT 10.15+"
                )


def test_plugin_nodes_match_their_specs(exported) -> None:
    _, directory = exported
    graph = onnx.load(str(directory / "model.onnx"))
    types = graph_types(graph)
    launches = {launch.name: launch for launch in plugin_graph.ENGINE_PLUGINS}
    seen = set()
    for node in (n for n in graph.graph.node if n.domain == "jrtc"):
        launch = launches[node.op_type]
        seen.add(node.op_type)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plugin_attrs = {k: v.encode() if isinstance(v, str) else v for k, v in PLUGIN_ATTRS.items()}
        assert set(attrs) == set(launch.attributes) | set(PLUGIN_ATTRS)
        assert {k: attrs[k] for k in PLUGIN_ATTRS} == plugin_attrs
        assert all(isinstance(attrs[a], int) for a in launch.attributes)
        assert len(node.input) == len(launch.inputs) and len(node.output) == len(launch.outputs)
        for name, arg in [
            *zip(node.input, launch.inputs, strict=True),
            *zip(node.output, launch.outputs, strict=True),
        ]:
            assert types[name] == SPEC_TYPES[aot._plugin_dtype(arg.dtype)], f"{node.op_type}.{arg.name}"
    assert seen == set(launches)


def test_ring_update_without_integer_clip_is_naives() -> None:
    gen = torch.Generator().manual_seed(0)
    ring, new = torch.randn(3, 2, 8, 4, generator=gen), torch.randn(3, 2, 5, 4, generator=gen)
    pos = torch.tensor([0, 6, 21])
    assert torch.equal(plugin_graph.next_ring(ring, new, pos), swa_naive.next_ring(ring, new, pos))


# -- the PTX ---------------------------------------------------------------------------------------------


def test_ptx_is_what_tensorrt_launches(exported) -> None:
    """Per plugin: ISA 8.4 for sm_90a, parameters exactly inputs (pointers), int32 scalars, outputs (pointers)
    with the hidden scratch pointers gone, block = .reqntid, shared memory within 48 KiB, and ptxas for sm_90a
    accepts it, giving a cubin with that many parameters."""
    _, directory = exported
    cuobjdump = aot.ptxas_path().with_name("cuobjdump")
    for plugin in plugins_of(directory):
        ptx = (directory / plugin.ptx).read_text()
        assert re.search(r"^\.version 8\.4$", ptx, re.M) and re.search(r"^\.target sm_90a$", ptx, re.M)
        assert re.search(rf"\.entry {re.escape(plugin.kernel_name)}\(", ptx)
        kinds = [kind for kind, _ in aot.entry_parameters(ptx)]
        want = [".u64"] * len(plugin.inputs) + [".u32"] * len(plugin.scalars) + [".u64"] * len(plugin.outputs)
        assert kinds == want, plugin.name
        assert re.search(rf"\.reqntid {plugin.block}\b", ptx) and plugin.block == 32 * plugin.num_warps
        assert 0 <= plugin.shared <= aot.MAX_SHARED
        cubin = aot.assemble(ptx)
        path = directory / f"{plugin.name}.cubin"
        path.write_bytes(cubin)
        elf = subprocess.run(
            [str(cuobjdump), "-elf", str(path)], capture_output=True, text=True, check=True
        ).stdout
        path.unlink()
        assert len(re.findall(r"EIATTR_KPARAM_INFO", elf)) == len(want), plugin.name


def test_scratch_pointers_are_stripped_only_when_unread() -> None:
    entry = ".visible .entry k(\n\t.param .u64 .ptr .global .align 1 k_param_0,\n\t.param .u64 .ptr .global .align 1 k_param_1,\n\t.param .u64 .ptr .global .align 1 k_param_2\n)\n"  # fmt: skip
    unread = entry + "{\n\tld.param.u64 %rd1, [k_param_0];\n\tret;\n}\n"
    stripped = aot.strip_scratch(unread, declared=1)
    assert [name for _, name in aot.entry_parameters(stripped)] == ["k_param_0"]
    assert "ld.param.u64 %rd1, [k_param_0]" in stripped
    read = entry + "{\n\tld.param.u64 %rd1, [k_param_2];\n\tret;\n}\n"
    with pytest.raises(ValueError, match="reads its scratch parameter k_param_2"):
        aot.strip_scratch(read, declared=1)
    with pytest.raises(ValueError, match="expected 2 hidden"):
        aot.strip_scratch(unread, declared=2)


def test_kernel_parameters_follow_the_calling_convention() -> None:
    """Every launch's kernel takes inputs, scalars, outputs, then only unused pointers and constexprs."""
    for launch in aot.launches().values():
        names = [n for n in launch.kernel_arg_names() if n not in launch.unused]
        runtime = [
            n for n in names if n not in launch.constexprs({"DV": 64, "H": 4, "W": 8, "HD": 64, "CH": 64})
        ]
        assert runtime == launch.parameters(), launch.name


# -- the registration as data ----------------------------------------------------------------------------


class Dim:
    """A dimension as ``tensorrt.plugin.ShapeExpr`` behaves (+ - * // with ints on the right only, no
    truth value), carrying its value so that results can be compared with the torch launch's."""

    def __init__(self, value: int) -> None:
        self.value = value

    def _op(self, other: Dim | int, fn) -> Dim:
        return Dim(fn(self.value, other.value if isinstance(other, Dim) else other))

    def __add__(self, other):
        return self._op(other, int.__add__)

    def __sub__(self, other):
        return self._op(other, int.__sub__)

    def __mul__(self, other):
        return self._op(other, int.__mul__)

    def __floordiv__(self, other):
        return self._op(other, int.__floordiv__)

    def __bool__(self):
        raise AssertionError("a shape expression has no truth value")


class DimFunctions:
    """``tensorrt.plugin``'s ``ShapeExpr``, ``cdiv``, ``min``, ``max`` over :class:`Dim` (which refuse two ints)."""

    ShapeExpr = Dim

    @staticmethod
    def _two(a, b, fn) -> Dim:
        assert isinstance(a, Dim) or isinstance(b, Dim), "trtp refuses two ints"
        return Dim(fn(a.value if isinstance(a, Dim) else a, b.value if isinstance(b, Dim) else b))

    def cdiv(self, a, b):
        return self._two(a, b, lambda x, y: -(-x // y))

    def min(self, a, b):
        return self._two(a, b, min)

    def max(self, a, b):
        return self._two(a, b, max)


def value(x):
    return x.value if isinstance(x, Dim) else x


SHAPES = [{"B": 1, "L": 1}, {"B": 3, "L": 37}, {"B": 16, "L": 4096}]


@pytest.mark.parametrize("sizes", SHAPES, ids=[f"B{s['B']}-L{s['L']}" for s in SHAPES])
def test_registration_matches_the_torch_launch(exported, sizes) -> None:
    """What the ``tensorrt.plugin`` functions get and compute, per plugin, at concrete shapes: their parameter
    lists, the output descriptors and ``aot_impl``'s launch, evaluated over ShapeExpr-like dims, equal the
    shapes, grid and scalars the torch op's launch computes from the spec with the same constexprs."""
    model, directory = exported
    cfg = model.config
    static = {"H": 4, "DV": cfg.d_model // cfg.pla_heads, "HD": cfg.d_model // cfg.n_head, "W": cfg.swa_ring,
              "CH": 2 * cfg.d_model, "NSEG": 3}  # fmt: skip
    launches = aot.launches()
    for plugin in plugins_of(directory):
        launch = launches[plugin.name]
        assert trt_plugins.plugin_id(plugin) == f"jrtc::{plugin.name}"
        assert trt_plugins.register_parameters(plugin) == [(a.name, "TensorDesc") for a in launch.inputs] + [
            (a, "int") for a in launch.attributes
        ]
        assert trt_plugins.aot_impl_parameters(plugin) == [
            *(a.name for a in launch.inputs),
            *launch.attributes,
            "outputs",
            "tactic",
        ]
        names = {**static, **sizes, "BH": sizes["B"] * static["H"]}
        dims = {
            a.name: [names.get(d, int(d) if d.isdigit() else None) for d in a.dims] for a in launch.inputs
        }
        attributes = {a: cfg.enc_length for a in launch.attributes}
        # torch's side: the spec bound with ints, with the plugin's constexprs and SM count
        env = launch.bind(dims, attributes, constexprs=plugin.constexprs, SMS=plugin.constants["SMS"])
        # TensorRT's side: the record, over ShapeExpr-like dims
        ops = trt_plugins.TrtOps(DimFunctions())
        sym = {name: [Dim(d) for d in ds] for name, ds in dims.items()}
        descriptors = trt_plugins.output_descriptors(plugin, sym, attributes, ops)
        shapes = launch.output_shapes(env)
        for (name, dtype, shape), arg in zip(descriptors, launch.outputs, strict=True):
            assert dtype == aot._plugin_dtype(arg.dtype)
            if name in launch.aliases:
                assert shape == launch.aliases[name]
            else:
                assert [value(d) for d in shape] == shapes[name], (plugin.name, name)
        kernel_name, params, scalars = trt_plugins.aot_launch(plugin, sym, attributes, ops)
        grid = launch.grid_values(env)
        assert kernel_name == plugin.kernel_name
        assert [value(params[f"grid_{a}"]) for a in "xyz"] == list(grid), plugin.name
        assert (params["block_x"], params["block_y"], params["block_z"]) == (plugin.block, 1, 1)
        assert params["shared_mem"] == plugin.shared
        assert [value(s) for s in scalars] == launch.scalar_values(env), plugin.name
        assert all(0 < value(g) < 2**31 for g in grid)


# -- errors ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_checkpoint(make_model(("conv", "pla")), path)
    return path


@pytest.mark.parametrize("target", ["h100", "h200"])
def test_plain_export_without_tensorrt_is_one_line(checkpoint: Path, tmp_path: Path, target: str) -> None:
    code, _, err = jrtc_cli(
        "export", str(checkpoint), "--target", target, "--tokenizer", "bytes", "-o", str(tmp_path / "e")
    )
    assert_one_line_error(
        code, err, "TensorRT is not installed", "pip install", "--no-build", "--target cuda"
    )
    assert list(tmp_path.iterdir()) == []


def test_no_build_is_for_the_tensorrt_targets(checkpoint: Path, tmp_path: Path) -> None:
    code, _, err = jrtc_cli(
        "export", str(checkpoint), "--target", "cpu", "--no-build", "-o", str(tmp_path / "e")
    )
    assert_one_line_error(code, err, "--no-build is for --target h100|h200")
    code, _, err = jrtc_cli("export", str(checkpoint), "--target", "h100", "--dtype", "float32", "--no-build")
    assert_one_line_error(code, err, "bfloat16")


def test_build_and_run_say_what_is_missing(exported, tmp_path: Path) -> None:
    _, directory = exported
    code, _, err = jrtc_cli("build", str(directory))
    assert_one_line_error(code, err, "TensorRT is not installed", "pip install")
    with pytest.raises(JrtcError, match=f"jrtc build {directory}"):
        Engine.load(directory)
    code, _, err = jrtc_cli("build", str(tmp_path))
    assert_one_line_error(code, err, "not a jrtc engine directory")


def test_engine_from_elsewhere_is_one_line(exported) -> None:
    _, directory = exported
    raw = {"tensorrt": "10.9.0.34", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}
    plan = directory / "engine.plan"
    trt_backend.check_built_here(plan, raw, "10.9.0.34", "NVIDIA H100 80GB HBM3", [9, 0])
    with pytest.raises(JrtcError, match="this is TensorRT 11.1.0.106: rebuild it here"):
        trt_backend.check_built_here(plan, raw, "11.1.0.106", "NVIDIA H100 80GB HBM3", [9, 0])
    with pytest.raises(JrtcError, match="this GPU is NVIDIA H200"):
        trt_backend.check_built_here(plan, raw, "10.9.0.34", "NVIDIA H200", [9, 0])
    manifest = Manifest.read(directory / MANIFEST)
    good = [
        ("input_ids", True, "int64", (-1, -1)),
        ("start_pos", True, "int64", (-1,)),
        ("num_pad", True, "int64", (-1,)),
    ]
    good += [(f"state.{s.name}", True, s.dtype, (-1, *s.shape)) for s in manifest.state]
    good += [("logits", False, "float32", (-1, manifest.vocab_size_padded))]
    good += [(f"next.{s.name}", False, s.dtype, (-1, *s.shape)) for s in manifest.state]
    trt_backend.check_engine_io(plan, manifest, good)
    bad = [(n, i, "float16" if n == "state.layers.0.conv" else d, s) for n, i, d, s in good]
    with pytest.raises(JrtcError, match="state.layers.0.conv is float16"):
        trt_backend.check_engine_io(plan, manifest, bad)


# -- the backend's state pool ----------------------------------------------------------------------------


class ModelExecutor:
    """Stands in for TensorRT's execution of the step graph: the PyTorch model on the bound tensors (reads
    ``state.*``, writes ``next.*`` and ``logits`` into the given buffers, as the engine would)."""

    def __init__(self, model, names: list[str]) -> None:
        self.model, self.names = model, names
        self.calls: list[tuple[str, bool]] = []

    def run(self, profile, tensors) -> None:
        ids = tensors["input_ids"]
        key_mask = torch.arange(ids.shape[1])[None, :] >= tensors["num_pad"][:, None]
        state = {"pos": tensors["start_pos"], **{n: tensors[f"state.{n}"].clone() for n in self.names}}
        logits, new = self.model.forward_step(ids, state, key_mask, last_only=True)
        bound = [t for name, t in tensors.items() if name.startswith(("state.", "next.", "logits"))]
        aligned = all(t.data_ptr() % trt_backend.ALIGN == 0 for t in bound)
        self.calls.append((profile, aligned))
        tensors["logits"].copy_(logits)
        for n in self.names:
            tensors[f"next.{n}"].copy_(new[n])


def test_pool_updates_slots_in_place_or_by_copy(exported) -> None:
    """Prefill into slots 1-2 (misaligned rows: staged) and 0, then decode 0-2: the pool's logits and state
    equal the model's own, for in-place (conv) and copied-back (the rest) state alike."""
    model, directory = exported
    model = model.to(torch.bfloat16)
    manifest = Manifest.read(directory / MANIFEST)
    names = [s.name for s in manifest.state]
    executor = ModelExecutor(model, names)
    backend = trt_backend.TensorRTBackend(manifest, executor, "cpu", set(manifest.raw["aliased_state"]))
    pool = backend.new_pool(4)
    assert set(pool.next) == set(names) - {"layers.0.conv"}
    reference = model.init_state(4)
    gen = torch.Generator().manual_seed(1)

    def call(slots: slice, length: int, start: list[int], pads: list[int]) -> None:
        n = slots.stop - slots.start
        ids = torch.randint(0, 256, (n, length), generator=gen)
        got = pool.run(slots, ids.numpy(), torch.tensor(start).numpy(), torch.tensor(pads).numpy())
        mask = torch.arange(length)[None, :] >= torch.tensor(pads)[:, None]
        rows = {k: v[slots] for k, v in reference.items() if k != "pos"}
        want, new = model.forward_step(ids, {"pos": torch.tensor(start), **rows}, mask, last_only=True)
        torch.testing.assert_close(pool.to_numpy(got), want.float().numpy(), rtol=0, atol=0)
        for k in names:
            reference[k][slots] = new[k]

    call(slice(1, 3), 20, [0, 0], [4, 0])
    call(slice(0, 1), 17, [0], [1])
    call(slice(0, 3), 1, [20, 20, 17], [0, 0, 0])
    call(slice(0, 3), 1, [21, 21, 18], [0, 0, 0])
    for k, state in zip(names, pool.states, strict=True):
        assert torch.equal(state[:3], reference[k][:3]), k
    assert [p for p, _ in executor.calls] == ["prefill", "prefill", "decode", "decode"]
    assert all(aligned for _, aligned in executor.calls)  # every bound state address was 256-byte aligned
    pool.move(2, 3)
    pool.reset(slice(0, 1))
    assert all(torch.equal(s[3], s[2]) and not s[0].any() for s in pool.states)


def test_spec_expressions_refuse_what_tensorrt_cannot_compute() -> None:
    with pytest.raises(ValueError, match="only names"):
        spec.Arg("x", "float32", "B**2")
    with pytest.raises(ValueError, match="dtype"):
        spec.Arg("x", "float16", "B")
    assert spec.evaluate("cdiv(min(L, 7) * 3, 4) - B // 2", {"L": 10, "B": 5}) == 4
