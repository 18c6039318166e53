"""BaseConv: a gated depthwise causal convolution of width 3 (reference ``based/models/mixers/convolution.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jrtc.plugins.conv.naive import KERNEL_SIZE, short_conv


class ShortConvolution(nn.Module):
    """Holds the depthwise kernel under the reference's name (``conv.conv.weight``), without bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            channels, channels, KERNEL_SIZE, groups=channels, padding=KERNEL_SIZE - 1, bias=False
        )


class BaseConv(nn.Module):
    """``out_proj(silu(causal_conv(u1)) * u2)`` with ``u1, u2 = in_proj(x).split(2d)``.

    State ``conv [B, 2d, 2]``: the pre-conv inputs of the two previous positions (zeros before the start),
    which is all a width-3 causal convolution needs to continue.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.inner = 2 * d_model
        self.in_proj = nn.Linear(d_model, 2 * self.inner, bias=True)
        self.conv = ShortConvolution(self.inner)
        self.out_proj = nn.Linear(self.inner, d_model, bias=True)
        self.short_conv = short_conv  # the core, called through the instance so that jrtc.export can swap it

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"conv": ((self.inner, KERNEL_SIZE - 1), "model")}

    def forward(
        self,
        x: torch.Tensor,
        state: dict[str, torch.Tensor],
        pos: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        u1, u2 = self.in_proj(x).split(self.inner, dim=-1)
        c, conv_state = self.short_conv(u1.transpose(1, 2), state["conv"], self.conv.conv.weight)
        y = self.out_proj(F.silu(c).transpose(1, 2) * u2)
        return y, {"conv": conv_state}
