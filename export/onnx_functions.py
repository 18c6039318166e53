"""Standard-op bodies of the ``jrtc``-domain nodes of the step graph, as ONNX local functions.

Each function computes what the PyTorch side computes (``jrtc.plugins.pla.naive`` and the mixer cores of
``jrtc.layers``), so ONNX Runtime runs the graph unmodified; a TensorRT build swaps the nodes for plugins of
the same name (the call nodes carry ``plugin_namespace``, see ``onnx_graph.PLUGIN_ATTRS``). The plugin
attributes are declared here too, unused by the bodies, so that the checker and ONNX Runtime accept them.

fp32 bodies: the cpu target exports the model in fp32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnxscript import BOOL, FLOAT, INT64, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

from jrtc.plugins.pla import naive

DOMAIN = "jrtc"
OPSET = 18  # the default-domain opset of the whole graph; function bodies must import the same version
JRTC = Opset(DOMAIN, 1)


def _const(array: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


# The symmetric second-order Taylor map of naive.taylor_features: the same pairs, the same weights.
_PAIR_ROWS = _const(naive.PAIR_ROWS.numpy().astype(np.int64), "pair_rows")
_PAIR_COLS = _const(naive.PAIR_COLS.numpy().astype(np.int64), "pair_cols")
_PAIR_SCALE = _const(naive.PAIR_SCALE.numpy().astype(np.float32), "pair_scale")
_LINEAR_DIVISOR = _const(np.array(naive.FEATURE_DIM**0.25, dtype=np.float32), "linear_divisor")
_EPS = _const(np.array(naive.EPS, dtype=np.float32), "eps")


@script(JRTC, default_opset=op)
def taylor_features(x: FLOAT) -> FLOAT:
    """``[..., 16] -> [..., 153]``: ``[1, x/2, x_i*x_j*c_ij for i <= j]``."""
    rows = op.Constant(value=_PAIR_ROWS)
    cols = op.Constant(value=_PAIR_COLS)
    second = op.Gather(x, rows, axis=-1) * op.Gather(x, cols, axis=-1) * op.Constant(value=_PAIR_SCALE)
    ones = op.Expand(
        op.Constant(value_float=1.0), op.Concat(op.Shape(x, end=-1), op.Constant(value_ints=[1]), axis=0)
    )
    return op.Concat(ones, x / op.Constant(value=_LINEAR_DIVISOR), second, axis=-1)


@script(JRTC, default_opset=op)
def _masked_key_features(k: FLOAT, key_mask: BOOL) -> FLOAT:
    """Features of ``k [B, L, H, 16]`` with masked keys zeroed first (phi(0) = e_0, as the reference)."""
    keep = op.Cast(op.Unsqueeze(key_mask, op.Constant(value_ints=[2, 3])), to=FLOAT.dtype)
    return taylor_features(k * keep)


@script(JRTC, default_opset=op)
def pla_encode(
    k_enc: FLOAT,
    v_enc: FLOAT,
    key_mask: BOOL,
    enc_length: int,
    plugin_namespace: str = "jrtc",
    plugin_version: str = "1",
    aot: int = 1,
) -> tuple[FLOAT, FLOAT]:
    """Encoder state of the first ``enc_length`` of L tokens: k_enc ``[B, L, H, 16]``, v_enc ``[B, L, H, dv]``,
    key_mask ``[B, L]`` -> kv ``[B, H, 153, dv]``, z ``[B, H, 153]`` (naive.pla_encode)."""
    length = op.Shape(k_enc, start=1, end=2)
    positions = op.Range(op.Constant(value_ints=[0]), length, op.Constant(value_ints=[1]))
    inside = op.Cast(op.Less(positions, op.Constant(value_int=enc_length)), to=FLOAT.dtype)  # [L]
    weighted = _masked_key_features(k_enc, key_mask) * op.Unsqueeze(inside, op.Constant(value_ints=[1, 2]))
    features = op.Transpose(weighted, perm=[0, 2, 3, 1])  # [B, H, 153, L]
    kv = op.MatMul(features, op.Transpose(v_enc, perm=[0, 2, 1, 3]))
    z = op.ReduceSum(features, op.Constant(value_ints=[3]), keepdims=0)
    return kv, z


@script(JRTC, default_opset=op)
def pla_causal(
    q: FLOAT,
    k: FLOAT,
    v: FLOAT,
    kv0: FLOAT,
    z0: FLOAT,
    key_mask: BOOL,
    plugin_namespace: str = "jrtc",
    plugin_version: str = "1",
    aot: int = 1,
) -> tuple[FLOAT, FLOAT, FLOAT]:
    """Causal linear attention from the state ``(kv0, z0)`` (naive.pla_causal).

    q, k ``[B, L, H, 16]``, v ``[B, L, H, dv]``, kv0 ``[B, H, 153, dv]``, z0 ``[B, H, 153]``, key_mask ``[B, L]``
    -> o ``[B, L, H, dv]``, kv, z.
    """
    q_feat = op.Transpose(taylor_features(q), perm=[0, 2, 1, 3])  # [B, H, L, 153]
    k_feat = op.Transpose(_masked_key_features(k, key_mask), perm=[0, 2, 1, 3])
    v_h = op.Transpose(v, perm=[0, 2, 1, 3])  # [B, H, L, dv]
    scores = op.Trilu(op.MatMul(q_feat, op.Transpose(k_feat, perm=[0, 1, 3, 2])), upper=0)
    numerator = op.MatMul(scores, v_h) + op.MatMul(q_feat, kv0)
    last = op.Constant(value_ints=[-1])
    denominator = op.ReduceSum(scores, last, keepdims=1) + op.MatMul(q_feat, op.Unsqueeze(z0, last))
    o = op.Transpose(numerator / (denominator + op.Constant(value=_EPS)), perm=[0, 2, 1, 3])
    kv = kv0 + op.MatMul(op.Transpose(k_feat, perm=[0, 1, 3, 2]), v_h)
    z = z0 + op.ReduceSum(k_feat, op.Constant(value_ints=[2]), keepdims=0)
    return o, kv, z


@script(JRTC, default_opset=op)
def _ring_positions(end: INT64, ring: INT64) -> INT64:
    """For each slot s, the latest position p < end with p % ring == s (negative: never written). ``[B, ring]``."""
    slots = op.Range(op.Constant(value_int=0), ring, op.Constant(value_int=1))
    last = op.Unsqueeze(end, op.Constant(value_ints=[1])) - op.Constant(value_int=1)
    return last - op.Mod(last - slots, ring)


@script(JRTC, default_opset=op)
def sliding_window_attention(
    q: FLOAT,
    k: FLOAT,
    v: FLOAT,
    k_ring: FLOAT,
    v_ring: FLOAT,
    pos: INT64,
    scale: float,
    plugin_namespace: str = "jrtc",
    plugin_version: str = "1",
    aot: int = 1,
) -> tuple[FLOAT, FLOAT, FLOAT]:
    """Softmax attention over the last ``W`` positions and the ring update (``jrtc.layers`` SWA core).

    q, k, v ``[B, H, L, hd]`` (post-rotary), rings ``[B, H, W, hd]`` with slot = position % W, pos ``[B]``
    -> o ``[B, H, L, hd]`` and the next rings. A query at position i sees keys at positions i - W .. i.
    """
    ring = op.Squeeze(op.Shape(k_ring, start=2, end=3))
    length = op.Squeeze(op.Shape(q, start=2, end=3))
    one = op.Constant(value_ints=[1])
    pos_col = op.Unsqueeze(pos, one)  # [B, 1]
    positions = pos_col + op.Range(op.Constant(value_int=0), length, op.Constant(value_int=1))  # [B, L]
    keys = op.Concat(k_ring, k, axis=2)  # [B, H, W + L, hd]
    values = op.Concat(v_ring, v, axis=2)
    key_pos = op.Unsqueeze(op.Concat(_ring_positions(pos, ring), positions, axis=1), one)  # [B, 1, W + L]
    query_pos = op.Unsqueeze(positions, op.Constant(value_ints=[2]))  # [B, L, 1]
    zero = op.Constant(value_int=0)
    visible = op.And(
        op.And(op.GreaterOrEqual(key_pos, zero), op.LessOrEqual(key_pos, query_pos)),
        op.GreaterOrEqual(key_pos, query_pos - ring),
    )
    scores = op.MatMul(q, op.Transpose(keys, perm=[0, 1, 3, 2])) * op.Constant(value_float=scale)
    neg_inf = op.Constant(value_float=float("-inf"))
    probs = op.Softmax(op.Where(op.Unsqueeze(visible, one), scores, neg_inf), axis=-1)
    o = op.MatMul(probs, values)

    # Slot s now holds the latest position < pos + L that maps to it: new if it was in this call.
    latest = _ring_positions(pos + length, ring)
    slots = op.Range(zero, ring, op.Constant(value_int=1))
    index = op.Where(op.GreaterOrEqual(latest, pos_col), ring + latest - pos_col, slots)  # [B, W]
    index = op.Expand(op.Unsqueeze(index, op.Constant(value_ints=[1, 3])), op.Shape(k_ring))
    return o, op.GatherElements(keys, index, axis=2), op.GatherElements(values, index, axis=2)


@script(JRTC, default_opset=op)
def short_conv(
    u: FLOAT,
    state: FLOAT,
    weight: FLOAT,
    plugin_namespace: str = "jrtc",
    plugin_version: str = "1",
    aot: int = 1,
) -> tuple[FLOAT, FLOAT]:
    """Width-3 depthwise causal convolution continuing from its state (``jrtc.layers`` BaseConv core).

    u ``[B, C, L]``, state ``[B, C, 2]`` (the two previous inputs), weight ``[C, 1, 3]`` -> c ``[B, C, L]``,
    the next state. Written as three shifted products: ONNX Runtime's depthwise Conv is slower on CPU.
    """
    window = op.Concat(state, u, axis=2)  # [B, C, L + 2]
    n = op.Shape(window, start=2, end=3)
    axis = op.Constant(value_ints=[2])
    zero, one, two = op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[2])
    w = op.Squeeze(weight, one)  # [C, 3]
    c = (
        op.Slice(window, zero, n - two, axis) * op.Slice(w, zero, one, one)
        + op.Slice(window, one, n - one, axis) * op.Slice(w, one, two, one)
        + op.Slice(window, two, n, axis) * op.Slice(w, two, op.Constant(value_ints=[3]), one)
    )
    return c, op.Slice(window, n - two, n, axis)


# Every function a step graph may call, helpers included (ONNX needs the whole call tree in the model).
FUNCTIONS = (
    taylor_features,
    _masked_key_features,
    pla_encode,
    pla_causal,
    _ring_positions,
    sliding_window_attention,
    short_conv,
)
