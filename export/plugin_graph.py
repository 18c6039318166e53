"""The step graph of the TensorRT targets: bf16, strongly typed, one ``jrtc`` plugin node per kernel launch.

The same ``step`` function as the cpu target's graph (``onnx_graph``), traced from the model in bf16 with
the mixer cores routed through :class:`PluginGraphOps`, which emits, per core, the plugin nodes of its
launches (``jrtc.plugins.spec.Launch``: node name, inputs, outputs with their dtypes and shapes, attributes
all come from it) and standard ops for the rest:

* PLA encoder: ``pla_segment_state`` (partial states of segments of the first ``enc_length`` tokens), then
  ``pla_encode_scan`` (their sum), two launches;
* PLA causal (prefill chunks and decode steps alike): ``pla_causal``, the unsplit chunked kernel; the
  sequence-parallel variant (three launches) is not in the engine, as in the AOTInductor package;
* sliding-window attention: ``sliding_window_attention``; its ring update is standard ops (a gather);
* short convolution: ``short_conv``, whose next state is an in-place update of its state input.

Plugin nodes carry ``plugin_namespace="jrtc"``, ``plugin_version="1"`` and ``aot=1``, which makes TensorRT's
ONNX parser create them from the plugins that ``jrtc.plugins.tensorrt`` registers; they have no ONNX
function (their kernels' intermediates, such as segment states in kernel order, have no standard-op form),
so ONNX Runtime cannot run this graph: the cpu target's graph is its reference.

Tracing also collects what each plugin must be compiled with (its constexprs, from the static dims of the
tensors it receives), which the target then compiles to PTX.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
import torch

from jrtc.errors import JrtcError
from jrtc.export.onnx_functions import DOMAIN
from jrtc.export.onnx_graph import PLUGIN_ATTRS, export_step
from jrtc.model import JRTModel
from jrtc.plugins.conv.fused import SHORT_CONV
from jrtc.plugins.pla.chunk import PLA_CAUSAL, PLA_ENCODE_SCAN, PLA_SEGMENT_STATE
from jrtc.plugins.pla.naive import EXPANDED_DIM
from jrtc.plugins.spec import ACTIVATION, Launch
from jrtc.plugins.swa import naive as swa_naive
from jrtc.plugins.swa.parallel import SLIDING_WINDOW_ATTENTION

ENGINE_PLUGINS = (PLA_SEGMENT_STATE, PLA_ENCODE_SCAN, PLA_CAUSAL, SLIDING_WINDOW_ATTENTION, SHORT_CONV)
_DTYPES = {ACTIVATION: torch.bfloat16, "float32": torch.float32, "int32": torch.int32}


class PluginGraphOps:
    """The mixer cores as plugin nodes, with the signatures of ``GraphOps``; records each plugin's constexprs
    in :attr:`variants` (plugin name -> constexprs)."""

    def __init__(self) -> None:
        self.variants: dict[str, dict[str, Any]] = {}

    def node(
        self, launch: Launch, inputs: dict[str, torch.Tensor], attributes: dict[str, int] | None = None
    ) -> tuple[torch.Tensor, ...]:
        """One plugin node of ``launch``: inputs by its names, outputs as its shape expressions give them."""
        attributes = attributes or {}
        for arg in launch.inputs:
            tensor = inputs[arg.name]
            if tensor.dtype != _DTYPES[arg.dtype]:
                raise TypeError(f"{launch.name}: {arg.name} is {tensor.dtype}, the plugin takes {arg.dtype}")
        env = launch.bind({name: tuple(t.shape) for name, t in inputs.items()}, attributes)
        constexprs = launch.constexprs(env)
        if any(isinstance(v, torch.SymInt) for v in constexprs.values()):
            raise JrtcError(f"{launch.name}: a compile-time constant depends on the batch or length")
        if self.variants.setdefault(launch.name, constexprs) != constexprs:
            raise JrtcError(
                f"{launch.name}: layers need different kernels ({constexprs} and {self.variants[launch.name]})"
            )
        shapes = launch.output_shapes(env)
        return tuple(
            torch.onnx.ops.symbolic_multi_out(
                f"{DOMAIN}::{launch.name}",
                [inputs[a.name] for a in launch.inputs],
                {**attributes, **PLUGIN_ATTRS},
                dtypes=[_DTYPES[a.dtype] for a in launch.outputs],
                shapes=[shapes[a.name] for a in launch.outputs],
                version=1,
            )
        )

    def pla_encode(
        self, k_enc: torch.Tensor, v_enc: torch.Tensor, key_mask: torch.Tensor, enc_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, heads, _ = k_enc.shape
        dv = v_enc.shape[3]
        mask = key_mask.to(torch.int32)
        st_kv, st_z = self.node(
            PLA_SEGMENT_STATE, {"k": k_enc, "v": v_enc, "key_mask": mask}, {"enc_length": enc_length}
        )
        kv, z = self.node(PLA_ENCODE_SCAN, {"st_kv": st_kv, "st_z": st_z})
        return kv.reshape(batch, heads, EXPANDED_DIM, dv), z.reshape(batch, heads, EXPANDED_DIM)

    def pla_causal(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv0: torch.Tensor,
        z0: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = {"q": q, "k": k, "v": v, "kv_init": kv0, "z_init": z0, "key_mask": key_mask.to(torch.int32)}
        o, kv, z = self.node(PLA_CAUSAL, inputs)
        return o, kv, z

    def sliding_window_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_ring: torch.Tensor,
        v_ring: torch.Tensor,
        pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = {"q": q, "k": k, "v": v, "k_ring": k_ring, "v_ring": v_ring, "pos": pos.to(torch.int32)}
        (o,) = self.node(SLIDING_WINDOW_ATTENTION, inputs)
        return o, next_ring(k_ring, k, pos), next_ring(v_ring, v, pos)

    def short_conv(
        self, u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c, next_state = self.node(SHORT_CONV, {"u": u, "state": state, "weight": weight})
        return c, next_state


def next_ring(ring: torch.Tensor, new: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``swa.naive.next_ring`` with the index clamp written as a ``where``: its ONNX form, Clip, takes no
    integers in TensorRT's parser."""
    batch, heads, window, dim = ring.shape
    latest = swa_naive.ring_positions(pos + new.shape[2], window)  # [B, W]
    from_call = latest >= pos[:, None]
    index = torch.where(from_call, latest - pos[:, None], 0)[:, None, :, None].expand(
        batch, heads, window, dim
    )
    return torch.where(from_call[:, None, :, None], new.gather(2, index), ring)


def aliased_state(graph: ir.Model) -> list[str]:
    """The state tensors that a plugin updates in place straight from ``state.X`` to ``next.X`` (the graph's
    input and output): with aliased plugin I/O the runtime binds both to one buffer."""
    launches = {launch.name: launch for launch in ENGINE_PLUGINS}
    names = []
    for node in graph.graph:
        launch = launches.get(node.op_type) if node.domain == DOMAIN else None
        for out, source in (launch.aliases if launch else {}).items():
            i = [a.name for a in launch.outputs].index(out)
            j = [a.name for a in launch.inputs].index(source)
            written, read = node.outputs[i].name, node.inputs[j].name
            if written.startswith("next.") and read == "state." + written.removeprefix("next."):
                names.append(written.removeprefix("next."))
    return names


def trace_plugin_graph(model: JRTModel) -> tuple[ir.Model, dict[str, dict[str, Any]]]:
    """The bf16 plugin step graph and each plugin's constexprs."""
    if model.lm_head.weight.dtype != torch.bfloat16:
        raise JrtcError(
            "the TensorRT targets export bf16 models; load the checkpoint with dtype=torch.bfloat16"
        )
    ops = PluginGraphOps()
    return export_step(model, ops), ops.variants
