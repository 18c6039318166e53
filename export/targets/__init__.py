"""Export targets: one module each, named in :data:`TARGET_MODULES`; an export imports only its target's.

A target module has:

* ``FORMATS``: the ``--format`` values it writes, its default first;
* ``place(fmt, dtype) -> Placement``: where and how the model must be loaded for it, refusing in one line
  what this machine cannot build (called before the checkpoint is read);
* ``build(model, staging, fmt, max_batch, max_prompt_len, progress) -> Built``: write the engine files into
  the staging directory and say what the manifest must add.

``jrtc.export.build`` does everything around them: options, the tokenizer, checksums, the manifest, the atomic
install of the engine directory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

TARGET_MODULES = {
    "cpu": "jrtc.export.targets.cpu",
    "cuda": "jrtc.export.targets.cuda",
    "h100": "jrtc.export.targets.tensorrt",
    "h200": "jrtc.export.targets.tensorrt",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Placement:
    """How the checkpoint is loaded for a target."""

    dtype: torch.dtype
    device: str = "cpu"
    use_kernels: bool = False  # the Triton PLA kernels instead of the PyTorch reference


@dataclass(frozen=True)
class Built:
    """What a target wrote into the staging directory."""

    engine: str  # the file the runtime loads
    files: list[str]  # every file written (each gets a checksum)
    backend: str  # the runtime backend that runs it (jrtc.runtime.backends.BACKENDS)
    outputs: list[str]  # the engine's output names
    fields: dict[str, Any] = field(default_factory=dict)  # target-specific manifest fields


def target_module(target: str) -> Any:
    return importlib.import_module(TARGET_MODULES[target])
