"""Prefix linear attention (JRT-RNN), and Based linear attention as its encoder-less special case.

Every position reads a non-causal encoder state built from the first ``enc_length`` tokens (with their own
key/value projections) plus the causal state of all tokens up to itself (paper Eq. 3). The math lives in
``jrtc.plugins.pla``: ``naive`` (PyTorch) by default, the Triton kernels (``ops``) with ``use_kernels``.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from jrtc.plugins.pla import naive
from jrtc.plugins.pla.naive import EXPANDED_DIM


class PrefixLinearAttention(nn.Module):
    """State ``kv [B, H, 153, dv]`` and ``z [B, H, 153]``, fp32; ``enc_length=0`` gives Based's layer."""

    def __init__(self, d_model: int, num_heads: int, feature_dim: int, enc_length: int) -> None:
        super().__init__()
        self.num_heads, self.feature_dim, self.enc_length = num_heads, feature_dim, enc_length
        self.head_dim = d_model // num_heads
        self.proj_q = nn.Linear(d_model, num_heads * feature_dim, bias=False)
        self.proj_k = nn.Linear(d_model, num_heads * feature_dim, bias=False)
        self.proj_v = nn.Linear(d_model, d_model, bias=False)
        if enc_length > 0:
            self.proj_k_enc = nn.Linear(d_model, num_heads * feature_dim, bias=False)
            self.proj_v_enc = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.ops: ModuleType = naive
        # False when every call continues a sequence (an engine's decode program): the encoder is skipped.
        self.starts_sequences = True

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {
            "kv": ((self.num_heads, EXPANDED_DIM, self.head_dim), "float32"),
            "z": ((self.num_heads, EXPANDED_DIM), "float32"),
        }

    def _heads(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], self.num_heads, dim)

    def forward(
        self,
        x: torch.Tensor,
        state: dict[str, torch.Tensor],
        pos: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q = self._heads(self.proj_q(x), self.feature_dim)
        k = self._heads(self.proj_k(x), self.feature_dim)
        v = self._heads(self.proj_v(x), self.head_dim)
        kv, z = state["kv"], state["z"]
        if self.enc_length > 0 and self.starts_sequences:
            # Computed for every row and kept only where the sequence starts in this call (pos == 0), so
            # one graph serves first calls, continuations and mixed batches alike. The encoder op reads
            # the first enc_length tokens itself: no slice whose length depends on L (see naive).
            enc_kv, enc_z = self.ops.pla_encode(
                self._heads(self.proj_k_enc(x), self.feature_dim),
                self._heads(self.proj_v_enc(x), self.head_dim),
                key_mask,
                self.enc_length,
            )
            starts = (pos == 0).to(torch.float32)
            kv = kv + starts[:, None, None, None] * enc_kv
            z = z + starts[:, None, None] * enc_z
        o, kv, z = self.ops.pla_causal(q, k, v, kv, z, key_mask)
        return self.out_proj(o.reshape(x.shape)), {"kv": kv, "z": z}
