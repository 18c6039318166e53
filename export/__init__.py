"""Export JRT-RNN checkpoints to engines (``jrtc export``): tracing, graph functions, engine directories.

Only constants and stdlib helpers live here, so that the CLI can describe its options without importing torch.
"""

import contextlib
import logging
import warnings
from collections.abc import Iterator

TARGETS = ("cpu", "h100", "h200", "cuda")
FORMATS = (
    "onnx",
    "aoti",
    "plan",
)  # per target: cpu onnx (default) or aoti, cuda aoti, h100/h200 plan or onnx
DTYPES = ("float32", "bfloat16")
BYTES_TOKENIZER = "bytes"  # --tokenizer bytes: the built-in byte-level tokenizer (id b = byte b)
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_PROMPT_LEN = 512  # raised to enc_length when the encoder is longer: its first call holds it all


@contextlib.contextmanager
def muted(*loggers: str) -> Iterator[None]:
    """Mute warnings and the log lines of ``loggers`` below errors (the exporters' and compilers'
    deprecation and cache notes are not the user's business)."""
    found = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in found]
    for logger in found:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(found, levels, strict=True):
            logger.setLevel(level)
