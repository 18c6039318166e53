"""Torch ops for the PLA Triton kernels: ``jrtc::pla_encode``, ``jrtc::pla_causal``, ``jrtc::pla_decode``.

The module-level functions have exactly the signatures of ``naive``'s and call the ops, so a model switches
from the reference to the kernels by swapping the module::

    from jrtc.plugins.pla import ops      # instead of: from jrtc.plugins.pla import naive as ops
    kv_e, z_e = ops.pla_encode(k_enc, v_enc, key_mask, enc_length)
    o, kv, z = ops.pla_causal(q, k, v, kv0 + kv_e, z0 + z_e, key_mask)
    o, kv, z = ops.pla_decode(q, k, v, kv, z)

They run on CUDA tensors, or on CPU tensors through the Triton interpreter when ``TRITON_INTERPRET=1`` is
set before this package's kernel modules are first imported. The ops are functional (they never write
their inputs). They are ``torch.library.triton_op``s whose kernels launch through ``wrap_triton``, so
torch.export and AOTInductor see the kernels themselves and compile them into the package, which then runs
without Python (a plain ``custom_op`` would need the Python interpreter at run time); their fake (meta)
implementations come from tracing the same launch code.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from . import chunk, fused_recurrent
from .naive import EXPANDED_DIM, FEATURE_DIM


@triton_op("jrtc::pla_encode", mutates_args={})
def _pla_encode_op(
    k_enc: Tensor, v_enc: Tensor, key_mask: Tensor | None, enc_length: int | None
) -> tuple[Tensor, Tensor]:
    return chunk.pla_encode(k_enc, v_enc, key_mask, enc_length)


@triton_op("jrtc::pla_causal", mutates_args={})
def _pla_causal_op(
    q: Tensor, k: Tensor, v: Tensor, kv0: Tensor, z0: Tensor, key_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    if q.shape[1] == 1:
        # One token (a decode step through the prefill graph): the fused decode kernel does the same
        # update-then-read in one launch.
        k1 = k[:, 0] if key_mask is None else k[:, 0] * key_mask[:, 0, None, None].to(k.dtype)
        o, kv, z = fused_recurrent.pla_decode(q[:, 0], k1, v[:, 0], kv0.float(), z0.float())
        return o[:, None], kv, z
    return chunk.pla_causal(q, k, v, kv0, z0, key_mask)


@triton_op("jrtc::pla_decode", mutates_args={})
def _pla_decode_op(q: Tensor, k: Tensor, v: Tensor, kv: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return fused_recurrent.pla_decode(q, k, v, kv, z)


def pla_encode(
    k_enc: Tensor, v_enc: Tensor, key_mask: Tensor | None = None, enc_length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Non-causal encoder state over the first ``enc_length`` of L tokens: k_enc [B,L,H,16], v_enc [B,L,H,dv],
    key_mask [B,L] -> kv [B,H,153,dv], z [B,H,153] (fp32). Same as ``naive.pla_encode``."""
    return torch.ops.jrtc.pla_encode(k_enc, v_enc, key_mask, enc_length)


def pla_causal(
    q: Tensor, k: Tensor, v: Tensor, kv0: Tensor, z0: Tensor, key_mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal linear attention from the state (kv0, z0): q, k [B,L,H,16], v [B,L,H,dv] -> o [B,L,H,dv]
    (dtype of v), kv, z (fp32). Same as ``naive.pla_causal``."""
    return torch.ops.jrtc.pla_causal(q, k, v, kv0, z0, key_mask)


def pla_decode(q: Tensor, k: Tensor, v: Tensor, kv: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One recurrent step: q, k [B,H,16], v [B,H,dv], kv [B,H,153,dv], z [B,H,153] (fp32)
    -> o [B,H,dv] (dtype of v), new kv, new z. Same as ``naive.pla_decode``."""
    return torch.ops.jrtc.pla_decode(q, k, v, kv, z)


__all__ = ["EXPANDED_DIM", "FEATURE_DIM", "pla_causal", "pla_decode", "pla_encode"]
