"""The step graph as an AOTInductor package: a prefill program and a decode program in one ``model.pt2``.

Both programs take ``(input_ids [B, L], start_pos [B], num_pad [B], state...)`` and return the last-position
logits; they update the state tensors they are given in place (torch.export records the mutation and the
compiled code writes into the caller's buffers), so a runtime passes views of its state pool and nothing is
copied back. One program for all lengths is impractical (torch.export specializes on L = 1), hence two:
``prefill`` for 2 <= L <= max_prompt_len and ``decode`` for L = 1, both for 1 <= B <= max_batch.

The package's metadata repeats what a C++ service needs to drive it (state shapes and dtypes, encoder
length, pad id, ...), so ``cpp/`` reads no JSON.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jrtc.errors import JrtcError
from jrtc.export import muted
from jrtc.export.step_graph import StepGraph
from jrtc.layers import PrefixLinearAttention
from jrtc.model import JRTModel

PACKAGE = "model.pt2"
PROGRAMS = ("prefill", "decode")


class InPlaceStep(nn.Module):
    """The step function with the next state written into the state inputs; returns the logits."""

    def __init__(self, model: JRTModel) -> None:
        super().__init__()
        self.step = StepGraph(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        start_pos: torch.Tensor,
        num_pad: torch.Tensor,
        state: list[torch.Tensor],
    ) -> torch.Tensor:
        logits, *next_state = self.step(input_ids, start_pos, num_pad, state)
        for buffer, new in zip(state, next_state, strict=True):
            buffer.copy_(new)
        return logits


def program_shapes(max_batch: int, max_prompt_len: int) -> dict[str, dict[str, list[int]]]:
    """Each program's batch and length range (the manifest's ``programs``)."""
    return {
        "prefill": {"batch": [1, max_batch], "length": [2, max_prompt_len]},
        "decode": {"batch": [1, max_batch], "length": [1, 1]},
    }


def manifest_fields(model: JRTModel, max_batch: int, max_prompt_len: int) -> dict[str, Any]:
    """The manifest fields of an aoti engine (docs/interfaces.md)."""
    return {
        "format": "aoti",
        "device": model.lm_head.weight.device.type,
        "dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
        "programs": program_shapes(max_batch, max_prompt_len),
        "state_in_place": True,
        "built_with": {"torch": torch.__version__},
    }


def metadata(model: JRTModel, max_batch: int, max_prompt_len: int) -> dict[str, str]:
    """What ``cpp/`` reads from the package: strings only (AOTInductor's metadata is a string map)."""
    cfg = model.config
    state = [
        f"{name}:{str(dtype).removeprefix('torch.')}:{'x'.join(map(str, shape))}"
        for name, (shape, dtype) in model.state_spec().items()
        if name != "pos"
    ]
    return {
        "jrtc.device": model.lm_head.weight.device.type,
        "jrtc.state": ";".join(state),
        "jrtc.enc_length": str(cfg.enc_length),
        "jrtc.pad_token_id": str(cfg.pad_token_id),
        "jrtc.eos_token_id": str(-1 if cfg.eos_token_id is None else cfg.eos_token_id),
        "jrtc.vocab_size": str(cfg.vocab_size),
        "jrtc.max_batch": str(max_batch),
        "jrtc.max_prompt_len": str(max_prompt_len),
    }


def _example(model: JRTModel, device: torch.device, batch: int, length: int) -> tuple[Any, ...]:
    state = [t for name, t in model.init_state(batch).items() if name != "pos"]
    ids = torch.zeros(batch, length, dtype=torch.int64, device=device)
    positions = torch.full((batch,), 0 if length > 1 else 5, dtype=torch.int64, device=device)
    return ids, positions, torch.zeros(batch, dtype=torch.int64, device=device), state


@contextlib.contextmanager
def _continuing(model: JRTModel) -> Iterator[None]:
    """Trace the decode program without the PLA encoder: a call of one token never starts a sequence when
    the encoder is longer than one token (the first call holds the whole encoder), so there it would only
    add a zero state, at the cost of a pass over the whole PLA state per step."""
    mixers = [
        block.mixer
        for block in model.transformer.layers
        if isinstance(block.mixer, PrefixLinearAttention) and block.mixer.enc_length > 1
    ]
    for mixer in mixers:
        mixer.starts_sequences = False
    try:
        yield
    finally:
        for mixer in mixers:
            mixer.starts_sequences = True


def export_program(
    model: JRTModel, name: str, max_batch: int, max_prompt_len: int
) -> torch.export.ExportedProgram:
    """``torch.export`` of one program, with its batch (and for prefill, length) dynamic."""
    device = model.lm_head.weight.device
    shapes = program_shapes(max_batch, max_prompt_len)[name]
    static = torch.export.Dim.STATIC
    batch_dim = torch.export.Dim("batch", min=1, max=max_batch) if max_batch > 1 else static
    length_dim = static
    if name == "prefill":
        length_dim = torch.export.Dim("length", min=shapes["length"][0], max=shapes["length"][1])
    # Example sizes no weight shares, so the exporter cannot take B or L for a constant.
    args = _example(model, device, min(2, max_batch), 3 if name == "prefill" else 1)
    state_dims = [{0: batch_dim} for _ in args[3]]
    dynamic_shapes = {
        "input_ids": {0: batch_dim, 1: length_dim},
        "start_pos": {0: batch_dim},
        "num_pad": {0: batch_dim},
        "state": state_dims,
    }
    tracing = _continuing(model) if name == "decode" else contextlib.nullcontext()
    with torch.no_grad(), tracing:
        return torch.export.export(
            InPlaceStep(model).eval(), args, dynamic_shapes=dynamic_shapes, strict=False
        )


def build_package(
    model: JRTModel,
    path: Path,
    max_batch: int,
    max_prompt_len: int,
    progress: Any = lambda message: None,
) -> None:
    """Export and compile both programs on the model's device and write the package ``path``."""
    from torch._inductor import aot_compile
    from torch._inductor.package import package_aoti

    if max_prompt_len < 2:
        raise JrtcError(f"--max-prompt-len {max_prompt_len} is too small for an aoti engine: use at least 2")
    options = {
        "aot_inductor.package": True,
        "aot_inductor.metadata": metadata(model, max_batch, max_prompt_len),
        # The generated input checks (AOTI_RUNTIME_CHECK_INPUTS=1) take Inductor's working assumption that a
        # dynamic size is at least 2 for a bound, and would refuse B = 1; the code itself serves B = 1.
        "aot_inductor.check_lowerbound": False,
    }
    compiled = {}
    with muted("torch._inductor", "torch._export", "torch.export"):
        for name in PROGRAMS:
            progress(f"torch.export: {name} program")
            program = export_program(model, name, max_batch, max_prompt_len)
            progress(f"AOTInductor: compiling the {name} program (about a minute)")
            args, kwargs = program.example_inputs
            compiled[name] = aot_compile(
                program.module(check_guards=False), args, kwargs, options=dict(options)
            )
        package_aoti(str(path), compiled)
