"""The step function every engine runs (docs/interfaces.md), as a module to trace:
``step(input_ids [B, L], start_pos [B], num_pad [B], state...) -> (logits [B, V], next state...)``, which is
``model.forward_step(input_ids, state, key_mask, last_only=True)`` with the key mask of the left pads.
"""

from __future__ import annotations

import torch
from torch import nn

from jrtc.model import JRTModel


class StepGraph(nn.Module):
    """The traced function: the contract's graph inputs in, logits and the next state out."""

    def __init__(self, model: JRTModel) -> None:
        super().__init__()
        self.model = model
        self.state_names = [name for name in model.state_spec() if name != "pos"]

    def forward(
        self,
        input_ids: torch.Tensor,
        start_pos: torch.Tensor,
        num_pad: torch.Tensor,
        state: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        key_mask = positions[None, :] >= num_pad[:, None]  # True = real token; the first num_pad are pads
        logits, next_state = self.model.forward_step(
            input_ids,
            {"pos": start_pos, **dict(zip(self.state_names, state, strict=True))},
            key_mask,
            last_only=True,
        )
        return (logits, *(next_state[name] for name in self.state_names))


def io_names(model: JRTModel) -> tuple[list[str], list[str]]:
    """Graph input and output names, in order (docs/interfaces.md)."""
    names = [name for name in model.state_spec() if name != "pos"]
    return (
        ["input_ids", "start_pos", "num_pad", *(f"state.{n}" for n in names)],
        ["logits", *(f"next.{n}" for n in names)],
    )
