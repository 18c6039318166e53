"""jrtc: compile JRT-RNN language models into inference engines and run them.

``import jrtc`` stays light (no torch) so that ``jrtc.runtime`` can be used in services without torch;
the model-side API is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jrtc.errors import JrtcError

__version__ = "0.1.0"
__all__ = ["JrtcError", "JRTConfig", "JRTModel", "load_checkpoint", "save_checkpoint", "__version__"]

if TYPE_CHECKING:
    from jrtc.checkpoint import load_checkpoint, save_checkpoint
    from jrtc.config import JRTConfig
    from jrtc.model import JRTModel

_LAZY = {
    "load_checkpoint": "jrtc.checkpoint",
    "save_checkpoint": "jrtc.checkpoint",
    "JRTConfig": "jrtc.config",
    "JRTModel": "jrtc.model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jrtc' has no attribute {name!r}")
