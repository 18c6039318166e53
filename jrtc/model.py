"""JRT-RNN: a pre-norm stack of BaseConv, prefix-linear-attention and sliding-window-attention layers.

Reads like the original ``GPTLMHeadModel`` (state-dict names are identical) but every layer also has a
recurrent form: ``forward_step`` consumes L >= 1 tokens from a fixed-size state and returns the next state,
which serves prefill (L > 1, in chunks if needed) and decode (L = 1) alike.
"""

from __future__ import annotations

import torch
from torch import nn

from jrtc.config import JRTConfig
from jrtc.errors import JrtcError
from jrtc.layers import BaseConv, GatedMLP, PrefixLinearAttention, RMSNorm, SlidingWindowAttention

State = dict[str, torch.Tensor]


def make_mixer(config: JRTConfig, layer_type: str) -> nn.Module:
    if layer_type == "conv":
        return BaseConv(config.d_model)
    if layer_type in ("pla", "la"):
        enc_length = config.enc_length if layer_type == "pla" else 0
        return PrefixLinearAttention(config.d_model, config.pla_heads, config.feature_dim, enc_length)
    return SlidingWindowAttention(
        config.d_model, config.n_head, config.window_size, config.rotary_fraction, config.rotary_base
    )


class Block(nn.Module):
    def __init__(self, config: JRTConfig, layer_type: str) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = make_mixer(config, layer_type)
        self.norm2 = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = GatedMLP(config.d_model, config.n_inner)

    def forward(
        self, residual: torch.Tensor, state: State, pos: torch.Tensor, key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        mixed, state = self.mixer(self.norm1(residual), state, pos, key_mask)
        residual = residual + mixed.float()  # the residual stream stays fp32 (residual_in_fp32)
        return residual + self.mlp(self.norm2(residual)).float(), state


class Embeddings(nn.Module):
    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, d_model)  # no position table: positions are rotary


class Backbone(nn.Module):
    def __init__(self, config: JRTConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config.vocab_size_padded, config.d_model)
        self.layers = nn.ModuleList(Block(config, t) for t in config.layer_types)
        self.ln_f = RMSNorm(config.d_model, config.norm_eps)


class JRTModel(nn.Module):
    def __init__(self, config: JRTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size_padded, bias=False)
        self.lm_head.weight = self.transformer.embeddings.word_embeddings.weight  # tied

    # ---- recurrent state -------------------------------------------------------------------------
    def state_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-sequence shape and dtype of each state tensor, in graph order (``pos`` first)."""
        model_dtype = self.lm_head.weight.dtype
        spec: dict[str, tuple[tuple[int, ...], torch.dtype]] = {"pos": ((), torch.int64)}
        for i, block in enumerate(self.transformer.layers):
            for name, (shape, dtype) in block.mixer.state_spec().items():
                spec[f"layers.{i}.{name}"] = (
                    shape,
                    model_dtype if dtype == "model" else getattr(torch, dtype),
                )
        return spec

    def state_bytes(self) -> dict[str, int]:
        """Bytes of each state tensor per sequence, whatever the prompt or output length."""
        return {
            name: torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            for name, (shape, dtype) in self.state_spec().items()
        }

    def init_state(self, batch_size: int) -> State:
        device = self.lm_head.weight.device
        return {
            name: torch.zeros((batch_size, *shape), dtype=dtype, device=device)
            for name, (shape, dtype) in self.state_spec().items()
        }

    # ---- forward passes --------------------------------------------------------------------------
    def forward_step(
        self,
        input_ids: torch.Tensor,
        state: State,
        key_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, State]:
        """Consume ``input_ids [B, L]`` from ``state``; return logits and the next state (inputs untouched).

        Rows with ``pos == 0`` start a sequence: their first ``enc_length`` tokens form the PLA encoder.
        ``key_mask [B, L]`` (True = real token) masks left pads in PLA, as the reference does.
        """
        pos = state["pos"]
        residual = self.transformer.embeddings.word_embeddings(input_ids).float()
        next_state: State = {"pos": pos + input_ids.shape[1]}
        for i, block in enumerate(self.transformer.layers):
            prefix = f"layers.{i}."
            layer_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            residual, layer_state = block(residual, layer_state, pos, key_mask)
            next_state.update({prefix + k: v for k, v in layer_state.items()})
        if last_only:
            residual = residual[:, -1]
        hidden = self.transformer.ln_f(residual)
        return self.lm_head(hidden).float(), next_state

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Parallel form over whole sequences: logits ``[B, L, vocab_size_padded]``.

        ``mask [B, L]`` (1 = real token) is the reference's left-padding mask.
        """
        state = self.init_state(input_ids.shape[0])
        logits, _ = self.forward_step(input_ids, state, None if mask is None else mask.bool())
        return logits

    @torch.no_grad()
    def prefill(
        self, input_ids: torch.Tensor, state: State, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Consume a prompt (or the next chunk of one), updating ``state`` in place; logits ``[B, L, V]``."""
        logits, next_state = self.forward_step(input_ids, state, None if mask is None else mask.bool())
        _assign(state, next_state)
        return logits

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: State) -> torch.Tensor:
        """One decode step for ``token_ids [B]``, updating ``state`` in place; logits ``[B, V]``."""
        logits, next_state = self.forward_step(token_ids[:, None], state, last_only=True)
        _assign(state, next_state)
        return logits

    def use_kernels(self) -> None:
        """Run the PLA and sliding-window layers through the Triton kernels (CUDA, or the CPU under
        TRITON_INTERPRET=1)."""
        import os

        if self.lm_head.weight.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise JrtcError(
                "use_kernels needs a CUDA device, or TRITON_INTERPRET=1 to run the kernels on the CPU"
            )
        try:
            from jrtc.plugins.pla import ops
            from jrtc.plugins.swa import ops as swa_ops
        except ImportError as e:
            raise JrtcError(f"the Triton kernels are not available ({e}); pip install 'jrtc[gpu]'") from None
        for block in self.transformer.layers:
            if isinstance(block.mixer, PrefixLinearAttention):
                block.mixer.ops = ops
            elif isinstance(block.mixer, SlidingWindowAttention):
                block.mixer.sliding_window_attention = swa_ops.sliding_window_attention

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied head is counted once


def _assign(state: State, next_state: State) -> None:
    for name, value in next_state.items():
        if value is not state[name]:
            state[name].copy_(value)
