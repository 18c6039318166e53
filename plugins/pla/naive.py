"""Prefix linear attention in plain PyTorch: the reference every kernel and every exported graph must match.

Layout follows fla: ``[batch, length, heads, dim]`` for activations. The recurrent state of one layer is
``kv [B, H, D, dv]`` and ``z [B, H, D]``, always fp32 (bf16 stops counting tokens after 256 of them).

The feature map is the reference's second-order Taylor map (``TaylorExp`` with feature dim 16), stored
in its symmetric form: ``[1, x/2, x_i*x_j*c_ij for i <= j]`` with ``c_ii = 1/sqrt(32)`` and ``c_ij = 1/4``.
That is 1 + 16 + 136 = 153 features instead of the reference's 273, and gives the same inner product
``phi(q).phi(k) = 1 + s + s^2/2`` with ``s = q.k/4``.
"""

from __future__ import annotations

import functools
import math

import torch

FEATURE_DIM = 16
EXPANDED_DIM = 1 + FEATURE_DIM + FEATURE_DIM * (FEATURE_DIM + 1) // 2  # 153
EPS = 1e-12
FEATURE_LAYOUT = "taylor2-sym153"  # recorded in export manifests; prefill and decode kernels agree on it


# The second-order features x_i * x_j * c_ij over the pairs i <= j, in torch.triu_indices order. Off-diagonal
# pairs appear once instead of twice, so they carry sqrt(2) more weight than the diagonal.
PAIR_ROWS, PAIR_COLS = torch.triu_indices(FEATURE_DIM, FEATURE_DIM)
PAIR_SCALE = torch.where(
    PAIR_ROWS == PAIR_COLS, 1.0 / math.sqrt(2 * FEATURE_DIM), 1.0 / math.sqrt(FEATURE_DIM)
)


@functools.cache
def _pairs_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return PAIR_ROWS.to(device), PAIR_COLS.to(device), PAIR_SCALE.to(device)


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """``[..., 16] -> [..., 153]`` fp32 features with ``phi(q).phi(k) = 1 + q.k/4 + (q.k)^2/32``."""
    x = x.float()
    rows, cols, scale = _pairs_on(x.device)
    second = x[..., rows] * x[..., cols] * scale
    ones = torch.ones_like(x[..., :1])
    return torch.cat([ones, x / FEATURE_DIM**0.25, second], dim=-1)


def _mask_keys(k: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    # The reference zeroes masked raw keys before the feature map, so phi(0) = e_0 still adds
    # weight 1 for each pad to the numerator and denominator. Replicated as is.
    if key_mask is None:
        return k
    return k * key_mask[:, :, None, None].to(k.dtype)


def pla_encode(
    k_enc: torch.Tensor,
    v_enc: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    enc_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal encoder state over the first ``enc_length`` of L tokens (all L when None).

    k_enc ``[B, L, H, 16]``, v_enc ``[B, L, H, dv]``, key_mask ``[B, L]`` (True = real token)
    -> kv ``[B, H, 153, dv]``, z ``[B, H, 153]`` (fp32). Tokens past ``enc_length`` are left out entirely.
    """
    features = taylor_features(_mask_keys(k_enc, key_mask))
    if enc_length is not None:
        # A weight, not a slice: the length stays symbolic when the model is exported (a slice makes
        # torch.export specialize on whether L reaches enc_length).
        inside = torch.arange(k_enc.shape[1], device=k_enc.device) < enc_length
        features = features * inside[None, :, None, None]
    kv = torch.einsum("bmhd,bmhe->bhde", features, v_enc.float())
    return kv, features.sum(dim=1)


def pla_causal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv0: torch.Tensor,
    z0: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal linear attention over L tokens starting from the state ``(kv0, z0)``.

    q, k ``[B, L, H, 16]``, v ``[B, L, H, dv]``, kv0 ``[B, H, 153, dv]``, z0 ``[B, H, 153]``
    -> o ``[B, L, H, dv]`` (dtype of v), kv, z (the state after the L tokens, fp32).
    Token i reads ``kv0 + sum_{j<=i} phi(k_j) v_j^T`` normalized by the same sum without v.
    """
    length = q.shape[1]
    q_feat = taylor_features(q)
    k_feat = taylor_features(_mask_keys(k, key_mask))
    v32 = v.float()
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    scores = torch.einsum("blhd,bmhd->bhlm", q_feat, k_feat).masked_fill(~causal, 0.0)
    numerator = torch.einsum("bhlm,bmhe->blhe", scores, v32) + torch.einsum("blhd,bhde->blhe", q_feat, kv0)
    denominator = scores.sum(-1).transpose(1, 2) + torch.einsum("blhd,bhd->blh", q_feat, z0)
    o = numerator / (denominator[..., None] + EPS)
    kv = kv0 + torch.einsum("blhd,blhe->bhde", k_feat, v32)
    z = z0 + k_feat.sum(dim=1)
    return o.to(v.dtype), kv, z


def pla_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One recurrent step: q, k ``[B, H, 16]``, v ``[B, H, dv]`` -> o ``[B, H, dv]``, new kv, new z.

    The state is updated before it is read, so the token attends to itself (reference ``recurrent_forward``).
    """
    q_feat, k_feat = taylor_features(q), taylor_features(k)
    kv = kv + k_feat[..., :, None] * v.float()[..., None, :]
    z = z + k_feat
    o = torch.einsum("bhd,bhde->bhe", q_feat, kv) / (torch.einsum("bhd,bhd->bh", q_feat, z)[..., None] + EPS)
    return o.to(v.dtype), kv, z
